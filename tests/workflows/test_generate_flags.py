"""Issue 21, the flag rule of generate.py: every flag given is used by the graph it builds, or the run is refused in
one line naming the ignored flag and the flag it is ignored with. Host-free: the graph is what generate.py's own
steps (read_request -> run_settings -> build_prompt) hand to the executor, with the input images it copies."""
from __future__ import annotations

import hashlib
import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.cli import cli_flags
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.tests.readme_blocks import generate_examples, readme_flags


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("flag_images")
    paths = {}
    for i, name in enumerate("abc"):
        arr = np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"{name}.png")
        paths[name] = str(d / f"{name}.png")
    (d / "adapter.safetensors").write_bytes(b"{}")  # read_request checks only that the file is there
    paths["adapter"] = str(d / "adapter.safetensors")
    return paths


def values(flag, im, out_dir):
    """Two values of a flag that must lead to two different graphs (None: the flag left out)."""
    two = {"--image": (im["a"], im["b"]), "--end-image": (im["b"], im["c"]),
           "--keyframes": ([im["a"], im["b"], im["c"]], [im["a"], im["c"], im["b"]]), "--loop": (True, None),
           "--prompt": ("p", "q"), "--negative": ("n", "m"), "--out": (out_dir + "/o.mp4", out_dir + "/o.webp"),
           "--variant": ("512", "1024"), "--frames": ("8", "12"), "--steps": ("2", "3"), "--seed": ("1", "2"),
           "--cfg": ("5", "6"), "--cfg-image": ("5", "6"), "--eta": ("0.5", "0.7"), "--guidance-rescale": ("0.3", "0.5"),
           "--motion": ("10", "20"), "--fps": ("10", "12"), "--crf": ("20", "25"), "--width": ("64", "128"),
           "--height": ("64", "128"), "--adapter": (im["adapter"] + ":0.5", im["adapter"] + ":0.7"),
           "--sketch": ([im["a"] + ":0"], [im["b"] + ":5"])}
    return two[flag]


def argv_of(flags: dict) -> list:
    out = []
    for flag, value in flags.items():
        if value is None:
            continue
        out += [flag] if value is True else [flag, *value] if isinstance(value, list) else [flag, value]
    return out


def graph_of(argv, tmp) -> tuple:
    """("refused", message) or ("graph", the API graph, {input file: sha256}) as generate.py builds it."""
    args = generate.build_parser().parse_args(argv)
    try:
        req = generate.read_request(args)
    except (generate.UserError, DynamiCrafterInputError) as e:
        return "refused", str(e)
    s = generate.run_settings(args, req, "tiny.safetensors", tiny=True)
    inputs = tmp / f"in{len(list(tmp.iterdir()))}"
    inputs.mkdir()
    prompt = generate.build_prompt(req, s, str(inputs))
    files = {f: hashlib.sha256((inputs / f).read_bytes()).hexdigest() for f in sorted(os.listdir(inputs))}
    return "graph", json.dumps(prompt, sort_keys=True), files


def test_every_flag_is_a_graph_or_a_run_flag_and_the_readme_names_only_those():
    parser_flags = {o for a in generate.build_parser()._actions for o in a.option_strings if o.startswith("--")}
    parser_flags -= {"--help"}
    assert parser_flags == set(cli_flags.GRAPH_FLAGS) | set(cli_flags.RUN_FLAGS)
    assert set(readme_flags()) <= parser_flags
    assert {f for ex in generate_examples() for f in ex if f.startswith("--")} <= parser_flags


PAIRS = list(itertools.combinations(cli_flags.GRAPH_FLAGS, 2))


def test_the_walk_covers_every_pair_the_readme_examples_combine():
    combined = {tuple(sorted(p)) for ex in generate_examples()
                for p in itertools.combinations([f for f in ex if f.startswith("--")], 2)}
    walked = {tuple(sorted(p)) for p in PAIRS}
    run_pairs = {p for p in combined if set(p) & set(cli_flags.RUN_FLAGS)}
    assert combined - run_pairs <= walked
    for flag, other in run_pairs:  # --download-only --variant: the variant says what to download
        assert "--variant" in (flag, other) or any({r.flag, r.other} == {flag, other} for r in cli_flags.IGNORED)


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_flag_pair_is_used_by_the_graph_or_refused_naming_both(a, b, images, tmp_path):
    out_dir = str(tmp_path / "out")
    base = {"--tiny": True, "--prompt": "p", "--out": out_dir + "/o.mp4"}
    if "--keyframes" not in (a, b):
        base["--image"] = images["a"]
    if "--sketch" in (a, b) and "--end-image" not in (a, b):   # sketches steer ToonCrafter's start -> end frames
        base["--end-image"] = images["b"]
    flags = dict(base, **{a: values(a, images, out_dir)[0], b: values(b, images, out_dir)[0]})
    first = graph_of(argv_of(flags), tmp_path)
    if first[0] == "refused":
        assert a in first[1] and b in first[1] and "\n" not in first[1], first[1]
        return
    for f in (a, b):
        other = graph_of(argv_of(dict(flags, **{f: values(f, images, out_dir)[1]})), tmp_path)
        assert other != first, f"{f} changes nothing in the graph with {a} {b}"


@pytest.mark.parametrize("argv,flag,other", [
    (["--loop", "--end-image", "B"], "--end-image", "--loop"),              # finding 4: ran without the end image
    (["--keyframes", "A", "B", "--frames", "40"], "--frames", "--keyframes"),  # finding 4: made 16 frames
    (["--ckpt", "x.ckpt"], "--ckpt", "--tiny"),
    (["--no-download"], "--no-download", "--tiny"),
    (["--crf", "20", "--out", "OUT/o.gif"], "--crf", "--out *.gif"),
])
def test_ignored_flags_are_refused_naming_both(argv, flag, other, images, tmp_path):
    sub = {"A": images["a"], "B": images["b"], "OUT": str(tmp_path)}
    argv = [sub.get(w, w.replace("OUT", str(tmp_path))) for w in argv]
    base = ["--tiny", "--prompt", "p"] + ([] if "--keyframes" in argv else ["--image", images["a"]])
    base += [] if "--out" in argv else ["--out", str(tmp_path / "o.mp4")]
    kind, msg = graph_of(base + argv, tmp_path)[:2]
    assert kind == "refused" and msg.startswith(f"{flag} is ignored with {other}: ") and "\n" not in msg, msg


@pytest.mark.parametrize("flag", [f for f in cli_flags.GRAPH_FLAGS if f != "--variant"] + ["--tiny", "--cpu"])
def test_download_only_refuses_what_it_would_ignore(flag, images, tmp_path):
    value = values(flag, images, str(tmp_path))[0] if flag in cli_flags.GRAPH_FLAGS else True
    argv = ["--download-only", "--variant", "512-interp"] + argv_of({flag: value})
    kind, msg = graph_of(argv, tmp_path)[:2]
    assert kind == "refused" and msg.startswith(f"{flag} is ignored with --download-only"), msg

"""Issue 21, finding 8: the READMEs' commands run as written, in a scratch copy of the pack (so a path or a flag that
drifts breaks here, not for a new user): README.md's generate.py examples (with --tiny and tiny sizes added: the
real weights are not here) and the tiny recipe's block of training/README.md verbatim, `python` being this venv's.
Offline; the tiny checkpoint is linked in where generate.py --tiny keeps it (writing it costs 30 s), so a recipe
that reads another path still fails."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.cli import weights
from comfyui_dynamicrafter.tests.readme_blocks import REPO, code_block, generate_examples

TINY = ["--tiny", "--width", "64", "--height", "64", "--steps", "2"]
_SKIP = shutil.ignore_patterns(".git", ".venv", ".cache", "runs", "__pycache__", "*.mp4", "*.webp", "*.gif")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A copy of the pack with this venv as .venv, the tiny 512 checkpoint in its .cache and the images the
    examples name."""
    root = tmp_path_factory.mktemp("readme") / "pack"
    shutil.copytree(REPO, root, ignore=_SKIP, symlinks=True)
    os.symlink(sys.prefix, root / ".venv")
    src = weights.tiny_checkpoint(generate.DEFAULT_CACHE, "512")
    dst = os.path.join(root, ".cache", "tiny-weights", os.path.basename(src))
    os.makedirs(os.path.dirname(dst))
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    for i, name in enumerate(("photo.png", "a.png", "b.png", "c.png", "sketch0.png", "sketch8.png")):
        arr = np.random.default_rng(i).integers(0, 255, (80, 128, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / name)
    return root


def _run(line: str, cwd, timeout=900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    p.seconds = time.monotonic() - t0
    return p


EXAMPLES = generate_examples()


@pytest.mark.parametrize("words", EXAMPLES, ids=[w[-1] if w[-1].endswith((".mp4", ".webp")) else "download-only"
                                                for w in EXAMPLES])
def test_readme_generate_example_runs(scratch, words):
    download_only = "--download-only" in words
    line = shlex.join([".venv/bin/python", "generate.py", *words, *([] if download_only else TINY)])
    p = _run(line, scratch)
    if download_only:  # offline here: one clear refusal that names the file and where to put it, no traceback
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert "dynamicrafter_512_interp.ckpt" in p.stderr and "HF_HUB_OFFLINE" in p.stderr, p.stderr[-2000:]
        return
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = words[words.index("--out") + 1]
    written = scratch / generate.labelled_output(out, True)
    frames, _, size = generate.probe_video(str(written))
    assert size == (64, 64)
    want = int(words[words.index("--frames") + 1]) if "--frames" in words else None
    if "--keyframes" in words:
        want = (len(words[words.index("--keyframes") + 1:words.index("--prompt")]) - 1) * 15 + 1
    if want:
        assert frames == want, (frames, want)


RECIPE = code_block("training/README.md", "The tiny recipe: a plumbing check in about a minute")


def test_tiny_recipe_runs_as_written(scratch):
    assert len(RECIPE) == 4 and all(ln.startswith("python ") for ln in RECIPE), RECIPE
    for line in RECIPE:
        p = _run(line, scratch)
        assert p.returncode == 0, (line, p.stdout[-2000:], p.stderr[-3000:])
        print(f"{p.seconds:5.1f} s  {line.split('#')[0].strip()}")
    assert (scratch / "runs" / "tiny_adapter" / "adapter.safetensors").is_file()
    plain = generate.probe_video(str(scratch / generate.labelled_output("check.mp4", True)))
    adapted = generate.probe_video(str(scratch / generate.labelled_output("adapted.mp4", True)))
    assert plain == adapted  # same frames, rate and size; test_tiny_recipe compares the pixels

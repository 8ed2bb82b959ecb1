"""generate.py, the headless command: run as a user runs it (a subprocess), offline (HF_HUB_OFFLINE=1: no test reaches
the network). The tiny pipeline check and the demo's fallback write labelled videos; bad input is reported before
anything heavy starts. The download code runs against a stand-in of huggingface_hub."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.cli import headless, weights
from comfyui_dynamicrafter.tests.hosting import KNOWN_MISSING_MODULES
from comfyui_dynamicrafter.tests.workflows.conftest import run_generate as run, tiny_lora_adapter

SCRIPT = generate.__file__
START = generate.EXAMPLE_START
END = generate.EXAMPLE_END
SMALL = ["--frames", "4", "--width", "64", "--height", "64", "--steps", "2"]


def frames_fps(path):
    return generate.probe_video(path)[:2]


# ---------------------------------------------------------------------------------------------------------------------
# bad input: said plainly, before the host or the model is touched
# ---------------------------------------------------------------------------------------------------------------------
def test_unwritable_output_is_reported_before_anything_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    p = run("--image", START, "--prompt", "x", "--out", str(blocker / "out.mp4"))
    assert p.returncode == 2, p.stderr
    assert "cannot write into" in p.stderr and str(blocker) in p.stderr
    assert "ComfyUI:" not in p.stdout and "step" not in p.stderr  # no host, no sampling
    p = run("--image", START, "--prompt", "x", "--out", str(tmp_path / "out.avi"))
    assert p.returncode == 2 and ".mp4, .webp, .gif" in p.stderr


def test_missing_or_unreadable_image(tmp_path):
    p = run("--image", str(tmp_path / "nope.png"), "--prompt", "x", "--out", str(tmp_path / "o.mp4"))
    assert p.returncode == 2 and "--image" in p.stderr and "does not exist" in p.stderr
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    p = run("--image", str(bad), "--prompt", "x", "--out", str(tmp_path / "o.mp4"))
    assert p.returncode == 2 and "not a readable image" in p.stderr and str(bad) in p.stderr
    p = run("--image", START, "--end-image", str(tmp_path / "gone.png"), "--prompt", "x", "--out",
            str(tmp_path / "o.mp4"))
    assert p.returncode == 2 and "--end-image" in p.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_missing_model_offline_names_the_file_and_the_folders(tmp_path):
    if any(os.path.isfile(os.path.join(generate.PACK_MODELS, n)) for n in weights.MODEL_FILES["512"].alternatives):
        pytest.skip(f"real weights are present in {generate.PACK_MODELS}")
    models = tmp_path / "my-models"
    p = run("--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--models-dir", str(models))
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr
    assert "model file not found: dynamicrafter_512.safetensors, dynamicrafter_512.ckpt" in err
    assert "HF_HUB_OFFLINE" in err  # why nothing was downloaded
    assert str(models) in err and os.path.join("models", "dynamicrafter") in err  # the folders searched
    assert "Doubiiu/DynamiCrafter_512" in err and "--tiny" in err
    assert "step" not in err


def test_broken_model_file_is_one_line_before_the_host_loads(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "dynamicrafter_512.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    p = run("--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--models-dir", str(models))
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "dynamicrafter_512.safetensors" in lines[-1], lines
    assert sum(ln.startswith("error: ") for ln in lines) == 1 and "Traceback" not in p.stderr  # one line, said once
    assert "step" not in p.stderr and "DCN_" not in p.stdout + p.stderr  # the host never loaded the pack


# ---------------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------------
def test_demo_offline_ends_with_a_labelled_tiny_video(tmp_path):
    if any(os.path.isfile(os.path.join(generate.PACK_MODELS, n)) for n in weights.MODEL_FILES["512"].alternatives):
        pytest.skip(f"real weights are present in {generate.PACK_MODELS}")
    p = run("--demo", "--out", str(tmp_path / "demo.mp4"), *SMALL)
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "demo.tiny-random-weights.mp4"
    assert out.is_file() and not (tmp_path / "demo.mp4").exists()
    assert frames_fps(str(out)) == (4, 8.0)
    assert "PIPELINE CHECK" in p.stdout and "dynamicrafter_512.ckpt" in p.stdout and "Put it into" in p.stdout
    assert f"wrote {out}: 4 frames, 8 fps, 64x64" in p.stdout
    print(f"demo (tiny fallback): {p.seconds:.1f} s")


def test_tiny_interpolation_to_webp(tmp_path):
    p = run("--tiny", "--image", START, "--end-image", END, "--prompt", "a boat", "--out", str(tmp_path / "i.webp"),
            "--fps", "10", *SMALL)
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "i.tiny-random-weights.webp"
    assert frames_fps(str(out)) == (4, 10.0)
    assert "dynamicrafter_512_interpolation.json (interpolation), variant 512-interp" in p.stdout
    assert "PIPELINE CHECK" in p.stdout
    print(f"tiny interpolation: {p.seconds:.1f} s")


def test_tiny_through_the_host_named_by_comfyui(tmp_path):
    """--comfyui names the host (here: the one this test run uses, COMFYUI_PATH removed from the environment)."""
    info = headless.find_host()
    env = {k: v for k, v in os.environ.items() if k != headless.HOST_ENV}
    p = subprocess.run([sys.executable, SCRIPT, "--tiny", "--image", START, "--prompt", "a boat", "--out",
                        str(tmp_path / "h.gif"), "--comfyui", info.path, *SMALL], capture_output=True, text=True,
                       env=dict(env, HF_HUB_OFFLINE="1"), timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"ComfyUI: {dataclasses.replace(info, source='--comfyui').describe()}" in p.stdout
    assert frames_fps(str(tmp_path / "h.tiny-random-weights.gif"))[0] == 4
    # the host's own nodes under generate.py: none fails because of the pack (its stand-in server included); only a
    # module this machine lacks (tests/hosting.KNOWN_MISSING_MODULES) may keep one from importing
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith(headless.IMPORT_FAILURES_PREFIX))
    print(line)
    listed = line[len(headless.IMPORT_FAILURES_PREFIX):]
    failures = [] if listed == "none" else listed.split("; ")
    caused = [f for f in failures if not any(f"No module named '{m}" in f for m in KNOWN_MISSING_MODULES)]
    assert not caused, f"host nodes that failed to import under generate.py: {caused}"


def test_a_folder_that_is_no_comfyui_is_refused_before_anything_starts(tmp_path):
    p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--comfyui", str(tmp_path))
    assert p.returncode == 2 and f"--comfyui={tmp_path} is not a ComfyUI folder" in p.stderr
    assert "step" not in p.stderr and not list(tmp_path.iterdir())


LONG_SMALL = ["--width", "64", "--height", "64", "--steps", "2"]


@pytest.mark.parametrize("args,workflow,frames", [
    (["--image", START, "--frames", "20"], "dynamicrafter_512_long_video.json (long_video), variant 512", 20),
    (["--image", START, "--frames", "20", "--loop"], "dynamicrafter_512_long_loop.json (long_loop), variant 512", 20),
    (["--keyframes", START, END, START], "dynamicrafter_512_keyframes.json (keyframes), variant 512-interp", 31),
])
def test_tiny_long_videos(tmp_path, args, workflow, frames):
    """--frames over 16 (context windows), --loop over 16 (wrapping windows), --keyframes a b c (a chain)."""
    out = tmp_path / "long.mp4"
    p = run("--tiny", "--prompt", "a boat", "--out", str(out), *args, *LONG_SMALL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert workflow in p.stdout, p.stdout
    got = tmp_path / "long.tiny-random-weights.mp4"
    assert frames_fps(str(got)) == (frames, 8.0)
    print(f"tiny {workflow}: {frames} frames, {p.seconds:.1f} s")


@pytest.mark.parametrize("args,needle", [
    (["--keyframes", START], "--keyframes: expected at least 2 images, found 1"),
    (["--image", START, "--frames", "300"], "--frames: expected 2 to 256, found 300"),
    (["--image", START, "--end-image", END, "--frames", "40"], "interpolation covers at most 16 frames"),
])
def test_bad_long_video_arguments(tmp_path, args, needle):
    p = run("--tiny", "--prompt", "a boat", "--out", str(tmp_path / "x.mp4"), *args)
    assert p.returncode == 2 and needle in p.stderr, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_tiny_tooncrafter_interpolation(tmp_path):
    p = run("--variant", "tooncrafter", "--tiny", "--image", START, "--end-image", END, "--prompt", "a boat",
            "--out", str(tmp_path / "t.mp4"), *SMALL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert frames_fps(str(tmp_path / "t.tiny-random-weights.mp4")) == (4, 8.0)
    assert "tooncrafter_interpolation.json (tooncrafter), variant tooncrafter" in p.stdout
    q = run("--variant", "tooncrafter", "--tiny", "--image", START, "--prompt", "a boat", "--out",
            str(tmp_path / "u.mp4"))
    assert q.returncode == 2 and "--end-image" in q.stderr and len(q.stderr.strip().splitlines()) == 1
    print(f"tiny tooncrafter: {p.seconds:.1f} s")


SKETCHES = [os.path.join(generate.ROOT, "workflows", "input", f"tooncrafter_sketch_{i:02d}.png") for i in (5, 10)]


def test_tiny_tooncrafter_sketch_guidance(tmp_path):
    """--sketch a.png:0 b.png:8 runs the shipped sketch workflow on the tiny ToonCrafter and a tiny sketch encoder in
    the released file's layout; the same run without sketches gives other frames (the sketches steer them)."""
    common = ["--tiny", "--image", START, "--end-image", END, "--prompt", "a boat", "--frames", "9",
              "--width", "64", "--height", "64", "--steps", "2"]
    p = run(*common, "--sketch", f"{SKETCHES[0]}:0", f"{SKETCHES[1]}:8", "--out", str(tmp_path / "s.mp4"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tooncrafter_sketch_interpolation.json (tooncrafter_sketch), variant tooncrafter" in p.stdout
    assert frames_fps(str(tmp_path / "s.tiny-random-weights.mp4")) == (9, 8.0)
    q = run(*common, "--variant", "tooncrafter", "--out", str(tmp_path / "n.mp4"))
    assert q.returncode == 0, q.stdout + q.stderr
    guided, plain = (decoded_frames(str(tmp_path / f"{n}.tiny-random-weights.mp4")) for n in "sn")
    assert guided.shape == plain.shape and not np.array_equal(guided, plain)


@pytest.mark.parametrize("args,needle", [
    (["--sketch", "SK0:16"], "frame 16 is outside the video's 16 frames"),
    (["--sketch", "SK0"], "expected FILE:FRAME"),
    (["--sketch", "SK0:3", "SK1:3"], "frame 3 has two sketches"),
    (["--sketch", "SK0:0", "--loop"], "--sketch is ignored with --loop"),
    (["--sketch", "SK0:0", "--variant", "512-interp"], "--sketch is ignored with --variant"),
])
def test_bad_sketch_arguments_are_one_line_before_the_host(tmp_path, args, needle):
    sub = {"SK0": SKETCHES[0], "SK1": SKETCHES[1]}
    args = [sub.get(a.partition(":")[0], a.partition(":")[0]) + "".join(a.partition(":")[1:]) for a in args]
    p = run("--tiny", "--image", START, "--end-image", END, "--prompt", "a boat", "--out", str(tmp_path / "x.mp4"),
            *args)
    assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "ComfyUI:" not in p.stdout  # refused before a host was looked at


# ---------------------------------------------------------------------------------------------------------------------
# --adapter: the shipped adapter workflow (DCN_ApplyAdapter) on the tiny checkpoint
# ---------------------------------------------------------------------------------------------------------------------
def decoded_frames(path):
    """The mp4's frames as decoded RGB arrays (H.264 is lossy but deterministic: equal input, equal frames)."""
    import av
    import numpy as np
    with av.open(str(path)) as c:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(c.streams.video[0])])


def test_adapter_workflow_strength_0_is_none_and_1_changes_the_frames(tmp_path):
    """generate.py --adapter runs dynamicrafter_512_adapter (DCN_ApplyAdapter) in the real executor: strength 0 gives
    the frames of the plain image-to-video run bit for bit, strength 1 other frames."""
    import numpy as np
    adapter = tiny_lora_adapter(str(tmp_path / "my_adapter.safetensors"))
    base = ["--tiny", "--image", START, "--prompt", "a boat", *SMALL, "--crf", "0"]
    p = run(*base, "--out", str(tmp_path / "none.mp4"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dynamicrafter_512_image_to_video.json (image_to_video)" in p.stdout
    got = {}
    for strength in ("0", "1"):
        q = run(*base, "--out", str(tmp_path / f"s{strength}.mp4"), "--adapter", f"{adapter}:{strength}")
        assert q.returncode == 0, q.stdout + q.stderr
        assert "dynamicrafter_512_adapter.json (adapter), variant 512" in q.stdout, q.stdout
        assert f"adapter: {adapter}, strength {strength}" in q.stdout
        got[strength] = decoded_frames(tmp_path / f"s{strength}.tiny-random-weights.mp4")
    none = decoded_frames(tmp_path / "none.tiny-random-weights.mp4")
    assert none.shape == (4, 64, 64, 3)
    assert np.array_equal(got["0"], none)
    diff = np.abs(got["1"].astype(int) - none.astype(int))
    assert diff.max() > 0, "the adapter at strength 1 changed nothing"
    print(f"adapter strength 1 vs none: mean |diff| {diff.mean():.2f} / 255, max {diff.max()}")


@pytest.mark.parametrize("value,needle", [
    ("missing.txt", "--adapter: "),
    ("{F}:nan", "--adapter strength"),
    ("{F}:11", "--adapter strength"),
])
def test_bad_adapter_argument_is_one_line_before_the_host(tmp_path, value, needle):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"),
            "--adapter", value.format(F=f))
    assert p.returncode == 2 and needle in p.stderr, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "ComfyUI:" not in p.stdout  # no host started


# ---------------------------------------------------------------------------------------------------------------------
# the download code, against a stand-in hub (nothing leaves the machine)
# ---------------------------------------------------------------------------------------------------------------------
class FakeHub:
    def __init__(self, payload: bytes):
        self.payload = payload
        self.calls = []

    def hf_hub_download(self, repo_id, filename, local_dir=None, **kw):
        self.calls.append((repo_id, filename, local_dir))
        path = os.path.join(local_dir, filename)
        with open(path, "wb") as f:
            f.write(self.payload)
        return path


def test_download_checks_size_and_hash_then_names_the_file(tmp_path, monkeypatch):
    import huggingface_hub
    hub = FakeHub(b"weights" * 1000)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    mf = weights.MODEL_FILES["512-interp"]
    sha = hashlib.sha256(hub.payload).hexdigest()
    path = weights.download_model(mf, str(tmp_path), len(hub.payload), sha, progress=False)
    assert path == str(tmp_path / "dynamicrafter_512_interp.ckpt")
    assert open(path, "rb").read() == hub.payload
    assert hub.calls[0][:2] == ("Doubiiu/DynamiCrafter_512_Interp", "model.ckpt")
    assert not (tmp_path / ".download" / "Doubiiu--DynamiCrafter_512_Interp").exists()


def test_download_refuses_a_corrupt_or_short_file(tmp_path, monkeypatch):
    import huggingface_hub
    hub = FakeHub(b"weights" * 10)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    mf = weights.MODEL_FILES["512"]
    with pytest.raises(weights.WeightsError, match="SHA-256"):
        weights.download_model(mf, str(tmp_path), len(hub.payload), "0" * 64, progress=False)
    assert not (tmp_path / mf.filename).exists()
    with pytest.raises(weights.WeightsError, match="bytes, the hub says"):
        weights.download_model(mf, str(tmp_path), len(hub.payload) + 1, None, progress=False)
    assert not (tmp_path / mf.filename).exists()
    with pytest.raises(weights.WeightsError, match="not enough disk space"):
        weights.download_model(mf, str(tmp_path), 1 << 60, None, progress=False)


def test_offline_is_detected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.is_offline() == (True, "HF_HUB_OFFLINE is set")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert weights.is_offline()[0] is False

    import huggingface_hub

    def unreachable(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(ConnectionError, match="unreachable"):
        weights.remote_metadata(weights.MODEL_FILES["512"])


def test_metadata_gives_size_and_sha(monkeypatch):
    import huggingface_hub

    class Meta:
        size, etag = 123, "ab" * 32

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout=None: Meta())
    assert weights.remote_metadata(weights.MODEL_FILES["512"]) == (123, "ab" * 32)
    Meta.etag = "not-a-sha"
    assert weights.remote_metadata(weights.MODEL_FILES["512"]) == (123, None)


def test_download_failure_says_how_to_resume(tmp_path, monkeypatch):
    import huggingface_hub

    def dropped(*a, **k):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", dropped)
    with pytest.raises(weights.WeightsError, match="run the same command again to resume"):
        weights.download_model(weights.MODEL_FILES["512"], str(tmp_path), 100, None, progress=False)

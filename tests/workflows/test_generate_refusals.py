"""Issue 21 at generate.py, run as a user runs it (a subprocess, offline): inputs that were dropped, changed or
refused late are refused in one line before the host starts (findings 2, 3, 4 and 7)."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.tests.workflows.conftest import run_generate as run
from comfyui_dynamicrafter.tests.workflows.test_generate_robust import SMALL, _mount_tmpfs, one_line_refusal

START = generate.EXAMPLE_START


def _image(path, w, h, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def imgs(tmp_path):
    a, b = _image(tmp_path / "a.png", 128, 64, 1), _image(tmp_path / "b.png", 128, 64, 2)
    data = open(a, "rb").read()
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(data[:len(data) // 2])           # the header is whole: only a decode finds it
    return {"a": a, "b": b, "trunc": str(trunc), "tall": _image(tmp_path / "tall.png", 32, 96, 3)}


@pytest.mark.parametrize("where", ["--image", "--keyframes", "--end-image"])
def test_truncated_image_refused_before_the_host(tmp_path, imgs, where):
    """Finding 2: a truncated PNG reached the host's LoadImage 17 s later, reported as node 3 / node 1000."""
    argv = {"--image": ["--image", imgs["trunc"]], "--keyframes": ["--keyframes", imgs["a"], imgs["b"], imgs["trunc"]],
            "--end-image": ["--image", imgs["a"], "--end-image", imgs["trunc"]]}[where]
    p = run("--tiny", *argv, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *SMALL[2:])
    one_line_refusal(p, where, imgs["trunc"], "truncated")


def test_keyframes_of_different_sizes_refused_not_cropped_twice(tmp_path, imgs):
    """Finding 3: a 32x96 keyframe after a 128x64 one was cropped to 128x64 by ImageBatch, then again."""
    p = run("--tiny", "--keyframes", START, imgs["a"], imgs["tall"], "--prompt", "x", "--out",
            str(tmp_path / "o.mp4"), "--width", "64", "--height", "64", "--steps", "2")
    one_line_refusal(p, "--keyframes", imgs["tall"], "32x96", "128x64", "ImageBatch")


@pytest.mark.parametrize("argv,words", [
    (["--keyframes"] + [START] * 50, ["--keyframes", "at most 18", "50", "736 frames"]),
    (["--variant", "tooncrafter", "--image", "A", "--end-image", "B", "--frames", "2"], ["--frames", "tooncrafter"]),
    (["--image", "A", "--end-image", "TALL"], ["--end-image", "32x96", "128x64"]),
    (["--image", "A", "--loop", "--end-image", "B"], ["--end-image is ignored with --loop"]),
    (["--keyframes", "A", "B", "--frames", "40"], ["--frames is ignored with --keyframes"]),
], ids=["50_keyframes", "toon_frames_2", "end_image_size", "loop_end_image", "keyframes_frames"])
def test_late_or_silent_cases_refused_before_the_host(tmp_path, imgs, argv, words):
    """Findings 4 and 7: dropped without a word, or refused only after the host started / the model loaded."""
    argv = [{"A": imgs["a"], "B": imgs["b"], "TALL": imgs["tall"]}.get(w, w) for w in argv]
    p = run("--tiny", *argv, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--width", "64", "--height", "64",
            "--steps", "2")
    one_line_refusal(p, *words)


def test_full_tmpdir_refused_before_the_host_naming_it(tmp_path):
    """Finding 7: a full TMPDIR was reported only after sampling, naming an internal temporary folder."""
    disk = tmp_path / "tmpdir"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("needs root to mount a small tmpfs (a full temporary folder)")
    try:
        (disk / "filler").write_bytes(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - 16384))
        env_tmp = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(disk)
        try:
            p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *SMALL)
        finally:
            if env_tmp is None:
                os.environ.pop("TMPDIR")
            else:
                os.environ["TMPDIR"] = env_tmp
        one_line_refusal(p, "TMPDIR", str(disk))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)

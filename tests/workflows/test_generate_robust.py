"""Issue 14 at generate.py, run as a user runs it (a subprocess, offline): NaN/Inf and out-of-range numbers, oversized
or 16-bit images and runs too big for the memory are refused in one line before the host starts; an --out on a
nearly full file system keeps the user's existing file; symlink loops in a model folder do not hang the search."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.tests.workflows.conftest import run_generate as run

START = generate.EXAMPLE_START
SMALL = ["--frames", "4", "--width", "64", "--height", "64", "--steps", "2"]
BEFORE_HOST_S = 20  # the host starts in 27-45 s on this machine: an answer before this came before it


def one_line_refusal(p, *needles):
    err = p.stderr.strip()
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    assert p.seconds < BEFORE_HOST_S and "ComfyUI" not in p.stdout, (p.seconds, p.stdout[-500:])
    return err


@pytest.mark.parametrize("flag,value", [("--cfg", "nan"), ("--cfg-image", "inf"), ("--guidance-rescale", "nan"),
                                        ("--eta", "nan"), ("--fps", "nan"), ("--cfg", "-inf")])
def test_nan_inf_numbers_refused_before_the_host(tmp_path, flag, value):
    out = tmp_path / "o.mp4"
    p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(out), *SMALL, f"{flag}={value}")
    one_line_refusal(p, flag, "finite")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flag,value", [("--width", "8193"), ("--width", "100"), ("--height", "40"),
                                        ("--frames", "0"), ("--frames", "1000"), ("--steps", "0"),
                                        ("--crf", "99"), ("--cfg", "1000")])
def test_out_of_range_numbers_name_the_right_flag_before_the_host(tmp_path, flag, value):
    args = dict(zip(SMALL[::2], SMALL[1::2]))
    args[flag] = value
    flat = [x for kv in args.items() for x in kv]
    p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *flat)
    err = one_line_refusal(p, flag)
    others = {"--width", "--height", "--frames", "--steps"} - {flag}
    assert not any(err.startswith(o) for o in others), err


def _big_png(path, width, height):
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_oversized_image_refused_from_its_header(tmp_path):
    """Finding 3: a 300 KB 10000x10000 PNG drove a tiny run past 9 GB in 41 s."""
    bomb = _big_png(tmp_path / "bomb.png", 10000, 10000)
    assert bomb.stat().st_size < 400_000
    p = run("--tiny", "--image", str(bomb), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *SMALL)
    one_line_refusal(p, "--image", "10000x10000", "DYNAMICRAFTER_MAX_IMAGE_PIXELS")


def test_16bit_greyscale_png_refused(tmp_path):
    grey = tmp_path / "grey16.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(grey)
    p = run("--tiny", "--image", str(grey), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *SMALL)
    one_line_refusal(p, "--image", "16-bit", "clips to white")


def test_run_too_big_for_memory_refused_before_the_host(tmp_path):
    """Finding 3: 8192x8192 ended in a raw 34 GB allocation error after the model load."""
    p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--width", "8192",
            "--height", "8192", "--frames", "2", "--steps", "2")
    one_line_refusal(p, "needs at least", "GiB")


def test_symlink_loops_in_models_dir_do_not_hang(tmp_path):
    """Finding 2: two links to '.' in a searched model folder made the model listing walk for ever (> 240 s)."""
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(".", models / "a")
    os.symlink(".", models / "b")
    try:
        p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--models-dir",
                str(models), *SMALL, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("generate.py still lists the model folder after 240 s")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "links back" in p.stderr and str(models) in p.stderr  # the host's own loaders would hang: said once


def _mount_tmpfs(path, size):
    path.mkdir(exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_out_on_a_nearly_full_file_system_keeps_the_existing_file(tmp_path):
    """Finding 1: --out onto an existing file on another, nearly full file system: the user's file was replaced by a
    broken 4 KiB MP4 after the whole sampling."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("needs root to mount a small tmpfs (another file system than the temporary folder)")
    try:
        out = disk / ("beach" + generate.TINY_LABEL + ".mp4")    # where --tiny --out beach.mp4 writes: exists already
        out.write_bytes(b"the user's earlier video")              # one page: freed if the file were truncated
        before = out.read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * free)               # the disk is full
        p = run("--tiny", "--image", START, "--prompt", "x", "--out", str(disk / "beach.mp4"), *SMALL)
        err = p.stderr.strip()
        assert p.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
        assert "free" in err and str(disk) in err, err
        assert out.read_bytes() == before
        assert sorted(os.listdir(disk)) == [out.name, "filler"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A runnable tiny checkpoint and the same with one NaN weight, outside every model folder."""
    from safetensors.torch import save_file

    from comfyui_dynamicrafter.model.tiny import full_checkpoint, variant_metadata

    d = tmp_path_factory.mktemp("ckpts")
    sd = full_checkpoint("512", seed=10)
    save_file(sd, str(d / "mine.safetensors"), metadata=variant_metadata("512"))
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("nan")
    save_file(sd, str(d / "mine_nan.safetensors"), metadata=variant_metadata("512"))
    yield d, key
    shutil.rmtree(d, ignore_errors=True)


def test_ckpt_as_an_absolute_path_runs_and_nan_weights_are_refused(tiny_files, tmp_path):
    """Finding 6: `--ckpt /absolute/path` was printed and then called "not found"; finding 4: NaN weights gave a
    black video and exit 0."""
    d, key = tiny_files
    out = tmp_path / "o.mp4"
    p = run("--ckpt", str(d / "mine.safetensors"), "--image", START, "--prompt", "x", "--out", str(out), *SMALL)
    assert p.returncode == 0 and out.exists(), p.stderr[-2000:]
    out2 = tmp_path / "nan.mp4"
    p = run("--ckpt", str(d / "mine_nan.safetensors"), "--image", START, "--prompt", "x", "--out", str(out2), *SMALL)
    err = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and key[len("model.diffusion_model."):] in err and "1 NaN" in err, p.stderr[-2000:]
    # the only tracebacks allowed are the host's own, for built-in nodes it cannot import (v0.8.0 without torchaudio)
    tracebacks = p.stderr.split("Traceback (most recent call last):")[1:]
    assert [t for t in tracebacks if "load_custom_node" not in t] == [] and not out2.exists(), p.stderr[-2000:]
    p = run("--ckpt", str(d / "missing.safetensors"), "--image", START, "--prompt", "x", "--out", str(out2), *SMALL)
    one_line_refusal(p, "--ckpt", "is not a file")


def test_truncated_workflow_file_is_one_line(tmp_path, monkeypatch):
    """Finding 6: a truncated workflow JSON gave a JSONDecodeError traceback."""
    with open(generate.WORKFLOWS["image_to_video"], encoding="utf-8") as f:
        text = f.read()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2], encoding="utf-8")
    monkeypatch.setitem(generate.WORKFLOWS, "image_to_video", str(cut))
    with pytest.raises(generate.UserError) as e:
        generate.load_workflow("image_to_video")
    msg = str(e.value)
    assert "not a readable JSON graph" in msg and "restore the file" in msg and "\n" not in msg

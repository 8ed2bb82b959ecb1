"""Issue 14 at the converter CLI (convert.py, a subprocess): NaN/Inf weights are refused naming the tensor instead
of being copied; a read-only or full destination gets one line and exit 2, with the existing file untouched and no
partial file. Real tiny safetensors (model/tiny.py), a real small tmpfs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.tiny import unet_and_p, variant_metadata

REPO = Path(__file__).resolve().parents[2]


def convert(*args):
    return subprocess.run([sys.executable, str(REPO / "convert.py"), "convert", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def one_line(p, *needles):
    err = p.stderr.strip()
    assert p.returncode == 2, (p.returncode, p.stdout[-1000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert_src")
    sd = unet_and_p("512", seed=4)
    good = d / "tiny.safetensors"
    save_file(sd, str(good), metadata=variant_metadata("512"))
    key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    sd[key] = sd[key].clone()
    sd[key].view(-1)[3] = float("nan")
    bad = d / "tiny_nan.safetensors"
    save_file(sd, str(bad), metadata=variant_metadata("512"))
    sd = unet_and_p("512", seed=4)
    key2 = "model.diffusion_model.out.2.weight"
    sd[key2] = sd[key2].clone()
    sd[key2].view(-1)[0] = 1e6                                   # finite in fp32, +Inf in fp16
    big = d / "tiny_big.safetensors"
    save_file(sd, str(big), metadata=variant_metadata("512"))
    return {"good": good, "nan": bad, "big": big, "key": key, "key2": key2}


def test_nan_weights_refused_not_copied(tiny_src, tmp_path):
    dst = tmp_path / "out.safetensors"
    p = convert(tiny_src["nan"], dst)
    one_line(p, "tiny_nan.safetensors", tiny_src["key"], "1 NaN")
    assert os.listdir(tmp_path) == []
    p = convert(tiny_src["big"], dst)                              # overflow of the fp16 cast is caught too
    one_line(p, tiny_src["key2"], "+Inf", "--dtype fp32 or bf16")
    assert os.listdir(tmp_path) == []
    p = convert(tiny_src["big"], dst, "--dtype", "fp32")
    assert p.returncode == 0, p.stderr


def _mount(path, opts):
    path.mkdir(exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_full_or_read_only_destination_one_line_file_untouched(tiny_src, tmp_path):
    disk = tmp_path / "disk"
    if not _mount(disk, "size=64k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        dst = disk / "dynamicrafter_512.safetensors"
        dst.write_bytes(b"the user's earlier file")
        p = convert(tiny_src["good"], dst, "--overwrite")
        one_line(p, "convert destination", "free", "free some space")
        assert dst.read_bytes() == b"the user's earlier file" and os.listdir(disk) == [dst.name]
        subprocess.run(["mount", "-o", "remount,ro,size=64m", str(disk)], check=True, timeout=20)
        p = convert(tiny_src["good"], dst, "--overwrite")
        one_line(p, "convert destination", "read-only", "(the existing file is unchanged)")
        assert dst.read_bytes() == b"the user's earlier file" and os.listdir(disk) == [dst.name]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)


def test_random_bytes_and_renamed_pickle_get_the_right_line(tmp_path):
    """Finding 6: random bytes named .ckpt were reported as a code-running pickle; a PyTorch file named .safetensors
    gave a raw SafetensorError traceback."""
    import torch

    rnd = tmp_path / "model.ckpt"
    rnd.write_bytes(bytes(range(7, 256)) * 40)
    p = subprocess.run([sys.executable, str(REPO / "convert.py"), "inspect", str(rnd)], capture_output=True,
                       text=True, timeout=120)
    err = one_line(p, "model.ckpt", "none of them (first bytes 07 08 09", "nothing was unpickled")
    assert "run code" not in err
    renamed = tmp_path / "weights.safetensors"
    torch.save({"state_dict": {"a": torch.zeros(2)}}, renamed)
    p = subprocess.run([sys.executable, str(REPO / "convert.py"), "inspect", str(renamed)], capture_output=True,
                       text=True, timeout=120)
    one_line(p, "weights.safetensors", "not a DynamiCrafter model")

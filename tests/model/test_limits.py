"""Bounded inputs (model/limits.py): image files are refused from their header (size, 16-bit greyscale) before any
pixel is decoded, and a requested run is compared with a lower bound of the memory it needs. Real files."""
from __future__ import annotations

import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from comfyui_dynamicrafter.model import limits
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.variants import get_variant


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_big_png(path, width: int, height: int) -> int:
    """A valid 8-bit greyscale PNG of width x height (all black), compressed row by row: a small file."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_bomb_png_refused_from_header_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    size = write_big_png(path, 10000, 10000)
    assert size < 400_000  # the finding's file: ~300 KB
    before = _max_rss_mb()
    with pytest.raises(DynamiCrafterInputError) as e:
        limits.check_image_file(str(path), "--image")
    msg = str(e.value)
    assert msg.startswith("--image: expected at most 50000000 pixels (setting DYNAMICRAFTER_MAX_IMAGE_PIXELS)")
    assert "10000x10000 = 100000000 pixels, 1.1 GiB as float32" in msg and "\n" not in msg
    assert _max_rss_mb() - before < 50  # nothing was decoded


def test_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 80)).save(path)
    assert limits.check_image_file(str(path)).pixels == 8000
    monkeypatch.setenv(limits.MAX_PIXELS_ENV, "5000")
    with pytest.raises(DynamiCrafterInputError, match="at most 5000 pixels"):
        limits.check_image_file(str(path))
    monkeypatch.setenv(limits.MAX_PIXELS_ENV, "lots")
    with pytest.raises(DynamiCrafterInputError, match="^DYNAMICRAFTER_MAX_IMAGE_PIXELS: expected a positive"):
        limits.check_image_file(str(path))


def test_frames_count_toward_the_limit(tmp_path):
    path = tmp_path / "anim.gif"
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)) for _ in range(6)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    hdr = limits.check_image_file(str(path))
    assert (hdr.width, hdr.height, hdr.frames, hdr.pixels) == (50, 40, 6, 12000)
    with pytest.raises(DynamiCrafterInputError, match="50x40 x 6 frames = 12000 pixels"):
        limits.check_image_file(str(path), max_pixels=10000)


def test_16bit_greyscale_png_refused_16bit_rgb_passes(tmp_path):
    grey = tmp_path / "grey16.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(grey)
    with pytest.raises(DynamiCrafterInputError) as e:
        limits.check_image_file(str(grey), "start_image")
    assert "16-bit greyscale (PNG mode I;16), which ComfyUI's LoadImage clips to white" in str(e.value)
    assert limits.check_image_file(str(grey), host_load_image=False).bit_depth == 16
    # the host's own conversion really whitens it (what the refusal protects against)
    with Image.open(grey) as im:
        assert np.array(im.convert("RGB")).mean() > 250
    rgb = tmp_path / "rgb16.png"
    arr = np.random.default_rng(0).integers(0, 65535, (16, 16, 3)).astype(">u2")
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(16))
    rgb.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0))
                    + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    hdr = limits.check_image_file(str(rgb))
    assert (hdr.mode, hdr.bit_depth) == ("RGB", 16)


def test_not_an_image_one_line(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"not an image at all" * 10)
    with pytest.raises(DynamiCrafterInputError) as e:
        limits.check_image_file(str(path), "--image")
    assert str(e.value).startswith("--image: expected an image file") and "\n" not in str(e.value)
    with pytest.raises(DynamiCrafterInputError, match="expected a readable image file"):
        limits.check_image_file(str(tmp_path / "missing.png"), "--image")


def test_memory_estimate_refuses_the_8192_run_and_passes_normal_ones():
    tiny = get_variant("512", tiny=True).unet
    gib = limits.GIB
    small = limits.estimate_run_bytes(tiny, 64, 64, 2)
    assert sum(small.values()) < 16 << 20
    limits.check_run_memory(small, 24 * gib, "available RAM", "64x64 x 2 frames")
    huge = limits.estimate_run_bytes(tiny, 8192, 8192, 2)
    with pytest.raises(DynamiCrafterInputError) as e:
        limits.check_run_memory(huge, 24 * gib, "available RAM", "8192x8192 x 2 frames")
    msg = str(e.value)
    assert msg.startswith("width/height/frames: expected a run that fits in 24.0 GiB of available RAM, "
                          "found 8192x8192 x 2 frames needs at least") and "VAE decode" in msg
    # the real 512 model at its own size fits in the published 12.8 GB (reference, A100) with room to spare
    real = limits.estimate_run_bytes(get_variant("512").unet, 512, 320, 16, dtype_bytes=2)
    assert 0.5 * gib < sum(real.values()) < 6 * gib
    with pytest.raises(DynamiCrafterInputError, match="multiples of 8"):
        limits.estimate_run_bytes(tiny, 100, 64, 2)


def test_memory_check_can_be_switched_off(monkeypatch):
    huge = limits.estimate_run_bytes(get_variant("512", tiny=True).unet, 8192, 8192, 2)
    monkeypatch.setenv(limits.MEMORY_CHECK_ENV, "0")
    assert limits.check_run_memory(huge, 1, "available RAM", "x") == sum(huge.values())


def test_available_memory_reports_ram():
    have, label = limits.available_memory("cpu")
    assert label == "available RAM" and have > 100 << 20

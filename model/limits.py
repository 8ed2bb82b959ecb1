"""Bounded inputs: an image file's size is read from its header before anything decodes it, and a requested run
(width, height, frames) is compared with the memory it needs at least before a model loads.

Why a limit of our own: the host's LoadImage decodes every frame of a file at full size into float32 (12 bytes per
pixel, then a resize), so a 300 KB PNG of 10000x10000 px costs gigabytes before any node can look at it. PIL's
decompression-bomb check only warns up to 179 M pixels. The limit is a setting (environment variable
``DYNAMICRAFTER_MAX_IMAGE_PIXELS``), and the refusal says so.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import warnings
from typing import Dict, Optional, Tuple

from .errors import DynamiCrafterInputError

MAX_FRAMES = 256   # the longest video, windows and keyframe chains included (model/windows.py, model/plan.py)

# Ranges of the numbers a run takes, host-free: the nodes declare their widgets with them and generate.py checks
# its arguments against them before a host starts.
RANGES = {
    "width": (0, 8192), "height": (0, 8192), "frames": (2, MAX_FRAMES), "motion": (0, 60), "steps": (1, 1000),
    "cfg": (0.0, 30.0), "eta": (0.0, 1.0), "guidance_rescale": (0.0, 1.0), "fps": (1.0, 120.0), "crf": (0, 51),
    "adapter_strength": (-10.0, 10.0), "sketch_strength": (0.0, 2.0),
}
MAX_PIXELS_ENV = "DYNAMICRAFTER_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # a 48 MP phone photo (8000x6000) passes; decoded as float32 it is 0.6 GB
MEMORY_CHECK_ENV = "DYNAMICRAFTER_MEMORY_CHECK"
GIB = 1 << 30

# PIL modes of 16-bit single-channel images: the host's LoadImage rescales only mode "I", so these reach
# ``convert("RGB")`` unscaled and every value above 255 becomes white (both the 2024-03 and 2025 hosts).
HOST_CLIPPED_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself before its pixels are decoded."""

    path: str
    format: str
    width: int
    height: int
    mode: str
    frames: int
    bit_depth: Optional[int] = None  # PNG only (from IHDR)

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def max_image_pixels() -> int:
    """The pixel limit (width x height x frames) from ``DYNAMICRAFTER_MAX_IMAGE_PIXELS``, else the default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise DynamiCrafterInputError(MAX_PIXELS_ENV, "a positive number of pixels", repr(raw),
                                      f"set it to e.g. {DEFAULT_MAX_PIXELS} or unset it")
    return value


def _png_ihdr(path: str) -> Optional[Tuple[int, int, int, int]]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, or None when not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, ctype


def read_image_header(path: str, what: str = "image") -> ImageHeader:
    """Size, mode and frame count of an image file without decoding its pixels (PIL opens lazily)."""
    from PIL import Image

    try:
        ihdr = _png_ihdr(path)
    except OSError as e:
        raise DynamiCrafterInputError(what, "a readable image file", f"{path} ({e.strerror or e})",
                                      "check the path and its permissions") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (w, h), mode = im.format or "?", im.size, im.mode
                try:
                    frames = int(getattr(im, "n_frames", 1) or 1)
                except (OSError, EOFError, ValueError):  # a damaged animation: the decoder will say more
                    frames = 1
    except Image.DecompressionBombError:
        if ihdr is None:
            raise DynamiCrafterInputError(
                what, f"at most {max_image_pixels()} pixels", f"{path}: over {2 * Image.MAX_IMAGE_PIXELS} pixels",
                "scale the picture down (the video is at most 1024 px wide anyway)") from None
        fmt, (w, h), mode, frames = "PNG", ihdr[:2], "?", 1
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DynamiCrafterInputError(what, "an image file (PNG, JPEG, WebP, ...)",
                                      f"{path}: not a readable image ({type(e).__name__}: {e})".replace("\n", " "),
                                      "pick an image file; PIL cannot read this one") from None
    return ImageHeader(path=path, format=fmt, width=int(w), height=int(h), mode=mode, frames=frames,
                       bit_depth=ihdr[2] if ihdr else None)


def decode_image_file(path: str, what: str = "image") -> None:
    """Decode every frame of an image file (what the host's LoadImage will do): a truncated or damaged file is one
    line naming it. Call only after the header's size was bounded (check_image_file does both)."""
    from PIL import Image, ImageSequence

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                for frame in ImageSequence.Iterator(im):
                    frame.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DynamiCrafterInputError(what, "an image file that decodes to its end",
                                      f"{path}: {type(e).__name__}: {e}".replace("\n", " "),
                                      "the file is truncated or damaged; save or download it again") from None


def check_image_file(path: str, what: str = "image", max_pixels: Optional[int] = None,
                     host_load_image: bool = True) -> ImageHeader:
    """The one image-file check: the header's size bounded (pixels x frames over the limit are refused before any
    pixel is decoded), a 16-bit greyscale PNG refused when the host's LoadImage will read it (it clips such files to
    white), then every frame decoded, so a truncated file is refused before the host starts."""
    hdr = read_image_header(path, what)
    limit = max_pixels if max_pixels is not None else max_image_pixels()
    if hdr.pixels > limit:
        frames = f" x {hdr.frames} frames" if hdr.frames > 1 else ""
        decoded = hdr.pixels * 12 / GIB
        raise DynamiCrafterInputError(
            what, f"at most {limit} pixels (setting {MAX_PIXELS_ENV})",
            f"{os.path.basename(path)} of {hdr.width}x{hdr.height}{frames} = {hdr.pixels} pixels, "
            f"{decoded:.1f} GiB as float32 before any resize",
            "scale the picture down (the video is at most 1024 px wide), or raise the setting",
        )
    if host_load_image and hdr.mode in HOST_CLIPPED_MODES:
        raise DynamiCrafterInputError(
            what, "an 8-bit image (or 16-bit RGB)",
            f"{os.path.basename(path)} is 16-bit greyscale ({hdr.format} mode {hdr.mode}), which ComfyUI's "
            "LoadImage clips to white",
            "save it as an 8-bit PNG or JPEG first (e.g. with any image editor, or PIL: "
            "im.point(lambda v: v / 257).convert('L'))",
        )
    decode_image_file(path, what)
    return hdr


# ----------------------------------------------------------------------------------------------------------------
# memory needed by a run, checked before a model loads
# ----------------------------------------------------------------------------------------------------------------
def estimate_run_bytes(unet_cfg, width: int, height: int, frames: int, branches: int = 3, dtype_bytes: int = 4,
                       vae_frames: int = 1, weights_bytes: int = 0) -> Dict[str, int]:
    """A lower bound of the memory a run needs, by part (bytes).

    - UNet: the skip connections kept until the decoder half, plus the level-0 transformer's GEGLU feed-forward
      (input + 8x channels), for ``branches`` guidance branches x ``frames`` rows;
    - VAE decode: three 128-channel tensors at full resolution per decoded frame (the decoder's last up block);
    - frames out: the decoded video as float32 RGB.
    """
    if width % 8 or height % 8:
        raise DynamiCrafterInputError("width/height", "multiples of 8", f"{width}x{height}",
                                      "round the size to a multiple of 8")
    tokens = (height // 8) * (width // 8)
    mc = unet_cfg.model_channels
    skips = mc * tokens                                                   # conv_in
    ds = 1
    for level, mult in enumerate(unet_cfg.channel_mult):
        ch = mc * mult
        skips += unet_cfg.num_res_blocks * ch * tokens // (ds * ds)
        if level != len(unet_cfg.channel_mult) - 1:
            ds *= 2
            skips += ch * tokens // (ds * ds)                             # downsample
    working = 9 * mc * tokens                                              # x + GEGLU projection (8 x channels)
    rows = branches * frames
    unet = rows * (skips + working) * dtype_bytes
    vae = vae_frames * 3 * 128 * width * height * dtype_bytes
    out = frames * width * height * 3 * 4
    return {"unet activations": unet, "VAE decode": vae, "frames": out, "weights": int(weights_bytes)}


def available_memory(device) -> Tuple[int, str]:
    """(bytes a run may use, label): a GPU's total memory (the host can offload weights, never activations), or the
    RAM the system reports available."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(dev).total_memory
        return int(total), f"{torch.cuda.get_device_name(dev)} memory"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "available RAM"
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    return 1 << 62, "memory (unknown)"


def check_run_memory(parts: Dict[str, int], available: int, label: str, request: str, what: str = "width/height/frames"
                     ) -> int:
    """Refuse a run whose lower-bound estimate exceeds ``available`` (skipped when DYNAMICRAFTER_MEMORY_CHECK=0)."""
    need = sum(parts.values())
    if os.environ.get(MEMORY_CHECK_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return need
    if need > available:
        big = max(parts, key=parts.get)
        raise DynamiCrafterInputError(
            what, f"a run that fits in {available / GIB:.1f} GiB of {label}",
            f"{request} needs at least {need / GIB:.1f} GiB ({big} {parts[big] / GIB:.1f} GiB)",
            f"use a smaller size or fewer frames (or set {MEMORY_CHECK_ENV}=0 to try anyway)",
        )
    return need

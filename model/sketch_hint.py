"""Sketch hints for ToonCrafter's sketch encoder: the reference preprocessing, frame indices and per-frame masks.

Preprocessing (reference ``scripts/gradio/i2v_test_application.py``, fixtures ``sketch_preprocess``): uint8 frame ->
grayscale with OpenCV's fixed-point BGR formula ``(1868 B + 9617 G + 4899 R + 8192) >> 14`` -> ``255 - gray`` (lines
bright, background 0) -> /255 -> torchvision 0.15 ``Resize(min(h, w))`` (short side, long side truncated, bilinear,
no antialias, skipped when the size is unchanged) -> ``CenterCrop((h, w))`` (zero padding first where the image is
smaller; ``round`` half to even). Hints are in [0, 1] at pixel size (8x the latent).

Sparse sketches: a sketch belongs to a frame index of the whole video; frames without one get no residual (mask 0),
so such a frame is exactly the unguided model there.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .errors import DynamiCrafterInputError

GRAY_WEIGHTS_BGR = (1868, 9617, 4899)                                      # OpenCV COLOR_BGR2GRAY, Q14


def gray_u8(rgb_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] **RGB** -> uint8 [..., H, W] as ``cv2.cvtColor(bgr, COLOR_BGR2GRAY)`` computes it."""
    c = rgb_u8.to(torch.int32)
    wb, wg, wr = GRAY_WEIGHTS_BGR
    return ((wb * c[..., 2] + wg * c[..., 1] + wr * c[..., 0] + 8192) >> 14).to(torch.uint8)


def resized_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """torchvision 0.15 ``Resize(int)``: the short side becomes ``size``, the long one ``int(size * long / short)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def center_crop(x: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """torchvision ``CenterCrop`` on [..., H, W]: zero padding (left, top, right, bottom) where smaller, then crop."""
    h, w = x.shape[-2:]
    pad = ((width - w) // 2 if width > w else 0, (height - h) // 2 if height > h else 0,
           (width - w + 1) // 2 if width > w else 0, (height - h + 1) // 2 if height > h else 0)
    if any(pad):
        x = F.pad(x, (pad[0], pad[2], pad[1], pad[3]), value=0.0)             # F.pad: (left, right, top, bottom)
        h, w = x.shape[-2:]
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return x[..., top:top + height, left:left + width], pad


def hint_from_gray(gray: torch.Tensor, height: int, width: int, invert: bool = True) -> torch.Tensor:
    """uint8 [H, W] grayscale -> float32 hint [1, height, width] in [0, 1] (the reference steps 2-5)."""
    x = ((255 - gray) if invert else gray).float()[None] / 255.0           # [1, H, W]
    size = resized_size(x.shape[-2], x.shape[-1], min(height, width))
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    return center_crop(x, height, width)[0]


def sketch_hints(images: torch.Tensor, height: int, width: int, invert: bool = True) -> torch.Tensor:
    """Host IMAGE [N, H, W, C] in [0, 1] (RGB, or 1 channel) -> hints [N, 1, height, width].

    Values are quantised to uint8 as the reference reads frames; ``invert`` False takes images that are already line
    maps (bright lines on black) and skips the inversion."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        found = f"shape {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DynamiCrafterInputError("sketches", "an IMAGE batch [N, H, W, 3]", found, "connect a LoadImage IMAGE")
    u8 = (images.float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    gray = u8[..., 0] if u8.shape[-1] == 1 else gray_u8(u8[..., :3])
    return torch.stack([hint_from_gray(g, height, width, invert) for g in gray])


def aspect_note(src_hw: Tuple[int, int], height: int, width: int) -> str:
    """'' when the sketch has the video's aspect; else a line saying where it is padded or cropped."""
    if src_hw[0] * width == src_hw[1] * height:
        return ""
    rh, rw = resized_size(src_hw[0], src_hw[1], min(height, width))
    how = [w for cond, w in ((rh < height, "padded with empty space at the top and bottom"),
                             (rw < width, "padded with empty space left and right"),
                             (rh > height, "cropped at the top and bottom"),
                             (rw > width, "cropped at the left and right")) if cond]
    return (f"sketch of {src_hw[1]}x{src_hw[0]} px for a {width}x{height} video: scaled to {rw}x{rh} and "
            f"{' and '.join(how)}, as the reference does; draw sketches at the video's aspect to use the whole frame")


def parse_frame_indices(text: str, frames: int) -> List[int]:
    """``"0, 7, 15"`` -> [0, 7, 15]; ``"all"`` or ``""`` -> every frame. Refuses out-of-range and repeated indices."""
    spec = (text or "").strip().lower()
    if spec in ("", "all"):
        return list(range(frames))
    parts = [p for p in re.split(r"[\s,;]+", spec) if p]
    if not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise DynamiCrafterInputError("frame_indices", "frame numbers separated by commas (e.g. '0, 8, 15') or "
                                      "'all'", repr(text), "write only whole numbers")
    idx = [int(p) for p in parts]
    bad = [i for i in idx if not 0 <= i < frames]
    if bad:
        raise DynamiCrafterInputError("frame_indices", f"frame indices 0..{frames - 1} (the video has {frames} "
                                      "frames)", f"{bad}", "use indices of frames the video has")
    dup = sorted({i for i in idx if idx.count(i) > 1})
    if dup:
        raise DynamiCrafterInputError("frame_indices", "each frame once", f"{dup} more than once",
                                      "give one sketch per frame")
    return idx


def check_sketch_count(count: int, indices: Sequence[int]) -> None:
    """One sketch per frame index, in order: refuses fewer sketches than indices, and more (none is ignored)."""
    if count != len(indices):
        todo = "add sketches or remove frame indices" if count < len(indices) else \
            "remove sketches or add their frame indices"
        raise DynamiCrafterInputError("sketches", f"one sketch per frame index ({len(indices)} indices)",
                                      f"{count} sketch image(s)", todo)


def frame_mask(indices: Sequence[int], frames: int) -> torch.Tensor:
    """float32 [frames]: 1 where a frame has a sketch, 0 elsewhere."""
    m = torch.zeros(frames)
    m[list(indices)] = 1.0
    return m

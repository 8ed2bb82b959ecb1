"""What the UNet is conditioned on besides text: the CLIP image preprocessing and the concat latent.

One definition each, used by the nodes (inference) and the trainer alike, so both prepare an image and lay out the
concat channels the same way. Facts from ``shared/fixtures/README.md`` (section "Embedder" and "c_concat").
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .log import logger

CLIP_SIZE = 224
# OpenAI CLIP normalisation (open_clip's OPENAI_DATASET_MEAN / _STD), used by the OpenCLIP ViT-H/14 image tower.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """Reference `FrozenOpenCLIPImageEmbedderV2.preprocess`: [B, 3, H, W] in [-1, 1] -> [B, 3, size, size] float32,
    squashed (not cropped) by kornia's antialiased bicubic align_corners resize, then (x+1)/2 and CLIP mean/std."""
    x = images.float()                                                     # [B, 3, H, W] in [-1, 1]
    if tuple(x.shape[-2:]) != (size, size):
        try:
            from kornia.geometry.transform import resize
            x = resize(x, (size, size), interpolation="bicubic", align_corners=True, antialias=True)
        except ImportError:  # pragma: no cover - requirements.txt and every ComfyUI host require kornia
            logger.warning("kornia missing: torch bicubic resize instead of the reference's kornia resize")
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True, antialias=True)
    x = (x + 1.0) / 2.0                                                    # [B, 3, size, size] in [0, 1]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def concat_latent(first: torch.Tensor, frames: int, last: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reference c_concat: first [B, C, h, w] (and last) -> [B, C, T, h, w]. Image-to-video: the first latent on every
    frame (a broadcast view); interpolation/loop: frame 0 = first, frame T-1 = last, zeros between."""
    b, c, h, w = first.shape
    if last is None:
        return first[:, :, None].expand(b, c, frames, h, w)               # [B, C, T, h, w]
    out = first.new_zeros((b, c, frames, h, w))                            # [B, C, T, h, w]
    out[:, :, 0] = first
    out[:, :, -1] = last
    return out

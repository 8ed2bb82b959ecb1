"""Cast-on-use layers (benchmark only): weights stored in one dtype (bf16, fp16, fp8), computed in the input's dtype.

``cast_operations`` is an ``operations`` namespace for ``UNetModel`` / ``Resampler`` / ``AutoencoderKL`` (the same
hook a host uses for its own manual-cast ops). Each layer casts its weight and bias to the input's dtype and device
in ``forward``; nothing else changes, so with storage dtype == compute dtype it is the plain layer.

``store_weights_`` converts an already built and loaded model's weights to the storage dtype in place. fp8
(``float8_e4m3fn`` / ``float8_e5m2``) keeps one float32 scale per output channel (max |w| of the row -> the format's
max) as a non-persistent attribute, so small rows keep their precision; state-dict keys are unchanged. Biases and norm
parameters stay in the compute dtype when the storage dtype is fp8 (they are a rounding error of the size).

Inside ComfyUI the host's own manual-cast ops play this part; the benchmark uses these to measure storage dtypes
without a host. A (k,1,1) Conv3d runs as the UNet's ``temporal_conv2d``, as a plain Conv3d does in the UNet.
"""
from __future__ import annotations

import types
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model import dtypes
from ..model.unet import temporal_conv2d

FP8_DTYPES = tuple(dtypes.FP8_DTYPES.values())


def _cast(t: Optional[torch.Tensor], like: torch.Tensor, scale=None) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.dtype != like.dtype or t.device != like.device:
        t = t.to(device=like.device, dtype=like.dtype, non_blocking=True)
        if scale is not None:
            t = t * scale.to(like.dtype)
    return t


class CastWeights:
    """Mixin: ``_wb(x)`` returns weight and bias cast to x's dtype/device (fp8 weights de-scaled)."""

    weight_scale: Optional[torch.Tensor] = None

    def _wb(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return _cast(self.weight, x, self.weight_scale), _cast(self.bias, x)


class Linear(CastWeights, nn.Linear):
    def forward(self, x):
        w, b = self._wb(x)
        return F.linear(x, w, b)


class Conv1d(CastWeights, nn.Conv1d):
    def forward(self, x):
        w, b = self._wb(x)
        return self._conv_forward(x, w, b)


class Conv2d(CastWeights, nn.Conv2d):
    def forward(self, x):
        w, b = self._wb(x)
        return self._conv_forward(x, w, b)


class Conv3d(CastWeights, nn.Conv3d):
    def forward(self, x):
        w, b = self._wb(x)
        if _is_temporal(self) and x.dim() == 5:
            return temporal_conv2d(x, w, b, self.padding[0])
        return self._conv_forward(x, w, b)


def _is_temporal(conv: nn.Conv3d) -> bool:
    """A (k,1,1) kernel with unit stride/dilation, no groups and no spatial padding: the UNet's temporal convs."""
    return (conv.kernel_size[1:] == (1, 1) and conv.stride == (1, 1, 1) and conv.dilation == (1, 1, 1)
            and conv.groups == 1 and tuple(conv.padding[1:]) == (0, 0) and conv.padding_mode == "zeros")


class GroupNorm(CastWeights, nn.GroupNorm):
    def forward(self, x):
        w, b = self._wb(x)
        return F.group_norm(x, self.num_groups, w, b, self.eps)


class LayerNorm(CastWeights, nn.LayerNorm):
    def forward(self, x):
        w, b = self._wb(x)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


cast_operations = types.SimpleNamespace(Linear=Linear, Conv1d=Conv1d, Conv2d=Conv2d, Conv3d=Conv3d,
                                        GroupNorm=GroupNorm, LayerNorm=LayerNorm)


def store_weights_(model: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Convert the weights of every cast-on-use layer in ``model`` to ``storage_dtype`` in place.

    For fp8, matrix/conv weights get a per-output-channel float32 scale and everything else (biases, norms) is kept in
    ``compute_dtype``. Returns the number of bytes the layers' parameters take afterwards.
    """
    fp8 = storage_dtype in FP8_DTYPES
    fmax = torch.finfo(storage_dtype).max if fp8 else None
    total = 0
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, CastWeights):
                continue
            for name, p in list(m.named_parameters(recurse=False)):
                is_matrix = name == "weight" and p.dim() >= 2
                if fp8 and is_matrix:
                    w = p.data.float()
                    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp(min=1e-12) / fmax
                    p.data = (w / scale).to(storage_dtype).contiguous(memory_format=_fmt(p.data))
                    m.weight_scale = scale
                    del w
                else:
                    p.data = p.data.to(compute_dtype if fp8 else storage_dtype)
                total += p.numel() * p.element_size()
    return total


def _fmt(t: torch.Tensor):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


__all__ = ["cast_operations", "store_weights_", "CastWeights", "FP8_DTYPES"]

"""Benchmark baselines patched onto a built UNet: the A sides of bench A/B runs, each an exact reorganisation of the
product's math (tests/bench/test_variants.py checks every one against the plain model).

- ``explicit_attention``: the reference's non-xformers softmax(QK^T)V, materialised per head;
- ``set_reference_layout``: the reference's per-frame text/image K/V projection, no shared branch prefix;
- ``set_temporal_conv``: the temporal (3,1,1) convs as plain Conv3d instead of the UNet's Conv2d form;
- ``set_inplace``: residual sums and activations into new buffers instead of in place;
- ``set_attention``: swap the attention kernel of every attention layer.
The product (model/unet.py) keeps the fastest of each, hard-wired.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

from ..model import attention, unet
from . import ops


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The reference's non-xformers path: softmax(QK^T * d^-0.5) materialised per head, then times V."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2).reshape(t.shape[0] * heads, t.shape[1], d)
               for t in (q, k, v))                                         # [(B h), N, d]
    sim = torch.bmm(q, k.transpose(1, 2)) * (d ** -0.5)                    # [(B h), N, L]
    out = torch.bmm(sim.softmax(dim=-1), v)                                # [(B h), N, d]
    return out.reshape(b, heads, n, d).transpose(1, 2).reshape(b, n, inner)


ATTENTION_FUNCTIONS: Dict[str, Callable] = {"sdpa": attention.sdpa_attention, "explicit": explicit_attention}


def set_attention(model: nn.Module, kernel: Callable) -> None:
    """Swap the attention kernel in every attention layer of a built model."""
    for m in model.modules():
        if isinstance(m, attention.CrossAttention):
            m.attention = kernel


# ---- reference layout ----------------------------------------------------------------------------------------------
class PerFrameCrossAttention(attention.CrossAttention):
    """The reference's layout: a context shared by the frames is repeated to every frame and projected per frame."""

    def _shared(self, q, ctx, which, kv_src, to_k, to_v):
        bt, b = q.shape[0], kv_src.shape[0]
        k, v = self._kv(ctx, which, kv_src.repeat_interleave(bt // b, dim=0), to_k, to_v)  # [(b t), L, inner]
        return self.attention(q, k, v, self.heads)


def set_reference_layout(model: unet.UNetModel, on: bool = True) -> None:
    """The reference's per-frame text/image K/V projection and no shared branch prefix (``on``), or the product's."""
    for m in model.modules():
        if isinstance(m, attention.CrossAttention):
            m.__class__ = PerFrameCrossAttention if on else attention.CrossAttention
    model.share_branch_prefix = not on


# ---- temporal convs as Conv3d ----------------------------------------------------------------------------------------
class PlainConv3d(nn.Conv3d):
    """nn.Conv3d's own kernel (its forward is not nn.Conv3d.forward, so the UNet calls it as it is)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias)


class PlainCastConv3d(ops.Conv3d):
    """Cast-on-use Conv3d with the plain Conv3d kernel."""

    def forward(self, x):
        w, b = self._wb(x)
        return self._conv_forward(x, w, b)


_AS_CONV3D = {nn.Conv3d: PlainConv3d, ops.Conv3d: PlainCastConv3d}
_AS_PRODUCT = {v: k for k, v in _AS_CONV3D.items()}


def set_temporal_conv(model: nn.Module, kind: str = "conv2d") -> None:
    """Temporal (3,1,1) convs as the UNet's Conv2d over (t, h*w) (``conv2d``, the product) or plain ``conv3d``."""
    table = _AS_CONV3D if kind == "conv3d" else _AS_PRODUCT
    for m in model.modules():
        if isinstance(m, unet.TemporalConvBlock):
            for seq in (m.conv1, m.conv2, m.conv3, m.conv4):
                conv = seq[-1]
                conv.__class__ = table.get(type(conv), type(conv))


# ---- in-place inference ------------------------------------------------------------------------------------------------
_PRODUCT_INPLACE = attention.inplace_ok


def _never_inplace(t: torch.Tensor) -> bool:
    return False


def set_inplace(on: bool = True) -> None:
    """In-place residual sums / activations at inference (the product) or new buffers everywhere (process-wide)."""
    attention.inplace_ok = _PRODUCT_INPLACE if on else _never_inplace

"""The temporal and reference building blocks of ToonCrafter's video decoder (model/tooncrafter.py holds the decoder,
the dual-reference autoencoder and the video encode/decode): GroupNorm over a chunk from per-frame statistics,
``TimeStack`` / ``VideoResBlock`` (the SD ResnetBlock plus the (3,1,1) temporal stack, mixed by ``mix_factor``),
``Combiner`` and ``Fusion`` (the first/last reference features), and the RGB ``time_mix_conv`` of ``conv_out``.
Keys and numerics are the reference ``AutoencoderKL_Dualref``'s (see model/tooncrafter.py's docstring).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .vae import ResnetBlock, _silu

HEADS, DIM_HEAD = 8, 64                                                    # hard-coded in the reference fusion


def _taps(taps: Optional[dict], name: str, t: torch.Tensor) -> None:
    if taps is not None:
        taps[name] = t.detach().clone()


# =================================================================================================================
# GroupNorm over a whole chunk from per-frame statistics (exact: Chan's parallel variance)
# =================================================================================================================
def _frame_stats(y: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[m, C, H, W] -> per frame and group (mean, biased var), float64 [m, G].

    Two fast passes instead of ``var_mean`` (whose Welford kernel is ~15x slower on CPU): float32 sums and norms over
    rows of W, then float64 over the rows (relative error ~1e-8 on both moments), var = E[y^2] - mean^2. Groups where
    that would cancel (mean^2 > 1e3 var) are recomputed with ``var_mean``.
    """
    f = y.float().reshape(y.shape[0], groups, -1, y.shape[-1])            # [m, G, C/G*H, W]
    count = f.shape[2] * f.shape[3]
    mean = f.sum(-1).double().sum(-1) / count
    sq = torch.linalg.vector_norm(f, dim=-1).double().square().sum(-1) / count
    var = sq - mean.square()
    bad = mean.square() > 1e3 * var                                       # includes var <= 0
    if bool(bad.any()):
        v, m = torch.var_mean(f[bad].flatten(1), dim=-1, unbiased=False)
        mean[bad], var[bad] = m.double(), v.double()
    return mean, var


def _combine_stats(parts: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (mean, var) of equal-sized frames -> the chunk's (mean, var) per group, float64 [G]."""
    means = torch.cat([p[0] for p in parts])
    var = torch.cat([p[1] for p in parts]).mean(0) + (means - means.mean(0)).square().mean(0)
    return means.mean(0), var


def _norm_affine(norm: nn.GroupNorm, stats, c: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm with given statistics as a per-channel float32 (scale, shift) [C, 1, 1], folded in float64."""
    mean, var = stats
    g = norm.num_groups
    scale = (var + norm.eps).rsqrt().repeat_interleave(c // g)             # [C] float64
    scale = scale * norm.weight.double() if norm.weight is not None else scale
    shift = -mean.repeat_interleave(c // g) * scale
    shift = shift + norm.bias.double() if norm.bias is not None else shift
    return scale.float().view(c, 1, 1), shift.float().view(c, 1, 1)


def _norm_silu_into(affine, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = silu(scale * src + shift), computed in float32 like the reference's GroupNormSpecific (``out`` may be
    ``src``)."""
    scale, shift = affine
    if out.dtype == torch.float32:
        return F.silu(torch.addcmul(shift, src, scale, out=out), inplace=True)
    return out.copy_(F.silu(torch.addcmul(shift, src.float(), scale), inplace=True))


# =================================================================================================================
# Blocks
# =================================================================================================================
class TimeStack(nn.Module):
    """The reference's temporal ResBlock (dims=3, no embedding): x + conv(silu(gn(conv(silu(gn(x)))))), (3,1,1)."""

    def __init__(self, ops, ch, dropout=0.0, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        conv3d = getattr(ops, "Conv3d", nn.Conv3d)
        self.in_layers = nn.Sequential(ops.GroupNorm(32, ch, eps=1e-5, **kw), nn.SiLU(),
                                       conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0), **kw))
        self.out_layers = nn.Sequential(ops.GroupNorm(32, ch, eps=1e-5, **kw), nn.SiLU(), nn.Dropout(dropout),
                                        conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0), **kw))

    @staticmethod
    def _gn_silu(norm, x):
        return _silu(norm(x.float()).to(x.dtype))

    def forward(self, x5):                                                 # [b, C, T, H, W] -> same
        h = self.in_layers[2](self._gn_silu(self.in_layers[0], x5))
        h = self.out_layers[3](self._gn_silu(self.out_layers[0], h))
        return x5 + h


class _Activations:
    """silu(norm(frame k)) of a chunk's frames for a (3,1,1) conv: each frame computed once, into one of three
    reused slots (frames are asked for in increasing order, at most two behind the newest), so no full-chunk tensor
    and no fresh allocation per frame. ``source(k, slot)`` returns frame k's input (or writes it into ``slot``)."""

    def __init__(self, norm: nn.GroupNorm, stats, source, like: torch.Tensor):
        self.affine = _norm_affine(norm, stats, like.shape[0])
        self.source, self.slots, self.newest = source, like.new_empty((3,) + tuple(like.shape)), -1

    def __getitem__(self, k: int) -> torch.Tensor:                         # [C, H, W]
        while self.newest < k:
            self.newest += 1
            slot = self.slots[self.newest % 3]
            _norm_silu_into(self.affine, self.source(self.newest, slot), slot)
        if k < self.newest - 2:
            raise RuntimeError(f"frame {k} asked for after frame {self.newest} (internal order error)")
        return self.slots[k % 3]


def _taps_of(conv: nn.Module, like: torch.Tensor):
    """A (3,1,1) Conv3d's weight as three [Cout, Cin] matrices (tap k reads frame t+k-1) and its bias, once per call."""
    w, bias = conv._wb(like) if hasattr(conv, "_wb") else (conv.weight, conv.bias)
    return [w[:, :, k, 0, 0].contiguous() for k in range(3)], bias


def _temporal_frame(taps, act: _Activations, t: int, n: int, out: torch.Tensor) -> torch.Tensor:
    """Frame t of an n-frame (3,1,1) Conv3d with zero time padding into ``out`` [C, H, W]: ``bias + sum_k W_k @
    act[t+k-1]`` as matrix products on frame-major activations (the Conv3d's sums; no 5-D layout or reorder copies).
    ``taps``: from ``_taps_of``."""
    (w0, w1, w2), bias = taps
    nxt = act[t + 1] if t + 1 < n else None                               # advance first: t-1 stays in the slots
    cur = act[t]
    c, hw = cur.shape[0], cur.shape[1] * cur.shape[2]
    o = out.view(w1.shape[0], hw)
    if bias is not None:
        torch.addmm(bias[:, None].expand(-1, hw), w1, cur.view(c, hw), out=o)
    else:
        torch.mm(w1, cur.view(c, hw), out=o)
    if t > 0:
        o.addmm_(w0, act[t - 1].view(c, hw))
    if nxt is not None:
        o.addmm_(w2, nxt.view(c, hw))
    return out


class VideoResBlock(ResnetBlock):
    """SD ResnetBlock (spatial, per frame), then ``time_stack`` over the chunk's frames, blended by
    ``sigmoid(mix_factor)``."""

    def __init__(self, ops, cin, cout, dropout=0.0, dtype=None, device=None):
        super().__init__(ops, cin, cout, dropout, dtype=dtype, device=device)
        self.time_stack = TimeStack(ops, cout, dropout, dtype=dtype, device=device)
        self.mix_factor = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))

    def spatial(self, x):                                                  # [n, cin, H, W] -> [n, cout, H, W]
        return ResnetBlock.forward(self, x)

    def _alpha(self, like):
        return torch.sigmoid(self.mix_factor.to(like.dtype))

    def forward(self, x, timesteps: int, taps=None, name=""):             # [(b t), cin, H, W] -> [(b t), cout, H, W]
        xs = self.spatial(x)
        bt, c, h, w = xs.shape
        x5 = xs.view(bt // timesteps, timesteps, c, h, w).transpose(1, 2)  # [b, C, t, H, W]
        _taps(taps, name + ".time_stack.input", x5)
        t5 = self.time_stack(x5)
        _taps(taps, name + ".time_stack.output", t5)
        a = self._alpha(t5)
        out = a * t5 + (1.0 - a) * x5
        return out.transpose(1, 2).reshape(bt, c, h, w)

    def temporal_(self, buf: torch.Tensor, stats, keep_h1: bool = True) -> torch.Tensor:
        """In place on one chunk's spatial output ``buf`` [n, C, H, W] whose in-norm statistics are ``stats``, frame
        by frame. The first conv's output h1 is needed whole for the out-norm statistics; ``keep_h1`` stores it (one
        more full-chunk tensor), else it is computed twice: once for the statistics, then once more per frame, from
        ``buf`` frames not yet merged, for the second conv."""
        ts, n = self.time_stack, buf.shape[0]
        norm1, conv1, norm2, conv2 = ts.in_layers[0], ts.in_layers[2], ts.out_layers[0], ts.out_layers[3]
        frame = buf[0]
        taps1, taps2 = _taps_of(conv1, frame), _taps_of(conv2, frame)
        act1 = _Activations(norm1, stats, lambda k, slot: buf[k], frame)
        h1 = torch.empty_like(buf) if keep_h1 else None
        scratch, parts = torch.empty_like(frame), []
        for t in range(n):
            y = _temporal_frame(taps1, act1, t, n, h1[t] if keep_h1 else scratch)
            parts.append(_frame_stats(y[None], norm2.num_groups))
        stats2 = _combine_stats(parts)
        if keep_h1:
            act2 = _Activations(norm2, stats2, lambda k, slot: h1[k], frame)
        else:                                                              # h1 frame k again, into act2's slot
            act1 = _Activations(norm1, stats, lambda k, slot: buf[k], frame)
            act2 = _Activations(norm2, stats2, lambda k, slot: _temporal_frame(taps1, act1, k, n, slot), frame)
        alpha = self._alpha(buf)
        for t in range(n):                                                 # buf[t] is read (act1) before merged
            h2 = _temporal_frame(taps2, act2, t, n, scratch)
            buf[t] += h2.mul_(alpha)                                       # a*(x + h2) + (1-a)*x
        return buf


class Combiner(nn.Module):
    """1x1 conv of the first/last reference features, added to the first/last frame of a chunk (sequentially)."""

    def __init__(self, ops, ch, dtype=None, device=None):
        super().__init__()
        self.conv = ops.Conv2d(ch, ch, 1, dtype=dtype, device=device)

    def prepare(self, ref):                                                # [2, C, h, w] (first, last) -> same
        return self.conv(ref)

    def apply(self, x, prep, a: int, b: int, n: int, inplace: bool = False):
        """x: frames a..b-1 [b-a, C, H, W] of an n-frame chunk."""
        if a > 0 and b < n:
            return x
        x = x if inplace else x.clone()
        if a == 0:
            x[0] += prep[0]
        if b == n:
            x[-1] += prep[1]
        return x


class Fusion(nn.Module):
    """Cross-attention of each frame to the first+last reference tokens: 8 heads x 64 (hard-coded), queries from
    GroupNorm(x), keys/values from the raw references, ``x + to_out(attn)``."""

    def __init__(self, ops, ch, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        linear, inner = getattr(ops, "Linear", nn.Linear), HEADS * DIM_HEAD
        self.to_q = linear(ch, inner, bias=False, **kw)
        self.to_k = linear(ch, inner, bias=False, **kw)
        self.to_v = linear(ch, inner, bias=False, **kw)
        self.to_out = nn.Sequential(linear(inner, ch, **kw), nn.Dropout(0.0))
        self.norm = ops.GroupNorm(32, ch, eps=1e-6, affine=True, **kw)

    def prepare(self, ref):                                                # [2, C, h, w] -> k, v [1, 8, 2hw, 64]
        tokens = ref.flatten(2).transpose(1, 2).reshape(1, -1, ref.shape[1])  # first-frame tokens, then last
        return tuple(m(tokens).view(1, -1, HEADS, DIM_HEAD).transpose(1, 2) for m in (self.to_k, self.to_v))

    def apply(self, x, prep, a: int, b: int, n: int, inplace: bool = False):
        m, c, hh, ww = x.shape
        q = self.to_q(self.norm(x).flatten(2).transpose(1, 2))            # [m, HW, 512]
        q = q.view(m, hh * ww, HEADS, DIM_HEAD).transpose(1, 2)            # [m, 8, HW, 64]
        k, v = (t.expand(m, -1, -1, -1) for t in prep)
        out = F.scaled_dot_product_attention(q, k, v)                      # softmax(q k^T / 8) v
        out = self.to_out(out.transpose(1, 2).reshape(m, hh * ww, HEADS * DIM_HEAD))  # [m, HW, C]
        return x + out.transpose(1, 2).reshape(m, c, hh, ww)


class AE3DConv(nn.Conv2d):
    """Conv2d 3x3 to RGB, then ``time_mix_conv`` (Conv3d (3,1,1)) over the chunk's frames."""


def _make_conv_out(ops, cin, cout, dtype=None, device=None):
    conv = ops.Conv2d(cin, cout, 3, padding=1, dtype=dtype, device=device)
    conv.time_mix_conv = getattr(ops, "Conv3d", nn.Conv3d)(cout, cout, (3, 1, 1), padding=(1, 0, 0),
                                                          dtype=dtype, device=device)
    return conv


def _time_mix(conv3d, x, n):                                               # [(b t), 3, H, W] -> same, over t
    x5 = x.view(-1, n, *x.shape[1:]).transpose(1, 2)
    return conv3d(x5).transpose(1, 2).reshape(x.shape)

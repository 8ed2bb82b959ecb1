"""Attention and transformer blocks of the DynamiCrafter UNet (reference `lvdm/modules/attention.py`).

Attention goes through one function ``attention(q, k, v, heads)`` on ``[batch, tokens, heads*dim_head]`` tensors
(PyTorch SDPA by default) so a host can inject its own kernel. Cross-attention has DynamiCrafter's separate image K/V
and projects a context shared by the frames once per sample (the frames' queries attend to it as one longer query
sequence: the same softmax row by row). At inference, residual sums and activations are written in place
(``inplace_ok``), bit for bit the same values.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# CUDA SDPA kernels fail for very large batch*heads; the temporal attention of big frames gets there.
_MAX_SDPA_BATCH = 32768


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) V per head with PyTorch SDPA; tensors are [B, N, heads*d]."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))  # [B, h, N, d]
    if q.is_cuda and b > _MAX_SDPA_BATCH:
        out = torch.cat([F.scaled_dot_product_attention(q[i:i + _MAX_SDPA_BATCH], k[i:i + _MAX_SDPA_BATCH],
                                                        v[i:i + _MAX_SDPA_BATCH])
                         for i in range(0, b, _MAX_SDPA_BATCH)])
    else:
        out = F.scaled_dot_product_attention(q, k, v)                       # [B, h, N, d]
    return out.transpose(1, 2).reshape(b, n, inner)                        # [B, N, h*d]


def inplace_ok(t: torch.Tensor) -> bool:
    """Inference only (no autograd graph): residual sums and activations are written into a fresh result instead of
    a new buffer. Same values bit for bit (IEEE addition and multiplication commute); fewer allocations."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def add_fresh(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """fresh + other, in place on ``fresh`` (a result nobody else holds) when no graph is recorded."""
    if inplace_ok(fresh) and not other.requires_grad and fresh.shape == torch.broadcast_shapes(fresh.shape, other.shape) \
            and fresh.dtype == torch.result_type(fresh, other):
        return fresh.add_(other)
    return fresh + other


# ================================================================================================================
# Attention and transformer blocks
# ================================================================================================================
class GEGLU(nn.Module):
    def __init__(self, ops, dim_in, dim_out, dtype=None, device=None):
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2, dtype=dtype, device=device)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        g = F.gelu(gate)
        return g.mul_(value) if inplace_ok(g) else value * g


class FeedForward(nn.Module):
    """GEGLU feed-forward, inner width 4*dim (keys `net.0.proj`, `net.2`)."""

    def __init__(self, ops, dim, dropout=0.0, dtype=None, device=None):
        super().__init__()
        inner = dim * 4
        self.net = nn.Sequential(GEGLU(ops, dim, inner, dtype, device), nn.Dropout(dropout),
                                 ops.Linear(inner, dim, dtype=dtype, device=device))

    def forward(self, x):
        return self.net(x)


class Context:
    """Cross-attention context for B samples of T frames, split once per UNet call.

    text:  [B, Lt, D] tokens shared by all frames of a sample.
    image: [B*T, Li, D] per-frame image tokens when ``per_frame``, else [B, Li, D] shared by all frames (or None).

    ``kv``: a dict of K/V kept across calls (``UNetModel.context_cache``), or None.
    """

    def __init__(self, text, image, frames: int, per_frame: bool, kv: Optional[dict] = None):
        self.text, self.image, self.frames, self.per_frame, self.kv = text, image, frames, per_frame, kv


class CrossAttention(nn.Module):
    """Attention with DynamiCrafter's separate image K/V (`to_k_ip`, `to_v_ip`) and two softmaxes."""

    def __init__(self, ops, attention, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0,
                 image_cross_attention=False, scale_learnable=False, dtype=None, device=None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.attention = heads, attention
        self.to_q = ops.Linear(query_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_k = ops.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_v = ops.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim, dtype=dtype, device=device), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        self.scale_learnable = scale_learnable
        if image_cross_attention:
            self.to_k_ip = ops.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
            self.to_v_ip = ops.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
            if scale_learnable:
                self.alpha = nn.Parameter(torch.tensor(0.0, dtype=dtype, device=device))

    def _kv(self, ctx: Context, which: str, src, to_k, to_v):
        """K/V of a context part, from ``ctx.kv`` when the same context was projected in an earlier call."""
        store = ctx.kv
        if store is None:
            return to_k(src), to_v(src)
        key = (id(self), which)
        kv = store.get(key)
        if kv is None:
            kv = store[key] = (to_k(src), to_v(src))
        return kv

    def _shared(self, q, ctx: Context, which, kv_src, to_k, to_v):
        # q: [(b t), N, inner]; kv_src: [b, L, D] shared by the t frames -> fold frames into the query sequence.
        bt, n, inner = q.shape
        b = kv_src.shape[0]
        k, v = self._kv(ctx, which, kv_src, to_k, to_v)                    # [b, L, inner] once per sample
        out = self.attention(q.reshape(b, (bt // b) * n, inner), k, v, self.heads)  # [b, t*N, inner]
        return out.reshape(bt, n, inner)                                   # [(b t), N, inner]

    def forward(self, x, context: Optional[Context] = None):
        q = self.to_q(x)                                                   # [(b t), N, inner]
        if context is None:                                                # self-attention
            return self.to_out(self.attention(q, self.to_k(x), self.to_v(x), self.heads))
        out = self._shared(q, context, "text", context.text, self.to_k, self.to_v)
        if self.image_cross_attention and context.image is not None and context.image.shape[1] > 0:
            if context.per_frame:                                          # [(b t), 16, D]: own tokens per frame
                k, v = self._kv(context, "image", context.image, self.to_k_ip, self.to_v_ip)
                out_ip = self.attention(q, k, v, self.heads)
            else:                                                          # [b, L, D] shared by the frames
                out_ip = self._shared(q, context, "image", context.image, self.to_k_ip, self.to_v_ip)
            if self.scale_learnable:
                out_ip = out_ip * (torch.tanh(self.alpha.float()) + 1).to(out_ip.dtype)
            out = out + out_ip
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x) (key order attn1, ff, attn2, norms)."""

    def __init__(self, ops, attention, dim, heads, dim_head, dropout=0.0, context_dim=None,
                 image_cross_attention=False, scale_learnable=False, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.attn1 = CrossAttention(ops, attention, dim, None, heads, dim_head, dropout, **kw)
        self.ff = FeedForward(ops, dim, dropout, **kw)
        self.attn2 = CrossAttention(ops, attention, dim, context_dim, heads, dim_head, dropout,
                                    image_cross_attention, scale_learnable, **kw)
        self.norm1 = ops.LayerNorm(dim, **kw)
        self.norm2 = ops.LayerNorm(dim, **kw)
        self.norm3 = ops.LayerNorm(dim, **kw)

    ff_chunk_bytes = 16 << 20                                              # 0: feed-forward on all rows at once

    def forward(self, x, context=None):
        x = add_fresh(self.attn1(self.norm1(x)), x)
        x = add_fresh(self.attn2(self.norm2(x), context), x)
        n, length, dim = x.shape
        hidden = length * dim * 8 * x.element_size()                       # GEGLU projection bytes per row
        if self.ff_chunk_bytes and inplace_ok(x) and n > 1 and n * hidden > self.ff_chunk_bytes:
            # Inference: the FF (8*dim wide inside) row chunk by row chunk, added into x in place: caps the
            # largest temporaries (and keeps them small enough for the allocator to reuse). Rows are independent.
            step = max(1, self.ff_chunk_bytes // hidden)
            for i in range(0, n, step):
                xi = x[i:i + step]
                xi.add_(self.ff(self.norm3(xi)))
            return x
        return add_fresh(self.ff(self.norm3(x)), x)


class SpatialTransformer(nn.Module):
    """Per-frame spatial transformer: GroupNorm(eps 1e-6) -> Linear proj_in -> blocks -> proj_out -> residual."""

    def __init__(self, ops, attention, channels, heads, dim_head, depth=1, dropout=0.0, context_dim=None,
                 image_cross_attention=False, scale_learnable=False, dtype=None, device=None):
        super().__init__()
        inner = heads * dim_head
        kw = dict(dtype=dtype, device=device)
        self.norm = ops.GroupNorm(32, channels, eps=1e-6, affine=True, **kw)
        self.proj_in = ops.Linear(channels, inner, **kw)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(ops, attention, inner, heads, dim_head, dropout, context_dim,
                                  image_cross_attention, scale_learnable, **kw) for _ in range(depth)])
        self.proj_out = ops.Linear(inner, channels, **kw)

    def forward(self, x, context: Context):
        bt, c, h, w = x.shape
        x_in = x
        x = self.norm(x).flatten(2).transpose(1, 2)                        # [(b t), h*w, c]
        x = self.proj_in(x)                                                # [(b t), h*w, inner]
        for block in self.transformer_blocks:
            x = block(x, context)
        x = self.proj_out(x)                                               # [(b t), h*w, c]
        # x_in first: the sum takes x_in's memory format (the token view is NHWC-strided; a flipped format would
        # make every following conv copy its weight into that format on every call)
        return x_in + x.transpose(1, 2).reshape(bt, c, h, w)


class TemporalTransformer(nn.Module):
    """Self-attention over frames per pixel; GroupNorm(eps 1e-6) over the 5-D tensor, i.e. across frames.

    ``linear=False`` is the reference's Conv1d(k=1) projection variant used by ``init_attn``.
    """

    def __init__(self, ops, attention, channels, heads, dim_head, depth=1, dropout=0.0, linear=True,
                 dtype=None, device=None):
        super().__init__()
        inner = heads * dim_head
        kw = dict(dtype=dtype, device=device)
        self.linear = linear
        self.norm = ops.GroupNorm(32, channels, eps=1e-6, affine=True, **kw)
        if linear:
            self.proj_in = ops.Linear(channels, inner, **kw)
            self.proj_out = ops.Linear(inner, channels, **kw)
        else:
            self.proj_in = ops.Conv1d(channels, inner, 1, **kw)
            self.proj_out = ops.Conv1d(inner, channels, 1, **kw)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(ops, attention, inner, heads, dim_head, dropout, None, **kw) for _ in range(depth)])

    def _proj(self, layer, x):
        # x: [(b h w), t, c]; a Conv1d(k=1) is the same map applied as a matmul over channels.
        if self.linear:
            return layer(x)
        return layer(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x, frames: int):
        bt, c, h, w = x.shape
        b = bt // frames
        x_in = x
        x = x.reshape(b, frames, c, h, w).transpose(1, 2)                  # [b, c, t, h, w]
        x = self.norm(x)                                                   # statistics across frames
        x = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, frames, c)         # [(b h w), t, c]
        x = self._proj(self.proj_in, x)                                    # [(b h w), t, inner]
        for block in self.transformer_blocks:
            x = block(x)                                                   # attn1 and attn2 both self-attention
        x = self._proj(self.proj_out, x)                                   # [(b h w), t, c]
        x = x.reshape(b, h, w, frames, c)
        if _is_nhwc(x_in):                                                 # one copy into NHWC memory
            x = x.permute(0, 3, 1, 2, 4).reshape(bt, h, w, c).permute(0, 3, 1, 2)
        else:
            x = x.permute(0, 3, 4, 1, 2).reshape(bt, c, h, w)
        return x + x_in


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)

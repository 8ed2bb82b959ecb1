"""The image query transformer P: a Perceiver-style resampler from CLIP image tokens to per-frame image tokens.

Keys and math of the reference `lvdm.modules.encoders.resampler.Resampler` (IP-Adapter's resampler with
``video_length``): ``num_queries * video_length`` learned queries, frame-major (tokens ``[f*q:(f+1)*q]`` belong to
frame f), attending to ``cat(image tokens, queries)``.
"""
from __future__ import annotations

import math
import types
from typing import Optional

import torch
from torch import nn

from .config import ResamplerConfig

_DEFAULT_OPS = types.SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm)


class PerceiverAttention(nn.Module):
    """Queries from norm2(latents); keys/values over cat(norm1(x), norm2(latents)); softmax in float32."""

    def __init__(self, ops, dim, dim_head, heads, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        inner = dim_head * heads
        self.dim_head, self.heads = dim_head, heads
        self.norm1 = ops.LayerNorm(dim, **kw)
        self.norm2 = ops.LayerNorm(dim, **kw)
        self.to_q = ops.Linear(dim, inner, bias=False, **kw)
        self.to_kv = ops.Linear(dim, inner * 2, bias=False, **kw)
        self.to_out = ops.Linear(inner, dim, bias=False, **kw)

    def _heads(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)             # [b, h, n, d]

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self._heads(self.to_q(latents))                                # [b, h, n, d]
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)                              # [b, h, 257+n, d]
        s = 1.0 / math.sqrt(math.sqrt(self.dim_head))                      # scale split over q and k
        w = ((q * s) @ (k * s).transpose(-2, -1)).float().softmax(dim=-1).type(q.dtype)
        out = (w @ v).transpose(1, 2).reshape(b, n, -1)                    # [b, n, h*d]
        return self.to_out(out)


def _feed_forward(ops, dim, mult, dtype=None, device=None):
    kw = dict(dtype=dtype, device=device)
    inner = int(dim * mult)
    return nn.Sequential(ops.LayerNorm(dim, **kw), ops.Linear(dim, inner, bias=False, **kw), nn.GELU(),
                         ops.Linear(inner, dim, bias=False, **kw))


class Resampler(nn.Module):
    """P: image tokens [B, 257, embedding_dim] -> [B, num_queries*video_length, output_dim]."""

    def __init__(self, cfg: ResamplerConfig, dtype: Optional[torch.dtype] = None, device=None, operations=None):
        super().__init__()
        ops = operations or _DEFAULT_OPS
        kw = dict(dtype=dtype, device=device)
        self.cfg = cfg
        n = cfg.num_queries * cfg.video_length
        self.latents = nn.Parameter(torch.randn(1, n, cfg.dim, **kw) / cfg.dim ** 0.5)
        self.proj_in = ops.Linear(cfg.embedding_dim, cfg.dim, **kw)
        self.proj_out = ops.Linear(cfg.dim, cfg.output_dim, **kw)
        self.norm_out = ops.LayerNorm(cfg.output_dim, **kw)
        self.layers = nn.ModuleList([
            nn.ModuleList([PerceiverAttention(ops, cfg.dim, cfg.dim_head, cfg.heads, **kw),
                           _feed_forward(ops, cfg.dim, cfg.ff_mult, **kw)])
            for _ in range(cfg.depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)     # [B, q*T, dim]
        x = self.proj_in(x)                                                # [B, 257, dim]
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))                       # [B, q*T, output_dim]

"""The SD KL-f8 autoencoder (`first_stage_model`): 3-channel images <-> 4-channel latents at 1/8 resolution.

Keys and shapes are those of the reference `lvdm.models.autoencoder.AutoencoderKL` (taming/LDM `Encoder`/`Decoder`:
``encoder.down.N.block.M.*``, ``mid.block_1/attn_1/block_2``, ``decoder.up.N.*``, ``quant_conv``,
``post_quant_conv``), so a real checkpoint's ``first_stage_model.*`` loads with ``strict=True``.

Frames are independent images here (the reference `perframe_ae`): a video latent ``[B, 4, T, h, w]`` is folded to
``(b t)`` and decoded ``chunk_frames`` frames at a time, which caps the activation memory; every op is per image
(GroupNorm statistics per image, attention within one image), so chunking changes nothing but float noise.
The latent scale factor 0.18215 is applied only by ``encode_latent`` / ``decode_latent``.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DynamiCrafterInputError

SCALE_FACTOR = 0.18215
_DEFAULT_OPS = types.SimpleNamespace(Conv2d=nn.Conv2d, GroupNorm=nn.GroupNorm)


@dataclass(frozen=True)
class VAEConfig:
    """`ddconfig` of the reference first stage (SD 1.x/2.x KL-f8)."""

    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    dropout: float = 0.0


TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)


def _inplace_ok(t: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and t.requires_grad)


def _norm(ops, ch, dtype=None, device=None):
    return ops.GroupNorm(32, ch, eps=1e-6, affine=True, dtype=dtype, device=device)


def _silu(t: torch.Tensor) -> torch.Tensor:
    return F.silu(t, inplace=True) if _inplace_ok(t) else F.silu(t)


class ResnetBlock(nn.Module):
    """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> dropout -> conv2, plus x (1x1 `nin_shortcut` if widths differ)."""

    def __init__(self, ops, cin, cout, dropout=0.0, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm1 = _norm(ops, cin, **kw)
        self.conv1 = ops.Conv2d(cin, cout, 3, padding=1, **kw)
        self.norm2 = _norm(ops, cout, **kw)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = ops.Conv2d(cout, cout, 3, padding=1, **kw)
        if cin != cout:
            self.nin_shortcut = ops.Conv2d(cin, cout, 1, **kw)

    def forward(self, x):
        h = self.conv1(_silu(self.norm1(x)))                               # [n, cout, H, W]
        h = self.conv2(self.dropout(_silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h.add_(skip) if _inplace_ok(h) else h + skip


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with 1x1-conv q/k/v/proj_out and a residual."""

    def __init__(self, ops, ch, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm = _norm(ops, ch, **kw)
        self.q = ops.Conv2d(ch, ch, 1, **kw)
        self.k = ops.Conv2d(ch, ch, 1, **kw)
        self.v = ops.Conv2d(ch, ch, 1, **kw)
        self.proj_out = ops.Conv2d(ch, ch, 1, **kw)

    def forward(self, x):
        n, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))  # [n, 1, HW, c]
        out = F.scaled_dot_product_attention(q, k, v)                       # softmax(q k^T / sqrt(c)) v
        out = out[:, 0].transpose(1, 2).reshape(n, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then 3x3 conv with stride 2 and no padding (LDM's asymmetric downsample)."""

    def __init__(self, ops, ch, dtype=None, device=None):
        super().__init__()
        self.conv = ops.Conv2d(ch, ch, 3, stride=2, padding=0, dtype=dtype, device=device)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv."""

    def __init__(self, ops, ch, dtype=None, device=None):
        super().__init__()
        self.conv = ops.Conv2d(ch, ch, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ops, ch, dropout, dtype=None, device=None, block=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        block = block or ResnetBlock
        self.block_1 = block(ops, ch, ch, dropout, **kw)
        self.attn_1 = AttnBlock(ops, ch, **kw)
        self.block_2 = block(ops, ch, ch, dropout, **kw)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, ops, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.conv_in = ops.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, **kw)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(ops, cin, cfg.ch * mult, cfg.dropout, **kw))
                cin = cfg.ch * mult
            stage.attn = nn.ModuleList()                                   # SD's attn_resolutions is empty
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(ops, cin, **kw)
            self.down.append(stage)
        self.mid = _Mid(ops, cin, cfg.dropout, **kw)
        self.norm_out = _norm(ops, cin, **kw)
        self.conv_out = ops.Conv2d(cin, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1, **kw)

    def forward(self, x, hidden: Optional[list] = None):                   # [n, 3, H, W] -> [n, 2z, H/8, W/8]
        """``hidden``: if a list, receives each level's last block output (before its downsample), then the
        ``conv_in`` output (the per-level features ToonCrafter's decoder attends to)."""
        h = first = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hidden is not None:
                hidden.append(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        if hidden is not None:
            hidden.append(first)
        h = self.mid(h)
        return self.conv_out(_silu(self.norm_out(h)))


class Decoder(nn.Module):
    block_cls = ResnetBlock                                                # subclasses swap in video blocks

    def __init__(self, cfg: VAEConfig, ops, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = ops.Conv2d(cfg.z_channels, cin, 3, padding=1, **kw)
        self.mid = _Mid(ops, cin, cfg.dropout, block=self.block_cls, **kw)
        stages = []
        for level in reversed(range(len(cfg.ch_mult))):                    # stored as up[level], run top-down
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(self.block_cls(ops, cin, cfg.ch * cfg.ch_mult[level], cfg.dropout, **kw))
                cin = cfg.ch * cfg.ch_mult[level]
            stage.attn = nn.ModuleList()
            if level != 0:
                stage.upsample = Upsample(ops, cin, **kw)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(ops, cin, **kw)
        self.conv_out = ops.Conv2d(cin, cfg.out_ch, 3, padding=1, **kw)

    def forward(self, z):                                                  # [n, z, h, w] -> [n, 3, 8h, 8w]
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(_silu(self.norm_out(h)))


def _fold(x: torch.Tensor, channels: int, what: str):
    """[B, C, T, H, W] -> ([(B T), C, H, W], unfold) or [N, C, H, W] -> (same, identity)."""
    if x.ndim == 4 and x.shape[1] == channels:
        return x, lambda y: y
    if x.ndim == 5 and x.shape[1] == channels:
        b, c, t, h, w = x.shape
        flat = x.transpose(1, 2).reshape(b * t, c, h, w)
        return flat, lambda y: y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
    raise DynamiCrafterInputError(what, f"[N, {channels}, H, W] or [B, {channels}, T, H, W]",
                                  f"shape {list(x.shape)}", "pass images or latents with that channel count")


def _chunks(n: int, chunk: Optional[int]):
    step = n if not chunk or chunk <= 0 else int(chunk)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


class AutoencoderKL(nn.Module):
    """KL-f8 autoencoder with the reference key layout; images in [-1, 1], latents unscaled (see helpers).

    ``dtype`` is the weight dtype and the compute dtype; inputs are cast to it and outputs returned in it.
    """

    decoder_cls = Decoder                                                  # model/tooncrafter.py: the video decoder

    def __init__(self, cfg: VAEConfig = VAEConfig(), dtype: Optional[torch.dtype] = None, device=None,
                 operations=None):
        super().__init__()
        ops = operations or _DEFAULT_OPS
        kw = dict(dtype=dtype, device=device)
        self.cfg = cfg
        self.dtype = dtype or torch.float32
        self.encoder = Encoder(cfg, ops, **kw)
        self.decoder = self.decoder_cls(cfg, ops, **kw)
        zc = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.quant_conv = ops.Conv2d(zc, 2 * cfg.embed_dim, 1, **kw)
        self.post_quant_conv = ops.Conv2d(cfg.embed_dim, cfg.z_channels, 1, **kw)
        self.channels_last = False

    def set_channels_last(self, on: bool = True) -> None:
        """NHWC activations and conv weights (CPU bf16 convolutions are several times faster so). Same values."""
        self.channels_last = on
        fmt = torch.channels_last if on else torch.contiguous_format
        with torch.no_grad():
            for m in self.modules():
                w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor) and w.dim() == 4 and w.device.type != "meta":
                    w.data = w.data.contiguous(memory_format=fmt)

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.cfg.ch_mult) - 1)

    # -------------------------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, chunk_frames: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images [N,3,H,W] or video [B,3,T,H,W] in [-1,1] -> posterior (mean, std), unscaled, same layout.

        Diagonal Gaussian of the reference: logvar clamped to [-30, 20], std = exp(logvar / 2).
        """
        flat, unfold = _fold(x, self.cfg.in_channels, "VAE encode input")
        means, stds = [], []
        for a, b in _chunks(flat.shape[0], chunk_frames):
            moments = self.quant_conv(self.encoder(self._in(flat[a:b])))  # [n, 2e, H/8, W/8]
            mean, logvar = moments.chunk(2, dim=1)
            means.append(mean)
            stds.append(torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))
        return unfold(torch.cat(means)), unfold(torch.cat(stds))

    def decode(self, z: torch.Tensor, chunk_frames: Optional[int] = None) -> torch.Tensor:
        """Unscaled latents [N,4,h,w] or [B,4,T,h,w] -> images in about [-1,1], same layout.

        ``chunk_frames``: decode that many images at a time (None or 0: all at once). Peak activation memory
        grows linearly with it (see ``decode_bytes_per_frame``); the output is identical up to float noise.
        """
        flat, unfold = _fold(z, self.cfg.embed_dim, "VAE decode input")
        spans = _chunks(flat.shape[0], chunk_frames)
        if len(spans) == 1:
            return unfold(self.decoder(self.post_quant_conv(self._in(flat))).contiguous())
        out = None
        for a, b in spans:
            y = self.decoder(self.post_quant_conv(self._in(flat[a:b])))
            if out is None:                                                # write chunks into one output buffer
                out = y.new_empty((flat.shape[0],) + tuple(y.shape[1:]))
            out[a:b] = y
            del y
        return unfold(out)

    # -------------------------------------------------------------------------------------------------------------
    def decode_bytes_per_frame(self, latent_h: int, latent_w: int) -> int:
        """Upper estimate of the activation memory per decoded image: 5 full-resolution tensors of the channels
        entering the top level (256 for SD: 168 MB per tensor at 320x512 fp32, so 839 MB per frame).

        Measured on CPU fp32 at 320x512 (bench `vae` case, peak RSS above the built model): 793 MB for chunks of 1
        frame, 1222 MB for 2, 2463 MB for 4. Used only to turn a memory cap into a chunk size.
        """
        f = self.downscale
        top = self.cfg.ch * self.cfg.ch_mult[min(1, len(self.cfg.ch_mult) - 1)]  # channels entering the top level
        elem = torch.finfo(self.dtype).bits // 8
        return int(5.0 * top * latent_h * f * latent_w * f * elem)

    def frames_for_memory_cap(self, cap_bytes: int, latent_h: int, latent_w: int) -> int:
        """How many frames to decode at once so the activation peak stays under ``cap_bytes`` (at least 1)."""
        return max(1, int(cap_bytes // max(1, self.decode_bytes_per_frame(latent_h, latent_w))))


# =================================================================================================================
# Caller-facing helpers: the 0.18215 scale factor lives here only
# =================================================================================================================
def encode_latent(vae: AutoencoderKL, images: torch.Tensor, sample: bool = False,
                  generator: Optional[torch.Generator] = None, chunk_frames: Optional[int] = None,
                  scale_factor: float = SCALE_FACTOR) -> torch.Tensor:
    """Images in [-1,1] ([N,3,H,W] or [B,3,T,H,W]) -> scaled latents; ``sample`` draws mean + std*randn
    (the reference's c_concat) with ``generator`` on the latents' device, else takes the mean."""
    mean, std = vae.encode(images, chunk_frames=chunk_frames)
    if not sample:
        return mean * scale_factor
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return sample_posterior(mean, std, noise, scale_factor)


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor,
                     scale_factor: float = SCALE_FACTOR) -> torch.Tensor:
    """Scaled latent sample ``(mean + std * noise) * scale_factor`` of the diagonal Gaussian posterior."""
    return (mean + std * noise) * scale_factor


def decode_latent(vae: AutoencoderKL, latents: torch.Tensor, chunk_frames: Optional[int] = None,
                  memory_cap_mb: Optional[float] = None, scale_factor: float = SCALE_FACTOR) -> torch.Tensor:
    """Scaled latents -> images in about [-1,1]. ``memory_cap_mb`` picks ``chunk_frames`` from the estimate
    ``frames_for_memory_cap`` when ``chunk_frames`` is not given."""
    if chunk_frames is None and memory_cap_mb:
        chunk_frames = vae.frames_for_memory_cap(int(memory_cap_mb * 2 ** 20), latents.shape[-2], latents.shape[-1])
    return vae.decode(latents / scale_factor, chunk_frames=chunk_frames)


__all__ = ["AutoencoderKL", "VAEConfig", "TINY_VAE", "SCALE_FACTOR", "encode_latent", "decode_latent",
           "sample_posterior"]

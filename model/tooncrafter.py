"""ToonCrafter's dual-reference first stage (the reference ``AutoencoderKL_Dualref``): the SD encoder, plus a video
decoder that sees the encoder features of the first and last frames.

Keys are those of a real checkpoint's ``first_stage_model.*`` (396 for the real config: the 248 SD-VAE keys plus the
decoder's ``time_stack`` / ``mix_factor`` / ``attn_refinement`` / ``conv_out.time_mix_conv``), so it loads with
``strict=True``. The spatial blocks are those of ``model/vae.py``; this file adds the temporal and reference parts:

* ``VideoResBlock`` = the SD ResnetBlock, then ``time_stack`` (GroupNorm(32, eps 1e-5, statistics over channels x
  frames x H x W, in float32) -> SiLU -> Conv3d (3,1,1), twice, residual), merged as
  ``a * time_stack(x) + (1 - a) * x`` with ``a = sigmoid(mix_factor)``;
* ``attn_refinement[i]`` after level i's blocks: ``Fusion`` cross-attention (8 heads x 64, queries from the
  normalised frame, keys/values from the un-normalised first+last reference features, residual) at the levels of
  ``attn_level`` (default [2, 3]; a level >= the level count is ignored), ``Combiner`` (1x1 conv of the references
  added to the first / last frame of the chunk) elsewhere, and a final Combiner after ``norm_out`` + SiLU;
* ``conv_out`` is the 2-D conv followed by ``time_mix_conv``, a Conv3d (3,1,1) on the RGB frames.

Decode numerics are the reference's: ``post_quant_conv`` is never applied; frames are decoded in chunks of
``temporal_length`` (16) and every temporal layer and Combiner works within a chunk, so the chunk size is part of
the result (it is not a memory knob). Two ways to run one chunk give the same values up to float rounding:

* ``VideoDecoder.forward``: the reference structure, every layer on the whole chunk at once;
* ``VideoDecoder.stream`` (the default of ``decode``): spatial layers run ``frames_per_pass`` frames at a time and
  are fused between the temporal layers, so a full-chunk tensor exists only at the temporal layers; time_stack
  GroupNorm statistics are gathered per frame (two fast reductions, combined exactly in float64) while frames are
  produced, and the (3,1,1) convs run frame by frame as three matrix products over a ring of three normalised
  frames (each frame normalised once, no allocation per frame). The memory floor is two full-chunk tensors of the
  top level. bench/toon_decode.py: 0.81x the time and 0.40x the peak RSS of ``forward`` at 16 x 320x512, fp32 CPU.

``decode_video`` adds the reference inference's middle-frame splice (frames T//2-1, T//2 from a decode of the
(T-2)-frame latent). ``encode_video`` returns the posterior and the first/last-frame hidden states; the latent for
the concat condition is the posterior **sample** (the reference draws it, ``get_first_stage_encoding``) unless the
caller asks for the mode.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import ToonDecodeDefaults
from .errors import DynamiCrafterInputError
from .tooncrafter_blocks import (Combiner, Fusion, VideoResBlock, _combine_stats, _frame_stats, _make_conv_out,
                                 _taps, _time_mix)
from .vae import SCALE_FACTOR, AutoencoderKL, Decoder, VAEConfig, _chunks, _fold, _silu, sample_posterior

_DECODE = ToonDecodeDefaults()
TEMPORAL_LENGTH = _DECODE.chunk_frames                                   # the reference UNet's temporal_length


@dataclass(frozen=True)
class DualRefVAEConfig(VAEConfig):
    """``ddconfig`` of ToonCrafter's first stage; ``attn_level``: decoder levels with fusion cross-attention."""

    attn_level: Tuple[int, ...] = (2, 3)


TINY_DUALREF_VAE = DualRefVAEConfig(ch=32, ch_mult=(1, 2, 1), num_res_blocks=1)


def dualref_config_from_ddconfig(dd: dict, embed_dim: int = 4) -> DualRefVAEConfig:
    """Reference ``ddconfig`` dict -> config (``resolution`` is unused; ``attn_resolutions`` must be empty)."""
    if list(dd.get("attn_resolutions", []) or []):
        raise DynamiCrafterInputError("ToonCrafter ddconfig", "attn_resolutions [] (as every released VAE)",
                                      f"{dd['attn_resolutions']}", "use the released first-stage config")
    names = {f.name for f in fields(DualRefVAEConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in dd.items() if k in names}
    return DualRefVAEConfig(embed_dim=embed_dim, **kw)


def dualref_missing_keys(keys, cfg: Optional[DualRefVAEConfig] = None) -> List[str]:
    """The keys of ToonCrafter's first stage (prefix stripped) that ``keys`` lacks (its shapes on the meta device)."""
    with torch.device("meta"):
        want = DualRefAutoencoderKL(cfg or DualRefVAEConfig()).state_dict()
    have = set(keys)
    return [k for k in want if k not in have]


def load_dualref_vae(state_dict: Dict[str, torch.Tensor], cfg: Optional[DualRefVAEConfig] = None,
                     what: str = "ToonCrafter VAE", dtype=torch.float32, device=None) -> "DualRefAutoencoderKL":
    """A first-stage state dict (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ...) -> the model, loaded strictly;
    one-line refusal naming what is missing (a plain SD VAE lacks the 148 decoder keys) or of the wrong shape."""
    with torch.device("meta"):
        vae = DualRefAutoencoderKL(cfg or DualRefVAEConfig(), dtype=dtype)
    want = {k: tuple(t.shape) for k, t in vae.state_dict().items()}
    missing = [k for k in want if k not in state_dict]
    bad = [k for k in want if k in state_dict and tuple(state_dict[k].shape) != want[k]]
    if missing or bad:
        plain = all(("time_stack" in k or "mix_factor" in k or "attn_refinement" in k or "time_mix" in k)
                    for k in missing) and not bad
        raise DynamiCrafterInputError(
            what, f"the {len(want)} keys of ToonCrafter's first stage (dual-reference decoder)",
            (f"{len(missing)} missing decoder keys (first {missing[:3]})" if missing else "")
            + (f"{'; ' if missing else ''}{len(bad)} of another shape (first {bad[:2]})" if bad else ""),
            "this is a plain SD VAE: load the ToonCrafter checkpoint (or its first stage) instead" if plain
            else "use the official ToonCrafter checkpoint or a file converted from it")
    extra = sorted(set(state_dict) - set(want))
    if extra:
        raise DynamiCrafterInputError(what, "only first-stage keys", f"{len(extra)} others (first {extra[:3]})",
                                      "pass the first_stage_model part of the checkpoint")
    vae.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    return vae.to(device or "cpu").eval().requires_grad_(False)


# =================================================================================================================
# Decoder
# =================================================================================================================
class VideoDecoder(Decoder):
    """The reference ``VideoDecoder`` (time_mode conv-only, learned merge) with the dual-reference refinements."""

    block_cls = VideoResBlock

    def __init__(self, cfg: DualRefVAEConfig, ops, dtype=None, device=None):
        super().__init__(cfg, ops, dtype=dtype, device=device)
        kw = dict(dtype=dtype, device=device)
        levels = len(cfg.ch_mult)
        self.attn_level = tuple(lv for lv in getattr(cfg, "attn_level", (2, 3)) if lv < levels)
        norm_out = self.norm_out
        del self.norm_out, self.conv_out                                   # re-registered after attn_refinement:
        self.attn_refinement = nn.ModuleList(
            [(Fusion if lv in self.attn_level else Combiner)(ops, cfg.ch * cfg.ch_mult[lv], **kw) for lv in range(levels)]
            + [Combiner(ops, cfg.ch * cfg.ch_mult[0], **kw)])
        self.norm_out = norm_out                                           # the reference's key order
        self.conv_out = _make_conv_out(ops, cfg.ch * cfg.ch_mult[0], cfg.out_ch, **kw)

    def prepare(self, hidden: Optional[Sequence[torch.Tensor]]):
        """One video's references: hidden[i] [C_i, 2, h_i, w_i] (first, last) -> per-refinement prepared tensors."""
        if hidden is None:
            return None
        return [r.prepare(h.transpose(0, 1)) for r, h in zip(self.attn_refinement, hidden)]

    # -- reference structure: every layer on the whole chunk ---------------------------------------------------------
    def forward(self, z, prep=None, taps=None):                            # [n, 4, h, w] -> [n, 3, 8h, 8w] one chunk
        n = z.shape[0]
        h = self.conv_in(z)
        _taps(taps, "conv_in", h)
        h = self.mid.block_1(h, n, taps, "mid.block_1")
        _taps(taps, "mid.block_1", h)
        h = self.mid.attn_1(h)
        _taps(taps, "mid.attn_1", h)
        h = self.mid.block_2(h, n, taps, "mid.block_2")
        _taps(taps, "mid.block_2", h)
        for lv in reversed(range(len(self.up))):
            stage = self.up[lv]
            for j, block in enumerate(stage.block):
                h = block(h, n, taps, f"up.{lv}.block.{j}")
                _taps(taps, f"up.{lv}.block.{j}", h)
            if prep is not None:
                h = self.attn_refinement[lv].apply(h, prep[lv], 0, n, n, inplace=True)
                _taps(taps, f"attn_refinement.{lv}", h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
                _taps(taps, f"up.{lv}.upsample", h)
        h = self.norm_out(h)
        _taps(taps, "norm_out", h)
        h = _silu(h)
        if prep is not None:
            h = self.attn_refinement[-1].apply(h, prep[-1], 0, n, n, inplace=True)
            _taps(taps, f"attn_refinement.{len(self.up)}", h)
        h = self.conv_out(h)
        _taps(taps, "conv_out.time_mix_conv.input", h.view(1, n, *h.shape[1:]).transpose(1, 2))
        h = _time_mix(self.conv_out.time_mix_conv, h, n)
        _taps(taps, "conv_out", h)
        return h

    # -- low-memory structure: spatial layers a few frames at a time, fused between the temporal layers --------------
    def _program(self, prep):
        """The decoder as steps: ("frames", fn(x, a, b, n)) per-frame work, ("time", block) temporal barriers."""
        steps = [("frames", lambda x, a, b, n: self.conv_in(x))]

        def video(block, name):
            steps.append(("frames", lambda x, a, b, n: block.spatial(x)))
            steps.append(("time", block, name))

        video(self.mid.block_1, "mid.block_1")
        steps.append(("frames", lambda x, a, b, n: self.mid.attn_1(x)))
        video(self.mid.block_2, "mid.block_2")
        for lv in reversed(range(len(self.up))):
            stage = self.up[lv]
            for j, block in enumerate(stage.block):
                video(block, f"up.{lv}.block.{j}")
            if prep is not None:
                ref, p = self.attn_refinement[lv], prep[lv]
                steps.append(("frames", lambda x, a, b, n, ref=ref, p=p: ref.apply(x, p, a, b, n)))
            if hasattr(stage, "upsample"):
                steps.append(("frames", lambda x, a, b, n, up=stage.upsample: up(x)))
        steps.append(("frames", lambda x, a, b, n: _silu(self.norm_out(x))))
        if prep is not None:
            steps.append(("frames", lambda x, a, b, n: self.attn_refinement[-1].apply(x, prep[-1], a, b, n)))
        steps.append(("frames", lambda x, a, b, n: self.conv_out(x)))
        return steps

    @staticmethod
    def _run_frames(buf, fns, frames_per_pass, owned, groups=None):
        """Run per-frame ``fns`` over ``buf`` a few frames at a time into one buffer (``buf`` itself when owned and
        the shape is unchanged); with ``groups``, also that buffer's per-frame GroupNorm statistics."""
        n, out, parts = buf.shape[0], None, []
        for a, b in _chunks(n, frames_per_pass):
            y = buf[a:b]
            for f in fns:
                y = f(y, a, b, n)
            if out is None:
                same = owned and y.shape[1:] == buf.shape[1:] and y.dtype == buf.dtype
                out = buf if same else y.new_empty((n,) + tuple(y.shape[1:]))
            out[a:b] = y
            if groups:
                parts.append(_frame_stats(y, groups))
            del y
        return out, (_combine_stats(parts) if groups else None)

    def stream(self, z, prep=None, frames_per_pass: int = 1, taps=None, keep_h1: str = "below-top"):
        """One chunk [n, 4, h, w] -> [n, 3, 8h, 8w], same values as ``forward``. Peak activations: the full-chunk
        tensors at a temporal layer (its input, plus h1 where kept) + the work of ``frames_per_pass`` frames at full
        resolution (lower levels take proportionally more frames per pass: same pixels, fewer small calls).
        ``keep_h1``: "all", "none", or "below-top" (recompute h1 only at the full-resolution level, where a
        full-chunk tensor is largest; that adds one (3,1,1) conv per top-level block)."""
        n, buf, owned, pending = z.shape[0], z, False, []
        top = z.shape[-2] * z.shape[-1] * 4 ** (len(self.up) - 1)          # pixels of an output frame

        def per_pass(hw, grow):                                            # same pixels per pass at every level
            return frames_per_pass * max(1, top // (hw * grow))

        for step in self._program(prep):
            if step[0] == "frames":
                pending.append(step[1])
                continue
            block, name = step[1], step[2]
            hw = buf.shape[-2] * buf.shape[-1]                             # the pass may upsample once (x4)
            buf, stats = self._run_frames(buf, pending, per_pass(hw, 4), owned,
                                          groups=block.time_stack.in_layers[0].num_groups)
            owned, pending = True, []
            keep = keep_h1 == "all" or (keep_h1 == "below-top" and all(block is not b for b in self.up[0].block))
            block.temporal_(buf, stats, keep)
            _taps(taps, name, buf)
        buf, _ = self._run_frames(buf, pending, per_pass(buf.shape[-2] * buf.shape[-1], 4), owned)
        return _time_mix(self.conv_out.time_mix_conv, buf, n)


# =================================================================================================================
# The autoencoder
# =================================================================================================================
class DualRefAutoencoderKL(AutoencoderKL):
    """ToonCrafter's first stage: SD encoder (+ hidden states), video decoder with first/last-frame references.

    ``dtype`` is the weight and compute dtype (fp32, bf16, fp16); time_stack norms compute in float32.
    """

    decoder_cls = VideoDecoder

    def __init__(self, cfg: DualRefVAEConfig = DualRefVAEConfig(), dtype=None, device=None, operations=None):
        super().__init__(cfg, dtype=dtype, device=device, operations=operations)

    @property
    def levels(self) -> int:
        return len(self.cfg.ch_mult)

    def encode_hidden(self, x: torch.Tensor, chunk_frames: Optional[int] = None):
        """Video [B,3,T,H,W] in [-1,1] -> (mean, std) [B,4,T,h,w] unscaled, hidden: L+1 tensors
        [B, C_i, 2, h_i, w_i] (level i's last block output, then conv_in's; index 0 / 1 = first / last frame)."""
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise DynamiCrafterInputError("ToonCrafter VAE encode input", "[B, 3, T, H, W] video in [-1, 1]",
                                          f"shape {list(x.shape)}", "pass the frames as one video")
        bsz, t = x.shape[0], x.shape[2]
        flat, unfold = _fold(x, self.cfg.in_channels, "ToonCrafter VAE encode input")
        keep = {b * t + i for b in range(bsz) for i in (0, t - 1)}         # (b t) rows of first / last frames
        means, stds, hid = [], [], {}
        for a, b in _chunks(flat.shape[0], chunk_frames):
            hidden: List[torch.Tensor] = []
            moments = self.quant_conv(self.encoder(self._in(flat[a:b]), hidden))
            mean, logvar = moments.chunk(2, dim=1)
            means.append(mean)
            stds.append(torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))
            for row in sorted(keep & set(range(a, b))):
                hid[row] = [h[row - a].clone() for h in hidden]
        hs = [torch.stack([torch.stack([hid[b * t][i], hid[b * t + t - 1][i]], 1) for b in range(bsz)])
              for i in range(self.levels + 1)]                              # [B, C_i, 2, h_i, w_i]
        return unfold(torch.cat(means)), unfold(torch.cat(stds)), hs

    def check_hidden(self, hidden, z: torch.Tensor) -> None:
        """One-line refusal unless ``hidden`` fits this decoder and latent (before any decoding)."""
        f = self.downscale
        bsz, h, w = z.shape[0], z.shape[-2], z.shape[-1]
        want = [(self.cfg.ch * self.cfg.ch_mult[i], h * f // 2 ** i, w * f // 2 ** i) for i in range(self.levels)]
        want.append((self.cfg.ch, h * f, w * f))
        got = [tuple(t.shape) for t in hidden] if isinstance(hidden, (list, tuple)) else hidden
        ok = isinstance(hidden, (list, tuple)) and len(hidden) == len(want) and all(
            tuple(t.shape) == (bsz, c, 2, hh, ww) for t, (c, hh, ww) in zip(hidden, want))
        if not ok:
            raise DynamiCrafterInputError(
                "ToonCrafter decode references", f"{len(want)} tensors [B={bsz}, C, 2, h, w] with (C, h, w) = {want}",
                f"{got}", "encode the start and end images at the size of the video being decoded")

    def decode(self, z: torch.Tensor, hidden=None, temporal_length: int = TEMPORAL_LENGTH,
               frames_per_pass: Optional[int] = 1, chunk_frames: Optional[int] = None,
               structure: str = "stream", keep_h1: str = "below-top") -> torch.Tensor:
        """Unscaled latent [B,4,T,h,w] (or [T,4,h,w], one video) -> frames, same layout; ``post_quant_conv`` unused.

        ``temporal_length``: the reference's decode chunk (numerics, not memory). ``frames_per_pass``
        (alias ``chunk_frames``): frames per spatial pass of ``structure="stream"``; memory only, exact.
        ``hidden``: from ``encode_hidden``; None skips every refinement (the reference's decode without refs).
        ``structure``: "stream" (low memory) or "forward" (the reference's whole-chunk pass); ``keep_h1``: see
        ``VideoDecoder.stream``.
        """
        frames_per_pass = chunk_frames or frames_per_pass
        video = z.ndim == 5
        z5 = z if video else z.transpose(0, 1)[None]
        if z5.ndim != 5 or z5.shape[1] != self.cfg.embed_dim:
            raise DynamiCrafterInputError("ToonCrafter VAE decode input", f"[B, {self.cfg.embed_dim}, T, h, w]",
                                          f"shape {list(z.shape)}", "pass a video latent")
        if hidden is not None:
            self.check_hidden(hidden, z5)
        bsz, t = z5.shape[0], z5.shape[2]
        out = None
        for bi in range(bsz):                                              # each video with its own references
            prep = self.decoder.prepare(None if hidden is None else [self._in(h[bi]) for h in hidden])
            for a, b in _chunks(t, temporal_length):
                zc = self._in(z5[bi, :, a:b].transpose(0, 1))               # [n, 4, h, w]
                y = (self.decoder(zc, prep) if structure == "forward"
                     else self.decoder.stream(zc, prep, max(1, int(frames_per_pass or b - a)), keep_h1=keep_h1))
                if out is None:
                    out = y.new_empty((bsz, y.shape[1], t) + tuple(y.shape[2:]))
                out[bi, :, a:b] = y.transpose(0, 1)
                del y
        return out if video else out[0].transpose(0, 1)

    # -------------------------------------------------------------------------------------------------------------
    def stream_bytes(self, frames: int, latent_h: int, latent_w: int, frames_per_pass: int) -> int:
        """Upper estimate of ``stream``'s activation peak for one chunk: two full-chunk top-level tensors (time_stack
        input and its first conv's output) + 5 full-resolution tensors of the channels entering the top level per
        frame of a pass (as ``decode_bytes_per_frame``)."""
        f = self.downscale
        elem = torch.finfo(self.dtype).bits // 8
        full = 2 * frames * self.cfg.ch * self.cfg.ch_mult[0] * latent_h * f * latent_w * f * elem
        return int(full + frames_per_pass * self.decode_bytes_per_frame(latent_h, latent_w))

    def frames_per_pass_for_cap(self, cap_bytes: int, frames: int, latent_h: int, latent_w: int) -> int:
        """Largest frames per pass whose estimate fits ``cap_bytes`` (at least 1: the floor is two full tensors)."""
        per = self.decode_bytes_per_frame(latent_h, latent_w)
        floor = self.stream_bytes(frames, latent_h, latent_w, 0)
        return int(min(frames, max(1, (cap_bytes - floor) // max(1, per))))


# =================================================================================================================
# Caller-facing helpers (the 0.18215 scale lives here)
# =================================================================================================================
def encode_video(vae: DualRefAutoencoderKL, video: torch.Tensor, sample: bool = True,
                 generator: Optional[torch.Generator] = None, scale_factor: float = SCALE_FACTOR,
                 noise: Optional[torch.Tensor] = None):
    """[B,3,T,H,W] in [-1,1] -> (scaled latent [B,4,T,h,w], hidden states). ``sample`` (default, as the reference's
    ``get_latent_z_with_hidden_states``): mean + std * noise (``noise`` given, or drawn with ``generator``)."""
    mean, std, hidden = vae.encode_hidden(video)
    if not sample:
        return mean * scale_factor, hidden
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return sample_posterior(mean, std, noise.to(mean), scale_factor), hidden


def splice_index(t: int) -> List[int]:
    """Latent frames of the reference's second decode: all but frames 1 and T-2."""
    if t < 4:
        raise DynamiCrafterInputError("ToonCrafter middle-frame splice", "a video of at least 4 frames",
                                      f"{t} frames", "turn the splice off or decode more frames")
    index = list(range(t))
    del index[1]
    del index[-2]
    return index


def decode_video(vae: DualRefAutoencoderKL, latents: torch.Tensor, hidden=None,
                 splice_middle: bool = _DECODE.splice_middle,
                 temporal_length: int = TEMPORAL_LENGTH, memory_cap_mb: Optional[float] = None,
                 frames_per_pass: Optional[int] = None, structure: str = "stream",
                 scale_factor: float = SCALE_FACTOR) -> torch.Tensor:
    """Scaled latents [B,4,T,h,w] -> frames [B,3,T,H,W] in about [-1,1], as the reference inference returns them.

    ``splice_middle``: frames T//2-1 and T//2 are replaced by frames T//2-2, T//2-1 of a decode of the latent
    without frames 1 and T-2 (the reference's final assembly; T < 6 is misaligned there too, T < 4 refused).
    ``memory_cap_mb`` picks ``frames_per_pass`` when it is not given (exact; floor: ``stream_bytes(.., 0)``).
    """
    if latents.ndim != 5:
        raise DynamiCrafterInputError("ToonCrafter decode latent", "[B, 4, T, h, w]", f"shape {list(latents.shape)}",
                                      "pass a video latent")
    t = latents.shape[2]
    index = splice_index(t) if splice_middle else None
    if frames_per_pass is None:
        frames_per_pass = 1
        if memory_cap_mb:
            frames_per_pass = vae.frames_per_pass_for_cap(int(memory_cap_mb * 2 ** 20), min(t, temporal_length),
                                                          latents.shape[-2], latents.shape[-1])
    if hidden is not None:
        vae.check_hidden(hidden, latents)
    z = latents * (1.0 / scale_factor)                                     # the reference multiplies by 1/s
    kw = dict(temporal_length=temporal_length, frames_per_pass=frames_per_pass, structure=structure)
    out = vae.decode(z, hidden, **kw)
    if index is not None:
        mid = vae.decode(z[:, :, index], hidden, **kw)
        out[:, :, t // 2 - 1:t // 2 + 1] = mid[:, :, t // 2 - 2:t // 2]
    return out


__all__ = ["DualRefAutoencoderKL", "DualRefVAEConfig", "TINY_DUALREF_VAE", "VideoDecoder", "TEMPORAL_LENGTH",
           "load_dualref_vae",
           "dualref_config_from_ddconfig", "encode_video", "decode_video", "splice_index"]

"""ToonCrafter's sketch encoder: an SD2.1-layout ControlNet (the reference ``cldm.cldm.ControlNet`` of
github mattyamonaca/ToonCrafter_with_SketchGuidance, ``configs/cldm_v21.yaml``: hint_channels 1) run per frame on the
4-channel noisy latent, its 13 residuals (real size) added to the ToonCrafter UNet's skips and middle output.

Math (fixtures ``tooncrafter_sketch/README.md``, ``sketch_control``): ``emb = time_embed(timestep_embedding(t))`` (no
fs, no temporal layer, no concat channels); ``h = input_blocks[0](x) + input_hint_block(hint)``; ``outs[i] =
zero_convs[i](h)`` after every input block; ``middle_block_out(middle_block(h))`` last. Cross-attention sees the
whole context (77 text + 16 T image tokens) with one softmax. The blocks are the UNet's (model/unet.py ResBlock,
Downsample; model/attention.py SpatialTransformer without image K/V), so state-dict keys are the checkpoint's.

Residuals reach the UNet as the hosts hand ControlNet residuals (``{"middle": [last], "output": [0..n-1]}``, popped
from the end): ``output[i]`` joins skip i before the output blocks' concat, ``middle`` the middle block's output --
exactly the reference ``ControlledUnetModel`` -- through model/control.py, the path host ControlNets take.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .attention import Context, SpatialTransformer, sdpa_attention
from .config import _from_dict
from .errors import DynamiCrafterInputError
from .unet import DEFAULT_OPERATIONS, Block, Downsample, ResBlock, timestep_embedding

HINT_BLOCK_CHANNELS = (16, 16, 32, 32, 96, 96, 256)                       # hard-coded in cldm.ControlNet
HINT_STRIDE2 = (2, 4, 6)                                                   # convs (0-based) with stride 2: /8


@dataclass(frozen=True)
class SketchConfig:
    """``control_stage_config.params`` of ``cldm_v21.yaml`` (defaults: the released sketch encoder)."""

    in_channels: int = 4
    hint_channels: int = 1
    model_channels: int = 320
    attention_resolutions: Tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear_in_transformer: bool = True
    use_spatial_transformer: bool = True
    legacy: bool = False
    use_checkpoint: bool = False
    image_size: int = 32                                                   # unused by the network

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SketchConfig":
        cfg = _from_dict(cls, d)
        if not (cfg.use_linear_in_transformer and cfg.use_spatial_transformer) or cfg.legacy:
            raise DynamiCrafterInputError("sketch encoder config", "the SD2.1 layout (linear transformer "
                                          "projections, legacy False)", f"{dict(d)}", "use cldm_v21.yaml's values")
        return cfg


# The small config of the pack's random-weight sketch encoder (generate.py --tiny, tests): the tiny ToonCrafter
# UNet's widths (model/variants.py "tiny"), so its residuals fit that UNet's skips. A file built with it names it in
# its metadata ('dynamicrafter.config' = "tiny"): head width is the one number the weights cannot tell.
TINY_SKETCH = SketchConfig(model_channels=32, attention_resolutions=(1,), num_res_blocks=1, channel_mult=(1, 2),
                           num_head_channels=16, context_dim=64)


def sketch_config(name: Optional[str]) -> SketchConfig:
    """The released config (None) or a small registry config by name (the UNet's "tiny" / "tiny-clip48")."""
    if name is None:
        return SketchConfig()
    if name in ("tiny", "tiny-clip48"):
        return TINY_SKETCH
    raise DynamiCrafterInputError("sketch encoder config", "'tiny' or none (the released encoder)", repr(name),
                                  "use the released sketch_encoder.ckpt or a file made by the pack")


class SketchEncoder(nn.Module):
    """x [N, 4, h, w], hint [N, hint_ch, 8h, 8w], timesteps [N], context [N / frames, L, D] -> residuals.

    Rows (frames) are independent: each gets its own timestep and the context row of its sample (``frames``
    consecutive rows share one, projected to K/V once), which is the fixtures' definition of batches and frame counts
    other than the reference's B=1, T=16."""

    def __init__(self, cfg: SketchConfig = SketchConfig(), dtype=None, device=None, operations=None,
                 attention: Optional[Callable] = None):
        super().__init__()
        ops = operations or DEFAULT_OPERATIONS
        attention = attention or sdpa_attention
        kw = dict(dtype=dtype, device=device)
        self.cfg = cfg
        self.dtype = dtype or torch.float32
        mc = cfg.model_channels
        emb_dim = mc * 4

        def zero_conv(ch):
            return Block([ops.Conv2d(ch, ch, 1, **kw)])

        def spatial(ch):
            heads = ch // cfg.num_head_channels
            return SpatialTransformer(ops, attention, ch, heads, cfg.num_head_channels, cfg.transformer_depth, 0.0,
                                      cfg.context_dim, False, False, **kw)

        # registration order = the checkpoint's key order
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim, **kw), nn.SiLU(), ops.Linear(emb_dim, emb_dim, **kw))
        self.input_blocks = nn.ModuleList([Block([ops.Conv2d(cfg.in_channels, mc, 3, padding=1, **kw)])])
        self.zero_convs = nn.ModuleList([zero_conv(mc)])
        hint: List[nn.Module] = []
        chans = (cfg.hint_channels,) + HINT_BLOCK_CHANNELS
        for i in range(len(HINT_BLOCK_CHANNELS)):
            hint += [ops.Conv2d(chans[i], chans[i + 1], 3, padding=1, stride=2 if i in HINT_STRIDE2 else 1, **kw),
                     nn.SiLU()]
        hint.append(ops.Conv2d(chans[-1], mc, 3, padding=1, **kw))
        self.input_hint_block = nn.Sequential(*hint)
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: List[nn.Module] = [ResBlock(ops, ch, emb_dim, 0.0, mult * mc, False, **kw)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(spatial(ch))
                self.input_blocks.append(Block(layers))
                self.zero_convs.append(zero_conv(ch))
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Block([Downsample(ops, ch, **kw)]))
                self.zero_convs.append(zero_conv(ch))
                ds *= 2
        self.middle_block = Block([ResBlock(ops, ch, emb_dim, 0.0, ch, False, **kw), spatial(ch),
                                   ResBlock(ops, ch, emb_dim, 0.0, ch, False, **kw)])
        self.middle_block_out = zero_conv(ch)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor, frames: int = 1) -> List[torch.Tensor]:
        n = x.shape[0]
        if frames < 1 or n % frames:
            raise ValueError(f"sketch encoder: {n} latent frames are not whole samples of {frames} frames")
        for name, t, rows in (("hint", hint, n), ("timesteps", timesteps, n), ("context", context, n // frames)):
            if t.shape[0] != rows:
                raise ValueError(f"sketch encoder: {name} has {t.shape[0]} rows for {n} latent frames")
        dt = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(dt))   # [N, 4mc]
        ctx = Context(context.to(dt), None, frames, per_frame=False)       # the full context, one softmax
        f = frames
        h = self.input_blocks[0](x.to(dt), emb, ctx, f) + self.input_hint_block(hint.to(dt))  # [N, mc, h, w]
        outs = [self.zero_convs[0](h, emb, ctx, f)]
        for block, zero in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = block(h, emb, ctx, f)
            outs.append(zero(h, emb, ctx, f))
        h = self.middle_block(h, emb, ctx, f)
        outs.append(self.middle_block_out(h, emb, ctx, f))                 # the middle block's residual last
        return outs


def to_host_control(residuals: List[Optional[torch.Tensor]]) -> dict:
    """The encoder's list (skips in input order, middle last) as the hosts hand ControlNet residuals to a UNet."""
    return {"input": [], "middle": [residuals[-1]], "output": list(residuals[:-1])}


def sketch_residuals(encoder: SketchEncoder, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                     hints: torch.Tensor, mask: torch.Tensor, scale: float) -> dict:
    """Residuals of one UNet call as the hosts hand them (``to_host_control``), rows ``(b t)``.

    x [B, 4, T, h, w] noisy latent (the 4 latent channels only), timesteps [B], context [B, L, D] (each sample's full
    text + image context), hints [T, hint_ch, 8h, 8w] (every sample of the call gets the same sketches: the reference
    gives the unconditional branch the conditional one's), mask [T] (1: the frame has a sketch). The encoder runs on
    the frames with a sketch only; the others get exact zeros. Every residual is multiplied by ``scale`` (the
    reference's ``control_scale``)."""
    b, _, t, h, w = x.shape
    if hints.shape[0] != t or mask.shape[0] != t:
        raise ValueError(f"sketch residuals: {hints.shape[0]} hints / {mask.shape[0]} mask entries for {t} frames")
    sel = torch.nonzero(mask.to("cpu") > 0).flatten()
    k = int(sel.numel())
    if k == 0:
        return {}
    xs = x[:, :, sel.to(x.device)].transpose(1, 2).reshape(b * k, -1, h, w)  # [(b k), 4, h, w]
    hs = hints[sel].to(device=x.device).repeat(b, 1, 1, 1)                  # [(b k), hint_ch, 8h, 8w]
    res = encoder(xs, hs, timesteps.repeat_interleave(k), context, frames=k)
    out = []
    for r in res:
        r = r * scale                                                      # [(b k), C, h_i, w_i]
        if k != t:
            full = r.new_zeros(b, t, *r.shape[1:])
            full[:, sel.to(r.device)] = r.reshape(b, k, *r.shape[1:])
            r = full.reshape(b * t, *r.shape[1:])                          # [(b t), C, h_i, w_i]
        out.append(r)
    return to_host_control(out)


def residual_count(cfg: SketchConfig) -> int:
    """Skips (input blocks) + the middle output: 13 for the released encoder."""
    return 1 + len(cfg.channel_mult) * cfg.num_res_blocks + len(cfg.channel_mult) - 1 + 1


def replace(cfg: SketchConfig, **kw) -> SketchConfig:
    return dataclasses.replace(cfg, **kw)

"""Frozen encoders of the trainer: SD KL-f8 VAE, OpenCLIP ViT-H/14 text and image towers, and the pre-compute cache.

- Text (reference `FrozenOpenCLIPEmbedder`, layer "penultimate"): tokens -> all resblocks but the last -> ``ln_final``
  -> [B, 77, 1024].
- Image (reference `FrozenOpenCLIPImageEmbedderV2`): bicubic resize to 224 (align_corners, antialias), (x+1)/2, CLIP
  mean/std, then the visual tower's tokens of the last transformer layer, without ``ln_post`` or ``proj`` ->
  [B, 257, 1280].
- VAE: the pack's ``model.vae`` AutoencoderKL, frame by frame, returning the posterior (mean, std); the trainer
  draws the posterior sample with each sample's own generator (reproducible) and scales it by ``SCALE_FACTOR``.

The towers are open_clip's own classes (``open_clip.CLIP``): the real ViT-H-14 config, or a tiny config of the same
classes for tests. Weights: a DynamiCrafter full checkpoint (``cond_stage_model.model.*``, ``embedder.model.*``) or
an open_clip ViT-H-14 file (bare keys).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..model.conditioning import CLIP_SIZE, clip_preprocess
from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.variants import SMALL_CONFIGS
from ..model.checkpoint import open_checkpoint
from ..model import vae as vae_mod

# The random tiny towers read what the registry's tiny config reads (model/tiny.py writes towers of the same widths).
_TINY = SMALL_CONFIGS["tiny"]
TINY_CLIP = dict(embed_dim=32, vision=dict(layers=2, width=_TINY["resampler"]["embedding_dim"],
                                           head_width=_TINY["resampler"]["embedding_dim"] // 2, patch_size=14,
                                           image_size=224),
                 text=dict(width=_TINY["unet"]["context_dim"], heads=2, layers=2))


# ================================================================================================================
# OpenCLIP towers
# ================================================================================================================
def build_open_clip(tiny: bool = False, text_width: Optional[int] = None, vision_width: Optional[int] = None,
                    seed: int = 0) -> nn.Module:
    """An ``open_clip.CLIP``: ViT-H-14 (random init; load weights after) or a tiny one of the same classes."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if tiny:
        v = dict(TINY_CLIP["vision"])
        t = dict(TINY_CLIP["text"])
        if vision_width:
            v.update(width=vision_width, head_width=max(8, vision_width // 2))
        if text_width:
            t.update(width=text_width, heads=max(1, text_width // 32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.CLIP(embed_dim=TINY_CLIP["embed_dim"], vision_cfg=CLIPVisionCfg(**v),
                                  text_cfg=CLIPTextCfg(**t))
    cfg = open_clip.get_model_config("ViT-H-14")
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
                          text_cfg=CLIPTextCfg(**cfg["text_cfg"]))


class TextEncoder(nn.Module):
    """open_clip text tower, penultimate layer + ln_final: captions -> [B, 77, width]."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.register_buffer("attn_mask", clip.attn_mask.clone(), persistent=False)
        self.width = clip.ln_final.weight.shape[0]

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        import open_clip

        tokens = open_clip.tokenize(list(captions)).to(self.positional_embedding.device)   # [B, 77]
        x = self.token_embedding(tokens) + self.positional_embedding                      # [B, 77, W]
        batch_first = getattr(self.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        mask = self.attn_mask.to(x.dtype)
        for block in self.transformer.resblocks[:-1]:                                     # penultimate layer
            x = block(x, attn_mask=mask)
        if not batch_first:
            x = x.transpose(0, 1)
        return self.ln_final(x)                                                           # [B, 77, W]


class ImageEncoder(nn.Module):
    """open_clip visual tower, last-layer tokens without ln_post: images [B, 3, H, W] in [-1, 1] -> [B, 257, width].

    The images go through ``model.conditioning.clip_preprocess``, the same preprocessing as the nodes (inference).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.visual = clip.visual
        self.width = clip.visual.conv1.weight.shape[0]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vis = self.visual
        dt = vis.conv1.weight.dtype
        x = clip_preprocess(images, CLIP_SIZE).to(dt)                                      # [B, 3, 224, 224]
        x = vis.conv1(x).flatten(2).transpose(1, 2)                                       # [B, grid^2, W]
        cls = vis.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + vis.positional_embedding.to(x.dtype)             # [B, 257, W]
        x = vis.ln_pre(x)
        batch_first = getattr(vis.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in vis.transformer.resblocks:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x                                                                          # no ln_post, no proj


def _blocks(keys, prefix: str) -> int:
    import re

    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def clip_from_weights(sources: Dict[str, Dict[str, torch.Tensor]]) -> nn.Module:
    """An ``open_clip.CLIP`` shaped like the towers in ``sources`` (bare open_clip keys): widths, depths, MLP ratio
    and patch from the tensors; heads as the host's loader counts them (width / 64; not visible in shapes)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    t, v = sources["text"], sources["image"]
    vocab, tw = t["token_embedding.weight"].shape
    vw, _, patch, _ = v["visual.conv1.weight"].shape
    grid = int(round(math.sqrt(v["visual.positional_embedding"].shape[0] - 1)))
    text = CLIPTextCfg(context_length=t["positional_embedding"].shape[0], vocab_size=vocab, width=tw,
                       heads=max(1, tw // 64), layers=_blocks(t, ""),
                       mlp_ratio=t["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / tw)
    vision = CLIPVisionCfg(layers=_blocks(v, "visual."), width=vw, head_width=vw // max(1, vw // 64),
                           patch_size=patch, image_size=grid * patch,
                           mlp_ratio=v["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vw)
    embed = v["visual.proj"].shape[1] if "visual.proj" in v else vw
    return open_clip.CLIP(embed_dim=embed, vision_cfg=vision, text_cfg=text)


def _load_clip_weights(clip: nn.Module, sources: Dict[str, Dict[str, torch.Tensor]]) -> List[str]:
    """Load text weights from ``sources["text"]`` and visual ones from ``sources["image"]`` (bare open_clip keys)."""
    own = clip.state_dict()
    loaded, report = {}, []
    for tower, sd in sources.items():
        if not sd:
            continue
        want = [k for k in own if (k.startswith("visual.") if tower == "image" else not k.startswith("visual."))]
        missing = [k for k in want if k not in sd]
        unused = ("logit_", "text_projection", "visual.proj")        # projections: not used by the encoders here
        bad = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(own[k].shape) and not k.startswith(unused)]
        need_missing = [k for k in missing if tower == "text" or k.startswith("visual.")]
        if tower == "text":
            need_missing = [k for k in need_missing if not k.startswith(("logit_", "text_projection"))]
        if need_missing or bad:
            raise DynamiCrafterInputError(
                f"OpenCLIP {tower} weights", "the ViT-H-14 layout",
                f"{len(need_missing)} missing (e.g. {need_missing[:3]}), {len(bad)} of another shape (e.g. {bad[:3]})",
                "use the DynamiCrafter checkpoint or the open_clip ViT-H-14 laion2b_s32b_b79k file")
        for k in want:
            if k in sd and tuple(sd[k].shape) == tuple(own[k].shape):
                loaded[k] = sd[k].to(own[k].dtype)
        report.append(f"{tower}: {sum(1 for k in want if k in sd)} tensors")
    clip.load_state_dict(loaded, strict=False)
    return report


def clip_weight_sources(paths: Sequence[str]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Find OpenCLIP text/image weights in checkpoint files: ``cond_stage_model.model.*`` / ``embedder.model.*`` of a
    DynamiCrafter checkpoint, or the bare keys of an open_clip file (used for both towers)."""
    out: Dict[str, Dict[str, torch.Tensor]] = {"text": {}, "image": {}}
    for path in paths:
        if not path:
            continue
        with open_checkpoint(path) as ck:
            for part, tower in (("text_encoder", "text"), ("image_encoder", "image")):
                if ck.parts[part] and not out[tower]:
                    out[tower] = {k[len("model."):]: ck.tensor(full) for k, full in ck.parts[part].items()
                                  if k.startswith("model.")}
            rest = ck.parts["rest"]
            if "token_embedding.weight" in rest or "visual.conv1.weight" in rest:
                bare = {k: ck.tensor(full) for k, full in rest.items()}
                if not out["text"] and "token_embedding.weight" in bare:
                    out["text"] = bare
                if not out["image"] and "visual.conv1.weight" in bare:
                    out["image"] = bare
    return out


# ================================================================================================================
# VAE
# ================================================================================================================
def vae_state_from(paths: Sequence[str]) -> Optional[Dict[str, torch.Tensor]]:
    """SD VAE weights (keys without prefix): ``first_stage_model.*`` of a full checkpoint, or a bare VAE file."""
    for path in paths:
        if not path:
            continue
        with open_checkpoint(path) as ck:
            if ck.parts["vae"]:
                return {k: ck.tensor(full) for k, full in ck.parts["vae"].items()}
            rest = ck.parts["rest"]
            if "encoder.conv_in.weight" in rest:
                return {k: ck.tensor(full) for k, full in rest.items()}
    return None


class VideoVAE(nn.Module):
    """Frozen SD VAE (``model.vae``), frames encoded independently in chunks: video [B, 3, T, H, W] -> posterior
    (mean, std) [B, 4, T, H/f, W/f], unscaled, float32."""

    def __init__(self, vae: nn.Module, chunk: int = 8):
        super().__init__()
        self.vae, self.chunk = vae, chunk

    @property
    def downscale(self) -> int:
        return self.vae.downscale

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.vae.encode(video, chunk_frames=self.chunk)
        return mean.float(), std.float()


def vae_config_for(tiny: bool, weight_files: Sequence[str]):
    """The VAE a run builds: SD KL-f8 for real runs; for tiny runs the one the weight files hold (model/tiny.py's
    files carry the real-size VAE), else the tiny test VAE with random weights. Reads headers only."""
    if not tiny:
        return vae_mod.VAEConfig()
    for path in weight_files:
        if not path:
            continue
        with open_checkpoint(path) as ck:
            keys = set(ck.parts["vae"]) or {k for k in ck.parts["rest"] if k.startswith(("encoder.", "decoder."))}
        if keys:
            levels = len({k.split(".")[2] for k in keys if k.startswith("encoder.down.")})
            return vae_mod.VAEConfig() if levels == len(vae_mod.VAEConfig().ch_mult) else vae_mod.TINY_VAE
    return vae_mod.TINY_VAE


def build_vae(tiny: bool, state: Optional[Dict[str, torch.Tensor]], seed: int = 0, dtype: torch.dtype = torch.float32,
              device="cpu") -> nn.Module:
    """The pack's AutoencoderKL (``model.vae``): SD KL-f8, or a tiny one of the same class for tests; a tiny run with
    a VAE in its weight files builds and loads that one."""
    config = vae_mod.VAEConfig() if not tiny or (state is not None and len(
        {k.split(".")[2] for k in state if k.startswith("encoder.down.")}) == len(vae_mod.VAEConfig().ch_mult)) \
        else vae_mod.TINY_VAE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # built in its compute dtype: AutoencoderKL casts its inputs to the dtype it was built with
        model = vae_mod.AutoencoderKL(config, dtype=dtype, device=device)
    if state is not None:
        model.load_state_dict(state, strict=True)
    elif not tiny:
        raise DynamiCrafterInputError("VAE weights", "first_stage_model.* in the init checkpoint or vae_checkpoint",
                                      "none found", "set vae_checkpoint to the SD VAE file")
    return model


# ================================================================================================================
# All encoders together
# ================================================================================================================
@dataclasses.dataclass
class EncoderSpec:
    tiny: bool
    text_width: int
    image_width: int
    weight_files: Tuple[str, ...] = ()
    seed: int = 0


class Encoders(nn.Module):
    """The frozen encoders: VAE (posterior), OpenCLIP text and image towers; frozen, always in eval mode."""

    def __init__(self, spec: EncoderSpec, dtype: torch.dtype = torch.float32, device="cpu", need_pixels: bool = True):
        super().__init__()
        self.spec = spec
        sources = clip_weight_sources(spec.weight_files)
        from_files = not spec.tiny or (bool(sources["text"]) and bool(sources["image"]))
        if spec.tiny and from_files:
            widths = (sources["text"]["token_embedding.weight"].shape[1], sources["image"]["visual.conv1.weight"].shape[0])
            if widths != (spec.text_width, spec.image_width):
                logger.warning("encoders: the files' CLIP towers (text width %d, image width %d) do not fit this model "
                               "(UNet context %d, P input %d): random tiny towers instead", *widths, spec.text_width,
                               spec.image_width)
                from_files = False
        if not spec.tiny:
            for tower in ("text", "image"):
                if not sources[tower]:
                    raise DynamiCrafterInputError(
                        f"OpenCLIP {tower} weights", "cond_stage_model/embedder in the init checkpoint or clip_checkpoint",
                        "none found", "set clip_checkpoint to open_clip's ViT-H-14 laion2b_s32b_b79k file")
            clip = build_open_clip(False)
        elif from_files:                                     # a tiny run from model/tiny.py's file: its own towers
            clip = clip_from_weights(sources)
        else:
            clip = build_open_clip(True, spec.text_width, spec.image_width, seed=spec.seed)
        report = _load_clip_weights(clip, sources) if from_files else ["random tiny weights: no towers in the files"]
        self.text = TextEncoder(clip)
        self.image = ImageEncoder(clip)
        if self.text.width != spec.text_width or self.image.width != spec.image_width:
            raise DynamiCrafterInputError(
                "encoders", f"text width {spec.text_width} and image width {spec.image_width} (the UNet context and P)",
                f"{self.text.width} and {self.image.width}", "use the encoders that match the variant")
        del clip
        vae_state = vae_state_from(spec.weight_files)
        self.vae = VideoVAE(build_vae(spec.tiny, vae_state, seed=spec.seed + 1, dtype=dtype, device=device)) \
            if need_pixels else None
        vae_note = ("SD KL-f8" if not spec.tiny else
                    f"{'SD KL-f8' if self.vae is not None and self.vae.downscale == 8 else 'tiny'} "
                    f"({'from the files' if vae_state is not None else 'random weights: no VAE in the files'})")
        logger.info("encoders: OpenCLIP %s (%s), VAE %s", "tiny" if spec.tiny else "ViT-H-14", ", ".join(report),
                    vae_note)
        self.requires_grad_(False)
        self.eval()
        self.to(device=device, dtype=dtype)

    def train(self, mode: bool = True):  # always frozen, always eval
        return super().train(False)


__all__ = ["Encoders", "EncoderSpec", "TextEncoder", "ImageEncoder", "VideoVAE", "build_open_clip"]

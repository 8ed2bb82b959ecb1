"""Tiny random-weight DynamiCrafter checkpoints in the real key layout: the pipeline check of ``generate.py --tiny``
and the stand-ins the tests load through the same code path as the real files.

- UNet + P: the registry's small config ``tiny`` of the variant (model/variants.py SMALL_CONFIGS: same flags as the
  real variants) under the official prefixes ``model.diffusion_model.`` / ``image_proj_model.``; the file's
  metadata names the config (``dynamicrafter.config``), which is how the loader knows what to build.
- Text / image encoders: OpenCLIP towers in the real key layout (``cond_stage_model.model.*``,
  ``embedder.model.visual.*``) but tiny (width 64, 3 text / 2 vision layers, the real 49408-token vocabulary,
  77 positions, patch 14 at 224 px); the loader derives encoder configs from tensor shapes, as for ViT-H.
- VAE (``first_stage_model.*``): the real-size SD VAE architecture (hosts build it with fixed shapes), fp16.
Everything is seeded: the same bytes on every run.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from .checkpoint import META_CONFIG, META_FAMILY, META_TINY, META_VARIANT
from .detect import family_of
from .resampler import Resampler
from .sketch import TINY_SKETCH, SketchEncoder
from .unet import UNetModel
from .variants import SMALL_CONFIGS, get_variant
from .vae import AutoencoderKL, VAEConfig
from .tooncrafter import DualRefAutoencoderKL

# The towers' widths are those the tiny config's UNet (text context) and P (image tokens) read.
TEXT_WIDTH = SMALL_CONFIGS["tiny"]["unet"]["context_dim"]
VISION_WIDTH = SMALL_CONFIGS["tiny"]["resampler"]["embedding_dim"]
VOCAB = 49408
TINY_METADATA = {META_CONFIG: "tiny", META_TINY: "random weights: a pipeline check, not a model"}


def init_tensor(name: str, shape, gen: torch.Generator) -> torch.Tensor:
    """Deterministic random init by key name: norms ~1, biases small, matrices N(0,1)/sqrt(fan_in)."""
    shape = tuple(shape)
    if len(shape) == 0:  # the 256 model's attn2.alpha gates N(0, 1); OpenCLIP's logit_scale ln(100)
        return torch.randn((), generator=gen) if name.endswith("alpha") else torch.tensor(4.6052)
    last = name.rsplit(".", 1)[-1]
    norm = any(s in name for s in ("norm", "ln_", ".ln", "layer_norm")) and len(shape) == 1
    if norm and last == "weight":
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    if len(shape) == 1 and ("bias" in last or norm):
        return 0.02 * torch.randn(shape, generator=gen)
    if "token_embedding" in name:
        return 0.02 * torch.randn(shape, generator=gen)
    if "positional_embedding" in name:
        return 0.01 * torch.randn(shape, generator=gen)
    fan_in = max(1, math.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def random_tensors(shapes: dict, seed: int, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: init_tensor(k, s, gen).to(dtype).contiguous() for k, s in sorted(shapes.items())}


def _clip_block_shapes(prefix: str, width: int, mlp: int) -> Dict[str, tuple]:
    return {
        f"{prefix}ln_1.weight": (width,), f"{prefix}ln_1.bias": (width,),
        f"{prefix}attn.in_proj_weight": (3 * width, width), f"{prefix}attn.in_proj_bias": (3 * width,),
        f"{prefix}attn.out_proj.weight": (width, width), f"{prefix}attn.out_proj.bias": (width,),
        f"{prefix}ln_2.weight": (width,), f"{prefix}ln_2.bias": (width,),
        f"{prefix}mlp.c_fc.weight": (mlp, width), f"{prefix}mlp.c_fc.bias": (mlp,),
        f"{prefix}mlp.c_proj.weight": (width, mlp), f"{prefix}mlp.c_proj.bias": (width,),
    }


def text_tower_shapes(width: int = TEXT_WIDTH, layers: int = 3, prefix: str = "cond_stage_model.model.") -> dict:
    shapes = {f"{prefix}positional_embedding": (77, width), f"{prefix}text_projection": (width, width),
              f"{prefix}logit_scale": (), f"{prefix}token_embedding.weight": (VOCAB, width),
              f"{prefix}ln_final.weight": (width,), f"{prefix}ln_final.bias": (width,)}
    for i in range(layers):
        shapes.update(_clip_block_shapes(f"{prefix}transformer.resblocks.{i}.", width, 2 * width))
    return shapes


def vision_tower_shapes(width: int = VISION_WIDTH, layers: int = 2, proj: int = 32,
                        prefix: str = "embedder.model.visual.") -> dict:
    shapes = {f"{prefix}class_embedding": (width,), f"{prefix}positional_embedding": (257, width),
              f"{prefix}proj": (width, proj), f"{prefix}conv1.weight": (width, 3, 14, 14),
              f"{prefix}ln_pre.weight": (width,), f"{prefix}ln_pre.bias": (width,),
              f"{prefix}ln_post.weight": (width,), f"{prefix}ln_post.bias": (width,)}
    for i in range(layers):
        shapes.update(_clip_block_shapes(f"{prefix}transformer.resblocks.{i}.", width, 2 * width))
    return shapes


def vae_shapes() -> Dict[str, tuple]:
    """Keys and shapes of the SD VAE under ``first_stage_model.`` (model/vae.py's architecture, built on meta)."""
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig())
    return {"first_stage_model." + k: tuple(t.shape) for k, t in vae.state_dict().items()}


def dualref_extra_shapes() -> Dict[str, tuple]:
    """The 148 keys ToonCrafter's first stage has beyond the SD VAE (model/tooncrafter.py, built on meta)."""
    with torch.device("meta"):
        vae = DualRefAutoencoderKL()
    shapes = {"first_stage_model." + k: tuple(t.shape) for k, t in vae.state_dict().items()}
    plain = vae_shapes()
    return {k: s for k, s in shapes.items() if k not in plain}


def unet_and_p(variant: str, seed: int, config: str = "tiny") -> Dict[str, torch.Tensor]:
    """The UNet and P of ``variant`` in the small ``config`` under the checkpoint prefixes, every tensor re-drawn
    (no zero-init path)."""
    v = get_variant(variant, tiny=config)
    with torch.device("meta"):
        unet, p = UNetModel(v.unet), Resampler(v.resampler)
    gen = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for k, t in unet.state_dict().items():
        sd["model.diffusion_model." + k] = init_tensor(k, t.shape, gen)
    for k, t in p.state_dict().items():
        sd["image_proj_model." + k] = (torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[-1])
                                       if k == "latents" else init_tensor(k, t.shape, gen))
    return sd


def full_checkpoint(variant: str = "512", seed: int = 10) -> Dict[str, torch.Tensor]:
    """One runnable tiny file: UNet + P, text and image towers, real-size fp16 VAE (for ``tooncrafter``: the real-size
    dual-reference first stage, 396 keys)."""
    sd = unet_and_p(variant, seed=seed)
    sd.update(random_tensors(text_tower_shapes(), seed=seed + 1))
    sd.update(random_tensors(vision_tower_shapes(), seed=seed + 2))
    sd.update(random_tensors(vae_shapes(), seed=seed + 3, dtype=torch.float16))
    if get_variant(variant).first_stage == "dualref":
        sd.update(random_tensors(dualref_extra_shapes(), seed=seed + 4, dtype=torch.float16))
    return sd


def sketch_encoder(seed: int = 60) -> Dict[str, torch.Tensor]:
    """ToonCrafter's sketch encoder in the released file's layout (bare ControlNet keys) and the tiny config (the tiny
    ToonCrafter UNet's widths), every tensor drawn (the zero convs too: residuals are not zero). Save it with
    ``variant_metadata(None)``: the config name is how the loader knows the head width."""
    with torch.device("meta"):
        enc = SketchEncoder(TINY_SKETCH)
    gen = torch.Generator().manual_seed(seed)
    return {k: init_tensor(k, t.shape, gen).contiguous() for k, t in enc.state_dict().items()}


def variant_metadata(variant: Optional[str], config: Optional[str] = "tiny") -> Dict[str, str]:
    """The pack's safetensors metadata: the variant (how converted files say which of the 512 family; None leaves it
    to the keys) and the small registry config the weights are built with (None for none)."""
    meta = {"format": "pt"}
    if variant is not None:
        meta[META_VARIANT] = variant
        meta[META_FAMILY] = family_of(variant)
    if config is not None:
        meta.update({META_CONFIG: config, META_TINY: TINY_METADATA[META_TINY]})
    return meta

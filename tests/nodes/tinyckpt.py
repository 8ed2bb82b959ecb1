"""Tiny random-weight DynamiCrafter checkpoints in the real key layout, for the host tests.

What is written, and why:
- UNet + P: ``get_variant(v, tiny=True, clip_dim=...)`` modules of model/ (same flags as the real variants), under
  the official prefixes ``model.diffusion_model.`` / ``image_proj_model.``.
- Text encoder (``cond_stage_model.model.*``) and image encoder (``embedder.model.visual.*``): OpenCLIP towers in
  the real key layout but tiny (width 64, 3 text / 2 vision layers, the real 49408-token vocabulary, 77 positions,
  patch 14 at 224 px). The pack derives the encoder configs from the tensor shapes, the same code that builds the
  real ViT-H towers (the test suite checks it reproduces the host's own ViT-H configs from the real manifest), so no
  multi-GB random encoder is needed.
- VAE (``first_stage_model.*``): the real-size SD VAE (84M parameters, fp16 in the file), random weights, every key
  and shape from the real checkpoint manifest: the host builds its SD VAE with a fixed architecture.
- Files of the 512-family carry the pack's metadata ``dynamicrafter.variant`` (how converted files say which of
  512 / 1024 / 512-interp they are).
Everything is seeded: the same bytes every run. Generated once per process (``functools.lru_cache``).
"""
from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.tests.fixtures import fixtures_root

TEXT_WIDTH = 64
VISION_WIDTH = 64
VOCAB = 49408


def manifest_path() -> Path:
    return fixtures_root().parent / "checkpoint_layout" / "manifest_inference_512_v1.0.json"


def _init(name: str, shape, gen: torch.Generator) -> torch.Tensor:
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


def _block_shapes(prefix: str, width: int, mlp: int) -> Dict[str, tuple]:
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
        shapes.update(_block_shapes(f"{prefix}transformer.resblocks.{i}.", width, 2 * width))
    return shapes


def vision_tower_shapes(width: int = VISION_WIDTH, layers: int = 2, proj: int = 32,
                        prefix: str = "embedder.model.visual.") -> dict:
    shapes = {f"{prefix}class_embedding": (width,), f"{prefix}positional_embedding": (257, width),
              f"{prefix}proj": (width, proj), f"{prefix}conv1.weight": (width, 3, 14, 14),
              f"{prefix}ln_pre.weight": (width,), f"{prefix}ln_pre.bias": (width,),
              f"{prefix}ln_post.weight": (width,), f"{prefix}ln_post.bias": (width,)}
    for i in range(layers):
        shapes.update(_block_shapes(f"{prefix}transformer.resblocks.{i}.", width, 2 * width))
    return shapes


def vae_shapes() -> dict:
    with open(manifest_path(), encoding="utf-8") as f:
        keys = json.load(f)["keys"]
    return {k: tuple(v) for k, v in keys.items() if k.startswith("first_stage_model.")}


def _random(shapes: dict, seed: int, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: _init(k, s, gen).to(dtype).contiguous() for k, s in sorted(shapes.items())}


def unet_and_p(variant: str, clip_dim: int, seed: int) -> Dict[str, torch.Tensor]:
    v = get_variant(variant, tiny=True, clip_dim=clip_dim)
    torch.manual_seed(seed)
    unet, p = UNetModel(v.unet), Resampler(v.resampler)
    gen = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for k, t in unet.state_dict().items():  # re-draw so every path (incl. zero-init ones upstream) is non-trivial
        sd["model.diffusion_model." + k] = _init(k, t.shape, gen)
    for k, t in p.state_dict().items():
        sd["image_proj_model." + k] = (torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[-1])
                                       if k == "latents" else _init(k, t.shape, gen))
    return sd



def _save(path: Path, tensors: Dict[str, torch.Tensor], variant: Optional[str]) -> str:
    meta = {"format": "pt"}
    if variant is not None:
        meta["dynamicrafter.variant"] = variant
        meta["dynamicrafter.family"] = "256" if variant == "256" else "512-family"
    save_file(tensors, str(path), metadata=meta)
    return str(path)


@functools.lru_cache(maxsize=None)
def checkpoints(root: Optional[str] = None) -> Dict[str, str]:
    """Write the test files once per process; returns name -> path.

    - ``full``: 512 tiny UNet + P + text + image encoder + real-size VAE (one file is enough to run)
    - ``interp``: 512-interp tiny UNet + P only (pruned layout, metadata variant)
    - ``v256``: 256 tiny UNet (eps-prediction, learnable ``attn2.alpha`` gates, no metadata: the keys say 256) + P
    - ``other_encoders``: 512 tiny UNet + P (clip_dim 48) with 48-wide text and image towers, no VAE: the
      "wrong encoder" cases (the stand-ins of SD1.5's 768-dim text encoder and a ViT-L clip_vision)
    - ``sd15``: a few keys of an SD1.5 image checkpoint (not DynamiCrafter)
    """
    root = Path(root or tempfile.mkdtemp(prefix="dc-tiny-ckpt-"))
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    full = unet_and_p("512", VISION_WIDTH, seed=10)
    full.update(_random(text_tower_shapes(), seed=11))
    full.update(_random(vision_tower_shapes(), seed=12))
    full.update(_random(vae_shapes(), seed=13, dtype=torch.float16))
    out["full"] = _save(root / "dc_tiny_full.safetensors", full, "512")
    interp = unet_and_p("512-interp", VISION_WIDTH, seed=20)
    out["interp"] = _save(root / "dc_tiny_interp.safetensors", interp, "512-interp")
    out["v256"] = _save(root / "dc_tiny_256.safetensors", unet_and_p("256", VISION_WIDTH, seed=40), None)
    other = unet_and_p("512", 48, seed=30)
    other.update(_random(text_tower_shapes(width=48), seed=31))
    other.update(_random(vision_tower_shapes(width=48), seed=32))
    out["other_encoders"] = _save(root / "dc_tiny_other_encoders.safetensors", other, "512")
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(16, 768)}
    out["sd15"] = _save(root / "sd15_pruned.safetensors", sd15, None)
    return out


def write_image(path: str, width: int, height: int, seed: int) -> str:
    """A deterministic RGB PNG (soft gradient + a coloured disc), as LoadImage reads it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / max(1, width - 1), yy / max(1, height - 1), np.full_like(xx, 0.3)], -1)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, min(width, height) / 4
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img[disc] = rng.uniform(0, 1, 3)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path

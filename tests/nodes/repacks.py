"""Tiny stand-ins of the safetensors repacks users have (hub repo ``Kijai/DynamiCrafter_pruned``, downloaded by the most
used wrapper pack), written in each one's key layout and storage dtype.

The layouts, read from that pack's public loader code (facts only, no weights fetched):
- it builds the official ``LatentVisualDiffusion`` from the yaml its file-name test picks (``toon`` / ``interp`` /
  ``1024`` / ``512`` / ``256``) and loads the file into it after dropping ``cond_stage_model.*`` and ``embedder.*``;
  before 2024-06-02 it loaded the files strictly into the full model, text and image encoders included;
- so the files it listed until 2024-07-01 (``*-fp16``, ``*_v1_bf16``) are the official ``state_dict`` cast to
  fp16/bf16: UNet ``model.diffusion_model.*``, P ``image_proj_model.*``, VAE ``first_stage_model.*``, text tower
  ``cond_stage_model.model.*``, image tower ``embedder.model.visual.*`` and the schedule buffers (``betas`` ...
  ``scale_arr``);
- the ``*pruned*`` files it has listed since are the same without ``cond_stage_model.*`` and ``embedder.*`` (it
  takes the encoders from the host's CLIPLoader / CLIPVisionLoader): UNet + P + VAE + buffers. Their published sizes
  (3.08 GB for 1024 fp16, 3.11 GB for ToonCrafter: the 16.3 M extra decoder parameters) fit UNet + P + VAE in fp16.

No file carries this pack's variant metadata, so the variant comes from the file name. The tiny stand-ins add only
``dynamicrafter.config = tiny`` (what every tiny test file says: build the small registry config) - never a variant.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.checkpoint import META_CONFIG, META_TINY
from comfyui_dynamicrafter.model.schedule import model_buffers
from comfyui_dynamicrafter.model.tiny import (dualref_extra_shapes, random_tensors, text_tower_shapes, unet_and_p,
                                              vae_shapes, vision_tower_shapes)
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.tests.scratch import scratch_dir

PRUNED = ("unet", "image_proj", "vae", "schedule")
FULL = PRUNED + ("text_encoder", "image_encoder")
_PREFIXES = {"unet": ("model.diffusion_model.",), "image_proj": ("image_proj_model.",),
             "vae": ("first_stage_model.",), "text_encoder": ("cond_stage_model.",), "image_encoder": ("embedder.",)}


@dataclasses.dataclass(frozen=True)
class Repack:
    name: str
    dtype: torch.dtype
    parts: Tuple[str, ...]
    variant: str          # what the wrapper's file-name test builds, and what our detection must say


REPACKS: Tuple[Repack, ...] = (
    Repack("dynamicrafter_512_fp16_pruned.safetensors", torch.float16, PRUNED, "512"),
    Repack("dynamicrafter_512_interp_fp16_pruned.safetensors", torch.float16, PRUNED, "512-interp"),
    Repack("dynamicrafter_1024_fp16_pruned.safetensors", torch.float16, PRUNED, "1024"),
    Repack("dynamicrafter-CIL-512-no-watermark-fixed-pruned-fp16.safetensors", torch.float16, PRUNED, "512"),
    Repack("dynamicrafter-CIL-1024-no-watermark-pruned-fp16.safetensors", torch.float16, PRUNED, "1024"),
    Repack("tooncrafter_512_interp-pruned-fp16.safetensors", torch.float16, PRUNED, "tooncrafter"),
    Repack("tooncrafter_512_interp-fp16.safetensors", torch.float16, FULL, "tooncrafter"),
    Repack("dynamicrafter_512_interp_v1_bf16.safetensors", torch.bfloat16, FULL, "512-interp"),
    Repack("dynamicrafter_1024_v1_bf16.safetensors", torch.bfloat16, FULL, "1024"),
    Repack("DynamiCrafter-CIL-512-no-watermark-fp16.safetensors", torch.float16, FULL, "512"),
)
TINY_ONLY = {META_CONFIG: "tiny", META_TINY: "random weights in a repack's layout: a pipeline check, not a model",
             "format": "pt"}


def schedule_buffers(variant: str) -> Dict[str, torch.Tensor]:
    """The official model's persistent schedule buffers (``betas`` ... ``scale_arr``) of ``variant``."""
    return dict(model_buffers(get_variant(variant).schedule))


@functools.lru_cache(maxsize=None)
def _shared_parts(toon: bool) -> Dict[str, torch.Tensor]:
    """Real-size VAE (plus ToonCrafter's decoder keys) and the tiny towers, drawn once for every file."""
    sd = random_tensors(vae_shapes(), seed=63)
    if toon:
        sd.update(random_tensors(dualref_extra_shapes(), seed=64))
    sd.update(random_tensors(text_tower_shapes(), seed=61))
    sd.update(random_tensors(vision_tower_shapes(), seed=62))
    return sd


def repack_tensors(r: Repack, seed: int = 70) -> Dict[str, torch.Tensor]:
    sd = unet_and_p(r.variant, seed=seed)
    sd.update(_shared_parts(r.variant == "tooncrafter"))
    sd.update(schedule_buffers(r.variant))
    keep = tuple(p for part in r.parts if part != "schedule" for p in _PREFIXES[part])
    out = {k: v.to(r.dtype).contiguous() for k, v in sd.items() if k.startswith(keep)}
    if "schedule" in r.parts:
        out.update({k: sd[k].to(r.dtype) for k in schedule_buffers(r.variant)})
    return out


def write_repack(r: Repack, folder: Path, drop: Tuple[str, ...] = ()) -> str:
    """Write ``r`` under its own name into ``folder``; ``drop``: key prefixes to leave out (a broken copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in repack_tensors(r).items() if not k.startswith(drop)} if drop else repack_tensors(r)
    path = folder / r.name
    save_file(sd, str(path), metadata=TINY_ONLY)
    return str(path)


@functools.lru_cache(maxsize=None)
def repack_files(root: Optional[str] = None) -> Dict[str, str]:
    """Every repack of REPACKS written once per process: file name -> path."""
    folder = Path(root or scratch_dir("dc-repacks-"))
    return {r.name: write_repack(r, folder) for r in REPACKS}

"""Tiny random-weight DynamiCrafter checkpoints for the host tests, written once per process (removed at its exit).

The tensors come from model/tiny.py (the same builders ``generate.py --tiny`` uses); here they are written as the
set of files the tests need (see ``checkpoints``). tests/model/test_tiny.py checks that the VAE's key shapes are
the real checkpoint's (manifest).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.tiny import (full_checkpoint, random_tensors, text_tower_shapes, unet_and_p,
                                              variant_metadata, vision_tower_shapes)
from comfyui_dynamicrafter.model.variants import SMALL_CONFIGS
from comfyui_dynamicrafter.tests.fixtures import fixtures_root
from comfyui_dynamicrafter.tests.scratch import scratch_dir


def manifest_path() -> Path:
    return fixtures_root().parent / "checkpoint_layout" / "manifest_inference_512_v1.0.json"


def _save(path: Path, tensors: Dict[str, torch.Tensor], variant: Optional[str], config: Optional[str] = "tiny") -> str:
    save_file(tensors, str(path), metadata=variant_metadata(variant, config))
    return str(path)


@functools.lru_cache(maxsize=None)
def checkpoints(root: Optional[str] = None) -> Dict[str, str]:
    """Write the test files once per process; returns name -> path.

    - ``full``: 512 tiny UNet + P + text + image encoder + real-size VAE (one file is enough to run)
    - ``interp``: 512-interp tiny UNet + P only (pruned layout, metadata variant)
    - ``v256``: 256 tiny UNet (eps-prediction, learnable ``attn2.alpha`` gates, no metadata: the keys say 256) + P
    - ``other_encoders``: 512 UNet + P in the small config ``tiny-clip48`` (P reads 48-wide tokens) with 48-wide
      text and image towers, no VAE: the "wrong encoder" cases (the stand-ins of SD1.5's 768-dim text encoder and
      a ViT-L clip_vision)
    Every DynamiCrafter file names its small config in its metadata, as model/tiny.py writes it.
    - ``sd15``: a few keys of an SD1.5 image checkpoint (not DynamiCrafter)
    """
    root = Path(root or scratch_dir("dc-tiny-ckpt-"))
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    full = full_checkpoint("512", seed=10)
    out["full"] = _save(root / "dc_tiny_full.safetensors", full, "512")
    interp = unet_and_p("512-interp", seed=20)
    out["interp"] = _save(root / "dc_tiny_interp.safetensors", interp, "512-interp")
    out["v256"] = _save(root / "dc_tiny_256.safetensors", unet_and_p("256", seed=40), None)
    other = unet_and_p("512", seed=30, config="tiny-clip48")
    width = SMALL_CONFIGS["tiny-clip48"]["resampler"]["embedding_dim"]
    other.update(random_tensors(text_tower_shapes(width=width), seed=31))
    other.update(random_tensors(vision_tower_shapes(width=width), seed=32))
    out["other_encoders"] = _save(root / "dc_tiny_other_encoders.safetensors", other, "512", "tiny-clip48")
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(16, 768)}
    out["sd15"] = _save(root / "sd15_pruned.safetensors", sd15, None, None)
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


@functools.lru_cache(maxsize=None)
def toon_checkpoints(root: Optional[str] = None) -> Dict[str, str]:
    """ToonCrafter test files (written on first use only: the first stage is real size):

    - ``toon``: tooncrafter tiny UNet + P + towers + the real-size dual-reference first stage (396 keys), no variant
      metadata (the decoder keys say ToonCrafter)
    - ``toon_pruned``: the same UNet + P only, metadata variant ``tooncrafter``
    - ``toon_vae``: the first stage alone (``first_stage_model.*``)
    """
    root = Path(root or scratch_dir("dc-tiny-toon-"))
    root.mkdir(parents=True, exist_ok=True)
    full = full_checkpoint("tooncrafter", seed=50)
    out = {"toon": _save(root / "toon_tiny_full.safetensors", full, None)}
    out["toon_pruned"] = _save(root / "toon_tiny_pruned.safetensors",
                               {k: v for k, v in full.items() if k.startswith(("model.", "image_proj_model."))},
                               "tooncrafter")
    out["toon_vae"] = _save(root / "toon_tiny_vae.safetensors",
                            {k: v for k, v in full.items() if k.startswith("first_stage_model.")}, None, None)
    return out


@functools.lru_cache(maxsize=None)
def sketch_files(root: Optional[str] = None) -> Dict[str, str]:
    """Sketch-guidance test files for the host's controlnet folder:

    - ``sketch``: the tiny ToonCrafter sketch encoder (model/tiny.py, bare keys as sketch_encoder.ckpt, metadata
      config ``tiny``)
    - ``rgb_controlnet``: a tiny SD2.1 image ControlNet (hint_channels 3), the one the sketch loader must refuse
    """
    from comfyui_dynamicrafter.model.tiny import sketch_encoder
    from comfyui_dynamicrafter.tests.nodes import tinycontrolnet

    root = Path(root or scratch_dir("dc-tiny-sketch-"))
    root.mkdir(parents=True, exist_ok=True)
    out = {"sketch": _save(root / "toon_tiny_sketch_encoder.safetensors", sketch_encoder(), None)}
    out["rgb_controlnet"] = tinycontrolnet.write(str(root), "dc_tiny_rgb_controlnet.safetensors")
    return out

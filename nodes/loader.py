"""Loader: a DynamiCrafter checkpoint -> MODEL (ModelPatcher), the image projector P, and from a full official
checkpoint also CLIP, CLIP_VISION and VAE built with the host's own classes.

Text and image encoder configs are derived from the tensor shapes (width, depth, MLP width, positions, patch size),
so the same code builds the real OpenCLIP ViT-H towers (it then gives exactly the host's ``sd2_clip_config.json`` /
``clip_vision_config_h.json``) and the small ones of the registry's small configs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Dict

import torch

import comfy.clip_vision
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.utils
import folder_paths

from ..model.checkpoint import open_checkpoint
from ..model.config import Variant
from ..model.detect import detect_variant, file_variant, validate_checkpoint
from ..model.dtypes import FP8_DTYPES, compute_dtype_names, dtype_from_name
from ..model.errors import DynamiCrafterInputError
from ..model.fileio import atomic_file
from ..model.formats import is_tooncrafter
from ..model.guards import check_state_dict_finite
from ..model.log import logger
from ..model.resampler import Resampler
from ..model.variants import variant_names
from . import compat
from .native import build_model
from .toon import toon_vae_from_state_dict

WEIGHT_DTYPES = ["default"] + compute_dtype_names() + list(FP8_DTYPES)
# Attention heads per width of the known OpenCLIP / OpenAI towers (heads are not visible in tensor shapes).
_TEXT_HEADS = {1024: 16, 768: 12, 1280: 20}
_VISION_HEADS = {1280: 16, 1024: 16, 768: 12, 1664: 16}


# ================================================================================================================
# the image projector P (its own type)
# ================================================================================================================
class ImageProjector:
    """P, the query transformer: CLIP-vision hidden states [B, 257, E] -> image tokens [B, 16*16, D].

    Float32 weights on the host's offload device, moved by the host's memory manager through its ModelPatcher.
    """

    def __init__(self, variant: Variant, state_dict: Dict[str, torch.Tensor]):
        mm = comfy.model_management
        self.variant = variant
        self.load_device = mm.get_torch_device()
        offload = mm.unet_offload_device()
        ops = compat.layer_namespace(comfy.ops.disable_weight_init)
        self.model = Resampler(variant.resampler, dtype=torch.float32, device=offload, operations=ops)
        self.model.load_state_dict(state_dict, strict=True)
        self.model.eval().requires_grad_(False)
        self.patcher = comfy.model_patcher.ModelPatcher(self.model, load_device=self.load_device,
                                                        offload_device=offload)

    @property
    def embedding_dim(self) -> int:
        return self.variant.resampler.embedding_dim

    @property
    def output_dim(self) -> int:
        return self.variant.resampler.output_dim

    @torch.no_grad()
    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        comfy.model_management.load_models_gpu([self.patcher])
        out = self.model(hidden.to(self.load_device, torch.float32))
        return out.to(comfy.model_management.intermediate_device())


# ================================================================================================================
# encoders from the checkpoint, through the host's classes
# ================================================================================================================
def _config_path(config: dict) -> str:
    """The host reads encoder configs from JSON files: one small cached file per derived config."""
    blob = json.dumps(config, sort_keys=True, indent=1)
    folder = os.path.join(tempfile.gettempdir(), "dynamicrafter-encoder-configs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha1(blob.encode()).hexdigest()[:16] + ".json")
    if not os.path.isfile(path):
        with atomic_file(path, "w") as f:
            f.write(blob)
    return path


def _count_blocks(keys, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def text_config_from_shapes(shapes: Dict[str, tuple], prefix: str = "model.") -> dict:
    """HF-style CLIP text config of an OpenCLIP text tower (``token_embedding``, ``transformer.resblocks.N``)."""
    vocab, width = shapes[prefix + "token_embedding.weight"]
    layers = _count_blocks(shapes, prefix)
    mlp = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
    proj = shapes.get(prefix + "text_projection")
    return {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": width, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": mlp, "layer_norm_eps": 1e-05,
        "max_position_embeddings": shapes[prefix + "positional_embedding"][0], "model_type": "clip_text_model",
        "num_attention_heads": _TEXT_HEADS.get(width, max(1, width // 64)), "num_hidden_layers": layers,
        "pad_token_id": 1, "projection_dim": proj[1] if proj else width, "torch_dtype": "float32",
        "vocab_size": vocab,
    }


def vision_config_from_shapes(shapes: Dict[str, tuple], prefix: str = "model.visual.") -> dict:
    """HF-style CLIP vision config of an OpenCLIP ViT (``conv1``, ``positional_embedding``, ``resblocks.N``)."""
    width, _, patch, _ = shapes[prefix + "conv1.weight"]
    grid = int(round(math.sqrt(shapes[prefix + "positional_embedding"][0] - 1)))
    proj = shapes.get(prefix + "proj")
    return {
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": width,
        "image_size": grid * patch, "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0],
        "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
        "num_attention_heads": _VISION_HEADS.get(width, max(1, width // 64)), "num_channels": 3,
        "num_hidden_layers": _count_blocks(shapes, prefix), "patch_size": patch,
        "projection_dim": proj[1] if proj else width, "torch_dtype": "float32",
    }


def _text_classes(config_path: str):
    """SD2-style text encoder classes (penultimate layer + final LayerNorm, pad 0) over a derived config."""
    base_takes_options = compat.text_model_takes_options()

    class DynamiCrafterTextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **_kw):
            kw = dict(device=device, dtype=dtype, layer="hidden", layer_idx=-2, textmodel_json_config=config_path,
                      special_tokens={"start": 49406, "end": 49407, "pad": 0})
            if base_takes_options:
                kw["model_options"] = model_options
            super().__init__(**kw)

    class DynamiCrafterClip(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **_kw):
            super().__init__(device=device, dtype=dtype, clip_name="h", clip_model=DynamiCrafterTextModel,
                             model_options=model_options)

    return DynamiCrafterClip


def build_text_encoder(part: Dict[str, torch.Tensor]):
    """CLIP (host type) from the checkpoint's ``cond_stage_model.*`` (OpenCLIP text tower, prefix stripped)."""
    prefix = "model."
    sd = {k[len(prefix):]: v for k, v in part.items() if k.startswith(prefix)}
    shapes = {prefix + k: tuple(v.shape) for k, v in sd.items()}
    config = text_config_from_shapes(shapes, prefix)
    sd = comfy.utils.transformers_convert(sd, "", "text_model.", config["num_hidden_layers"])
    if "text_projection" in sd:
        sd["text_projection.weight"] = sd.pop("text_projection").transpose(0, 1).contiguous()
    sd.pop("logit_scale", None)
    target = comfy.supported_models_base.ClipTarget(compat.sd2_tokenizer(), _text_classes(_config_path(config)))
    clip = comfy.sd.CLIP(target, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                         **compat.clip_size_kwargs(sd))
    _require_complete(clip.load_sd(sd)[0], "text encoder", "text tower",
                      "use the original checkpoint or load the SD2.1 text encoder with CLIPLoader")
    logger.info("text encoder from the checkpoint: width %d, %d layers", config["hidden_size"],
                config["num_hidden_layers"])
    return clip


def _require_complete(missing, what: str, tower: str, fix: str) -> None:
    """One-line error when the host's encoder lacks weights after loading (position_ids are buffers it makes)."""
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise DynamiCrafterInputError(f"{what} in the checkpoint", f"a complete OpenCLIP {tower}",
                                      f"{len(missing)} missing weights (first {missing[:2]})", fix)


def build_clip_vision(part: Dict[str, torch.Tensor]):
    """CLIP_VISION (host type) from the checkpoint's ``embedder.*`` (OpenCLIP visual tower)."""
    prefix = "model.visual."
    sd = {k: v for k, v in part.items() if k.startswith(prefix)}
    if not sd:
        return None
    config = vision_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, prefix)
    sd = comfy.clip_vision.convert_to_transformers(sd, prefix)
    cv = comfy.clip_vision.ClipVisionModel(_config_path(config))
    _require_complete(cv.load_sd(sd)[0], "image encoder", "visual tower",
                      "use the original checkpoint or load CLIP-ViT-H-14 with CLIPVisionLoader")
    logger.info("image encoder from the checkpoint: width %d, %d layers", config["hidden_size"],
                config["num_hidden_layers"])
    return cv


# ================================================================================================================
# the loader function
# ================================================================================================================
@dataclass
class Loaded:
    model: object
    projector: ImageProjector
    clip: object
    clip_vision: object
    vae: object
    info: str


def load_checkpoint(path: str, variant: str = "auto", weight_dtype: str = "default") -> Loaded:
    """Load a DynamiCrafter checkpoint file into host objects; ``info`` says which variant and why."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise DynamiCrafterInputError("weight_dtype", f"one of {WEIGHT_DTYPES}", repr(weight_dtype),
                                      "pick one of the listed dtypes")
    with open_checkpoint(path) as ck:
        det = detect_variant(ck, variant=None if variant == "auto" else variant)
        v = file_variant(det)
        validate_checkpoint(ck, v)
        unet_sd = {k: ck.tensor(full) for k, full in ck.parts["unet"].items()}
        proj_sd = {k: ck.tensor(full).float() for k, full in ck.parts["image_proj"].items()}
        text = {k: ck.tensor(full) for k, full in ck.parts["text_encoder"].items()}
        vision = {k: ck.tensor(full) for k, full in ck.parts["image_encoder"].items()}
        vae_sd = {k: ck.tensor(full) for k, full in ck.parts["vae"].items()}
        name = ck.name
        for part, sd in (("unet", unet_sd), ("image_proj", proj_sd), ("text_encoder", text),
                         ("image_encoder", vision), ("vae", vae_sd)):  # one reduction per tensor, before any build
            check_state_dict_finite(((ck.parts[part][k], t) for k, t in sd.items()), f"ckpt_name '{name}'")
    storage = None if weight_dtype == "default" else dtype_from_name(weight_dtype, what="weight_dtype", allow_fp8=True)
    model = build_model(v, unet_sd, storage)
    del unet_sd
    projector = ImageProjector(v, proj_sd)
    clip = build_text_encoder(text) if text else None
    clip_vision = build_clip_vision(vision) if vision else None
    toon = bool(vae_sd) and is_tooncrafter(vae_sd)
    if toon:
        vae = toon_vae_from_state_dict(vae_sd, f"ToonCrafter VAE in {name}")
    else:
        vae = comfy.sd.VAE(sd=vae_sd) if vae_sd else None
    parts = [p for p, o in (("CLIP", clip), ("CLIP_VISION", clip_vision), ("VAE", vae)) if o is not None]
    missing = [p for p, o in (("CLIP", clip), ("CLIP_VISION", clip_vision), ("VAE", vae)) if o is None]
    info = (f"{name}: DynamiCrafter {v.name} ({v.description}); {det.reason}."
            + (f" Also loaded from the file: {', '.join(parts)}." if parts else "")
            + (f" Not in the file (outputs are empty; use the host's loaders): {', '.join(missing)}."
               if missing else "")
            + (" VAE: ToonCrafter's first stage; decode with DCN_ToonDecode (VAEDecode would run the plain SD "
               "decoder without the start/end references)." if toon else ""))
    logger.info("%s", info)
    return Loaded(model, projector, clip, clip_vision, vae, info)


# ================================================================================================================
# node
# ================================================================================================================
class DCN_Loader:
    """Load a DynamiCrafter checkpoint (full official .ckpt or pruned/converted .safetensors)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (compat.list_checkpoints(), {
                "tooltip": "DynamiCrafter checkpoint from models/checkpoints, models/dynamicrafter or "
                           "models/diffusion_models. A full official model.ckpt also gives CLIP, CLIP_VISION and VAE."}),
            "variant": (["auto"] + variant_names(), {
                "default": "auto",
                "tooltip": "auto: from the keys (256 vs 512-family), the file's metadata, or the file name; 512, "
                           "1024 and 512-interp have identical weights layouts, so choose here if auto guesses "
                           "wrong. The decision and its reason are shown in the info output."}),
            "weight_dtype": (WEIGHT_DTYPES, {
                "default": "default",
                "tooltip": "Storage dtype of the UNet weights. default: the host decides (fp16/bf16 on most GPUs). "
                           "fp8 halves memory again; layers then compute in the host's cast dtype."}),
        }}

    RETURN_TYPES = ("MODEL", "DCN_IMAGE_PROJ", "CLIP", "CLIP_VISION", "VAE", "STRING")
    RETURN_NAMES = ("model", "image_proj", "clip", "clip_vision", "vae", "info")
    OUTPUT_TOOLTIPS = ("The DynamiCrafter UNet as a host MODEL.", "The image query transformer P.",
                       "SD2.1/OpenCLIP text encoder from a full checkpoint (else empty).",
                       "OpenCLIP ViT-H image encoder from a full checkpoint (else empty).",
                       "SD VAE from a full checkpoint (else empty).", "Which variant was loaded and why.")
    FUNCTION = "load"
    CATEGORY = "DynamiCrafter/loaders"
    DISPLAY_NAME = "DynamiCrafter Loader"
    DESCRIPTION = "Loads a DynamiCrafter image-to-video model natively (host memory management, dtypes, samplers)."

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None):
        # the file-system check, with the folders searched (the choices are the files found there)
        return compat.missing_checkpoint(ckpt_name) or True

    def load(self, ckpt_name, variant="auto", weight_dtype="default"):
        res = load_checkpoint(compat.checkpoint_path(ckpt_name), variant, weight_dtype)
        return {"ui": {"text": [res.info]},
                "result": (res.model, res.projector, res.clip, res.clip_vision, res.vae, res.info)}


NODES = (DCN_Loader,)   # what this file adds to the registry (nodes/__init__.py)

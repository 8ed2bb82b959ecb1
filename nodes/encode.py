"""Image encode: CLIP_VISION + P + IMAGE -> image tokens for the conditional and the unconditional branches.

Reference preprocessing (fixtures README "Embedder"; ``model.conditioning.clip_preprocess``, which the trainer uses
too): the image in [-1, 1] is squashed (not cropped) to 224x224 with kornia's antialiased bicubic resize, mapped to
[0, 1] and normalised with the CLIP mean/std; the tokens are the last transformer layer, 257 x 1280 for ViT-H,
without ``ln_post``. The unconditional tokens are those of an all-zero image in [-1, 1], i.e. mid-grey.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

import comfy.model_management

from ..model.conditioning import CLIP_MEAN, CLIP_STD, clip_preprocess
from ..model.errors import DynamiCrafterInputError
from ..model.guards import check_image_finite
from ..model.log import logger
from . import compat

_KNOWN_VISION = {1024: "a ViT-L/14 image encoder (the SD1.5/SDXL-style clip_vision)",
                 1664: "a ViT-bigG/14 image encoder", 768: "a ViT-B image encoder", 1152: "a SigLIP image encoder",
                 1280: "the OpenCLIP ViT-H/14 image encoder"}


def to_rgb(image: torch.Tensor, what: str) -> Tuple[torch.Tensor, List[str]]:
    """IMAGE [B, H, W, C] -> RGB [B, H, W, 3]; RGBA loses alpha and grayscale is repeated, each with a note."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise DynamiCrafterInputError(what, "an IMAGE [batch, height, width, channels]",
                                      repr(getattr(image, "shape", type(image))), "connect a LoadImage-style output")
    check_image_finite(image, what)
    c = image.shape[-1]
    if c == 3:
        return image, []
    if c == 4:
        return image[..., :3], [f"{what}: RGBA image, alpha channel dropped (RGB is used as it is)"]
    if c == 1:
        return image.repeat(1, 1, 1, 3), [f"{what}: grayscale image, repeated to RGB"]
    raise DynamiCrafterInputError(what, "an RGB image (3 channels; RGBA and grayscale are converted)",
                                  f"{c} channels", "convert the image to RGB first")


def clip_pixels(image_01: torch.Tensor, size: int = 224) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in [0, 1] -> CLIP pixel values [B, 3, size, size] (model/conditioning.py's preprocessing)."""
    return clip_preprocess(image_01.movedim(-1, 1).float() * 2.0 - 1.0, size)  # [B, 3, H, W] in [-1, 1]


def image_size_of(clip_vision) -> int:
    return compat.clip_vision_image_size(clip_vision)


@torch.no_grad()
def vision_hidden_states(clip_vision, image_01: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states [B, 1+patches, width] (no post-LayerNorm) of the host's CLIP_VISION."""
    size = image_size_of(clip_vision)
    pixels = clip_pixels(image_01, size)
    model = getattr(clip_vision, "model", None)
    if model is not None and hasattr(clip_vision, "patcher"):
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        device = getattr(clip_vision, "load_device", comfy.model_management.get_torch_device())
        out = model(pixel_values=pixels.to(device), intermediate_output=-2)
        return out[0].float().to(comfy.model_management.intermediate_device())
    # Unknown CLIP_VISION object: its own encode_image on the already squashed image (crop is then a no-op).
    img = ((pixels * torch.tensor(CLIP_STD).view(1, 3, 1, 1)) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
    return clip_vision.encode_image(img.movedim(1, -1).clamp(0, 1))["last_hidden_state"].float()


def encode_image(clip_vision, projector, image: torch.Tensor):
    """-> (image embeds dict, notes). embeds: {"cond": [1, L, D], "uncond": [1, L, D], "variant": Variant}."""
    if clip_vision is None:
        raise DynamiCrafterInputError("clip_vision", "an image encoder (OpenCLIP ViT-H/14)", "nothing",
                                      "load CLIP-ViT-H-14 with CLIPVisionLoader or use a full DynamiCrafter checkpoint")
    if projector is None or not hasattr(projector, "project"):
        raise DynamiCrafterInputError("image_proj", "the image projector from DCN_Loader",
                                      repr(type(projector).__name__), "connect DCN_Loader's image_proj output")
    rgb, notes = to_rgb(image, "image")
    if rgb.shape[0] > 1:
        notes.append(f"image: batch of {rgb.shape[0]}, the first image is used")
        rgb = rgb[:1]
    grey = torch.full_like(rgb, 0.5)                                       # zero image in [-1, 1]
    hidden = vision_hidden_states(clip_vision, torch.cat([rgb, grey]))     # [2, 257, E]
    width, expected = hidden.shape[-1], projector.embedding_dim
    if width != expected:
        found = f"{width}-dim tokens" + (f" ({_KNOWN_VISION[width]})" if width in _KNOWN_VISION else "")
        want = f"{expected}-dim tokens" + (" (the OpenCLIP ViT-H/14 image encoder, "
                                           "CLIP-ViT-H-14-laion2B-s32B-b79K)" if expected == 1280 else "")
        raise DynamiCrafterInputError("clip_vision", want, found,
                                      "load CLIP-ViT-H-14-laion2B-s32B-b79K with CLIPVisionLoader (the SD1.5 "
                                      "ViT-L clip_vision does not fit) or use the checkpoint's own image encoder")
    tokens = projector.project(hidden)                                     # [2, L, D]
    for n in notes:
        logger.info("%s", n)
    return {"cond": tokens[:1], "uncond": tokens[1:], "variant": projector.variant}, notes


class DCN_ImageEncode:
    """CLIP_VISION + P + IMAGE -> DynamiCrafter image tokens (conditional and mid-grey unconditional)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "OpenCLIP ViT-H/14 image encoder (CLIP-ViT-H-14-laion2B) or "
                                                       "the clip_vision output of DCN_Loader."}),
            "image_proj": ("DCN_IMAGE_PROJ", {"tooltip": "The image projector P from DCN_Loader."}),
            "image": ("IMAGE", {"tooltip": "The conditioning image (the video's first frame). Squashed to 224x224 "
                                           "as the reference does; feed it at the video's aspect ratio."}),
        }}

    RETURN_TYPES = ("DCN_IMAGE_EMBEDS",)
    RETURN_NAMES = ("image_embeds",)
    OUTPUT_TOOLTIPS = ("Image tokens for DCN_Conditioning.",)
    FUNCTION = "encode"
    CATEGORY = "DynamiCrafter/conditioning"
    DISPLAY_NAME = "DynamiCrafter Image Encode"
    DESCRIPTION = "Encodes the image through CLIP vision and the query transformer P (context stream)."

    def encode(self, clip_vision, image_proj, image):
        embeds, notes = encode_image(clip_vision, image_proj, image)
        return {"ui": {"text": notes}, "result": (embeds,)} if notes else (embeds,)


NODES = (DCN_ImageEncode,)   # what this file adds to the registry (nodes/__init__.py)

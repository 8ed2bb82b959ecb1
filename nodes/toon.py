"""ToonCrafter: its first stage as a graph value, its loader and its decode node.

Graph type (decision): the host's own ``VAE``, built from the 248 plain SD-VAE keys of ToonCrafter's first stage
(its encoder is the plain SD encoder, so ``VAEEncode`` and DCN_Conditioning work unchanged), carrying the full
dual-reference model (model/tooncrafter.py) as ``vae.dcn_tooncrafter``. DCN_ToonDecode needs that attribute and
refuses a plain SD VAE in one line; the host's ``VAEDecode`` on it runs the plain SD decoder (no temporal layers,
no references), which the loader's info says.

Concat latent (decision): the conditioning uses the posterior mode as everywhere in the pack (deterministic, the
same on every host); the reference samples it (``get_latent_z_with_hidden_states``), model/tooncrafter.py
``encode_video`` reproduces that when asked. The decode's references (encoder features of the start and end images)
are deterministic either way.
"""
from __future__ import annotations

from typing import Dict

import torch

import comfy.model_management
import comfy.sd

from ..model.checkpoint import open_checkpoint
from ..model.config import ToonDecodeDefaults
from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.tooncrafter import TEMPORAL_LENGTH, DualRefAutoencoderKL, decode_video, load_dualref_vae
from ..model.tiny import vae_shapes
from . import compat
from .conditioning import fit_image
from .encode import to_rgb

_PLAIN = {k[len("first_stage_model."):] for k in vae_shapes()}
_SPLICE = ToonDecodeDefaults().splice_middle  # the widget's default (the registry's: model/config.py)


def toon_vae_from_state_dict(vae_sd: Dict[str, torch.Tensor], what: str):
    """First-stage state dict (prefix stripped) -> host VAE of the plain keys carrying the ToonCrafter model."""
    model = load_dualref_vae({k: v.float() for k, v in vae_sd.items()}, what=what)
    vae = comfy.sd.VAE(sd={k: v for k, v in vae_sd.items() if k in _PLAIN})
    vae.dcn_tooncrafter = model
    return vae


def load_toon_vae(path: str):
    """A ToonCrafter checkpoint (full, or its first stage alone) -> the host VAE carrying the ToonCrafter model."""
    with open_checkpoint(path) as ck:
        keys = ck.parts["vae"]
        if not keys:
            raise DynamiCrafterInputError("ToonCrafter VAE file", "first_stage_model.* keys (a full ToonCrafter "
                                          "checkpoint or its first stage)", f"none in {ck.name}",
                                          "pick the ToonCrafter model.ckpt or its converted VAE file")
        sd = {k: ck.tensor(full) for k, full in keys.items()}
        name = ck.name
    vae = toon_vae_from_state_dict(sd, f"ToonCrafter VAE in {name}")
    logger.info("ToonCrafter VAE from %s: %d keys", name, len(sd))
    return vae


def require_toon_vae(vae) -> DualRefAutoencoderKL:
    model = getattr(vae, "dcn_tooncrafter", None)
    if model is None:
        found = "a plain SD VAE" if vae is not None else "nothing"
        raise DynamiCrafterInputError("vae", "ToonCrafter's VAE (DCN_Loader on a ToonCrafter checkpoint, or "
                                      "DCN_ToonVAELoader)", found,
                                      "connect the ToonCrafter VAE; a plain SD VAE decodes with VAEDecode")
    return model


def toon_decode(vae, samples: dict, start_image, end_image, splice_middle: bool = _SPLICE, memory_cap_mb: int = 0):
    """LATENT [T, 4, h, w] + start/end IMAGE -> IMAGE [T, H, W, 3] as the reference inference decodes."""
    model = require_toon_vae(vae)
    if not isinstance(samples, dict) or not isinstance(samples.get("samples"), torch.Tensor):
        raise DynamiCrafterInputError("samples", "a LATENT", repr(type(samples)), "connect the sampler's LATENT")
    z = samples["samples"]
    if z.ndim == 5 and z.shape[0] == 1:
        z = z[0].transpose(0, 1)
    if z.ndim != 4 or z.shape[1] != model.cfg.embed_dim:
        raise DynamiCrafterInputError("samples", f"one video latent [frames, {model.cfg.embed_dim}, h, w]",
                                      f"shape {list(z.shape)}", "decode one video at a time")
    t, h, w = z.shape[0], z.shape[2], z.shape[3]
    if splice_middle and t < 4:
        raise DynamiCrafterInputError("samples", "at least 4 frames for the middle-frame splice", f"{t} frames",
                                      "turn splice_middle off or sample more frames")
    if end_image is None:
        raise DynamiCrafterInputError("end_image", "the end frame (the decoder attends to the first and last "
                                      "frame)", "nothing", "connect the end image")
    start, _ = to_rgb(start_image, "start_image")
    end, _ = to_rgb(end_image, "end_image")
    if tuple(end.shape[1:3]) != tuple(start.shape[1:3]):
        raise DynamiCrafterInputError("end_image", f"the start image's size {start.shape[2]}x{start.shape[1]}",
                                      f"{end.shape[2]}x{end.shape[1]}", "resize the end image to the start image's size")
    f = model.downscale
    height, width = h * f, w * f
    if t > TEMPORAL_LENGTH:
        logger.info("ToonCrafter decode: %d frames decoded in chunks of %d as the reference does (the temporal layers "
                    "do not see across a chunk)", t, TEMPORAL_LENGTH)
    pair = torch.cat([fit_image(start[:1], width, height)[0], fit_image(end[:1], width, height)[0]])
    video = (pair.movedim(-1, 1) * 2.0 - 1.0).transpose(0, 1)[None]       # [1, 3, 2, H, W] in [-1, 1]
    mm = comfy.model_management
    device = mm.get_torch_device()
    model.to(device)
    try:
        with torch.no_grad():
            _, _, hidden = model.encode_hidden(video.to(device))
            cap = memory_cap_mb or max(1, int(0.8 * mm.get_free_memory(device) / 2 ** 20))  # 0: what is free
            out = decode_video(model, z.float().transpose(0, 1)[None].to(device), hidden,
                               splice_middle=splice_middle, memory_cap_mb=cap)
    finally:
        model.to(mm.unet_offload_device() if device.type != "cpu" else device)
    frames = ((out[0].float().clamp(-1, 1) + 1.0) / 2.0).transpose(0, 1).movedim(1, -1)  # [T, H, W, 3]
    return frames.to(mm.intermediate_device())


class DCN_ToonVAELoader:
    """ToonCrafter's dual-reference VAE from a file (for a pruned UNet-only ToonCrafter model)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (compat.list_checkpoints(), {
            "tooltip": "A full ToonCrafter checkpoint or its first stage (first_stage_model.*, 396 keys)."})}}

    RETURN_TYPES = ("VAE",)
    OUTPUT_TOOLTIPS = ("Host VAE (SD encoder, for VAEEncode / DynamiCrafter Conditioning) carrying the "
                       "ToonCrafter decoder for DynamiCrafter ToonCrafter Decode.",)
    FUNCTION = "load"
    CATEGORY = "DynamiCrafter/loaders"
    DISPLAY_NAME = "DynamiCrafter ToonCrafter VAE Loader"
    DESCRIPTION = "Loads ToonCrafter's first stage (SD encoder + dual-reference video decoder)."

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None):
        # the file-system check, with the folders searched (the choices are the files found there)
        return compat.missing_checkpoint(ckpt_name) or True

    def load(self, ckpt_name):
        return (load_toon_vae(compat.checkpoint_path(ckpt_name)),)


class DCN_ToonDecode:
    """Decode a ToonCrafter video latent with the dual-reference decoder, as the reference inference does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "ToonCrafter's VAE (DynamiCrafter Loader on a ToonCrafter checkpoint, or "
                                       "DynamiCrafter ToonCrafter VAE Loader)."}),
            "samples": ("LATENT", {"tooltip": "The sampled video latent [frames, 4, h, w]."}),
            "start_image": ("IMAGE", {"tooltip": "The start frame given to the conditioning."}),
            "end_image": ("IMAGE", {"tooltip": "The end frame given to the conditioning (same size)."}),
            "splice_middle": ("BOOLEAN", {"default": _SPLICE, "tooltip":
                "As the reference: the two middle frames come from a second decode of the latent without frames "
                "1 and T-2 (about twice the decode time). Needs at least 4 frames."}),
            "memory_cap_mb": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "step": 256, "tooltip":
                "Frames per spatial pass grow while the decode's estimate stays under this many MiB (at least one "
                "frame: the floor is two full-chunk tensors of the top level). 0: 80% of the device's free memory. "
                "Same result either way; the 16-frame chunks are fixed."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded frames.",)
    FUNCTION = "decode"
    CATEGORY = "DynamiCrafter/ToonCrafter"
    DISPLAY_NAME = "DynamiCrafter ToonCrafter Decode"
    DESCRIPTION = ("ToonCrafter decode: 16-frame chunks, the decoder attends to the start and end frames' encoder "
                   "features; optional middle-frame splice as in the reference inference.")

    def decode(self, vae, samples, start_image, end_image, splice_middle=_SPLICE, memory_cap_mb=0):
        return (toon_decode(vae, samples, start_image, end_image, splice_middle, memory_cap_mb),)


NODES = (DCN_ToonVAELoader, DCN_ToonDecode)

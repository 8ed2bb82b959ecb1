"""Recognising checkpoints that are not DynamiCrafter (and the DynamiCrafter markers themselves) from key names.

Each predicate takes key names (full or part-stripped keys; some also accept a key -> shape mapping) and answers
from names and, where a width tells the model apart, one shape. ``describe_foreign`` names what a refused file
looks like, so the loader's error can say "this is an SDXL checkpoint" instead of "keys missing".
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Tuple

Shape = Tuple[int, ...]


def _shape_of(keys, suffix: str) -> Optional[Shape]:
    if not isinstance(keys, Mapping):
        return None
    for k, v in keys.items():
        if k.endswith(suffix):
            shape = v["shape"] if isinstance(v, Mapping) else v
            return tuple(shape) if shape is not None else None
    return None


def is_dynamicrafter_unet(keys: Iterable[str]) -> bool:
    """All three DynamiCrafter UNet markers: temporal conv (``temopral_conv``, sic), ``init_attn``, image K/V ``to_k_ip``."""
    conv = init = ip = False
    for k in keys:
        conv = conv or ".temopral_conv." in k
        init = init or k.startswith("init_attn.") or ".init_attn." in k
        ip = ip or ".to_k_ip." in k
    return conv and init and ip


def has_learnable_alpha(keys: Iterable[str]) -> bool:
    """The 256 model's learnable image-attention gates ``...attn2.alpha`` (16 of them)."""
    return any(k.endswith("attn2.alpha") for k in keys)


def has_old_framestride_name(keys: Iterable[str]) -> bool:
    """Old 256 files name the motion embedding ``framestride_embed`` (reference renames it to ``fps_embedding``)."""
    return any("framestride_embed" in k for k in keys)


def is_tooncrafter(keys: Iterable[str]) -> bool:
    """ToonCrafter's dual-reference VAE decoder (``AutoencoderKL_Dualref``): ``decoder.attn_refinement.*`` keys.

    Diff of the ToonCrafter and 512 manifests: +148 ``first_stage_model.decoder.*`` keys (``attn_refinement``,
    ``time_stack``, ``mix_factor``, ``conv_out.time_mix_conv``). Only ``attn_refinement`` is unique to it: SVD's
    temporal decoder has the other three.
    """
    return any(("decoder.attn_refinement." in k) for k in keys)


def _temporal(keys: Iterable[str]) -> bool:
    return any(m in k for k in keys for m in (".temopral_conv.", ".time_stack.", "time_mixer", "motion_modules."))


def looks_like_svd(keys: Iterable[str]) -> bool:
    """Stable Video Diffusion: VideoUNet ``time_stack`` / ``time_mixer`` blocks inside the diffusion model."""
    return any("diffusion_model." in k and (".time_stack." in k or ".time_mixer." in k) for k in keys)


def looks_like_sdxl(keys) -> bool:
    """SDXL: ``conditioner.embedders`` text encoders, ``label_emb``, cross-attention width 2048, no temporal layers."""
    keys_l = list(keys)
    if _temporal(keys_l):
        return False
    if any(k.startswith("conditioner.embedders.") for k in keys_l) and any(".label_emb." in f".{k}" for k in keys_l):
        return True
    shape = _shape_of(keys, "transformer_blocks.0.attn2.to_k.weight")
    return bool(shape and shape[-1] == 2048)


def looks_like_sd15(keys) -> bool:
    """SD 1.x: CLIP-L text encoder (``cond_stage_model.transformer.``) or cross-attention width 768, no temporal."""
    keys_l = list(keys)
    if _temporal(keys_l) or looks_like_sdxl(keys):
        return False
    if any(k.startswith("cond_stage_model.transformer.") for k in keys_l):
        return True
    shape = _shape_of(keys, "transformer_blocks.0.attn2.to_k.weight")
    return bool(shape and shape[-1] == 768)


def looks_like_sd2(keys) -> bool:
    """SD 2.x: UNet without temporal layers and without image K/V, cross-attention width 1024."""
    keys_l = list(keys)
    if _temporal(keys_l) or looks_like_sdxl(keys) or looks_like_sd15(keys):
        return False
    has_unet = any(k.startswith(("model.diffusion_model.input_blocks.", "input_blocks.")) for k in keys_l)
    return has_unet and not any(".to_k_ip." in k for k in keys_l)


def looks_like_videocrafter(keys: Iterable[str]) -> bool:
    """VideoCrafter text-to-video: the same temporal UNet (``temopral_conv``) but no image K/V (``to_k_ip``)."""
    keys_l = list(keys)
    return any(".temopral_conv." in k for k in keys_l) and not any(".to_k_ip." in k for k in keys_l)


def looks_like_animatediff(keys: Iterable[str]) -> bool:
    """An AnimateDiff motion module (``motion_modules.``)."""
    return any("motion_modules." in k for k in keys)


def looks_like_diffusers(keys: Iterable[str]) -> bool:
    """A diffusers-format UNet (``down_blocks.`` / ``conv_in.weight`` at top level)."""
    keys_l = list(keys)
    return any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys_l) or "conv_in.weight" in keys_l


def looks_like_vae_only(keys: Iterable[str]) -> bool:
    """A stand-alone VAE (encoder/decoder keys, nothing else)."""
    keys_l = list(keys)
    return bool(keys_l) and all(k.split(".", 1)[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv",
                                                       "first_stage_model") for k in keys_l)


def looks_like_clip(keys: Iterable[str]) -> bool:
    """A stand-alone CLIP text or vision tower."""
    keys_l = list(keys)
    return bool(keys_l) and all(k.startswith(("text_model.", "vision_model.", "visual.", "transformer.", "model.",
                                              "logit_scale", "text_projection", "positional_embedding",
                                              "token_embedding", "ln_final", "visual_projection"))
                                for k in keys_l) and not any("diffusion_model" in k for k in keys_l)


_FOREIGN = (
    (looks_like_svd, "a Stable Video Diffusion checkpoint (time_stack/time_mixer blocks)"),
    (looks_like_sdxl, "an SDXL image checkpoint (conditioner.embedders, label_emb, cross-attention width 2048)"),
    (looks_like_sd15, "a Stable Diffusion 1.x image checkpoint (CLIP-L text encoder, cross-attention width 768)"),
    (looks_like_animatediff, "an AnimateDiff motion module (motion_modules.*)"),
    (looks_like_videocrafter, "a VideoCrafter text-to-video UNet (temporal layers but no image K/V 'to_k_ip')"),
    (looks_like_sd2, "a Stable Diffusion 2.x image checkpoint (no temporal layers, no image K/V)"),
    (looks_like_diffusers, "a diffusers-format UNet (down_blocks/up_blocks)"),
    (looks_like_vae_only, "a VAE alone"),
    (looks_like_clip, "a CLIP text or vision encoder alone"),
)


def describe_foreign(keys) -> Optional[str]:
    """What a non-DynamiCrafter key set looks like, or None if unrecognised."""
    for pred, text in _FOREIGN:
        if pred(keys):
            return text
    return None

"""Conditioning: text CONDITIONING + image tokens + VAE + start (and end) image -> positive, image-only and negative
CONDITIONING and an empty video LATENT [T, 4, h, w] (frames as batch, like the host's SVD).

- positive   = positive text + image tokens            (reference ``cond``)
- image_only = negative text + image tokens            (reference ``uc_img``: empty text + real image)
- negative   = negative text + mid-grey image tokens   (reference ``uc``)
All three carry the same concat latent (detail stream): the start frame's VAE latent on every frame, or for
interpolation / loop the start latent on frame 0, the end latent on frame T-1 and zeros between.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

import comfy.model_management

from ..model.conditioning import concat_latent
from ..model.config import Variant
from ..model.errors import DynamiCrafterInputError
from ..model.limits import MAX_FRAMES, RANGES, available_memory, check_run_memory, estimate_run_bytes
from ..model.log import logger
from ..model.plan import VideoPlan, plan_video
from ..model.windows import keyframe_concat
from . import compat
from .encode import to_rgb
from .native import COND_KEY, KNOWN_TEXT_ENCODERS
from .widgets import widget_problem

MAX_SIZE = RANGES["width"][1]


def size_multiple(variant: Variant) -> int:
    """Pixel multiple the UNet can use: VAE factor 8 times 2 per downsampling level."""
    return 8 * 2 ** (len(variant.unet.channel_mult) - 1)


def check_size_widget(name: str, value: int):
    """What the size widgets' range (0 to MAX_SIZE, checked by ``widget_problem``) cannot state: 0 or 64+, step 8."""
    if value == 0:
        return True
    if value < 64 or value % 8:
        return (f"{name}: expected 0 (the model's own resolution) or a multiple of 8 from 64 to {MAX_SIZE} px, "
                f"found {value}; DynamiCrafter needs multiples of 64 (they are snapped)")
    return True


def resolve_size(variant: Variant, width: int, height: int) -> Tuple[int, int, List[str]]:
    notes = []
    if width == 0 or height == 0:
        width, height = width or variant.width, height or variant.height
    m = size_multiple(variant)
    out = []
    for name, v in (("width", width), ("height", height)):
        s = max(m, int(round(v / m)) * m)
        if s != v:
            notes.append(f"{name} {v} snapped to {s} (the {variant.name} UNet needs multiples of {m} px)")
        out.append(s)
    return out[0], out[1], notes


def fit_image(rgb: torch.Tensor, width: int, height: int) -> Tuple[torch.Tensor, Optional[str]]:
    """IMAGE [B, H, W, 3] -> [B, height, width, 3]: centre crop to the aspect ratio, then antialiased resize."""
    b, h, w, _ = rgb.shape
    if (h, w) == (height, width):
        return rgb, None
    x = rgb.movedim(-1, 1)
    scale = max(height / h, width / w)
    ch, cw = min(h, round(height / scale)), min(w, round(width / scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[:, :, top:top + ch, left:left + cw]
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).movedim(1, -1), f"image {w}x{h} centre-cropped and resized to {width}x{height}"


def _check_text(cond, name: str, width: int):
    if not isinstance(cond, list) or not cond:
        raise DynamiCrafterInputError(name, "CONDITIONING from CLIPTextEncode", repr(type(cond).__name__),
                                      "connect a CLIPTextEncode output")
    for entry in cond:
        d = entry[0].shape[-1]
        if d != width:
            found = f"{d}-dim text tokens" + (f" ({KNOWN_TEXT_ENCODERS[d]})" if d in KNOWN_TEXT_ENCODERS else "")
            want = f"{width}-dim text tokens" + (" (the SD2.1 / OpenCLIP ViT-H text encoder)" if width == 1024 else
                                                 " (the text encoder of the DynamiCrafter checkpoint)")
            raise DynamiCrafterInputError(f"{name} conditioning", want, found,
                                          "encode the prompt with the CLIP output of DCN_Loader or the SD2.1 text "
                                          "encoder (CLIPLoader, type stable_diffusion)")


def _with(cond, info: dict):
    out = []
    for text, extra in cond:
        d = dict(extra)
        d[COND_KEY] = info
        out.append([text, d])
    return out


def _vae_latent(vae, rgb: torch.Tensor) -> torch.Tensor:
    """The posterior mode of the host's VAE encode. 2024 hosts sample the posterior with the global RNG (a different
    latent every run); the mode is deterministic and the same on every host. (The reference samples
    mean + std * randn; the SD VAE's posterior std is small.)"""
    if vae is None:
        raise DynamiCrafterInputError("vae", "the SD VAE", "nothing",
                                      "load the SD VAE with VAELoader or use a full DynamiCrafter checkpoint")
    with compat.vae_posterior_mode(vae):
        lat = vae.encode(rgb[..., :3])
    return lat.float().to(comfy.model_management.intermediate_device())


def check_run_fits(variant: Variant, width: int, height: int, frames: int) -> None:
    """Refuse a size the sampling device cannot hold (a lower bound: three guidance branches, 2-byte activations),
    before the VAE or the UNet touch it."""
    have, label = available_memory(comfy.model_management.get_torch_device())
    parts = estimate_run_bytes(variant.unet, width, height, frames, branches=3, dtype_bytes=2)
    check_run_memory(parts, have, label, f"{width}x{height} x {frames} frames", what="width/height/frames")


def _images(start_image, end_image, keyframes, notes: List[str]):
    """(start [1, H, W, 3], end or None, later keyframes [N, H, W, 3] or None) as RGB; an end image of another size
    than the start image is refused."""
    start, n = to_rgb(start_image, "start_image")
    notes += n
    if start.shape[0] > 1:
        notes.append(f"start_image: batch of {start.shape[0]}, the first image is used")
        start = start[:1]
    end = kf = None
    if end_image is not None:
        end, n = to_rgb(end_image, "end_image")
        notes += n
        end = end[:1]
        if tuple(end.shape[1:3]) != tuple(start.shape[1:3]):
            raise DynamiCrafterInputError(
                "end_image", f"the start image's size {start.shape[2]}x{start.shape[1]}",
                f"{end.shape[2]}x{end.shape[1]}", "resize the end image to the start image's size")
    if keyframes is not None:
        kf, n = to_rgb(keyframes, "keyframes")
        notes += n
    return start, end, kf


def _concat(plan: VideoPlan, vae, start, end, kf, width: int, height: int, notes: List[str]) -> torch.Tensor:
    """The plan's concat latent [T, 4, h, w]: the start latent on every frame (image), on the first and last (pair:
    the end image's, or the start's again for a loop), or the keyframes every W-1 frames (chain)."""
    start_fit, n = fit_image(start, width, height)
    if n:
        notes.append(n)
    lat = _vae_latent(vae, start_fit)                                      # [1, 4, h, w]
    if plan.kind == "chain":
        fits = []
        for i in range(kf.shape[0]):
            fit, n = fit_image(kf[i:i + 1], width, height)
            if n:
                notes.append(f"keyframe {i + 2}: {n}" + (" (its size in the keyframes batch: a batch holds one "
                             "size, so ComfyUI's ImageBatch already cropped and scaled it to the first keyframe's; "
                             "batch keyframes of one size)" if kf.shape[0] > 1 else ""))
            fits.append(fit)
        latents = torch.cat([lat] + [_vae_latent(vae, f) for f in fits])   # [N, 4, h, w]
        return keyframe_concat(latents, plan.window, plan.loop)            # [T, 4, h, w]
    last = None
    if plan.kind == "pair":
        last = lat if plan.loop else _vae_latent(vae, fit_image(end, width, height)[0])   # [1, 4, h, w]
    return concat_latent(lat, plan.frames, last)[0].transpose(0, 1).contiguous()       # [T, 4, h, w]


def _fs(variant: Variant, motion: int, notes: List[str]) -> int:
    """The fps / frame-stride input: the widget's, or the model's default for 0 (a note outside the trained range)."""
    fs = motion if motion > 0 else variant.default_motion
    lo, hi = variant.motion_range
    if not lo <= fs <= hi:
        notes.append(f"{variant.motion_input} {fs} is outside the trained range {lo}-{hi} of the {variant.name} model")
    return int(fs)


def build_conditioning(positive, negative, image_embeds, vae, start_image, width: int, height: int, frames: int,
                       motion: int, loop: bool, end_image=None, keyframes=None):
    """-> (positive, image_only, negative, latent, notes). See the module docstring."""
    if not isinstance(image_embeds, dict) or "cond" not in image_embeds:
        raise DynamiCrafterInputError("image_embeds", "the output of DCN_ImageEncode", repr(type(image_embeds)),
                                      "connect DCN_ImageEncode")
    variant: Variant = image_embeds["variant"]
    if frames < 2 or frames > MAX_FRAMES:
        raise DynamiCrafterInputError("frames", f"2 to {MAX_FRAMES}", str(frames), "use 16 (the trained length) or "
                                      "more with context windows")
    tokens, tokens_uc = image_embeds["cond"], image_embeds["uncond"]
    _check_text(positive, "positive", tokens.shape[-1])
    _check_text(negative, "negative", tokens.shape[-1])
    width, height, notes = resolve_size(variant, width, height)
    check_run_fits(variant, width, height, frames)
    start, end, kf = _images(start_image, end_image, keyframes, notes)
    plan, n = plan_video(frames, variant.resampler.video_length, end_image=end is not None,
                         keyframes=0 if kf is None else 1 + kf.shape[0], loop=loop, interp=variant.interp,
                         name=variant.name)
    notes += n
    concat = _concat(plan, vae, start, end, kf, width, height, notes)
    base = {"concat_latent": concat, "fs": _fs(variant, motion, notes), "variant": variant.name, "plan": plan}
    pos = _with(positive, dict(base, image_tokens=tokens))
    img_only = _with(negative, dict(base, image_tokens=tokens))
    neg = _with(negative, dict(base, image_tokens=tokens_uc))
    latent = {"samples": torch.zeros((plan.frames,) + tuple(concat.shape[1:]))}
    for note in notes:
        logger.info("%s", note)
    return pos, img_only, neg, latent, notes


class DCN_Conditioning:
    """Text + image tokens + start/end frames -> the three DynamiCrafter conditionings and an empty video latent."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Prompt from CLIPTextEncode with the SD2.1/OpenCLIP-H text "
                                                         "encoder (DCN_Loader's clip)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt (the reference uses an empty prompt)."}),
                "image_embeds": ("DCN_IMAGE_EMBEDS", {"tooltip": "Image tokens from DCN_ImageEncode."}),
                "vae": ("VAE", {"tooltip": "The SD VAE (DCN_Loader's vae or VAELoader)."}),
                "start_image": ("IMAGE", {"tooltip": "First frame of the video; centre-cropped and resized to "
                                                     "width x height."}),
                "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 16,
                                  "tooltip": "Video width in px; 0 = the model's own (512, 1024 or 256). Snapped to "
                                             "the multiple the UNet needs (64) with a note."}),
                "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIZE, "step": 16,
                                   "tooltip": "Video height in px; 0 = the model's own (320, 576 or 256)."}),
                "frames": ("INT", {"default": 16, "min": 2, "max": MAX_FRAMES, "step": 1,
                                   "tooltip": "Number of frames. The models are trained on 16; longer videos are "
                                              "sampled in 16-frame context windows (DCN_Sampler, DCN_Windows). "
                                              "With keyframes the chain sets the count."}),
                "motion": ("INT", {"default": 0, "min": 0, "max": 60, "step": 1,
                                   "tooltip": "fps (512/1024 models) or frame stride (256 model); 0 = the model's "
                                              "default (24, 10, 3; 5 for 512-interp)."}),
                "loop": ("BOOLEAN", {"default": False,
                                     "tooltip": "Loop: the last frame is the start image again (interpolation "
                                                "model); the end image is then ignored. Over 16 frames (512 model) "
                                                "the windows wrap around instead; with keyframes the chain closes "
                                                "back to the start image."}),
            },
            "optional": {
                "end_image": ("IMAGE", {"tooltip": "Optional last frame for interpolation (same size as the start "
                                                   "image)."}),
                "keyframes": ("IMAGE", {"tooltip": "Optional keyframes after the start image (an IMAGE batch): a "
                                                   "chain of 16-frame interpolations sharing their boundary frames, "
                                                   "(N-1)*15+1 frames for N images; with loop, a last segment back "
                                                   "to the start image (N*15 frames). Each is centre-cropped and "
                                                   "resized to width x height. Use the 512-interp model."}),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "image_only", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Text + image: the fully conditional branch.",
                       "Negative text + image: the image-only branch of dual CFG (DualCFGGuider cond2).",
                       "Negative text + grey image: the unconditional branch.",
                       "Empty video latent, frames as batch.")
    FUNCTION = "condition"
    CATEGORY = "DynamiCrafter/conditioning"
    DISPLAY_NAME = "DynamiCrafter Conditioning"
    DESCRIPTION = "Builds DynamiCrafter's dual-stream conditioning for image-to-video, interpolation and loops."

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None):
        # "0 or a multiple of 8 from 64" is more than a widget range states; naming width and height turns the host's
        # own widget checks off, so run those too
        problem = widget_problem(cls, width=width, height=height)
        for name, v in (("width", width), ("height", height)):
            if problem is True and v is not None:
                problem = check_size_widget(name, int(v))
        return problem

    def condition(self, positive, negative, image_embeds, vae, start_image, width, height, frames, motion, loop,
                  end_image=None, keyframes=None):
        pos, img_only, neg, latent, notes = build_conditioning(positive, negative, image_embeds, vae, start_image,
                                                               width, height, frames, motion, loop, end_image,
                                                               keyframes)
        result = (pos, img_only, neg, latent)
        return {"ui": {"text": notes}, "result": result} if notes else result


NODES = (DCN_Conditioning,)   # what this file adds to the registry (nodes/__init__.py)

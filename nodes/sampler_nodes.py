"""Sampling nodes: the exact reference DDIM sampler, the reference DDIM sigmas for the host's samplers, and (on hosts
with ``comfy.samplers.CFGGuider``) the dual-CFG guider with the reference guidance rescale."""
from __future__ import annotations

from ..model.config import SamplerDefaults
from ..model.errors import DynamiCrafterInputError
from ..model.limits import RANGES
from ..model.sampler import MODES
from . import compat
from .sampling import SPACINGS, DynamiCrafterGuider, reference_sigmas, resolve_spacing, sample_exact
from .widgets import widget_problem
from .windows import DCN_Windows

_CFG = {"min": RANGES["cfg"][0], "max": RANGES["cfg"][1], "step": 0.1}
_D = SamplerDefaults()  # the widgets' defaults (the registry's: model/config.py)


def _check_model(model):
    if getattr(getattr(model, "model", None), "dc_variant", None) is None:
        raise DynamiCrafterInputError("model", "a DynamiCrafter MODEL from DCN_Loader",
                                      type(getattr(model, "model", model)).__name__,
                                      "load the model with DCN_Loader")
    return model.model.dc_variant


def _refuse_cfg_patches(model, node: str) -> None:
    patches = compat.cfg_function_patches(model)
    if patches:  # RescaleCFG & co. patch the host's CFG step, which the pack's dual CFG replaces
        raise DynamiCrafterInputError(
            "model", f"a MODEL without CFG patches ({node} computes DynamiCrafter's dual CFG itself)",
            ", ".join(patches), "remove the CFG-patching node (its job is guidance_rescale here), or use the host's "
            "KSampler / CFGGuider")


class DCN_Sampler:
    """The reference DDIM sampler (exact path), three guidance branches batched into one UNet call per step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "DynamiCrafter MODEL from DCN_Loader."}),
            "positive": ("CONDITIONING", {"tooltip": "positive output of DCN_Conditioning."}),
            "image_only": ("CONDITIONING", {"tooltip": "image_only output of DCN_Conditioning (used by 'multi')."}),
            "negative": ("CONDITIONING", {"tooltip": "negative output of DCN_Conditioning."}),
            "latent": ("LATENT", {"tooltip": "latent output of DCN_Conditioning (sets frames and size)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "step": 1,
                             "tooltip": "Seed of the initial noise (same draw as KSampler) and of the DDIM noise."}),
            "steps": ("INT", {"default": _D.steps, "min": 1, "max": 1000, "step": 1,
                              "tooltip": f"DDIM steps (the reference uses {_D.steps})."}),
            "cfg_text": ("FLOAT", dict(_CFG, default=_D.cfg_text, tooltip="Text guidance scale (1.0 = no guidance).")),
            "cfg_image": ("FLOAT", dict(_CFG, default=_D.cfg_image,
                                        tooltip="Image guidance scale of dual CFG ('multi').")),
            "eta": ("FLOAT", {"default": _D.eta, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": f"DDIM eta: 0 deterministic, {_D.eta} the reference default."}),
            "guidance_rescale": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "Rescale of the guided output towards the conditional one's std "
                                                      "(reference: 0.7 for 512/1024, 0 for 256)."}),
            "spacing": (SPACINGS, {"default": "auto", "tooltip": "DDIM timestep spacing; auto = the model's "
                                                                 "(uniform_trailing for 512/1024, uniform for 256)."}),
            "mode": (list(MODES), {"default": _D.mode, "tooltip": "multi: text + image CFG (three branches); single: "
                                                                 "uc + cfg_text (cond - uc) as the reference's "
                                                                 "default script."}),
        }, "optional": {
            "windows": ("DCN_WINDOWS", {"tooltip": "Context windows (DCN_Windows) for videos longer than 16 frames. "
                                                   "Without it a longer video uses 16-frame windows, overlap 4, "
                                                   "static, pyramid; keyframe chains always use their segments."}),
        }}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The sampled video latent (frames as batch); decode with VAEDecode.",)
    FUNCTION = "sample"
    CATEGORY = "DynamiCrafter/sampling"
    DISPLAY_NAME = "DynamiCrafter Sampler (reference DDIM)"
    DESCRIPTION = "Samples with DynamiCrafter's own DDIM: zero-SNR, dynamic rescale, dual CFG, guidance rescale."

    @classmethod
    def VALIDATE_INPUTS(cls, steps=None, spacing=None):
        # only the check that spans two inputs; naming them turns the host's own widget checks off, so run those too
        problem = widget_problem(cls, steps=steps, spacing=spacing)
        if problem is not True:
            return problem
        if steps is not None and spacing == "uniform" and int(steps) > 500:
            return f"steps: expected at most 500 with spacing 'uniform', found {steps}"
        return True

    def sample(self, model, positive, image_only, negative, latent, seed, steps, cfg_text, cfg_image, eta,
               guidance_rescale, spacing, mode, windows=None):
        _check_model(model)
        if (getattr(model, "model_options", None) or {}).get("context_handler") is not None:
            raise DynamiCrafterInputError(
                "model", "a MODEL without the host's context windows (DCN_Sampler windows the video itself)",
                "ContextWindowsManual on the MODEL", "connect DCN_Windows to DCN_Sampler's windows input, or use "
                "the host's windows with DCN_Guider + DCN_Sigmas + SamplerCustomAdvanced (or KSampler)")
        patches = compat.sampler_loop_patches(model)
        if patches:  # never a silent no-op: its own DDIM loop does not run the host's sampling-loop wrappers
            raise DynamiCrafterInputError(
                "model", "a MODEL without patches of the host's sampling loop (DCN_Sampler runs its own DDIM loop)",
                ", ".join(patches), "for EasyCache / LazyCache use DCN_Guider + DCN_Sigmas with SamplerCustomAdvanced")
        _refuse_cfg_patches(model, "DCN_Sampler")
        return (sample_exact(model, positive, image_only, negative, latent, seed, steps, cfg_text, cfg_image, eta,
                             guidance_rescale, spacing, mode, windows),)


class DCN_Sigmas:
    """The reference DDIM timesteps as SIGMAS: the host's euler sampler on them is DDIM eta=0."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "DynamiCrafter MODEL from DCN_Loader."}),
            "steps": ("INT", {"default": _D.steps, "min": 1, "max": 1000, "step": 1,
                              "tooltip": "Number of steps."}),
            "spacing": (SPACINGS, {"default": "auto", "tooltip": "Timestep spacing; auto = the model's."}),
        }}

    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("Descending sigmas of the DDIM timesteps, then 0.",)
    FUNCTION = "sigmas"
    CATEGORY = "DynamiCrafter/sampling"
    DISPLAY_NAME = "DynamiCrafter DDIM Sigmas"
    DESCRIPTION = "Sigmas of the reference DDIM timesteps for SamplerCustom / SamplerCustomAdvanced."

    def sigmas(self, model, steps, spacing):
        variant = _check_model(model)
        return (reference_sigmas(compat.model_sampling(model), steps, resolve_spacing(variant, spacing)),)


class DCN_Guider:
    """GUIDER for SamplerCustomAdvanced: dual CFG with the reference guidance rescale (current hosts)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "DynamiCrafter MODEL from DCN_Loader."}),
            "positive": ("CONDITIONING", {"tooltip": "positive output of DCN_Conditioning."}),
            "image_only": ("CONDITIONING", {"tooltip": "image_only output of DCN_Conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "negative output of DCN_Conditioning."}),
            "cfg_text": ("FLOAT", dict(_CFG, default=_D.cfg_text, tooltip="Text guidance scale (1.0 = no guidance).")),
            "cfg_image": ("FLOAT", dict(_CFG, default=_D.cfg_image, tooltip="Image guidance scale (multi mode).")),
            "guidance_rescale": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "Reference guidance rescale (0 = off)."}),
            "mode": (list(MODES), {"default": _D.mode, "tooltip": "multi: text + image CFG; single: one scale."}),
        }}

    RETURN_TYPES = ("GUIDER",)
    OUTPUT_TOOLTIPS = ("Guider for SamplerCustomAdvanced.",)
    FUNCTION = "guider"
    CATEGORY = "DynamiCrafter/sampling"
    DISPLAY_NAME = "DynamiCrafter Guider (dual CFG)"
    DESCRIPTION = "DynamiCrafter's dual CFG for the host's samplers (use with DCN_Sigmas and euler for DDIM)."

    def guider(self, model, positive, image_only, negative, cfg_text, cfg_image, guidance_rescale, mode):
        _check_model(model)
        _refuse_cfg_patches(model, "DCN_Guider")
        g = DynamiCrafterGuider(model)
        g.set_conds(positive, image_only, negative)
        g.set_dc_cfg(cfg_text, cfg_image, guidance_rescale, mode)
        return (g,)


NODES = (DCN_Sampler, DCN_Windows, DCN_Sigmas) + ((DCN_Guider,) if compat.has_cfg_guider() else ())

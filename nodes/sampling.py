"""Sampling inside the host: the exact reference DDIM through ``BaseModel.apply_model``, and (on hosts that have
``comfy.samplers.CFGGuider``) a dual-CFG guider with the reference guidance rescale. The pack's ``model_sampling``
(dynamic rescale as a noise schedule) is nodes/model_sampling.py.
"""
from __future__ import annotations

import contextlib

import torch

import comfy.sample
import comfy.samplers
import latent_preview

from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.sampler import combine_guidance, ddim_sample, guidance_branches, rescale_guidance
from ..model.plan import for_frames
from ..model.schedule import ddim_timesteps
from . import compat, control
from .model_sampling import make_model_sampling, reference_sigmas, resolve_spacing  # noqa: F401 (node API)
from .native import COND_KEY
from .windows import LAYOUT_KEY, resolve_windows, window_cond

BRANCH_CONDS = {"cond": "positive", "uc": "negative", "uc_img": "image_only"}
SPACINGS = ["auto", "uniform_trailing", "uniform"]


# ================================================================================================================
# exact path: model/'s ddim_sample over BaseModel.apply_model
# ================================================================================================================
class _StepNoise:
    """Per-step DDIM noise drawn lazily on the CPU from one seeded generator (device independent, in step order)."""

    def __init__(self, n: int, shape, seed: int, zero: bool):
        self.n, self.shape, self.zero = n, tuple(shape), zero
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        if self.zero:
            return torch.zeros(self.shape)
        return torch.randn(self.shape, generator=self.gen)


def step_noise_seed(seed: int) -> int:
    """Seed of the per-step DDIM noise (eta > 0): a stream apart from the initial noise of ``seed``."""
    return (int(seed) + 0x5DEECE66D) % (2 ** 63)


def _branch_conds(base, conditioning, noise, device, prompt_type: str, seed: int):
    """One branch's model conds for a [T, C, h, w] video, through the host's own convert/encode functions."""
    if not conditioning:
        raise DynamiCrafterInputError(f"{prompt_type} conditioning", "one entry from DCN_Conditioning", "nothing",
                                      "connect the conditioning node's outputs")
    conds = compat.convert_cond(conditioning)
    if len(conds) > 1:
        logger.warning("exact DDIM sampler: %s has %d entries; the first is used (combine/area conditioning is not "
                       "part of the reference sampler)", prompt_type, len(conds))
    conds = comfy.samplers.encode_model_conds(base.extra_conds, conds[:1], noise, device, prompt_type,
                                              latent_image=torch.zeros_like(noise), denoise_mask=None, seed=seed)
    t, _, h, w = noise.shape
    out = {}
    for k, c in conds[0]["model_conds"].items():
        out[k] = c.process_cond(batch_size=t, device=device, area=(h, w, 0, 0))
    return out


def _cat_conds(per_branch, device):
    cat = comfy.samplers.cond_cat(per_branch)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in cat.items()}


def _window_conds(conds: dict, index_list, frames: int) -> dict:
    """One branch's processed conds (T rows) for a window: the rows of its frames, the frame count, layout checked."""
    layout = conds[LAYOUT_KEY].cond if LAYOUT_KEY in conds else for_frames(None, frames)
    idx = list(index_list)
    out = {}
    for k, c in conds.items():
        if k in ("c_concat", "dcn_frames", LAYOUT_KEY):
            out[k] = window_cond(k, c, idx, layout)
        elif isinstance(getattr(c, "cond", None), torch.Tensor) and c.cond.shape[0] == frames:
            out[k] = c._copy_with(c.cond[idx])                             # per-frame rows of text / image tokens
        else:
            out[k] = c
    return out


def _exact_model(model, latent: dict):
    """(base model, variant, latent samples [T, 4, h, w]) of a DCN_Sampler call, refused in one line if not ours."""
    base = model.model
    variant = getattr(base, "dc_variant", None)
    if variant is None:
        raise DynamiCrafterInputError("model", "a DynamiCrafter MODEL (DCN_Loader)", type(base).__name__,
                                      "load the model with the DynamiCrafter loader")
    samples = latent["samples"]
    if samples.ndim != 4:
        raise DynamiCrafterInputError("latent", "a video latent [frames, 4, h, w] from DCN_Conditioning",
                                      f"shape {list(samples.shape)}", "connect the conditioning node's LATENT")
    if torch.count_nonzero(samples) > 0:
        logger.warning("exact DDIM sampler starts from pure noise, as the reference; the latent's content is ignored")
    return base, variant, samples


def _rows_per_call(spec, frames: int) -> int:
    """Frames per UNet call and branch: all of them, or the windows one call evaluates."""
    if spec is None or frames <= spec.length:
        return frames
    n_win = len(spec.plan(frames).windows)
    return spec.length * min(spec.max_windows_per_call or n_win, n_win)


def _branch_controls(model, conds: dict, names, windowed: bool, frames: int):
    """Each branch's ControlNet (None without one) and the control models to load; refused under the pack's windows."""
    controls = {n: control.branch_control(compat.convert_cond(conds[BRANCH_CONDS[n]])) for n in names}
    if windowed and any(c is not None for c in controls.values()):
        raise DynamiCrafterInputError(
            "windows", "no ControlNet on the conditioning while DCN_Sampler windows the video",
            f"a ControlNet and DCN_Windows ({frames} frames)", "sample without DCN_Windows, or use KSampler / "
            "SamplerCustom, whose ControlNet residuals the UNet adds")
    control_models = control.prepare(model, controls)
    if control_models:
        compat.load_models(control_models)
    return controls, control_models


def _unet_call(model, c: dict, xk, sigma, topts: dict):
    """One host apply_model call (through the patcher's model_function_wrapper when set); the raw v / eps out."""
    base = model.model
    wrapper = model.model_options.get("model_function_wrapper")
    sink = topts["dcn_output_sink"]
    if wrapper is not None:
        wrapper(base.apply_model, {"input": xk, "timestep": sigma, "c": c, "cond_or_uncond": topts["cond_or_uncond"]})
    else:
        base.apply_model(xk, sigma, **c)
    if not sink:
        raise RuntimeError("the DynamiCrafter UNet did not run (a model patch replaced it?)")
    return sink[-1].float()


def _make_denoise(model, names, prepared: dict, controls: dict, control_models, frames: int, shape):
    """model/'s denoiser ``(x [K n, 4, t, h, w], t, branches, windows)`` over the host's apply_model: the latent as
    the host's variable, the branches' (or windows') conds batched, ControlNet residuals, the UNet output back."""
    base, device = model.model, model.load_device
    ch, h, w = shape
    ms = base.model_sampling
    batched = _cat_conds([prepared[n] for n in names], device)
    topts_base = compat.transformer_options(model)  # with the patcher's wrappers (TorchCompileModel, ...)
    sigmas_table = ms.sigmas.to(device)

    def denoise(x, t, branches, wins=None):
        compat.throw_if_interrupted()
        if tuple(branches) != tuple(names):
            raise RuntimeError(f"sampler asked for branches {branches}, prepared {names}")
        k, n, length = len(branches), 1 if wins is None else len(wins), x.shape[2]   # length: T or the window's
        xf = x.permute(0, 2, 1, 3, 4).reshape(k * n * length, ch, h, w)   # [(K n t), 4, h, w]
        sigma = sigmas_table[t.to(device)].repeat_interleave(length)       # [(K n t)]
        xk = xf / ms.input_scale(sigma, xf.ndim)                           # host variable; apply_model rescales
        topts = dict(topts_base, dcn_output_sink=[], cond_or_uncond=[names.index(b) for b in branches
                                                                     for _ in range(n)], sigmas=sigma[:1])
        cond = batched if wins is None else _cat_conds(                    # rows: branch, window, frame
            [_window_conds(prepared[b], win, frames) for b in branches for win in wins], device)
        c = dict(cond, transformer_options=topts)
        if control_models:  # the ControlNets' residuals for this batch (no windows: refused before sampling)
            residuals = control.step_control(controls, branches, xk, sigma, cond, frames, topts)
            if residuals is not None:
                c["control"] = residuals
        out = _unet_call(model, c, xk, sigma, topts)                       # raw v / eps [(K n t), 4, h, w]
        return out.reshape(k * n, length, ch, h, w).permute(0, 2, 1, 3, 4)  # [K n, 4, t, h, w]
    return denoise


def _preview(model, steps: int):
    """The host's progress bar and latent previews, with the interrupt check, as ddim_sample's callback."""
    preview = latent_preview.prepare_callback(model, steps)

    def callback(i, total, x_prev, pred_x0):
        compat.throw_if_interrupted()
        preview(i, pred_x0[0].transpose(0, 1), x_prev[0].transpose(0, 1), total)   # [t, 4, h, w] for the previewer
    return callback


def sample_exact(model, positive, image_only, negative, latent: dict, seed: int, steps: int, cfg_text: float,
                 cfg_image: float, eta: float, guidance_rescale: float, spacing: str = "auto", mode: str = "multi",
                 windows=None):
    """The reference DDIM (model/'s ``ddim_sample``) with the three conditionings batched into ONE host
    ``apply_model`` call per step, the host's progress bar and previews, and the interrupt check every step.

    Initial noise: the host's ``prepare_noise(latent, seed)`` (what KSampler draws for the same seed), as
    [1, 4, T, h, w]. Per-step noise (eta > 0): a CPU generator seeded with ``step_noise_seed(seed)``.
    ``windows`` (a WindowSpec from DCN_Windows, or None): context windows for videos longer than the trained length
    (``nodes.windows.resolve_windows``: keyframe chains always run on their segments), each window's conditioning
    sliced from the full-length one; FreeNoise uses ``seed``. Returns a LATENT (host latent scale).
    """
    base, variant, samples = _exact_model(model, latent)
    frames, ch, h, w = samples.shape
    spacing = resolve_spacing(variant, spacing)
    names = guidance_branches(mode, cfg_text)
    conds = {"positive": positive, "negative": negative, "image_only": image_only}
    info = next((c[1].get(COND_KEY) for c in (positive or []) if isinstance(c[1].get(COND_KEY), dict)), None) or {}
    spec = resolve_windows(windows, info, frames, variant.resampler.video_length)
    noise = comfy.sample.prepare_noise(samples, seed)                      # [T, 4, h, w], CPU, host's RNG rule
    compat.load_models([model], model.memory_required([len(names) * _rows_per_call(spec, frames), ch, h, w]))
    device = model.load_device
    prepared = {n: _branch_conds(base, conds[BRANCH_CONDS[n]], noise.to(device), device, BRANCH_CONDS[n], seed)
                for n in names}
    controls, control_models = _branch_controls(model, conds, names, spec is not None and frames > spec.length,
                                                frames)
    denoise = _make_denoise(model, names, prepared, controls, control_models, frames, (ch, h, w))
    x_T = noise.to(device=device, dtype=torch.float32).transpose(0, 1).unsqueeze(0)  # [1, 4, t, h, w]
    n_steps = len(ddim_timesteps(steps, spacing, variant.schedule.timesteps))
    step_noise = _StepNoise(n_steps, x_T.shape, step_noise_seed(seed), zero=(eta == 0))
    unet = base.diffusion_model
    # the conds are the same every step: their text/image K/V are projected once per run (exact; freed after it)
    with unet.context_cache() if hasattr(unet, "context_cache") else contextlib.nullcontext():
        try:
            out = ddim_sample(denoise, x_T, variant.schedule, steps, eta=eta, spacing=spacing, cfg_text=cfg_text,
                              cfg_image=cfg_image, guidance_rescale=guidance_rescale, mode=mode, noise=step_noise,
                              callback=_preview(model, steps), windows=spec, freenoise_seed=seed)
        finally:
            control.cleanup(controls)
    video = out[0].transpose(0, 1)                                         # [t, 4, h, w] model space
    result = dict(latent, samples=base.process_latent_out(video.float()).to(
        comfy.model_management.intermediate_device()))
    result.pop("noise_mask", None)
    return result


# ================================================================================================================
# guider (current hosts)
# ================================================================================================================
if compat.has_cfg_guider():
    class DynamiCrafterGuider(comfy.samplers.CFGGuider):
        """Dual CFG ``uc + s_img (uc_img - uc) + s_txt (cond - uc_img)`` (or single CFG) with the reference guidance
        rescale against the fully conditional output, std over the whole video; the 3 branches in one batch."""

        def set_conds(self, positive, image_only, negative):
            self.inner_set_conds({"positive": positive, "image_only": image_only, "negative": negative})

        def set_dc_cfg(self, cfg_text: float, cfg_image: float, guidance_rescale: float, mode: str):
            self.cfg = cfg_text
            self.cfg_text, self.cfg_image, self.guidance_rescale, self.mode = cfg_text, cfg_image, guidance_rescale, mode
            self.branches = guidance_branches(mode, cfg_text)

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            conds = [self.conds.get(BRANCH_CONDS[n]) for n in self.branches]
            outs = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
            if len(outs) == 1:
                return outs[0]
            ms = self.inner_model.model_sampling
            to_v = getattr(ms, "model_output_from_denoised", None)
            if to_v is None:  # another model_sampling patched in: guide on denoised (same CFG, rescale on x0)
                parts = {n: o.reshape(1, -1) for n, o in zip(self.branches, outs)}
                guided = combine_guidance(parts, self.cfg_text, self.cfg_image)
                if self.guidance_rescale > 0:
                    guided = rescale_guidance(guided, parts["cond"], self.guidance_rescale)
                return guided.reshape(x.shape)
            parts = {n: to_v(timestep, o, x).reshape(1, -1) for n, o in zip(self.branches, outs)}  # one video/row
            guided = combine_guidance(parts, self.cfg_text, self.cfg_image)
            if self.guidance_rescale > 0:
                guided = rescale_guidance(guided, parts["cond"], self.guidance_rescale)
            return ms.calculate_denoised(timestep, guided.reshape(x.shape), x)
else:  # pragma: no cover - 2024-03 hosts
    DynamiCrafterGuider = None

"""The reference DDIM sampler of DynamiCrafter as one pure function over a batched denoiser.

Reproduces `lvdm/models/samplers/ddim.py` (single CFG) and `ddim_multiplecond.py` (text + image CFG) as measured in
``shared/fixtures/README.md`` section 4: guidance combination, guidance rescale against the fully conditional
output, v/eps conversion with the model buffers indexed by the DDPM timestep, dynamic rescale of pred_x0, and the
DDIM update with every per-step scalar rounded to float32. Two deliberate differences, both only where the reference
returns NaN: ``1 - a_prev - sigma^2`` is clamped at 0, and "uniform_trailing" never yields timestep -1 (see
`schedule.ddim_timesteps`). The guidance branches run as ONE batched denoiser call per step instead of the
reference's separate calls (same math; batching changes float32 results only at the 1e-6 level).

Context windows (``windows=WindowSpec``, model/windows.py) for videos longer than the trained length: every step,
each window's guidance branches are evaluated (``max_windows_per_call`` windows per denoiser call), each branch's
output is fused over the full length with the plan's per-frame weights, and guidance + guidance rescale then act on
the fused full-length outputs (the rescale's std is the whole video's, as in ComfyUI's context windows, which run
inside ``calc_cond_batch`` before the guider combines the conds). A plan of one window over all frames (T <= W) is
exactly the unwindowed sampler.

RNG consumption matches the reference: after the denoiser call of every step, including eta = 0, one
``torch.randn(x.shape)`` float32 draw on ``x.device`` (from ``generator`` or, when it is None, the global RNG as the
reference's `noise_like`). Given the same RNG state before sampling, the same noise is drawn. Passing ``noise``
injects per-step noise instead and draws nothing.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .config import ScheduleConfig
from .errors import DynamiCrafterInputError
from .guards import check_latent_finite
from .log import logger
from .schedule import (
    check_parameterization, ddim_schedule, model_buffers, pred_x0_eps_from_eps, pred_x0_eps_from_v,
)
from .windows import WindowPlan, WindowSpec, freenoise_noise

BRANCHES = ("cond", "uc", "uc_img")
MODES = ("multi", "single")

Denoise = Callable[..., torch.Tensor]  # (x, t, branches) or, windowed, (x, t, branches, windows)


def guidance_branches(mode: str, cfg_text: float) -> Tuple[str, ...]:
    """Reference rule: unguided (cond only) iff the text scale is exactly 1.0; else cond+uc (single) or +uc_img (multi)."""
    if mode not in MODES:
        raise DynamiCrafterInputError("DDIM guidance mode", f"one of {list(MODES)}", repr(mode),
                                      "use 'multi' (text + image CFG) or 'single'")
    if cfg_text == 1.0:
        return ("cond",)
    return ("cond", "uc", "uc_img") if mode == "multi" else ("cond", "uc")


def combine_guidance(outs: Dict[str, torch.Tensor], cfg_text: float, cfg_image: Optional[float]) -> torch.Tensor:
    """Multi-condition CFG ``uc + cfg_img*(uc_img-uc) + s_txt*(cond-uc_img)`` (DynamiCrafter), or ``uc + s*(cond-uc)``."""
    if len(outs) == 1:
        return outs["cond"]
    if "uc_img" in outs:
        uc, uc_img, cond = outs["uc"], outs["uc_img"], outs["cond"]
        return uc + cfg_image * (uc_img - uc) + cfg_text * (cond - uc_img)
    return outs["uc"] + cfg_text * (outs["cond"] - outs["uc"])


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Lin et al. 2023 section 3.4 CFG rescale: ``r*v*std(cond)/std(v) + (1-r)*v``, unbiased std over non-batch dims."""
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_cfg = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_cfg)
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided


def _step_noise(noise, k: int, n: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(noise, torch.Tensor):
        count = noise.shape[0] if noise.ndim == like.ndim + 1 else -1
    else:
        count = len(noise)
    if count < n:
        raise DynamiCrafterInputError(
            "DDIM noise", f"{n} per-step tensors of shape {tuple(like.shape)} (a list or a [{n}, ...] tensor)",
            f"{count if count >= 0 else 'a tensor of shape ' + str(tuple(noise.shape))}",
            "pass one noise tensor per sampling step, or pass generator= instead",
        )
    nz = noise[k]
    if tuple(nz.shape) != tuple(like.shape):
        raise DynamiCrafterInputError("DDIM noise", f"step tensors of shape {tuple(like.shape)}",
                                      f"step {k} of shape {tuple(nz.shape)}", "match the latent shape")
    return nz.to(device=like.device, dtype=like.dtype)


def _check_out(out, shape) -> None:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape):
        raise DynamiCrafterInputError("DDIM denoise output", f"a tensor of shape {tuple(shape)}",
                                      repr(getattr(out, "shape", type(out))),
                                      "return the raw model output for every (branch, batch) row")


def windowed_outputs(denoise: Denoise, x: torch.Tensor, t: int, branches: Tuple[str, ...], plan: WindowPlan,
                     per_call: int) -> Dict[str, torch.Tensor]:
    """Each branch's raw output over all frames of x [B, C, T, ...], fused from the plan's windows (frames dim 2).

    Per call, ``per_call`` windows (0 = all) go to ``denoise(x_in, t_in, branches, windows)`` with x_in
    [K*n*B, C, W, ...] ordered branch-major, then window, then batch; ``windows`` is the n index lists, so the
    denoiser slices (or builds) each window's conditioning. Returns {branch: [B, C, T, ...]} in x's dtype."""
    B, K = x.shape[0], len(branches)
    fused = {b: torch.zeros_like(x) for b in branches}
    n_all = len(plan.windows)
    per_call = n_all if per_call <= 0 else per_call
    for c0 in range(0, n_all, per_call):
        chunk = plan.windows[c0:c0 + per_call]
        idx = [torch.tensor(w, device=x.device) for w in chunk]
        xw = torch.cat([x.index_select(2, i) for i in idx])                # [(n B), C, W, ...] window-major
        x_in = xw.repeat((K,) + (1,) * (x.ndim - 1))                        # [(K n B), C, W, ...] branch-major
        t_in = torch.full((x_in.shape[0],), t, dtype=torch.long, device=x.device)
        out = denoise(x_in, t_in, branches, chunk)
        _check_out(out, x_in.shape)
        out = out.to(x.dtype)
        for kb, b in enumerate(branches):
            for j, i in enumerate(idx):
                rows = out[(kb * len(chunk) + j) * B:(kb * len(chunk) + j + 1) * B]      # [B, C, W, ...]
                w = plan.weights[c0 + j].to(x.dtype).to(x.device).reshape((1, 1, -1) + (1,) * (x.ndim - 3))
                fused[b].index_add_(2, i, rows * w)
    return fused


def _scalar(value, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------------------------------
# branch evaluation: the plain call, and context windows as a wrapper around the same denoiser

BranchEval = Callable[[torch.Tensor, int, Tuple[str, ...], int], Dict[str, torch.Tensor]]


def plain_branches(denoise: Denoise) -> BranchEval:
    """One denoiser call over all frames: x repeated branch-major, each branch's rows split back out."""
    def evaluate(x: torch.Tensor, t: int, branches: Tuple[str, ...], step: int) -> Dict[str, torch.Tensor]:
        K = len(branches)
        x_in = x.repeat((K,) + (1,) * (x.ndim - 1))                          # [(K B), C, T, H, W] branch-major
        t_in = torch.full((x_in.shape[0],), t, dtype=torch.long, device=x.device)
        out = denoise(x_in, t_in, branches)
        _check_out(out, x_in.shape)
        return dict(zip(branches, out.to(x.dtype).chunk(K, dim=0)))        # {branch: [B, C, T, H, W]}
    return evaluate


def windowed_branches(denoise: Denoise, windows: WindowSpec) -> BranchEval:
    """Context windows (module docstring): each step's plan fused by ``windowed_outputs``; one window = plain."""
    plain = plain_branches(denoise)

    def evaluate(x: torch.Tensor, t: int, branches: Tuple[str, ...], step: int) -> Dict[str, torch.Tensor]:
        plan = windows.plan(x.shape[2], step=step)
        if plan.single:
            return plain(x, t, branches, step)
        return windowed_outputs(denoise, x, t, branches, plan, windows.max_windows_per_call)
    return evaluate


# --------------------------------------------------------------------------------------------------------------------
# the parts of a DDIM run


def _check_inputs(cfg: ScheduleConfig, x_T, guidance_rescale, mode: str, cfg_text: float,
                  cfg_image: Optional[float]) -> Tuple[str, Tuple[str, ...], Optional[float]]:
    """The parameterization, the guidance branches and the image scale (reference default: the text scale)."""
    param = check_parameterization(cfg)
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2 or not x_T.is_floating_point():
        raise DynamiCrafterInputError("DDIM x_T", "a floating tensor [B, C, T, H, W]",
                                      repr(getattr(x_T, "shape", type(x_T))), "pass the initial noise latent")
    if not isinstance(guidance_rescale, (int, float)) or guidance_rescale < 0:
        raise DynamiCrafterInputError("guidance_rescale", "a number >= 0 (0.7 for 512/1024)", repr(guidance_rescale),
                                      "use 0.0 to disable")
    branches = guidance_branches(mode, cfg_text)
    if mode == "multi" and cfg_image is None:
        cfg_image = cfg_text  # reference multicond default
    return param, branches, cfg_image


def _schedule(cfg: ScheduleConfig, steps: int, eta: float, spacing: str, param: str) -> Dict[str, object]:
    """The DDIM timesteps and the per-step scalars, float32 as the reference's torch.full(size, value)."""
    buffers = model_buffers(cfg)
    sched = ddim_schedule(cfg, steps, eta, spacing, buffers)
    ts = sched["ddim_timesteps"].tolist()
    if len(ts) != steps:
        logger.info("DDIM %s with %d steps runs %d timesteps (reference spacing)", spacing, steps, len(ts))
    if param == "eps" and bool((sched["ddim_alphas"] <= 0).any()):
        raise DynamiCrafterInputError("DDIM schedule", "alphas_cumprod > 0 at every sampled t for eps-prediction",
                                      "a zero-SNR timestep", "disable rescale_betas_zero_snr for eps models")
    f32 = {k: v.numpy().astype(np.float32) for k, v in sched.items() if k != "ddim_timesteps"}
    f32["sqrt_ac"] = buffers["sqrt_alphas_cumprod"].numpy()
    f32["sqrt_1m_ac"] = buffers["sqrt_one_minus_alphas_cumprod"].numpy()
    return {"ts": ts, "f32": f32}


def _start_latent(x_T: torch.Tensor, generator, noise, windows: Optional[WindowSpec],
                  freenoise_seed: int) -> torch.Tensor:
    """x_T in the working dtype (float32, float64 if given), checked against the windows, FreeNoise applied."""
    work = torch.float64 if x_T.dtype == torch.float64 else torch.float32
    x = x_T.detach().to(work)
    if generator is not None and noise is None and torch.device(generator.device).type != x.device.type:
        raise DynamiCrafterInputError("DDIM generator", f"a torch.Generator on {x.device.type}",
                                      f"one on {generator.device}", "create the generator on the latent's device")
    if windows is None:
        return x
    if x.ndim < 4:
        raise DynamiCrafterInputError("DDIM x_T with context windows", "a video latent [B, C, T, H, W]",
                                      f"shape {tuple(x.shape)}", "pass frames on dim 2 or no windows")
    windows.check(x.shape[2])
    if windows.freenoise and x.shape[2] > windows.length:
        x = freenoise_noise(x, windows.length, windows.overlap, freenoise_seed, dim=2)
    return x


def _pred_x0_eps(cfg: ScheduleConfig, param: str, x: torch.Tensor, model_output: torch.Tensor, t: int, index: int,
                 f32: Dict[str, np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """pred_x0 and eps from the guided v or eps output, then the dynamic rescale of pred_x0 (reference order)."""
    if param == "v":
        pred_x0, e_t = pred_x0_eps_from_v(x, model_output, _scalar(f32["sqrt_ac"][t], x),
                                          _scalar(f32["sqrt_1m_ac"][t], x))
    else:
        pred_x0, e_t = pred_x0_eps_from_eps(x, model_output, _scalar(np.sqrt(f32["ddim_alphas"][index]), x),
                                            _scalar(f32["ddim_sqrt_one_minus_alphas"][index], x))
    if cfg.use_dynamic_rescale:
        pred_x0 = pred_x0 * _scalar(f32["ddim_scale_arr_prev"][index] / f32["ddim_scale_arr"][index], x)
    return pred_x0, e_t


def _ddim_update(x: torch.Tensor, pred_x0: torch.Tensor, e_t: torch.Tensor, eps_noise: torch.Tensor, index: int,
                 f32: Dict[str, np.ndarray]) -> torch.Tensor:
    """DDIM (Song et al. 2020, eq. 12): ``sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``."""
    a_prev = f32["ddim_alphas_prev"][index]
    sigma = f32["ddim_sigmas"][index]
    # The reference takes sqrt of this float32 residual; it is 0 in exact arithmetic at t=T-1 with zero SNR and
    # eta=1 but can round to -6e-8, which makes the reference return all-NaN. Clamped at 0 on purpose.
    residual = np.float32(1.0) - a_prev - sigma * sigma
    dir_coef = np.sqrt(max(residual, np.float32(0.0)))
    return _scalar(np.sqrt(a_prev), x) * pred_x0 + _scalar(dir_coef, x) * e_t + _scalar(sigma, x) * eps_noise


def _draw_noise(noise, k: int, n: int, x: torch.Tensor, generator) -> torch.Tensor:
    """The step's injected noise, else one float32 randn draw of x's shape (the reference's RNG use)."""
    if noise is not None:
        return _step_noise(noise, k, n, x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


@torch.no_grad()
def ddim_sample(
    denoise: Denoise,
    x_T: torch.Tensor,
    cfg: ScheduleConfig,
    steps: int,
    *,
    eta: float = 0.0,
    spacing: str = "uniform_trailing",
    cfg_text: float = 1.0,
    cfg_image: Optional[float] = None,
    guidance_rescale: float = 0.0,
    mode: str = "multi",
    noise: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None,
    return_trajectory: bool = False,
    windows: Optional[WindowSpec] = None,
    freenoise_seed: int = 0,
):
    """Reference DynamiCrafter DDIM (fixtures README section 4) from ``x_T`` over ``denoise(x, t, branches)``.

    ``denoise`` gets x [K*B, ...] (the latent repeated branch-major), t LongTensor [K*B] and the K branch names
    (``guidance_branches``), and returns the raw v or eps output for all K*B rows; it is called once per step.
    Math runs in float32 (float64 if x_T is float64). Returns the final latent, or ``(final, trajectory)`` where
    trajectory is a list of per-step dicts {t, index, x_prev, pred_x0 (after dynamic rescale), model_output
    (guided)}. ``callback(step_index, total, x_prev, pred_x0)`` runs after each step and may raise to cancel.

    ``windows``: context windows over the frames (dim 2) when T exceeds the window (module docstring;
    ``windowed_branches`` wraps the denoiser). ``windows.freenoise`` reschedules x_T's noise (FreeNoise,
    ``windows.freenoise_noise``) with ``freenoise_seed`` before sampling.
    """
    param, branches, cfg_image = _check_inputs(cfg, x_T, guidance_rescale, mode, cfg_text, cfg_image)
    sched = _schedule(cfg, steps, eta, spacing, param)
    ts, f32, n = sched["ts"], sched["f32"], len(sched["ts"])
    x = _start_latent(x_T, generator, noise, windows, freenoise_seed)
    evaluate = windowed_branches(denoise, windows) if windows is not None else plain_branches(denoise)
    trajectory: List[Dict[str, object]] = []
    for k in range(n):
        index = n - 1 - k
        t = int(ts[index])
        parts = evaluate(x, t, branches, k)                                  # {branch: [B, C, T, H, W]}
        model_output = combine_guidance(parts, cfg_text, cfg_image)
        if len(branches) > 1 and guidance_rescale > 0:
            model_output = rescale_guidance(model_output, parts["cond"], guidance_rescale)
        pred_x0, e_t = _pred_x0_eps(cfg, param, x, model_output, t, index, f32)
        x_prev = _ddim_update(x, pred_x0, e_t, _draw_noise(noise, k, n, x, generator), index, f32)
        if return_trajectory:
            trajectory.append({"t": t, "index": index, "x_prev": x_prev, "pred_x0": pred_x0,
                               "model_output": model_output})
        check_latent_finite(x_prev, k + 1, n)  # stop at the first bad step: nothing downstream is saved as success
        x = x_prev
        if callback is not None:
            callback(k, n, x_prev, pred_x0)
    return (x, trajectory) if return_trajectory else x

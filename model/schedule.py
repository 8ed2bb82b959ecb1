"""Diffusion schedule of DynamiCrafter: model buffers, dynamic-rescale scales, DDIM spacings and arrays, sigmas.

Flat pure functions (k-diffusion style). Every number follows the reference as measured in
``shared/fixtures/README.md`` section 3: betas and the zero-terminal-SNR rescale are computed in float64 and the
registered buffers cast to float32; the DDIM arrays are computed with the reference's mixed dtypes and then rounded
to float32, which is what the reference sampler uses at every step (``torch.full(size, value)``).
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

from .config import ScheduleConfig
from .errors import DynamiCrafterInputError

SPACINGS = ("uniform", "uniform_trailing")
PARAMETERIZATIONS = ("v", "eps")

# alphas_cumprod used in place of the exact 0 at the zero-SNR terminal step when a finite sigma is needed. It is the
# value the host uses for the same purpose (ComfyUI `rescale_zero_terminal_snr_sigmas`), so sigma_max agrees with it.
ZERO_SNR_TERMINAL_ALPHA_CUMPROD = 4.8973451890853435e-08

BUFFER_NAMES = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def check_parameterization(cfg: ScheduleConfig) -> str:
    """Return ``cfg.parameterization`` if the reference supports it ("v" for 512/1024, "eps" for 256)."""
    if cfg.parameterization not in PARAMETERIZATIONS:
        raise DynamiCrafterInputError(
            "schedule parameterization", f"one of {list(PARAMETERIZATIONS)}", repr(cfg.parameterization),
            "use 'v' for the 512/1024 models or 'eps' for the 256 model",
        )
    return cfg.parameterization


def linear_betas(cfg: ScheduleConfig) -> torch.Tensor:
    """Reference `make_beta_schedule("linear")`: float64 ``linspace(sqrt(start), sqrt(end), T) ** 2``."""
    if cfg.beta_schedule != "linear":
        raise DynamiCrafterInputError(
            "schedule beta_schedule", "'linear' (every DynamiCrafter model)", repr(cfg.beta_schedule),
            "set beta_schedule to 'linear'",
        )
    if int(cfg.timesteps) < 2:
        raise DynamiCrafterInputError("schedule timesteps", "an integer >= 2", repr(cfg.timesteps), "use 1000")
    return torch.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, int(cfg.timesteps), dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1, in float64."""
    b = betas.detach().cpu().numpy().astype(np.float64)
    abar_sqrt = np.sqrt(np.cumprod(1.0 - b, axis=0))
    first, last = abar_sqrt[0].copy(), abar_sqrt[-1].copy()
    abar_sqrt = abar_sqrt - last  # shift so the last step has zero SNR
    abar_sqrt = abar_sqrt * (first / (first - last))  # scale so the first step keeps its value
    abar = abar_sqrt ** 2
    alphas = np.concatenate([abar[0:1], abar[1:] / abar[:-1]])
    return torch.from_numpy(1.0 - alphas)


def schedule_betas(cfg: ScheduleConfig) -> torch.Tensor:
    """Float64 betas of `register_schedule`: linear betas, then the zero-terminal-SNR rescale if configured."""
    betas = linear_betas(cfg)
    return rescale_zero_terminal_snr(betas) if cfg.rescale_betas_zero_snr else betas


def scale_arr(cfg: ScheduleConfig) -> torch.Tensor:
    """Dynamic rescale: float32 ``cat(linspace(1, base_scale, turning_step), full(T, base_scale))``, length T+turning_step."""
    n = int(cfg.turning_step)
    if n < 1:
        raise DynamiCrafterInputError("schedule turning_step", "an integer >= 1", repr(cfg.turning_step), "use 400")
    ramp = np.linspace(1.0, cfg.base_scale, n)  # numpy float64 linspace, as the reference
    flat = np.full(int(cfg.timesteps), ramp[-1])
    return torch.from_numpy(np.concatenate([ramp, flat])).to(torch.float32)


def model_buffers(cfg: ScheduleConfig) -> Dict[str, torch.Tensor]:
    """The float32 buffers `LatentVisualDiffusion.register_schedule` registers (plus ``scale_arr`` with dynamic rescale)."""
    param = check_parameterization(cfg)
    betas = schedule_betas(cfg).numpy()
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if param == "v":
            recip, recipm1 = np.zeros_like(ac), np.zeros_like(ac)  # the reference registers zeros for v
        else:
            recip, recipm1 = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1.0)
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)  # v_posterior = 0
        out64 = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": recip,
            "sqrt_recipm1_alphas_cumprod": recipm1,
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
    out = {k: torch.tensor(v, dtype=torch.float32) for k, v in out64.items()}
    if cfg.use_dynamic_rescale:
        out["scale_arr"] = scale_arr(cfg)
    return out


def _check_steps(steps, timesteps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= timesteps:
        raise DynamiCrafterInputError(
            "DDIM steps", f"an integer in 1..{timesteps}", repr(steps), "pick a step count such as 50",
        )
    return int(steps)


def ddim_timesteps(steps: int, spacing: str = "uniform_trailing", timesteps: int = 1000) -> torch.Tensor:
    """Reference `make_ddim_timesteps` (ascending int64): "uniform" ``range(0,T,T//S)+1``, "uniform_trailing"
    ``flip(round(arange(T,0,-T/S)))-1``; "uniform" keeps the reference's extra steps when S does not divide T
    (S=30 gives 31), "uniform_trailing" drops the reference's spurious t=-1 entry (see below)."""
    steps = _check_steps(steps, timesteps)
    if spacing == "uniform":
        ts = np.asarray(list(range(0, timesteps, timesteps // steps))) + 1  # len may exceed S (assert off upstream)
        if ts[-1] >= timesteps:
            raise DynamiCrafterInputError(
                "DDIM steps for spacing 'uniform'", f"at most {timesteps // 2} steps", repr(steps),
                "use fewer steps or spacing 'uniform_trailing' (the reference would index past the schedule)",
            )
    elif spacing == "uniform_trailing":
        c = timesteps / steps
        ts = np.flip(np.round(np.arange(timesteps, 0, -c))).astype(np.int64) - 1
        # Deliberate deviation: for some S (61, 103, 121, 122, 201, ...) float arange yields one extra ~1e-12 entry,
        # so the reference gets timestep -1 (S+1 steps); its a_prev becomes ac[-1] = 0 and the run is NaN whatever
        # eta. We drop that entry: exactly S steps, all within 0..T-1, identical to the reference's other entries.
        ts = ts[ts >= 0]
    else:
        raise DynamiCrafterInputError(
            "DDIM timestep spacing", f"one of {list(SPACINGS)}", repr(spacing),
            "use 'uniform_trailing' (512/1024) or 'uniform' (256)",
        )
    return torch.from_numpy(np.ascontiguousarray(ts).astype(np.int64))


def ddim_schedule(
    cfg: ScheduleConfig, steps: int, eta: float = 0.0, spacing: str = "uniform_trailing",
    buffers: Dict[str, torch.Tensor] | None = None,
) -> Dict[str, torch.Tensor]:
    """Reference `DDIMSampler.make_schedule` arrays, indexed by DDIM index (0 = smallest t), as float32 sampling scalars.

    ``ddim_alphas = ac[ts]`` (float32), ``ddim_alphas_prev = [ac[0]] + ac[ts[:-1]]`` (first entry ac[0], not 1),
    ``ddim_sigmas = eta*sqrt((1-a_prev)/(1-a)*(1-a/a_prev))`` in float64 (with the reference's float32 reciprocal of
    ``1-a``) then rounded to float32,
    ``ddim_sqrt_one_minus_alphas = sqrt(1-a)`` in float32, ``ddim_scale_arr = scale_arr[ts]`` and
    ``ddim_scale_arr_prev = cat(scale[:1], scale[:-1])`` (ones without dynamic rescale).
    """
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not math.isfinite(eta) or eta < 0:
        raise DynamiCrafterInputError("DDIM eta", "a finite number >= 0", repr(eta), "use 0.0 (deterministic) or 1.0")
    if buffers is None:
        buffers = model_buffers(cfg)
    T = int(cfg.timesteps)
    ts = ddim_timesteps(steps, spacing, T)
    ac = buffers["alphas_cumprod"].to(torch.float32).cpu().numpy()
    a = ac[ts.numpy()]  # float32
    a_prev = np.concatenate([ac[:1], ac[ts.numpy()[:-1]]])  # float32 values (float64 array upstream, same values)
    ap64 = a_prev.astype(np.float64)
    # Upstream mixes a float64 array with float32 tensors: `(1 - a_prev) / (1 - a)` runs torch's reflected division,
    # i.e. float32 reciprocal(1 - a) times the float64 numerator; the rest is float64. Reproduced bit for bit.
    recip = (np.float32(1.0) / (np.float32(1.0) - a)).astype(np.float64)
    sigmas = float(eta) * np.sqrt(recip * (1.0 - ap64) * (1.0 - a.astype(np.float64) / ap64))
    if cfg.use_dynamic_rescale:
        sc = buffers["scale_arr"] if "scale_arr" in buffers else scale_arr(cfg)
        s = sc.detach().to("cpu", torch.float32)[ts]
        s_prev = torch.cat([s[:1], s[:-1]])
    else:
        s = torch.ones(len(ts), dtype=torch.float32)
        s_prev = s.clone()
    return {
        "ddim_timesteps": ts,
        "ddim_alphas": torch.from_numpy(a.copy()),
        "ddim_alphas_prev": torch.from_numpy(a_prev.copy()),
        "ddim_sigmas": torch.from_numpy(sigmas.astype(np.float32)),
        # numpy sqrt is correctly rounded; torch's vectorised CPU float32 sqrt can be 1 ulp off
        "ddim_sqrt_one_minus_alphas": torch.from_numpy(np.sqrt(np.float32(1.0) - a)),
        "ddim_scale_arr": s.to(torch.float32),
        "ddim_scale_arr_prev": s_prev.to(torch.float32),
    }


def q_sample(x0: torch.Tensor, noise: torch.Tensor, sqrt_ac: torch.Tensor, sqrt_one_minus_ac: torch.Tensor,
             s: torch.Tensor | None = None) -> torch.Tensor:
    """Forward noising (Ho et al. 2020 eq. 4) of the dynamically rescaled x0: ``sqrt(ac) s x0 + sqrt(1-ac) eps``."""
    x0 = x0 if s is None else x0 * s
    return sqrt_ac * x0 + sqrt_one_minus_ac * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, sqrt_ac: torch.Tensor, sqrt_one_minus_ac: torch.Tensor,
             s: torch.Tensor | None = None) -> torch.Tensor:
    """v (Salimans & Ho 2022 eq. 9) of the rescaled x0: ``sqrt(ac) eps - sqrt(1-ac) s x0``; inverse of the next two."""
    x0 = x0 if s is None else x0 * s
    return sqrt_ac * noise - sqrt_one_minus_ac * x0


def pred_x0_eps_from_v(x, v, sqrt_ac, sqrt_one_minus_ac):
    """v-prediction (Salimans & Ho 2022): ``x0 = sqrt(ac)x - sqrt(1-ac)v``, ``eps = sqrt(ac)v + sqrt(1-ac)x``."""
    return sqrt_ac * x - sqrt_one_minus_ac * v, sqrt_ac * v + sqrt_one_minus_ac * x


def pred_x0_eps_from_eps(x, eps, sqrt_a_t, sqrt_one_minus_a_t):
    """eps-prediction (reference DDIM): ``x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t)`` with the DDIM arrays' a_t."""
    return (x - sqrt_one_minus_a_t * eps) / sqrt_a_t, eps


def model_sigmas(
    cfg: ScheduleConfig, buffers: Dict[str, torch.Tensor] | None = None,
    terminal_alpha_cumprod: float = ZERO_SNR_TERMINAL_ALPHA_CUMPROD,
) -> torch.Tensor:
    """Per-timestep ``sigma_t = sqrt(1-ac_t)/(sqrt(ac_t)*s_t)`` (dynamic rescale as a noise schedule, see the
    formulas at the end of this file).

    s_t = scale_arr[t] with dynamic rescale, else 1. Computed in float64 from the float32 buffers the sampler uses and
    returned as float32, ascending in t. Where ac_t is 0 (t = T-1 with zero terminal SNR, sigma = inf) ac_t is replaced
    by ``terminal_alpha_cumprod`` (default: the host's own zero-SNR value, sigma_max ~ 4519/s_t), so every sigma is
    finite; the reference DDIM never needs that sigma (at ac=0 it predicts x0 = -v directly).
    """
    if buffers is None:
        buffers = model_buffers(cfg)
    ac = buffers["alphas_cumprod"].double()
    sqrt_ac = buffers["sqrt_alphas_cumprod"].double()
    sqrt_1m = buffers["sqrt_one_minus_alphas_cumprod"].double()
    zero = ac <= 0
    if bool(zero.any()):
        sqrt_ac = torch.where(zero, torch.tensor(terminal_alpha_cumprod, dtype=torch.float64).sqrt(), sqrt_ac)
        sqrt_1m = torch.where(zero, torch.tensor(1.0 - terminal_alpha_cumprod, dtype=torch.float64).sqrt(), sqrt_1m)
    T = ac.shape[0]
    if cfg.use_dynamic_rescale:
        s = (buffers["scale_arr"] if "scale_arr" in buffers else scale_arr(cfg))[:T].double()
    else:
        s = torch.ones(T, dtype=torch.float64)
    return (sqrt_1m / (sqrt_ac * s)).to(torch.float32)


# ================================================================================================================
# Dynamic rescale as a noise schedule (the host's model_sampling formulas; nodes/sampling.py wraps them)
# ================================================================================================================
# With x_t = sqrt(ac_t) s_t x0 + sqrt(1-ac_t) eps, the host's variable x = x_t / (sqrt(ac_t) s_t) = x0 + sigma_t eps
# (sigma_t of ``model_sigmas``). For a sigma and the factor s of its nearest timestep, ac = 1 / (1 + sigma^2 s^2).
# With s = 1 these are the host's own EPS / V_PREDICTION formulas.
def sigma_view(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-sample sigma [B] (or a scalar) broadcastable against an ``ndim``-dimensional [B, ...] tensor."""
    if sigma.ndim == 0 or sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Nearest table timestep of each sigma (closest log sigma), shaped like ``sigma``."""
    ls = sigma.float().clamp(min=1e-30).log().to(log_sigmas.device)
    return (ls.reshape(-1)[None] - log_sigmas[:, None]).abs().argmin(dim=0).reshape(sigma.shape)


def rescale_at(sigma: torch.Tensor, log_sigmas: torch.Tensor, scales: torch.Tensor, ndim: int) -> torch.Tensor:
    """Dynamic-rescale factor s_t of each sigma's nearest timestep, in sigma's dtype/device, viewed for ``ndim``."""
    s = scales[sigma_to_t(sigma, log_sigmas)].to(device=sigma.device, dtype=sigma.dtype)
    return sigma_view(s, ndim)


def input_scale(sigma: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_t / x = sqrt(ac) s = s / sqrt(1 + sigma^2 s^2) (sigma, s already viewed)."""
    return s / (1.0 + (sigma * s) ** 2) ** 0.5


def denoised_from_v(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """v-prediction: x0 = x / q - v sigma / sqrt(q), q = 1 + sigma^2 s^2 (= (sqrt(ac) x_t - sqrt(1-ac) v) / s)."""
    q = 1.0 + (sigma * s) ** 2
    return x / q - v * sigma / q ** 0.5


def v_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Inverse of ``denoised_from_v``: v = (x / q - x0) sqrt(q) / sigma."""
    q = 1.0 + (sigma * s) ** 2
    return (x / q - denoised) * q ** 0.5 / sigma


def denoised_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps-prediction: x0 = x - eps sigma (s cancels)."""
    return x - eps * sigma


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of ``denoised_from_eps``: eps = (x - x0) / sigma."""
    return (x - denoised) / sigma


def start_noise(noise: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor, latent: torch.Tensor | None,
                from_pure_noise: bool) -> torch.Tensor:
    """Initial x: noise / input_scale from pure noise (reference DDIM starts from x_t ~ N(0, I)), else latent + sigma noise."""
    noise = noise / input_scale(sigma, s) if from_pure_noise else noise * sigma
    return noise if latent is None else noise + latent

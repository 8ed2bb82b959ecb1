"""The pack's ``model_sampling`` for the host: dynamic rescale as a noise schedule, x = x_t / (sqrt(ac_t) s_t) =
x0 + sigma_t eps; the formulas (model input, v / eps denoised and their inverses, start noise) are the pure functions of
model/schedule.py, and an Euler step between two table sigmas is the reference DDIM eta=0 step with the
pred_x0 *= s_prev/s_t rescale. With s = 1 they are the host's own EPS / V_PREDICTION formulas. The zero-SNR terminal
step (ac = 0, sigma = inf) uses the host's terminal ac = 4.9e-8 (``schedule.model_sigmas``).
"""
from __future__ import annotations

import torch

import comfy.model_sampling

from ..model.config import ScheduleConfig
from ..model.schedule import (
    ddim_timesteps, denoised_from_eps, denoised_from_v, eps_from_denoised, input_scale, model_buffers, model_sigmas,
    rescale_at, scale_arr, sigma_to_t, sigma_view, start_noise, v_from_denoised,
)


class _DynamiCrafterSampling:
    """Mixin over the host's ModelSamplingDiscrete: the table holds the rescaled sigmas, ``dc_scale`` s_t; the
    formulas are model/schedule.py's (dynamic rescale as a noise schedule)."""

    def _setup_dc(self, cfg: ScheduleConfig) -> None:
        buffers = model_buffers(cfg)
        n = int(cfg.timesteps)
        self.set_sigmas(model_sigmas(cfg, buffers))
        s = scale_arr(cfg)[:n] if cfg.use_dynamic_rescale else torch.ones(n)
        self.register_buffer("dc_scale", s.to(torch.float32))
        self.dc_schedule = cfg
        self.dc_eps = cfg.parameterization == "eps"
        self.sigma_data = 1.0
        self.num_timesteps = n
        self.zsnr = bool(cfg.rescale_betas_zero_snr)

    def dc_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest table timestep of each sigma."""
        return sigma_to_t(sigma, self.log_sigmas)

    def _s(self, sigma: torch.Tensor, ndim: int) -> torch.Tensor:
        return rescale_at(sigma, self.log_sigmas, self.dc_scale, ndim)

    def input_scale(self, sigma: torch.Tensor, ndim: int = 1) -> torch.Tensor:
        """x_t / x = sqrt(ac) s = s / sqrt(1 + sigma^2 s^2)."""
        return input_scale(sigma_view(sigma, ndim), self._s(sigma, ndim))

    # -- host interface -------------------------------------------------------------------------------------------
    def calculate_input(self, sigma, noise):
        return noise * self.input_scale(sigma, noise.ndim)

    def calculate_denoised(self, sigma, model_output, model_input):
        sg = sigma_view(sigma, model_output.ndim)
        if self.dc_eps:
            return denoised_from_eps(model_input, model_output, sg)
        return denoised_from_v(model_input, model_output, sg, self._s(sigma, model_output.ndim))

    def model_output_from_denoised(self, sigma, denoised, model_input):
        """Inverse of ``calculate_denoised``: the v (or eps) that gives ``denoised`` at ``sigma``."""
        sg = sigma_view(sigma, denoised.ndim)
        if self.dc_eps:
            return eps_from_denoised(model_input, denoised, sg)
        return v_from_denoised(model_input, denoised, sg, self._s(sigma, denoised.ndim))

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        """Start of sampling. From sigma_max, or from any sigma on an empty latent (the reference DDIM starts
        its first timestep from x_t ~ N(0, I) whatever the spacing, e.g. t=801 for the 256 model), the model's
        variable is the noise itself: x = noise / input_scale. Otherwise (img2img) x = latent + sigma * noise."""
        pure = max_denoise or latent_image is None or not bool(torch.count_nonzero(latent_image))
        s = self._s(sigma, noise.ndim) if pure else None
        return start_noise(noise, sigma_view(sigma, noise.ndim), s, latent_image, pure)

    def inverse_noise_scaling(self, sigma, latent):
        return latent


def make_model_sampling(cfg: ScheduleConfig):
    """The pack's model_sampling object for a schedule (v or eps, zero-SNR and dynamic rescale as configured)."""

    class DynamiCrafterModelSampling(_DynamiCrafterSampling, comfy.model_sampling.ModelSamplingDiscrete):
        def __init__(self, schedule: ScheduleConfig):
            super().__init__(None)
            self._setup_dc(schedule)

    return DynamiCrafterModelSampling(cfg)


def resolve_spacing(variant, spacing: str) -> str:
    return variant.timestep_spacing if spacing == "auto" else spacing


def reference_sigmas(model_sampling, steps: int, spacing: str) -> torch.Tensor:
    """SIGMAS of the reference DDIM timesteps (descending) followed by 0: Euler on them is DDIM eta=0."""
    ts = ddim_timesteps(steps, spacing, int(model_sampling.num_timesteps)).flip(0)
    sig = model_sampling.sigmas.detach().cpu()[ts]
    return torch.cat([sig, sig.new_zeros(1)]).float()

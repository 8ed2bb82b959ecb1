"""The diffusion training objective of a variant: uniform timesteps, forward noising, v or eps target, L2 loss.

Uses the schedule buffers of ``model.schedule`` (betas, zero-SNR rescale, ``scale_arr``). With dynamic rescale
(512/1024, model/variants.py) the clean latent is multiplied by ``scale_arr[t]`` before noising, so
``x_t = sqrt(ac_t) s_t x0 + sqrt(1-ac_t) eps`` and the v target is ``sqrt(ac_t) eps - sqrt(1-ac_t) s_t x0``
(Salimans & Ho 2022 with x0 replaced by s_t x0); the 256 model is eps-prediction without rescale. Loss: mean squared
error over every element (reference ``loss_type: l2``, ``l_simple_weight`` 1, no learned log-variance).
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

from ..model.config import ScheduleConfig
from ..model.schedule import check_parameterization, model_buffers, q_sample, v_target


class Objective:
    def __init__(self, cfg: ScheduleConfig, device="cpu"):
        self.cfg = cfg
        self.parameterization = check_parameterization(cfg)
        b = model_buffers(cfg)
        self.T = int(cfg.timesteps)
        self.sqrt_ac = b["sqrt_alphas_cumprod"].to(device)
        self.sqrt_1m = b["sqrt_one_minus_alphas_cumprod"].to(device)
        self.scale = b["scale_arr"][: self.T].to(device) if cfg.use_dynamic_rescale else None

    def draw(self, generators: Sequence[torch.Generator], shape: Sequence[int], device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample, from its own generator: timestep, posterior noise, diffusion noise ([B], [B,*shape] x2)."""
        ts, post, eps = [], [], []
        for g in generators:
            ts.append(torch.randint(0, self.T, (1,), generator=g, device=g.device))
            post.append(torch.randn(tuple(shape), generator=g, device=g.device))
            eps.append(torch.randn(tuple(shape), generator=g, device=g.device))
        return (torch.cat(ts).to(device), torch.stack(post).to(device), torch.stack(eps).to(device))

    def _bc(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (x.ndim - 1)))

    def noisy_and_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target) for clean latents x0 [B, C, T, h, w] at integer timesteps t [B] (model/schedule.py)."""
        s = None if self.scale is None else self._bc(self.scale[t], x0)     # dynamic rescale of x0
        a, m = self._bc(self.sqrt_ac[t], x0), self._bc(self.sqrt_1m[t], x0)
        x_t = q_sample(x0, noise, a, m, s)
        target = v_target(x0, noise, a, m, s) if self.parameterization == "v" else noise
        return x_t, target

    def loss(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
             t: torch.Tensor, noise: torch.Tensor, concat: torch.Tensor = None) -> torch.Tensor:
        """Mean squared error of ``model_fn(cat([x_t, concat]), t)`` against the target (a 0-dim float32 tensor)."""
        x_t, target = self.noisy_and_target(x0, t, noise)
        inp = x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1)   # noisy first, cond second
        out = model_fn(inp, t)
        return torch.mean((out.float() - target.float()) ** 2)

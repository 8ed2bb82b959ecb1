"""The training objective agrees with the sampler's conversions (model/schedule.py): from x_t and the v target, the
sampler's ``pred_x0_eps_from_v`` recovers the dynamically rescaled x0 (``scale_arr[t] * x0``) and the noise; the 256
model's target is the noise itself, without rescale."""
import torch

from comfyui_dynamicrafter.model.schedule import model_buffers, pred_x0_eps_from_v
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.training.objective import Objective


def test_v_target_matches_the_sampler_conversion():
    cfg = get_variant("1024").schedule
    obj, b = Objective(cfg), model_buffers(cfg)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 4, 3, 6, 8, generator=g), torch.randn(5, 4, 3, 6, 8, generator=g)
    t = torch.tensor([0, 250, 399, 700, 999])
    x_t, v = obj.noisy_and_target(x0, t, noise)
    sa = b["sqrt_alphas_cumprod"][t].view(-1, 1, 1, 1, 1)
    s1 = b["sqrt_one_minus_alphas_cumprod"][t].view(-1, 1, 1, 1, 1)
    pred_x0, eps = pred_x0_eps_from_v(x_t, v, sa, s1)
    scale = b["scale_arr"][t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(pred_x0, scale * x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps[:4], noise[:4], atol=1e-5, rtol=1e-5)     # at t=999 (zero SNR) x_t is pure noise
    assert float(scale[0]) == 1.0 and abs(float(scale[-1]) - 0.3) < 1e-6       # 1 -> base_scale (0.3 for 1024)


def test_eps_model_has_no_rescale():
    obj = Objective(get_variant("256").schedule)
    x0, noise = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4)
    t = torch.tensor([10, 900])
    x_t, target = obj.noisy_and_target(x0, t, noise)
    assert obj.scale is None and torch.equal(target, noise)
    loss = obj.loss(lambda x, tt: torch.zeros_like(x[:, :4]), x0, t, noise, concat=torch.zeros_like(x0))
    torch.testing.assert_close(loss, (noise ** 2).mean())

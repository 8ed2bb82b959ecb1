"""Schedule buffers, DDIM spacings and DDIM arrays against the reference fixtures (shared/fixtures/README.md section 3).

Settings, steps, etas and spacings come from the schedule sidecar of every fixture set; the few numbers written here
are documented facts of the reference code (README section 3 and "Known NaN edge case"), not values of a set.
"""
import math
import re

import numpy as np
import pytest
import torch

from comfyui_dynamicrafter.model.config import ScheduleConfig
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.schedule import (
    BUFFER_NAMES, ZERO_SNR_TERMINAL_ALPHA_CUMPROD, ddim_schedule, ddim_timesteps, linear_betas, model_buffers,
    model_sigmas, pred_x0_eps_from_eps, pred_x0_eps_from_v, scale_arr, schedule_betas,
)
from comfyui_dynamicrafter.tests.fixtures import fixture_sets, load_set, report_checked, set_ids

SETS = fixture_sets()
DDIM_KEY = re.compile(
    r"^(?:(?P<prefix>\w+)\.)?(?P<spacing>[a-z_]+)\.S(?P<steps>\d+)\.eta(?P<eta>\d+(?:\.\d+)?)\.(?P<name>ddim_\w+)$"
)


def _settings(meta, prefix):
    """Schedule settings of a key prefix: '' -> model_settings, 'eps256' -> sidecar['eps256']['settings']."""
    d = meta["model_settings"] if not prefix else meta[prefix]["settings"]
    return ScheduleConfig.from_dict(d)


def _close(ours, ref, what):
    ours = ours.to(torch.float32)
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    # Expected bit-exact; 1e-7 absolute (or 1 float32 ulp relative for the large sqrt_recip buffers) tolerated.
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1.2e-7, msg=lambda m: f"{what}: {m}")
    return (ours - ref).abs().max().item()


@pytest.mark.parametrize("path", SETS, ids=set_ids(SETS))
def test_model_buffers_match_reference(path, request):
    fx, meta = load_set(path, "schedule")
    checked, worst = 0, 0.0
    for key, ref in fx.items():
        m = re.match(r"^(?:(\w+)\.)?model\.(\w+)$", key)
        if not m:
            continue
        prefix, name = m.group(1) or "", m.group(2)
        ours = model_buffers(_settings(meta, prefix))
        assert name in ours, f"{key}: we do not produce buffer {name!r}"
        worst = max(worst, _close(ours[name], ref, key))
        checked += 1
    assert checked, "schedule fixture holds no model.* buffers"
    report_checked(request, path, f"schedule buffers ({checked}, max diff {worst:.1e})")


@pytest.mark.parametrize("path", SETS, ids=set_ids(SETS))
def test_ddim_arrays_match_reference(path, request):
    fx, meta = load_set(path, "schedule")
    cache, checked, worst = {}, 0, 0.0
    for key, ref in fx.items():
        m = DDIM_KEY.match(key)
        if not m or ".model." in f".{key}":
            continue
        prefix, spacing = m.group("prefix") or "", m.group("spacing")
        steps, eta, name = int(m.group("steps")), float(m.group("eta")), m.group("name")
        cid = (prefix, spacing, steps, eta)
        if cid not in cache:
            cfg = _settings(meta, prefix)
            cache[cid] = ddim_schedule(cfg, steps, eta, spacing, model_buffers(cfg))
        ours = cache[cid][name]
        if name == "ddim_timesteps":
            assert torch.equal(ours, ref.long()), f"{key}: {ours.tolist()} vs {ref.long().tolist()}"
            listed = (meta.get("sampler_arrays", {}).get(f"{spacing}.S{steps}.eta{m.group('eta')}") if not prefix
                      else None)
            if listed is not None:
                assert ours.tolist() == listed["ddim_timesteps"]
                assert len(ours) == listed["num_steps_returned"]
        else:
            worst = max(worst, _close(ours, ref, key))
        checked += 1
    others = [k for k in fx if not DDIM_KEY.match(k) and not re.match(r"^(?:\w+\.)?model\.\w+$", k)]
    assert not others, f"schedule fixture keys this test does not understand: {others}"
    assert checked, "schedule fixture holds no DDIM arrays"
    report_checked(request, path, f"DDIM arrays ({checked}, max diff {worst:.1e})")


def test_schedule_facts():
    cfg = ScheduleConfig()
    b = model_buffers(cfg)
    assert set(BUFFER_NAMES) <= set(b) and "scale_arr" in b
    assert all(v.dtype == torch.float32 for v in b.values())
    assert b["alphas_cumprod"][-1].item() == 0.0 and b["betas"][-1].item() == 1.0
    assert b["sqrt_recip_alphas_cumprod"].abs().sum() == 0 and b["sqrt_recipm1_alphas_cumprod"].abs().sum() == 0
    assert len(b["scale_arr"]) == cfg.timesteps + cfg.turning_step
    sa = scale_arr(cfg)
    assert sa[0].item() == 1.0 and torch.all(sa[cfg.turning_step - 1:] == sa[-1])
    assert math.isclose(sa[-1].item(), cfg.base_scale, rel_tol=1e-7)
    assert schedule_betas(cfg).dtype == torch.float64 and linear_betas(cfg).dtype == torch.float64
    eps = model_buffers(ScheduleConfig(rescale_betas_zero_snr=False, parameterization="eps", use_dynamic_rescale=False))
    assert "scale_arr" not in eps and torch.all(eps["sqrt_recip_alphas_cumprod"] > 1)
    assert torch.all(torch.isfinite(torch.stack([v for v in eps.values()])))


def test_uniform_spacing_returns_extra_steps_like_reference():
    # README section 3: S=30 -> 31 steps (1, 34, ..., 991); S=7 -> 8 steps (1, 143, ..., 995).
    t30 = ddim_timesteps(30, "uniform")
    assert len(t30) == 31 and t30[0] == 1 and t30[1] == 34 and t30[-1] == 991
    t7 = ddim_timesteps(7, "uniform")
    assert len(t7) == 8 and t7[1] == 143 and t7[-1] == 995
    assert len(ddim_schedule(ScheduleConfig(), 30, 1.0, "uniform")["ddim_sigmas"]) == 31
    for s in (1, 2, 4, 5, 8, 10, 20, 25, 50, 100, 125, 200, 250, 500):  # divisors of 1000: exactly S
        assert len(ddim_timesteps(s, "uniform")) == s
    with pytest.raises(DynamiCrafterInputError):
        ddim_timesteps(501, "uniform")  # c = 1 -> timestep 1000, past the schedule (reference IndexError)


def test_uniform_trailing_spacing():
    assert ddim_timesteps(7, "uniform_trailing").tolist() == [142, 285, 428, 570, 713, 856, 999]
    assert ddim_timesteps(5, "uniform_trailing").tolist() == [199, 399, 599, 799, 999]
    for s in range(1, 1001):
        ts = ddim_timesteps(s, "uniform_trailing")
        assert len(ts) == s and ts[-1] == 999 and ts[0] >= 0, s
        assert torch.all(ts[1:] > ts[:-1]), s
    # Where float arange overshoots (e.g. S=61), the reference gets an extra t=-1 entry; ours equals the rest of it.
    raw = np.flip(np.round(np.arange(1000, 0, -1000 / 61))).astype(np.int64) - 1
    assert len(raw) == 62 and raw[0] == -1
    assert ddim_timesteps(61, "uniform_trailing").tolist() == raw[1:].tolist()


def test_reference_nan_cases_are_the_documented_ones():
    """README "Known NaN edge case": the float32 residual 1 - a_prev - sigma^2 at t=999 (eta=1, uniform_trailing,
    zero SNR) is negative exactly for the listed S, so the reference's sqrt is NaN there; the sampler clamps it."""
    documented = {7, 11, 14, 15, 20, 25, 33, 34, 35, 37, 38, 39, 61, 62, 63, 64}
    cfg = ScheduleConfig()
    b = model_buffers(cfg)
    negative = set()
    for s in range(1, 201):
        d = ddim_schedule(cfg, s, 1.0, "uniform_trailing", b)
        assert d["ddim_timesteps"][-1] == 999 and d["ddim_alphas"][-1] == 0
        residual = np.float32(1.0) - d["ddim_alphas_prev"].numpy()[-1] - d["ddim_sigmas"].numpy()[-1] ** 2
        if residual < 0:
            negative.add(s)
            with np.errstate(invalid="ignore"):
                assert np.isnan(np.sqrt(residual))
        if s == 50:
            assert residual == np.float32(2.0 ** -24)  # +5.96e-8 -> coefficient 2.44e-4 instead of 0
    assert negative == documented


def test_model_sigmas():
    for cfg in (ScheduleConfig(), ScheduleConfig(base_scale=0.3),
                ScheduleConfig(rescale_betas_zero_snr=False, parameterization="eps", use_dynamic_rescale=False)):
        b = model_buffers(cfg)
        sig = model_sigmas(cfg, b)
        assert sig.dtype == torch.float32 and sig.shape == (cfg.timesteps,)
        assert torch.all(torch.isfinite(sig)) and torch.all(sig[1:] > sig[:-1])
        s = b["scale_arr"][: cfg.timesteps].double() if cfg.use_dynamic_rescale else torch.ones(cfg.timesteps).double()
        ac = torch.cumprod(1 - schedule_betas(cfg), 0)  # float64 source of the float32 sqrt buffers
        ok = b["alphas_cumprod"] > 0
        expect = torch.sqrt((1 - ac[ok]) / ac[ok]) / s[ok]
        torch.testing.assert_close(sig[ok].double(), expect, rtol=1e-6, atol=0)
        if not bool(ok.all()):  # zero-SNR terminal step: the host's finite value
            a = ZERO_SNR_TERMINAL_ALPHA_CUMPROD
            assert math.isclose(sig[-1].item(), math.sqrt((1 - a) / a) / s[-1].item(), rel_tol=1e-6)


def test_v_and_eps_conversions_roundtrip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    ac = torch.tensor(0.37, dtype=torch.float64)
    sa, s1 = ac.sqrt(), (1 - ac).sqrt()
    x = sa * x0 + s1 * eps
    v = sa * eps - s1 * x0
    px0, pe = pred_x0_eps_from_v(x, v, sa, s1)
    torch.testing.assert_close(px0, x0)
    torch.testing.assert_close(pe, eps)
    px0, pe = pred_x0_eps_from_eps(x, eps, sa, s1)
    torch.testing.assert_close(px0, x0)
    assert pe is eps


@pytest.mark.parametrize("call", [
    lambda: ddim_timesteps(10, "quad"),
    lambda: ddim_timesteps(0, "uniform_trailing"),
    lambda: ddim_timesteps(1001, "uniform_trailing"),
    lambda: ddim_timesteps(2.5, "uniform_trailing"),
    lambda: ddim_timesteps(True, "uniform_trailing"),
    lambda: ddim_schedule(ScheduleConfig(), 10, -1.0),
    lambda: ddim_schedule(ScheduleConfig(), 10, float("nan")),
    lambda: model_buffers(ScheduleConfig(parameterization="x0")),
    lambda: model_buffers(ScheduleConfig(beta_schedule="cosine")),
    lambda: scale_arr(ScheduleConfig(turning_step=0)),
], ids=["spacing", "steps0", "steps_too_many", "steps_float", "steps_bool", "eta_negative", "eta_nan",
        "parameterization", "beta_schedule", "turning_step"])
def test_bad_arguments_raise(call):
    with pytest.raises(DynamiCrafterInputError) as e:
        call()
    assert "\n" not in str(e.value) and "expected" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------------
# dynamic rescale as a noise schedule (the pure functions the host's model_sampling wraps)
# ---------------------------------------------------------------------------------------------------------------------
def test_rescaled_sigma_formulas_are_the_reference_v_step():
    """At a table sigma: x_t = input_scale * x, and denoised_from_v = (sqrt(ac) x_t - sqrt(1-ac) v) / s (reference
    v-prediction with the dynamic-rescale pred_x0 / s); the inverses round-trip."""
    from comfyui_dynamicrafter.model.schedule import (denoised_from_eps, denoised_from_v, eps_from_denoised,
                                                      input_scale, rescale_at, sigma_to_t, sigma_view, start_noise,
                                                      v_from_denoised)
    from comfyui_dynamicrafter.model.variants import get_variant

    cfg = get_variant("512").schedule
    buf = model_buffers(cfg)
    sig = model_sigmas(cfg, buf)
    scales = scale_arr(cfg)[: cfg.timesteps]
    g = torch.Generator().manual_seed(0)
    for t in (0, 19, 399, 400, 500, 979):
        sigma = sig[t:t + 1].repeat(2)
        assert torch.equal(sigma_to_t(sigma, sig.log()), torch.tensor([t, t]))
        s = rescale_at(sigma, sig.log(), scales, 4)
        assert s.shape == (2, 1, 1, 1) and float(s[0]) == float(scales[t])
        sg = sigma_view(sigma, 4)
        x, v = torch.randn(2, 2, 4, 3, 3, generator=g).double()
        ac = buf["alphas_cumprod"][t].double()
        x_t = x * input_scale(sg.double(), s.double())
        torch.testing.assert_close(x_t, x * ac.sqrt() * scales[t].double(), rtol=1e-6, atol=1e-6)
        den = denoised_from_v(x, v, sg.double(), s.double())
        want = pred_x0_eps_from_v(x_t, v, ac.sqrt(), (1 - ac).sqrt())[0] / scales[t].double()
        torch.testing.assert_close(den, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(v_from_denoised(x, den, sg.double(), s.double()), v, rtol=1e-9, atol=1e-9)
        e = denoised_from_eps(x, v, sg.double())
        torch.testing.assert_close(eps_from_denoised(x, e, sg.double()), v, rtol=1e-9, atol=1e-9)
        noise = torch.randn(2, 4, 3, 3, generator=g)
        assert torch.equal(start_noise(noise, sg, s, None, True), noise / input_scale(sg, s))
        assert torch.equal(start_noise(noise, sg, None, x[0].float(), False), noise * sg + x[0].float())

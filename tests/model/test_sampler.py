"""The reference DDIM (fixtures README section 4) replayed without the UNet, plus its contract and edge cases.

Replay: a denoiser that returns the stored raw model outputs of step K must reproduce the stored x_prev, pred_x0,
final and guided output. Runs, scales, steps and spacing are read from the trajectory sidecar of every fixture set.
The eta=1 run stores no model outputs; it is checked against the real UNet in test_trajectory.py.
"""
import re

import pytest
import torch

from comfyui_dynamicrafter.model.config import ScheduleConfig
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.sampler import ddim_sample, guidance_branches, rescale_guidance
from comfyui_dynamicrafter.model.schedule import ddim_schedule, model_buffers
from comfyui_dynamicrafter.tests.fixtures import fixture_sets, load_set, report_checked, set_ids

SETS = fixture_sets()
# The fixtures README suggests 5e-4; the replay is bit-exact on CPU float32, so assert much tighter.
TOL = dict(atol=1e-5, rtol=1e-5)
FIXTURE_BRANCH = {"cond": "cond", "uc": "uc", "uc_img": "uc_2"}  # our branch name -> fixture conditioning name


def run_kwargs(meta, run):
    """ddim_sample keyword arguments of a stored run, from the sidecar only."""
    ss, r = meta["sampler_settings"], meta["runs"][run]
    mode = "multi" if "uc_2" in r["apply_model_calls_per_step"] else "single"
    return dict(
        eta=r["eta"], spacing=ss["timestep_spacing"], cfg_text=ss["text_scale"],
        cfg_image=ss["cfg_img"] if mode == "multi" else None, guidance_rescale=ss["guidance_rescale"], mode=mode,
    ), r["num_steps"]


class StoredOutputs:
    """Denoiser returning a run's stored raw model outputs of step K; records every call."""

    def __init__(self, fx, run, meta):
        self.fx, self.run, self.meta, self.calls = fx, run, meta["runs"][run], []

    def __call__(self, x, t, branches):
        k = len(self.calls)
        self.calls.append((x.clone(), t.clone(), branches))
        assert torch.all(t == self.meta["timesteps_in_sampling_order"][k])
        return torch.cat([self.fx[f"{self.run}.step{k}.model_out.{FIXTURE_BRANCH[b]}"] for b in branches])


def _maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("path", SETS, ids=set_ids(SETS))
def test_replay_stored_model_outputs(path, request):
    fx, meta = load_set(path, "sampler_trajectory")
    cfg = ScheduleConfig.from_dict(meta["model_settings"])
    runs = [r for r in meta["runs"] if f"{r}.step0.model_out.cond" in fx]
    assert runs, "trajectory fixture has no run with stored model outputs"
    worst = 0.0
    for run in runs:
        kw, steps = run_kwargs(meta, run)
        den = StoredOutputs(fx, run, meta)
        final, traj = ddim_sample(den, fx["x_T"], cfg, steps, return_trajectory=True, **kw)
        r = meta["runs"][run]
        expected_branches = tuple(b for b in ("cond", "uc", "uc_img") if FIXTURE_BRANCH[b] in r["apply_model_calls_per_step"])
        assert len(den.calls) == len(traj) == r["num_steps"]
        x_cur = fx["x_T"]
        for k, st in enumerate(traj):
            x_in, t_in, branches = den.calls[k]
            assert branches == expected_branches
            assert x_in.shape[0] == len(branches) * x_cur.shape[0]
            for j in range(len(branches)):  # branch-major repeat of the current latent
                torch.testing.assert_close(x_in[j * x_cur.shape[0]:(j + 1) * x_cur.shape[0]], x_cur, **TOL)
            assert st["t"] == r["timesteps_in_sampling_order"][k]
            assert st["index"] == r["ddim_index_in_sampling_order"][k]
            for name in ("x_prev", "pred_x0"):
                ref = fx[f"{run}.step{k}.{name}"]
                torch.testing.assert_close(st[name], ref, **TOL, msg=lambda m: f"{run} step {k} {name}: {m}")
                worst = max(worst, _maxdiff(st[name], ref))
            guided = fx.get(f"{run}.step{k}.guided_model_output")
            if guided is not None:
                torch.testing.assert_close(st["model_output"], guided, **TOL)
                worst = max(worst, _maxdiff(st["model_output"], guided))
            x_cur = fx[f"{run}.step{k}.x_prev"]
        torch.testing.assert_close(final, fx[f"{run}.final"], **TOL)
        worst = max(worst, _maxdiff(final, fx[f"{run}.final"]))
    assert any(re.search(r"\.guided_model_output$", k) for k in fx), "no guided_model_output stored"
    report_checked(request, path, f"sampler replay {'+'.join(runs)} (max diff {worst:.1e})")


def _latent(b=2, seed=0):
    return torch.randn(b, 4, 3, 4, 5, generator=torch.Generator().manual_seed(seed))


class Spy:
    def __init__(self, scale=0.1):
        self.calls, self.scale = [], scale

    def __call__(self, x, t, branches):
        self.calls.append((x.shape[0], branches, t.clone()))
        k = x.shape[0] // len(branches)
        # a different output per branch, so the guidance combination is exercised
        return torch.cat([self.scale * (j + 1) * x[j * k:(j + 1) * k] for j in range(len(branches))])


@pytest.mark.parametrize("mode,cfg_text,cfg_image,branches", [
    ("multi", 7.5, 5.0, ("cond", "uc", "uc_img")),
    ("multi", 7.5, None, ("cond", "uc", "uc_img")),
    ("single", 7.5, None, ("cond", "uc")),
    ("multi", 1.0, 5.0, ("cond",)),  # only the text scale decides (reference multicond rule)
    ("single", 1.0, None, ("cond",)),
])
def test_one_batched_call_per_step(mode, cfg_text, cfg_image, branches):
    spy, x = Spy(), _latent()
    steps = 6
    out = ddim_sample(spy, x, ScheduleConfig(), steps, eta=0.0, cfg_text=cfg_text, cfg_image=cfg_image,
                      guidance_rescale=0.7, mode=mode, generator=torch.Generator().manual_seed(1))
    assert len(spy.calls) == steps
    ts = ddim_schedule(ScheduleConfig(), steps)["ddim_timesteps"].flip(0)
    for (rows, br, t), t_ref in zip(spy.calls, ts):
        assert br == branches and rows == len(branches) * x.shape[0]
        assert t.dtype == torch.long and torch.all(t == t_ref)
    assert torch.isfinite(out).all() and out.shape == x.shape and out.dtype == torch.float32
    assert guidance_branches(mode, cfg_text) == branches


def test_guidance_combination_and_rescale_formulas():
    """One step at t=999 (a=0): x_prev is a known function of the guided v, so the combination is observable."""
    x = _latent(b=2)
    outs = {"cond": torch.randn_like(x), "uc": torch.randn_like(x), "uc_img": torch.randn_like(x)}

    def den(xx, t, branches):
        return torch.cat([outs[b] for b in branches])

    s, si, r = 6.5, 3.5, 0.6
    _, traj = ddim_sample(den, x, ScheduleConfig(), 1, cfg_text=s, cfg_image=si, guidance_rescale=r,
                          mode="multi", return_trajectory=True)
    v = outs["uc"] + si * (outs["uc_img"] - outs["uc"]) + s * (outs["cond"] - outs["uc_img"])
    dims = list(range(1, v.ndim))
    ref = r * v * (outs["cond"].std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True)) + (1 - r) * v
    torch.testing.assert_close(traj[0]["model_output"], ref)
    # per-sample std: sample 1 alone gives the same rescaled rows
    torch.testing.assert_close(rescale_guidance(v[1:], outs["cond"][1:], r), ref[1:])
    _, traj = ddim_sample(den, x, ScheduleConfig(), 1, cfg_text=s, mode="single", return_trajectory=True)
    torch.testing.assert_close(traj[0]["model_output"], outs["uc"] + s * (outs["cond"] - outs["uc"]))


def test_every_step_count_is_finite_with_eta1_zero_snr():
    """S = 1..200, eta=1, uniform_trailing, zero SNR: the reference returns all-NaN for S in
    {7, 11, 14, 15, 20, 25, 33, 34, 35, 37, 38, 39, 61, 62, 63, 64} (sqrt of a -6e-8 residual, see test_schedule)
    and S in {61, 103, 121, 122} also hit its t=-1 spacing bug; ours clamps / drops them and stays finite."""
    cfg = ScheduleConfig()
    x = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    bad = []
    for s in range(1, 201):
        out = ddim_sample(lambda xx, t, b: 0.1 * xx, x, cfg, s, eta=1.0, spacing="uniform_trailing", generator=g)
        if not torch.isfinite(out).all():
            bad.append(s)
    assert not bad


def test_rng_consumption_matches_reference_noise_like():
    """One float32 randn(x.shape) per step after the denoiser call, also at eta=0; injected noise draws nothing."""
    cfg, x, steps = ScheduleConfig(), _latent(), 5
    den = Spy(0.2)
    torch.manual_seed(123)
    a = ddim_sample(den, x, cfg, steps, eta=1.0, cfg_text=7.5, cfg_image=5.0)
    after_a = torch.randn(3)
    torch.manual_seed(123)
    noise = [torch.randn(x.shape) for _ in range(steps)]
    after_draws = torch.randn(3)
    assert torch.equal(after_a, after_draws)
    torch.manual_seed(999)
    b = ddim_sample(den, x, cfg, steps, eta=1.0, cfg_text=7.5, cfg_image=5.0, noise=noise)
    assert torch.equal(a, b)
    after_b = torch.randn(3)
    torch.manual_seed(999)
    assert torch.equal(after_b, torch.randn(3))  # injected noise: the global RNG is untouched
    c = ddim_sample(den, x, cfg, steps, eta=1.0, cfg_text=7.5, cfg_image=5.0, noise=torch.stack(noise))
    assert torch.equal(a, c)
    g = torch.Generator().manual_seed(123)
    d = ddim_sample(den, x, cfg, steps, eta=1.0, cfg_text=7.5, cfg_image=5.0, generator=g)
    assert torch.equal(a, d)
    torch.manual_seed(5)
    ddim_sample(den, x, cfg, steps, eta=0.0)
    after_eta0 = torch.randn(3)
    torch.manual_seed(5)
    for _ in range(steps):
        torch.randn(x.shape)
    assert torch.equal(after_eta0, torch.randn(3))


def _ideal_denoiser(cfg, c, counter=None):
    """Exact denoiser for data x0 = c (constant): returns v or eps of the dynamically rescaled clean latent s_t*c."""
    b = model_buffers(cfg)
    sa, s1 = b["sqrt_alphas_cumprod"].double(), b["sqrt_one_minus_alphas_cumprod"].double()
    sc = b["scale_arr"].double() if cfg.use_dynamic_rescale else torch.ones(cfg.timesteps, dtype=torch.float64)

    def den(x, t, branches):
        ti = int(t[0])
        x0 = sc[ti] * c
        eps = (x.double() - sa[ti] * x0) / s1[ti]
        out = eps if cfg.parameterization == "eps" else sa[ti] * eps - s1[ti] * x0
        return out.float()

    return den, sc


@pytest.mark.parametrize("name,cfg,spacing,steps", [
    ("eps256", ScheduleConfig(rescale_betas_zero_snr=False, parameterization="eps", use_dynamic_rescale=False),
     "uniform", 50),
    ("v512", ScheduleConfig(), "uniform_trailing", 25),
    ("v1024", ScheduleConfig(base_scale=0.3), "uniform_trailing", 10),
])
def test_ideal_denoiser_recovers_data(name, cfg, spacing, steps):
    """With the exact denoiser of a point mass, every pred_x0 is the (rescaled) data, for eps and v models alike."""
    c = 0.8
    den, sc = _ideal_denoiser(cfg, c)
    x = _latent(b=1, seed=3)
    ts = ddim_schedule(cfg, steps, 0.0, spacing)["ddim_timesteps"]
    for eta in (0.0, 1.0):
        final, traj = ddim_sample(den, x, cfg, steps, eta=eta, spacing=spacing, cfg_text=7.5, cfg_image=5.0,
                                  guidance_rescale=0.0, generator=torch.Generator().manual_seed(0),
                                  return_trajectory=True)
        for st in traj:  # pred_x0 carries scale_arr[t_prev] (dynamic rescale), 1 without it
            prev = ts[max(st["index"] - 1, 0)]
            torch.testing.assert_close(st["pred_x0"], torch.full_like(x, sc[prev].item() * c), atol=2e-3, rtol=1e-3)
        assert (final - sc[ts[0]].item() * c).abs().max() < 0.15  # a_prev[0] = ac[0] < 1: not exactly clean


def test_callback_progress_and_cancel():
    seen = []
    ddim_sample(Spy(), _latent(), ScheduleConfig(), 4, callback=lambda i, n, xp, p0: seen.append((i, n, xp.shape)))
    assert [s[:2] for s in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]

    class Cancelled(Exception):
        pass

    def cancel(i, n, xp, p0):
        if i == 1:
            raise Cancelled

    spy = Spy()
    with pytest.raises(Cancelled):
        ddim_sample(spy, _latent(), ScheduleConfig(), 10, callback=cancel)
    assert len(spy.calls) == 2


def test_float64_input_and_uniform_quirk():
    x = _latent().double()
    out, traj = ddim_sample(Spy(), x, ScheduleConfig(), 30, spacing="uniform", return_trajectory=True)
    assert out.dtype == torch.float64 and len(traj) == 31


@pytest.mark.parametrize("kwargs", [
    dict(mode="triple", cfg_text=7.5),
    dict(spacing="quad"),
    dict(steps=0),
    dict(eta=-0.5),
    dict(guidance_rescale=-1.0),
    dict(noise=[torch.zeros(2, 4, 3, 4, 5)]),  # too few steps
    dict(noise=[torch.zeros(1, 4, 3, 4, 5)] * 5),  # wrong shape
    dict(cfg=ScheduleConfig(parameterization="x0")),
    dict(cfg=ScheduleConfig(parameterization="eps")),  # eps-prediction cannot start at a zero-SNR t
    dict(denoise=lambda x, t, b: x[:1]),
    dict(x_T="not a tensor"),
], ids=["mode", "spacing", "steps", "eta", "rescale", "noise_short", "noise_shape", "param", "eps_zsnr",
        "denoise_shape", "x_T"])
def test_bad_arguments_raise(kwargs):
    kw = dict(denoise=Spy(), x_T=_latent(), cfg=ScheduleConfig(), steps=5)
    kw.update(kwargs)
    with pytest.raises(DynamiCrafterInputError) as e:
        ddim_sample(kw.pop("denoise"), kw.pop("x_T"), kw.pop("cfg"), kw.pop("steps"), **kw)
    assert "\n" not in str(e.value)

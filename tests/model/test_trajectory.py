"""End-to-end reference DDIM with the real (tiny) UNet against the stored trajectories (fixtures README section 4).

The UNet is built from the trajectory sidecar's unet_config and weight files; the three guidance branches run as
one batched call per step. Covers every stored run, including multicond_eta1 with its stored per-step noise
injected (no model outputs are stored for it, so only this test checks it).
"""
import pytest
import torch

from comfyui_dynamicrafter.model.config import ScheduleConfig, UNetConfig
from comfyui_dynamicrafter.model.sampler import ddim_sample
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.tests.fixtures import fixture_sets, load_set, report_checked, set_ids

from .test_sampler import FIXTURE_BRANCH, run_kwargs

SETS = fixture_sets()
TOL = dict(atol=5e-4, rtol=5e-4)  # fixtures README suggestion for trajectories
UNET_PREFIX = "model.diffusion_model."


def _unet(path, meta):
    weights = {}
    for f in meta["weights_files"]:
        weights.update(load_set(path, f)[0])
    model = UNetModel(UNetConfig.from_dict(meta["unet_config"])).eval()
    model.load_state_dict({k[len(UNET_PREFIX):]: v for k, v in weights.items() if k.startswith(UNET_PREFIX)},
                          strict=True)
    return model


def _denoiser(model, fx, calls):
    def denoise(x, t, branches):
        calls.append(branches)
        ctx = torch.cat([fx[f"{FIXTURE_BRANCH[b]}.c_crossattn"] for b in branches])       # [K*B, 77+L, D]
        concat = torch.cat([fx[f"{FIXTURE_BRANCH[b]}.c_concat"] for b in branches])       # [K*B, 4, T, H, W]
        fs = fx["fs"].long().repeat(len(branches))                                         # [K*B]
        return model(torch.cat([x, concat], dim=1), t, context=ctx, fs=fs)               # noisy latent first

    return denoise


@pytest.mark.parametrize("path", SETS, ids=set_ids(SETS))
def test_reference_trajectories_with_unet(path, request):
    fx, meta = load_set(path, "sampler_trajectory")
    cfg = ScheduleConfig.from_dict(meta["model_settings"])
    model = _unet(path, meta)
    assert meta["runs"], "trajectory fixture has no runs"
    summary = []
    for run in meta["runs"]:
        kw, steps = run_kwargs(meta, run)
        noise = [fx[f"{run}.step{k}.noise"] for k in range(steps)] if f"{run}.step0.noise" in fx else None
        assert noise is not None or kw["eta"] == 0, f"{run}: eta > 0 but no stored noise"
        calls = []
        with torch.no_grad():
            final, traj = ddim_sample(_denoiser(model, fx, calls), fx["x_T"], cfg, steps, noise=noise,
                                      return_trajectory=True, **kw)
        assert len(calls) == steps and len(traj) == steps
        worst = 0.0
        for k, st in enumerate(traj):
            for name in ("x_prev", "pred_x0"):
                ref = fx[f"{run}.step{k}.{name}"]
                torch.testing.assert_close(st[name], ref, **TOL, msg=lambda m: f"{run} step {k} {name}: {m}")
                worst = max(worst, (st[name] - ref).abs().max().item())
        torch.testing.assert_close(final, fx[f"{run}.final"], **TOL, msg=lambda m: f"{run} final: {m}")
        worst = max(worst, (final - fx[f"{run}.final"]).abs().max().item())
        summary.append(f"{run} {worst:.1e}")
    report_checked(request, path, "UNet trajectories (" + ", ".join(summary) + ")")

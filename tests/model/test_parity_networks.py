"""Parity of the UNet (every recorded call, the alpha variant, per-block intermediates) and P with the reference.

Every config, shape and argument comes from the fixture sidecars; tolerances are the fixtures README's suggestion.
"""
import dataclasses

import pytest
import torch

from comfyui_dynamicrafter.model.config import ResamplerConfig, UNetConfig
from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel, timestep_embedding
from comfyui_dynamicrafter.tests.fixtures import fixture_sets, load_set, report_checked

TOL = dict(atol=1e-4, rtol=1e-4)
UNET_PREFIX = "model.diffusion_model."
P_PREFIX = "image_proj_model."
SETS = fixture_sets()


def _unet_from_set(path, learnable=False, extra=None):
    meta = load_set(path, "unet_forward")[1]
    weights = {}
    for f in meta["weights_files"]:
        weights.update(load_set(path, f.replace(".safetensors", ""))[0])
    cfg = UNetConfig.from_dict(meta["unet_config"])
    cfg = dataclasses.replace(cfg, image_cross_attention_scale_learnable=learnable)
    model = UNetModel(cfg).eval()
    sd = {k[len(UNET_PREFIX):]: v for k, v in weights.items()}
    sd.update(extra or {})
    model.load_state_dict(sd, strict=True)
    return model, meta


def _call_inputs(fx, name, spec):
    x = fx[f"{name}_x"] if f"{name}_x" in fx else fx[f"{name}_x1"].repeat(spec["B"], 1, 1, 1, 1)
    fs = fx.get(f"{name}_fs")
    return x, fx[f"{name}_timesteps"].long(), fx[f"{name}_context"], None if fs is None else fs.long()


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_unet_calls(path, request):
    report_checked(request, path, 'unet_forward calls')
    fx, meta = load_set(path, "unet_forward")
    model, _ = _unet_from_set(path)
    calls = {k: v for k, v in meta["calls"].items() if "alpha_keys" not in v}
    assert calls, "fixture set has no recorded UNet calls"
    with torch.no_grad():
        for name, spec in calls.items():
            x, t, ctx, fs = _call_inputs(fx, name, spec)
            y = model(x, t, context=ctx, fs=fs)
            torch.testing.assert_close(y, fx[f"{name}_y"], **TOL, msg=lambda m: f"call {name}: {m}")


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_unet_sinusoidal_embeddings(path, request):
    report_checked(request, path, 'unet sinusoidal embeddings')
    fx, meta = load_set(path, "unet_forward")
    mc = meta["unet_config"]["model_channels"]
    checked = 0
    for key in fx:
        for suffix, src in (("_t_emb_sinusoidal", "_timesteps"), ("_fs_emb_sinusoidal", "_fs")):
            if key.endswith(suffix):
                emb = timestep_embedding(fx[key[: -len(suffix)] + src].long(), mc)
                torch.testing.assert_close(emb, fx[key], atol=1e-6, rtol=0)
                checked += 1
    assert checked


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_unet_learnable_alpha(path, request):
    report_checked(request, path, 'unet alpha variant')
    fx, meta = load_set(path, "unet_forward")
    alpha_calls = {k: v for k, v in meta["calls"].items() if "alpha_keys" in v}
    assert alpha_calls, "fixture set has no alpha-variant call"
    for name, spec in alpha_calls.items():
        alphas = {k[len("alpha_param." + UNET_PREFIX):]: v for k, v in fx.items() if k.startswith("alpha_param.")}
        assert sorted(UNET_PREFIX + k for k in alphas) == sorted(spec["alpha_keys"])
        model, _ = _unet_from_set(path, learnable=True, extra=alphas)
        base = name.split("_")[0]
        x, t, ctx, fs = _call_inputs(fx, base, meta["calls"][base])
        with torch.no_grad():
            y = model(x, t, context=ctx, fs=fs)
        torch.testing.assert_close(y, fx[f"{base}_y_alpha"], **TOL)
        # the gate matters: the gated output differs from the plain model's
        assert (y - fx[f"{base}_y"]).abs().max() > 1e-3


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_unet_intermediates(path, request):
    report_checked(request, path, 'unet_intermediates')
    fx, meta = load_set(path, "unet_intermediates")
    model, _ = _unet_from_set(path)
    taps = {k[len("tap."):]: v for k, v in fx.items() if k.startswith("tap.")}
    got = {}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, o))
             for name in taps]
    with torch.no_grad():
        y = model(fx["x"], fx["timesteps"].long(), context=fx["context"], fs=fx["fs"].long())
    for h in hooks:
        h.remove()
    assert set(got) == set(taps)
    for name, ref in taps.items():
        torch.testing.assert_close(got[name], ref, **TOL, msg=lambda m: f"tap {name}: {m}")
    torch.testing.assert_close(y, fx["y"], **TOL)


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_resampler(path, request):
    report_checked(request, path, 'resampler_forward')
    fx, meta = load_set(path, "resampler_forward")
    cfg = ResamplerConfig.from_dict(meta["resampler_config"])
    p = Resampler(cfg).eval()
    p.load_state_dict({k[len(P_PREFIX):]: v for k, v in fx.items() if k.startswith(P_PREFIX)}, strict=True)
    with torch.no_grad():
        out = p(fx["input"])
    assert out.shape == (fx["input"].shape[0], cfg.num_queries * cfg.video_length, cfg.output_dim)
    torch.testing.assert_close(out, fx["output"], **TOL)


def test_real_resampler_config_matches_registry():
    """The registry's P is the real config recorded beside the tiny one."""
    from comfyui_dynamicrafter.model.variants import get_variant

    for path in SETS:
        meta = load_set(path, "resampler_forward")[1]
        assert dataclasses.asdict(get_variant("512").resampler) == meta["real_config"]

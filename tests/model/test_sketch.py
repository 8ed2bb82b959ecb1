"""ToonCrafter sketch guidance against the reference fixtures (every set under ``$SKETCH_FIXTURES``, default
``<repo>/../shared/fixtures/tooncrafter_sketch``): preprocessing, every residual, the UNet with and without
residuals, the guided DDIM trajectory (eta 0 and 1, both CFG branches guided), plus the file loading and refusals.

Every config, case, scale and setting comes from the sidecars. Residuals and UNet outputs: 1e-5 relative (atol 1e-5
times the reference's largest magnitude); trajectories: the DynamiCrafter trajectory tests' 5e-4.
"""
import os
from pathlib import Path

import pytest
import torch

from comfyui_dynamicrafter.model.config import ScheduleConfig, UNetConfig
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.sampler import ddim_sample
from comfyui_dynamicrafter.model.sketch import (SketchConfig, SketchEncoder, residual_count, sketch_residuals,
                                                to_host_control)
from comfyui_dynamicrafter.model.sketch_hint import (aspect_note, frame_mask, gray_u8, hint_from_gray,
                                                     parse_frame_indices, sketch_hints)
from comfyui_dynamicrafter.model.sketch_io import check_sketch_keys, convert_sketch_encoder, load_sketch_encoder
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.tests.fixtures import REPO, fixture_sets, load_set, report_checked

ROOT = Path(os.environ.get("SKETCH_FIXTURES") or (REPO / ".." / "shared" / "fixtures" / "tooncrafter_sketch").resolve())
SETS = fixture_sets(ROOT)
TRAJ_TOL = dict(atol=5e-4, rtol=5e-4)                                     # tests/model/test_trajectory.py


def _close(a, ref, what):
    """1e-5 relative: rtol 1e-5 and atol 1e-5 x the reference's largest magnitude."""
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), msg=lambda m: f"{what}: {m}")
    return float((a - ref).abs().max() / ref.abs().max())


def _models(path):
    w, side = load_set(path, "sketch_weights")
    cp, up = side["controlnet_prefix"], side["unet_prefix"]
    enc = SketchEncoder(SketchConfig.from_dict(side["controlnet_config"])).eval()
    enc.load_state_dict({k[len(cp):]: v for k, v in w.items() if k.startswith(cp)}, strict=True)
    unet = UNetModel(UNetConfig.from_dict(side["unet_config"])).eval()
    unet.load_state_dict({k[len(up):]: v for k, v in w.items() if k.startswith(up)}, strict=True)
    return enc, unet, side


def _hints(control_cond):                                                 # [B, C, T, H, W] -> [T, C, H, W] (B = 1)
    return control_cond[0].transpose(0, 1)


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_preprocess_is_the_reference(path, request):
    fx, meta = load_set(path, "sketch_preprocess")
    worst = 0.0
    for name, case in meta["cases"].items():
        res, img = name.split(".", 1)                                      # "res0", "img.0"
        bgr = fx[img]
        gray = gray_u8(bgr[..., [2, 1, 0]])
        assert torch.equal(gray, fx[f"{img}.gray"]) and torch.equal(255 - gray, fx[f"{img}.inverted"]), name
        h, w = case["resolution_hw"]
        hint = hint_from_gray(gray, h, w)
        torch.testing.assert_close(hint, fx[f"{name}.hint"], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
        rgb = bgr[..., [2, 1, 0]].float()[None] / 255.0                    # the same frame as a host IMAGE
        torch.testing.assert_close(sketch_hints(rgb, h, w)[0], fx[f"{name}.hint"], atol=1e-6, rtol=0)
        line_map = (fx[f"{img}.inverted"].float() / 255.0)[None, ..., None]  # already a line map: no inversion
        torch.testing.assert_close(sketch_hints(line_map, h, w, invert=False)[0], fx[f"{name}.hint"], atol=1e-6,
                                   rtol=0)
        note = aspect_note(case["image_hw"], h, w)
        assert (note == "") == (case["image_hw"][0] * w == case["image_hw"][1] * h), name
        assert ("padded" in note) == any(case["pad_ltrb"]), (name, note)
        worst = max(worst, float((hint - fx[f"{name}.hint"]).abs().max()))
    for r in {n.split(".")[0] for n in meta["cases"]}:
        cases = sorted(n for n in meta["cases"] if n.startswith(r + "."))
        video = torch.stack([fx[f"{n}.hint"] for n in cases], dim=1)[None]  # [1, 1, N, h, w]
        torch.testing.assert_close(video, fx[f"{r}.cn_videos"], atol=1e-6, rtol=0)
    report_checked(request, path, f"sketch preprocess ({len(meta['cases'])} cases, max {worst:.1e})")


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_every_residual(path, request):
    enc, _, side = _models(path)
    fx, meta = load_set(path, "sketch_control")
    assert len(side["residuals"]) == residual_count(enc.cfg)
    worst = 0.0
    for name, case in meta["cases"].items():
        b, t = case["B"], case["T"]
        x = fx[f"{name}.x"].reshape(b, t, *fx[f"{name}.x"].shape[1:]).transpose(1, 2)  # [B, 4, T, h, w]
        ts = fx[f"{name}.t"].long()
        ctx = fx[f"{name}.context"]
        for s in [1.0] + [float(v) for v in case.get("scales_stored", [])]:
            with torch.no_grad():
                if b == 1:                                                 # the guidance path: sketches by frame
                    control = sketch_residuals(enc, x, ts, ctx, fx[f"{name}.hint"], torch.ones(t), s)
                else:                                                      # per-sample sketches: the encoder itself
                    res = enc(fx[f"{name}.x"], fx[f"{name}.hint"], ts.repeat_interleave(t), ctx, frames=t)
                    control = to_host_control([r * s for r in res])
            got = control["output"] + control["middle"]
            assert len(got) == len(side["residuals"])
            for i, r in enumerate(got):
                key = f"{name}.res.{i}" if s == 1.0 else f"{name}.res_scaled_{s:g}.{i}"
                worst = max(worst, _close(r, fx[key], key))
                assert list(r.shape[1:]) == [side["residuals"][i][k] for k in ("channels", "h", "w")]
    report_checked(request, path, f"sketch residuals (max rel {worst:.1e})")


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_unet_with_and_without_residuals(path, request):
    enc, unet, side = _models(path)
    fx, meta = load_set(path, "sketch_unet")
    ctl, _ = load_set(path, "sketch_control")
    worst = 0.0
    for name, case in meta["cases"].items():
        xin = torch.cat([fx[f"{name}.x_noisy"], fx[f"{name}.c_concat"]], dim=1)
        t, fs, ctx = fx[f"{name}.t"].long(), fx[f"{name}.fs"].long(), fx[f"{name}.c_crossattn"]
        with torch.no_grad():
            worst = max(worst, _close(unet(xin, t, ctx, fs), fx[f"{name}.y_nocontrol"], f"{name} no control"))
            keys = sorted(k for k in fx if k.startswith(f"{name}.y_control_"))
            assert keys, name
            for key in keys:
                s = float(key.rsplit("_", 1)[1])
                if case["B"] == 1:                                         # our encoder on the stored sketches
                    control = sketch_residuals(enc, fx[f"{name}.x_noisy"], t, ctx, _hints(fx[f"{name}.control_cond"]),
                                               torch.ones(case["T"]), s)
                else:                                                      # the stored residuals, (b t) rows
                    n = len(side["residuals"])
                    control = to_host_control([ctl[f"B2.res.{i}"] * s for i in range(n)])
                y = unet(xin, t, ctx, fs, control=control)
                worst = max(worst, _close(y, fx[key], key))
    report_checked(request, path, f"sketch UNet with/without residuals (max rel {worst:.1e})")


def _guided_denoiser(enc, unet, fx, scale):
    hints, t_frames = _hints(fx["control_cond"]), fx["x_T"].shape[2]
    ctx = {"cond": fx["cond.c_crossattn"], "uc": fx["uc.c_crossattn"]}

    def denoise(x, t, branches):
        context = torch.cat([ctx[b] for b in branches])                    # [K, 77 + 16T, D]
        concat = fx["cond.c_concat"].repeat(len(branches), 1, 1, 1, 1)
        fs = fx["fs"].long().repeat(len(branches))
        control = sketch_residuals(enc, x, t, context, hints, torch.ones(t_frames), scale)  # every branch
        return unet(torch.cat([x, concat], dim=1), t, context, fs, control=control)

    return denoise


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_guided_ddim_trajectory(path, request):
    enc, unet, _ = _models(path)
    fx, meta = load_set(path, "sketch_ddim")
    st = meta["settings"]
    sched = ScheduleConfig()                                               # inference_512_v1.0.yaml (settings)
    summary = []
    for eta in st["etas"]:
        run = f"eta{eta:g}"
        noise = [fx[f"{run}.step{k}.noise"] for k in range(st["S"])] if eta else None
        with torch.no_grad():
            final, traj = ddim_sample(_guided_denoiser(enc, unet, fx, st["control_scale"]), fx["x_T"], sched,
                                      st["S"], eta=eta, spacing=st["timestep_spacing"], cfg_text=st["cfg_scale"],
                                      guidance_rescale=st["guidance_rescale"], mode="single", noise=noise,
                                      return_trajectory=True)
        assert [int(s["t"]) for s in traj] == st["ddim_timesteps"]
        worst = 0.0
        for k, s in enumerate(traj):
            for what in ("x_prev", "pred_x0"):
                ref = fx[f"{run}.step{k}.{what}"]
                torch.testing.assert_close(s[what], ref, **TRAJ_TOL, msg=lambda m: f"{run} step {k} {what}: {m}")
                worst = max(worst, float((s[what] - ref).abs().max()))
        torch.testing.assert_close(final, fx[f"{run}.final"], **TRAJ_TOL)
        summary.append(f"{run} {worst:.1e}")
    report_checked(request, path, "sketch guided DDIM (" + ", ".join(summary) + ")")


# ---------------------------------------------------------------------------------------------------------------
# the file: real layout, .ckpt / safetensors / converted, refusals
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_real_layout_is_the_released_file(path):
    _, side = load_set(path, "sketch_weights")
    real = side["real_controlnet"]
    cfg = SketchConfig.from_dict(real["config"])
    assert cfg == SketchConfig(use_checkpoint=cfg.use_checkpoint)          # the defaults are cldm_v21.yaml's
    with torch.device("meta"):
        enc = SketchEncoder(cfg)
    sd = enc.state_dict()
    assert len(sd) == real["num_keys"] and sum(t.numel() for t in sd.values()) == real["num_params"]
    assert list(sd)[:len(real["first_keys"])] == real["first_keys"]
    assert residual_count(cfg) == real["num_residuals"]
    chans = [z[0].out_channels for z in enc.zero_convs] + [enc.middle_block_out[0].out_channels]
    assert chans == real["residual_channels"]


def _encoder_sd(path):
    w, side = load_set(path, "sketch_weights")
    cp = side["controlnet_prefix"]
    return {k[len(cp):]: v for k, v in w.items() if k.startswith(cp)}, SketchConfig.from_dict(side["controlnet_config"])


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_file_loads_as_ckpt_safetensors_and_converted(path, tmp_path):
    from safetensors.torch import save_file

    sd, cfg = _encoder_sd(path)
    ckpt = tmp_path / "sketch_encoder.ckpt"
    torch.save({"state_dict": sd}, ckpt)                                   # as it ships: a pickle, bare keys
    st = tmp_path / "prefixed.safetensors"
    save_file({"control_model." + k: v.contiguous() for k, v in sd.items()}, str(st))
    conv, n = convert_sketch_encoder(ckpt, tmp_path / "converted.safetensors", dtype="fp32", cfg=cfg)
    assert n == len(sd)
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 1, 64, 64, generator=g)
    ctx = torch.randn(1, 77 + 32, cfg.context_dim, generator=g)
    ref = SketchEncoder(cfg).eval()
    ref.load_state_dict(sd)
    with torch.no_grad():
        want = ref(x, hint, torch.tensor([500, 500]), ctx, frames=2)
        for f in (ckpt, st, conv):
            got = load_sketch_encoder(f, cfg=cfg)(x, hint, torch.tensor([500, 500]), ctx, frames=2)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), f


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_file_refusals_are_one_line(path):
    sd, cfg = _encoder_sd(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    rgb = dict(shapes, **{"input_hint_block.0.weight": (16, 3, 3, 3)})
    cases = {"hint_channels 3": rgb,
             "input_hint_block, zero_convs": {k: v for k, v in shapes.items() if not k.startswith("zero_convs")},
             "missing": {k: v for k, v in shapes.items() if "middle_block.1" not in k},
             "-dim context": {k: (v[0], v[1] + 8) if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) else v
                              for k, v in shapes.items()}}
    for words, bad in cases.items():
        with pytest.raises(DynamiCrafterInputError) as err:
            check_sketch_keys(bad, "sketch file", cfg=cfg)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert check_sketch_keys(shapes, "sketch file", cfg=cfg) == cfg


# ---------------------------------------------------------------------------------------------------------------
# sparse sketches
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_sketch_sparse_mask(path):
    enc, _, _ = _models(path)
    fx, meta = load_set(path, "sketch_control")
    t = meta["cases"]["D16"]["T"]
    x = fx["D16.x"].reshape(1, t, *fx["D16.x"].shape[1:]).transpose(1, 2)
    args = (enc, x.repeat(2, 1, 1, 1, 1), fx["D16.t"].long().repeat(2), fx["D16.context"].repeat(2, 1, 1),
            fx["D16.hint"])
    with torch.no_grad():
        dense = sketch_residuals(*args, torch.ones(t), 0.6)
        every = sketch_residuals(*args, frame_mask(parse_frame_indices(" , ".join(map(str, range(t))), t), t), 0.6)
        keep = [0, min(8, t - 1)]
        sparse = sketch_residuals(*args, frame_mask(keep, t), 0.6)
    for kind in ("output", "middle"):
        for d, e, s in zip(dense[kind], every[kind], sparse[kind]):
            assert torch.equal(d, e)                                       # sparse on every frame == dense, exactly
            s5, d5 = s.reshape(2, t, *s.shape[1:]), d.reshape(2, t, *d.shape[1:])
            others = [f for f in range(t) if f not in keep]
            assert torch.count_nonzero(s5[:, others]) == 0                 # frames without a sketch: exact zeros
            torch.testing.assert_close(s5[:, keep], d5[:, keep], rtol=1e-5, atol=1e-5 * float(d.abs().max()))
        assert sketch_residuals(*args, torch.zeros(t), 0.6) == {}          # no sketch at all: no control


def test_sketch_frame_indices_refusals():
    assert parse_frame_indices("all", 4) == [0, 1, 2, 3] and parse_frame_indices("3, 0", 16) == [3, 0]
    for text, words in (("0, 16", "0..15"), ("1, 1", "each frame once"), ("a", "whole numbers"), ("-1", "0..15")):
        with pytest.raises(DynamiCrafterInputError) as err:
            parse_frame_indices(text, 16)
        assert words in str(err.value) and "\n" not in str(err.value)

"""ToonCrafter dual-reference VAE against the reference fixtures (every set under ``$TOONCRAFTER_FIXTURES``, default
``<repo>/../shared/fixtures/tooncrafter``), and the real-size first-stage layout.

Every config value, shape, chunk list and index comes from the sidecars; both decoder structures (the reference's
whole-chunk pass and the low-memory stream) are checked on every decode call. Tolerance: the fixtures README's 1e-4.
"""
import json
import os
import re
from pathlib import Path

import pytest
import torch

from comfyui_dynamicrafter.model.tooncrafter import (DualRefAutoencoderKL, DualRefVAEConfig, decode_video,
                                                     dualref_config_from_ddconfig, encode_video, splice_index)
from comfyui_dynamicrafter.model.vae import _chunks
from comfyui_dynamicrafter.tests.fixtures import REPO, fixture_sets, load_set, report_checked

TOL = dict(atol=1e-4, rtol=1e-4)
PREFIX = "first_stage_model."
ROOT = Path(os.environ.get("TOONCRAFTER_FIXTURES") or (REPO / ".." / "shared" / "fixtures" / "tooncrafter").resolve())
SETS = fixture_sets(ROOT)
MANIFEST = REPO / ".." / "shared" / "fixtures" / "checkpoint_layout" / "manifest_tooncrafter_inference_512_v1.0.json"
STRUCTURES = [("forward", None), ("stream", 1), ("stream", 3)]            # (structure, frames per pass)


def _model(path):
    weights, side = load_set(path, "dualref_vae_weights")
    sd = {k[len(PREFIX):]: v for k, v in weights.items()}
    cfg = dualref_config_from_ddconfig(side["ddconfig"], embed_dim=sd["quant_conv.weight"].shape[0] // 2)
    vae = DualRefAutoencoderKL(cfg).eval()
    vae.load_state_dict(sd, strict=True)
    assert list(vae.decoder.attn_level) == list(side["effective_attn_level"])
    return vae, side


def _hs(fx, name, levels):
    return [fx[f"{name}.hs.{i}"] for i in range(levels + 1)]


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_encode_posterior_hidden_states_and_latents(path, request):
    vae, side = _model(path)
    fx, meta = load_set(path, "dualref_encode")
    for name, case in meta["cases"].items():
        x = fx[f"{name}.x"]                                                # [(b t), 3, H, W]
        video = x.reshape(case["B"], case["T"], *x.shape[1:]).transpose(1, 2)
        with torch.no_grad():
            mean, std, hs = vae.encode_hidden(video)
            noise = fx[f"{name}.noise"]
            noise = noise.reshape(case["B"], case["T"], *noise.shape[1:]).transpose(1, 2)
            z_sample, hs2 = encode_video(vae, video, noise=noise, scale_factor=meta["scale_factor"])
            z_mode, _ = encode_video(vae, video, sample=False, scale_factor=meta["scale_factor"])
        flat = lambda t: t.transpose(1, 2).flatten(0, 1)                 # [B, C, T, h, w] -> [(b t), C, h, w]
        torch.testing.assert_close(flat(mean), fx[f"{name}.mean"], **TOL)
        torch.testing.assert_close(flat(mean), fx[f"{name}.mode"], **TOL)
        torch.testing.assert_close(flat(2 * std.log()), fx[f"{name}.logvar"], **TOL)
        torch.testing.assert_close(torch.cat([flat(mean), flat(2 * std.log())], 1), fx[f"{name}.moments"], **TOL)
        torch.testing.assert_close(z_sample, fx[f"{name}.z_sample"], **TOL)
        torch.testing.assert_close(z_mode, fx[f"{name}.z_mode_scaled"], **TOL)
        assert len(hs) == len(side["levels"])
        for i, (h, h2) in enumerate(zip(hs, hs2)):
            torch.testing.assert_close(h, fx[f"{name}.hs.{i}"], **TOL)
            assert torch.equal(h, h2)
        report_checked(request, path, f"dualref_encode:{name}")


def _check_decode(vae, fx, name, hs, chunk, scale, what):
    z = fx[f"{name}.z"]
    for structure, fpp in STRUCTURES:
        with torch.no_grad():
            y = decode_video(vae, z, hs, splice_middle=False, temporal_length=chunk, structure=structure,
                             frames_per_pass=fpp, scale_factor=scale)
        torch.testing.assert_close(y, fx[what], **TOL, msg=lambda m: f"{what} ({structure}, {fpp}): {m}")


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_decode_calls_chunking_and_middle_frame_splice(path, request):
    vae, side = _model(path)
    fx, meta = load_set(path, "dualref_decode")
    chunk, scale, levels = side["temporal_length_chunk"], meta["scale_factor"], len(vae.cfg.ch_mult)
    for name, call in meta["calls"].items():
        if "index" in call:                                                # the inference.py final-frame assembly
            src = re.search(r"samples = (\w+)\.z", call["call"]).group(1)
            z, t = fx[f"{src}.z"], fx[f"{src}.z"].shape[2]
            assert splice_index(t) == call["index"] == fx[f"{name}.index"].long().tolist()
            assert torch.equal(z[:, :, call["index"]], fx[f"{name}.z"])
            hs = _hs(fx, src, levels)
            _check_decode(vae, fx, name, hs, chunk, scale, f"{name}.out")
            for structure, fpp in STRUCTURES:
                with torch.no_grad():
                    y = decode_video(vae, z, hs, splice_middle=True, temporal_length=chunk, structure=structure,
                                     frames_per_pass=fpp, scale_factor=scale)
                torch.testing.assert_close(y, fx[f"{name}.merged"], **TOL)
        else:
            t = fx[f"{name}.z"].shape[2]
            assert [b - a for a, b in _chunks(t, chunk)] == call["chunks"], "our chunk plan differs from the sidecar"
            _check_decode(vae, fx, name, _hs(fx, name, levels), chunk, scale, f"{name}.out")
            if f"{name}.out_noref" in fx:
                _check_decode(vae, fx, name, None, chunk, scale, f"{name}.out_noref")
        report_checked(request, path, f"dualref_decode:{name}")


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_decoder_intermediates(path, request):
    vae, side = _model(path)
    fx, meta = load_set(path, "dualref_intermediates")
    dec = load_set(path, "dualref_decode")[0]
    src = re.search(r"dualref_decode (\w+)\.z", meta["description"]).group(1)
    z = dec[f"{src}.z"] * (1.0 / meta["scale_factor"])
    hs = [h[0] for h in _hs(dec, src, len(vae.cfg.ch_mult))]
    zc = z[0].transpose(0, 1)                                              # one chunk, [n, 4, h, w]
    taps, stream_taps = {}, {}
    with torch.no_grad():
        vae.decoder(zc, vae.decoder.prepare(hs), taps)
        out = vae.decoder.stream(zc, vae.decoder.prepare(hs), 2, stream_taps)
    names = meta["tap_order"]
    assert sorted(f"tap.{n}" for n in names) == sorted(fx)
    for n in names:
        torch.testing.assert_close(taps[n], fx[f"tap.{n}"], **TOL, msg=lambda m: f"tap {n}: {m}")
        if n in stream_taps:                                               # the stream's temporal barriers
            torch.testing.assert_close(stream_taps[n], fx[f"tap.{n}"], **TOL, msg=lambda m: f"stream {n}: {m}")
    assert set(stream_taps) == {n for n in names if re.fullmatch(r"mid\.block_\d+|up\.\d+\.block\.\d+", n)}
    torch.testing.assert_close(out, fx["tap.conv_out"], **TOL)
    report_checked(request, path, f"dualref_intermediates:{src} ({len(names)} taps)")


@pytest.mark.parametrize("path", SETS, ids=[p.name for p in SETS])
def test_low_precision_decode_and_memory_cap(path, request):
    """bf16 compute stays close to the float32 reference; a memory cap changes frames per pass, not values."""
    vae, side = _model(path)
    fx, meta = load_set(path, "dualref_decode")
    name = next(n for n, c in meta["calls"].items() if "index" not in c)
    hs, z, chunk = _hs(fx, name, len(vae.cfg.ch_mult)), fx[f"{name}.z"], side["temporal_length_chunk"]
    ref = fx[f"{name}.out"]
    with torch.no_grad():
        capped = decode_video(vae, z, hs, splice_middle=False, temporal_length=chunk, memory_cap_mb=1e-3)
        roomy = decode_video(vae, z, hs, splice_middle=False, temporal_length=chunk, memory_cap_mb=1e6)
        vae.to(torch.bfloat16)
        vae.dtype = torch.bfloat16
        low = decode_video(vae, z, hs, splice_middle=False, temporal_length=chunk).float()
    torch.testing.assert_close(capped, ref, **TOL)
    torch.testing.assert_close(roomy, ref, **TOL)
    rel = ((low - ref).norm() / ref.norm()).item()
    assert rel < 3e-2, f"bf16 decode relative L2 error {rel:.3g}"
    report_checked(request, path, f"dualref_decode:{name} bf16 rel {rel:.1e}, memory caps")


def test_decode_refusals_one_line():
    vae = DualRefAutoencoderKL(DualRefVAEConfig(ch=32, ch_mult=(1, 2, 1), num_res_blocks=1)).eval()
    z = torch.zeros(1, 4, 6, 4, 6)
    good = [torch.zeros(1, c, 2, 16 // s, 24 // s) for c, s in ((32, 1), (64, 2), (32, 4))] + [
        torch.zeros(1, 32, 2, 16, 24)]
    with pytest.raises(ValueError, match="ToonCrafter decode references") as e:
        decode_video(vae, z, good[:-1])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="ToonCrafter decode references"):
        decode_video(vae, torch.zeros(1, 4, 6, 8, 6), good)                # end image of another size
    with pytest.raises(ValueError, match="at least 4 frames"):
        decode_video(vae, z[:, :, :3], good)
    with pytest.raises(ValueError, match=r"\[B, 4, T, h, w\]"):
        decode_video(vae, z[0], good)


def test_real_first_stage_layout_and_strict_load():
    """Real config: our state_dict == the manifest's 396 first-stage keys (names, shapes, order); decoder 65.8 M;
    random weights with exactly those keys load strictly."""
    keys = json.loads(MANIFEST.read_text())["keys"]
    want = [(k[len(PREFIX):], list(v["shape"] if isinstance(v, dict) else v)) for k, v in keys.items()
            if k.startswith(PREFIX)]
    with torch.device("meta"):
        vae = DualRefAutoencoderKL(DualRefVAEConfig())
    ours = [(k, list(v.shape)) for k, v in vae.state_dict().items()]
    assert len(want) == 396 and ours == want
    assert sum(p.numel() for p in vae.decoder.parameters()) == 65_778_223
    assert sum(p.numel() for p in vae.encoder.parameters()) == 34_163_592
    assert vae.decoder.attn_level == (2, 3)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in want}
    vae.load_state_dict(sd, strict=True, assign=True)
    assert all(p.device.type == "cpu" for p in vae.parameters())
    with torch.no_grad():                                                  # the real decoder runs, shapes as expected
        hs = [torch.randn(1, c, 2, 16 // s, 16 // s) for c, s in ((128, 1), (256, 2), (512, 4), (512, 8))]
        y = vae.decode(torch.randn(1, 4, 3, 2, 2), hs + [torch.randn(1, 128, 2, 16, 16)], temporal_length=16)
    assert y.shape == (1, 3, 3, 16, 16) and torch.isfinite(y).all()

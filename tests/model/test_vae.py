"""KL-f8 autoencoder: reference key layout (strict load), shapes, chunked decode == unchunked decode."""
import json
import os

import pytest
import torch

from comfyui_dynamicrafter.model.vae import (SCALE_FACTOR, TINY_VAE, AutoencoderKL, VAEConfig, decode_latent,
                                             encode_latent)

MANIFEST_DIR = "/work/shared/fixtures/checkpoint_layout"
PREFIX = "first_stage_model."


def _manifest_keys(name):
    path = os.path.join(MANIFEST_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"no manifest {path}")
    keys = json.load(open(path))["keys"]
    out = {}
    for k, v in keys.items():
        if k.startswith(PREFIX):
            out[k[len(PREFIX):]] = list(v["shape"] if isinstance(v, dict) else v)
    return out


def _tiny(seed=0):
    torch.manual_seed(seed)
    vae = AutoencoderKL(TINY_VAE).eval()
    with torch.no_grad():                                              # non-trivial norms so shapes/paths matter
        for n, p in vae.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.uniform_(0.5, 1.5)
    return vae


def test_real_layout_matches_manifest_and_loads_strictly():
    expected = _manifest_keys("manifest_inference_512_v1.0.json")
    assert len(expected) == 248
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig())
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert ours == expected
    sd = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    result = vae.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_tiny_random_state_dict_loads_strictly_and_round_trips():
    vae = _tiny()
    sd = {k: torch.randn_like(v) for k, v in vae.state_dict().items()}
    other = AutoencoderKL(TINY_VAE)
    other.load_state_dict(sd, strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k])


def test_encode_decode_shapes_images_and_video():
    vae = _tiny()
    f = vae.downscale
    assert f == 2
    with torch.no_grad():
        img = torch.rand(3, 3, 16, 24) * 2 - 1
        mean, std = vae.encode(img)
        assert mean.shape == std.shape == (3, 4, 16 // f, 24 // f)
        assert (std > 0).all()
        assert vae.decode(mean).shape == img.shape
        vid = torch.rand(2, 3, 5, 16, 24) * 2 - 1
        mean, std = vae.encode(vid)
        assert mean.shape == (2, 4, 5, 8, 12)
        # per-frame: frame (1, 3) of the video equals encoding that frame alone
        alone, _ = vae.encode(vid[1, :, 3][None])
        torch.testing.assert_close(mean[1, :, 3], alone[0], atol=1e-5, rtol=1e-5)
        assert vae.decode(mean).shape == vid.shape


def test_real_config_shapes_f8():
    vae = AutoencoderKL(VAEConfig(), device="meta")
    assert vae.downscale == 8


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunked_decode_equals_unchunked(chunk):
    vae = _tiny()
    z = torch.randn(2, 4, 7, 8, 12)
    with torch.no_grad():
        full = vae.decode(z)
        part = vae.decode(z, chunk_frames=chunk)
    assert part.shape == full.shape == (2, 3, 7, 16, 24)
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)


def test_chunked_encode_equals_unchunked():
    vae = _tiny()
    x = torch.rand(1, 3, 6, 16, 16) * 2 - 1
    with torch.no_grad():
        m1, s1 = vae.encode(x)
        m2, s2 = vae.encode(x, chunk_frames=4)
    torch.testing.assert_close(m1, m2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)


def test_scale_factor_helpers():
    vae = _tiny()
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        mean, std = vae.encode(x)
        z = encode_latent(vae, x)
        torch.testing.assert_close(z, mean * SCALE_FACTOR)
        g = torch.Generator().manual_seed(3)
        zs = encode_latent(vae, x, sample=True, generator=g)
        g = torch.Generator().manual_seed(3)
        torch.testing.assert_close(zs, (mean + std * torch.randn(mean.shape, generator=g)) * SCALE_FACTOR)
        img = decode_latent(vae, z, chunk_frames=2)
        torch.testing.assert_close(img, vae.decode(mean), atol=1e-5, rtol=1e-5)
        # a memory cap picks a chunk size and changes nothing else
        torch.testing.assert_close(decode_latent(vae, z, memory_cap_mb=0.01), img, atol=1e-5, rtol=1e-5)
    assert vae.frames_for_memory_cap(1, 8, 8) == 1
    assert vae.frames_for_memory_cap(10 ** 12, 8, 8) > 1000


def test_gradients_flow_for_training():
    vae = _tiny()
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_(True)
    mean, std = vae.encode(x)
    vae.decode(mean).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_shape_message():
    vae = _tiny()
    with pytest.raises(ValueError, match="VAE decode input"):
        vae.decode(torch.randn(1, 3, 8, 8))


def test_channels_last_same_values():
    vae = _tiny()
    z = torch.randn(1, 4, 3, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref, (m0, s0) = vae.decode(z), vae.encode(x)
        vae.set_channels_last(True)
        torch.testing.assert_close(vae.decode(z), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z, chunk_frames=2), ref, atol=1e-5, rtol=1e-5)
        m1, s1 = vae.encode(x)
    torch.testing.assert_close(m1, m0, atol=1e-5, rtol=1e-5)

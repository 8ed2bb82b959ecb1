"""ToonCrafter inside a real host: the loader gives MODEL, P, CLIP, CLIP_VISION and the ToonCrafter VAE from one
file (and from a pruned UNet file + a separate VAE file), refuses plain SD VAEs in one line, and DCN_ToonDecode
decodes as model/tooncrafter.py's ``decode_video`` with the start/end references."""
from __future__ import annotations

import os

import pytest
import torch

from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

FRAMES, LATENT = 6, 8                                                      # 6 frames at 64x64 px


def _images(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, size, size, 3, generator=g), torch.rand(1, size, size, 3, generator=g)


def _one_line(err, *words):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_full_and_pruned_tooncrafter_files_load(host):
    loader, toon = S.pack_module(host, "nodes.loader"), S.pack_module(host, "nodes.toon")
    files = tinyckpt.toon_checkpoints()
    with torch.inference_mode():
        res = loader.load_checkpoint(files["toon"])
    assert res.projector.variant.name == "tooncrafter"
    assert "variant 'tooncrafter' from the keys" in res.info and "DCN_ToonDecode" in res.info
    assert res.clip is not None and res.clip_vision is not None
    model = res.vae.dcn_tooncrafter
    assert len(model.state_dict()) == 396
    assert sum(p.numel() for p in model.decoder.parameters()) == 65_778_223
    with torch.inference_mode():
        pruned = loader.load_checkpoint(files["toon_pruned"])
        vae = toon.load_toon_vae(files["toon_vae"])
    assert pruned.projector.variant.name == "tooncrafter" and pruned.vae is None
    assert "metadata" in pruned.info
    for (k, a), b in zip(vae.dcn_tooncrafter.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_plain_vae_and_incomplete_files_are_refused_in_one_line(host, tmp_path):
    toon = S.pack_module(host, "nodes.toon")
    error = S.pack_module(host, "model.errors").DynamiCrafterInputError
    with pytest.raises(error) as err:                                      # the 512 tiny file: a plain SD VAE
        toon.load_toon_vae(tinyckpt.checkpoints()["full"])
    _one_line(err, "148 missing decoder keys", "plain SD VAE")
    from safetensors.torch import load_file, save_file
    sd = load_file(tinyckpt.toon_checkpoints()["toon_vae"])
    del sd["first_stage_model.decoder.attn_refinement.2.to_q.weight"]
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(error) as err:
        toon.load_toon_vae(str(tmp_path / "broken.safetensors"))
    _one_line(err, "1 missing decoder keys", "decoder.attn_refinement.2.to_q.weight")
    with pytest.raises(error) as err:
        toon.toon_decode(None, {"samples": torch.zeros(FRAMES, 4, LATENT, LATENT)}, *_images())
    _one_line(err, "ToonCrafter's VAE", "nothing")


def test_toon_decode_node_matches_the_model_and_refuses_bad_input(host):
    toon = S.pack_module(host, "nodes.toon")
    tc = S.pack_module(host, "model.tooncrafter")
    error = S.pack_module(host, "model.errors").DynamiCrafterInputError
    with torch.inference_mode():
        vae = toon.load_toon_vae(tinyckpt.toon_checkpoints()["toon_vae"])
    z = torch.randn(FRAMES, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(3))
    start, end = _images()
    with torch.inference_mode():
        out = toon.DCN_ToonDecode().decode(vae, {"samples": z}, start, end, True, 100_000)[0]
        model = vae.dcn_tooncrafter
        pair = torch.cat([start, end]).movedim(-1, 1) * 2 - 1                # [2, 3, H, W]
        _, _, hidden = model.encode_hidden(pair.transpose(0, 1)[None])
        ref = tc.decode_video(model, z.transpose(0, 1)[None], hidden, splice_middle=True, structure="forward")
    assert out.shape == (FRAMES, 64, 64, 3) and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, ((ref[0].clamp(-1, 1) + 1) / 2).transpose(0, 1).movedim(1, -1),
                               atol=1e-4, rtol=1e-4)
    bad = [((vae, {"samples": z}, start, None), ("end_image", "nothing")),
           ((vae, {"samples": z}, start, _images(size=32)[1]), ("end_image", "64x64", "32x32")),
           ((vae, {"samples": z[:3]}, start, end), ("at least 4 frames", "3 frames")),
           ((vae, {"samples": z[None]}, start, end), ("one video latent",))]
    for args, words in bad:
        with pytest.raises(error) as err:
            toon.toon_decode(*args)
        _one_line(err, *words)

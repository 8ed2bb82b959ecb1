"""The real-size UNet and P of every registered variant have exactly the keys and shapes of the real checkpoints.

The manifests (shared/fixtures/checkpoint_layout, README section 5) list every key -> shape of the official full
models; the models here are built on the meta device, so this costs no memory. Variant -> manifest comes from the
manifests' own ``config`` field; manifests that only say ``keys_identical_to`` are resolved and their stated
sha256 is checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import VARIANTS, get_variant

REPO = Path(__file__).resolve().parents[2]
UNET_PREFIX = "model.diffusion_model."
P_PREFIX = "image_proj_model."
# Which reference config each registered variant is (configs/... in the manifests' "config" field).
VARIANT_CONFIG = {
    "256": "configs/inference_256_v1.0.yaml",
    "512": "configs/inference_512_v1.0.yaml",
    "1024": "configs/inference_1024_v1.0.yaml",
    "512-interp": "configs/training_512_v1.0/config_interp.yaml",
    # ToonCrafter's UNet and P have the 512-interp layout (its own manifest adds only the first stage's decoder keys,
    # checked in tests/model/test_tooncrafter.py)
    "tooncrafter": "configs/training_512_v1.0/config_interp.yaml",
}
EXPECTED_COUNTS = {"256": (1532, 1_438_854_996), "512": (1516, 1_438_854_980)}


def layout_root() -> Path:
    env = os.environ.get("CHECKPOINT_LAYOUT")
    return Path(env) if env else (REPO / ".." / "shared" / "fixtures" / "checkpoint_layout").resolve()


def load_manifests():
    root = layout_root()
    files = sorted(root.glob("manifest_*.json"))
    if not files:
        raise FileNotFoundError(f"no checkpoint-layout manifests in {root} (set CHECKPOINT_LAYOUT or put shared/ "
                                "beside the repo); they are part of the project's contract")
    return {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}


def manifest_for(variant: str):
    """(manifest, its keys) of the official (non-ToonCrafter) manifest built from the variant's config."""
    manifests = load_manifests()
    hits = [(n, m) for n, m in manifests.items()
            if m.get("config") == VARIANT_CONFIG[variant] and m.get("source_repo") == "official"]
    assert len(hits) == 1, f"expected one official manifest for {VARIANT_CONFIG[variant]}, found {[n for n, _ in hits]}"
    name, man = hits[0]
    keys = man.get("keys")
    if keys is None:
        ref = manifests[man["keys_identical_to"]]
        keys = ref["keys"]
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()
        assert digest == man["keys_sha256_sorted_json"], f"{name}: referenced key set changed"
    return man, keys


def _shape(v):
    return tuple(v["shape"] if isinstance(v, dict) else v)


def _part(keys, prefix):
    return {k[len(prefix):]: _shape(v) for k, v in keys.items() if k.startswith(prefix)}


@pytest.mark.parametrize("variant", list(VARIANT_CONFIG))
def test_unet_and_p_match_the_real_checkpoint_layout(variant):
    assert set(VARIANT_CONFIG) == set(VARIANTS), "a registered variant has no manifest mapping"
    man, keys = manifest_for(variant)
    v = get_variant(variant)
    with torch.device("meta"):
        unet = UNetModel(v.unet, device="meta")
        proj = Resampler(v.resampler, device="meta")
    got_unet = {k: tuple(t.shape) for k, t in unet.state_dict().items()}
    got_p = {k: tuple(t.shape) for k, t in proj.state_dict().items()}
    want_unet, want_p = _part(keys, UNET_PREFIX), _part(keys, P_PREFIX)
    if variant == "256":  # old files may store the old name; the model uses the new one (reference renames it)
        want_unet = {k.replace("framestride_embed", "fps_embedding"): s for k, s in want_unet.items()}

    assert sorted(set(want_unet) - set(got_unet))[:5] == [], "UNet keys missing from the model"
    assert sorted(set(got_unet) - set(want_unet))[:5] == [], "UNet keys the checkpoint does not have"
    wrong = [(k, got_unet[k], s) for k, s in want_unet.items() if got_unet[k] != s]
    assert wrong[:3] == [], "UNet shapes differ (key, model, checkpoint)"
    assert got_p == want_p

    n_keys, n_params = EXPECTED_COUNTS["256" if variant == "256" else "512"]
    assert len(got_unet) == n_keys == man["prefixes"]["model.diffusion_model"]["count"]
    assert len(got_p) == 51 == man["prefixes"]["image_proj_model"]["count"]
    assert sum(p.numel() for p in unet.parameters()) == n_params == man["unet_num_params"]
    assert sum(p.numel() for p in proj.parameters()) == man["prefixes"]["image_proj_model"]["numel"]
    assert not list(unet.buffers()) and not list(proj.buffers()), "meta-device loading assumes no buffers"


@pytest.mark.parametrize("variant", list(VARIANT_CONFIG))
def test_registry_config_matches_the_reference_config(variant):
    """The registry's UNet/P/schedule settings are those of the config each manifest was built from."""
    man, _ = manifest_for(variant)
    v = get_variant(variant)
    for name, value in man["unet_params"].items():
        if name == "default_fs" and variant == "512-interp":
            # Training config says 10; inference runs the interp checkpoint with the 512 inference config (24).
            assert v.unet.default_fs == 24
            continue
        if name == "default_fs" and variant == "tooncrafter":
            # the UNet's own default is the 512 inference config's; scripts/run.sh's frame stride 10 is the motion
            assert v.unet.default_fs == 24 and v.default_motion == 10
            continue
        got = getattr(v.unet, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, f"unet {name}"
    for name, value in man["image_proj_params"].items():
        assert getattr(v.resampler, name) == value, f"image_proj {name}"
    mp = man["model_params"]
    s = v.schedule
    assert s.parameterization == mp.get("parameterization", "eps")
    assert s.rescale_betas_zero_snr == mp.get("rescale_betas_zero_snr", False)
    assert s.use_dynamic_rescale == mp.get("use_dynamic_rescale", False)
    assert (s.linear_start, s.linear_end, s.timesteps) == (mp["linear_start"], mp["linear_end"], mp["timesteps"])
    if s.use_dynamic_rescale:
        assert s.base_scale == mp["base_scale"]

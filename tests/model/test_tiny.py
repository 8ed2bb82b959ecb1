"""model/tiny.py: the tiny stand-in checkpoints use the real key layout and are deterministic."""
import json

import pytest
import torch

from comfyui_dynamicrafter.model import tiny
from comfyui_dynamicrafter.model.detect import detect_variant
from comfyui_dynamicrafter.tests.fixtures import fixtures_root


def _manifest_keys():
    path = fixtures_root().parent / "checkpoint_layout" / "manifest_inference_512_v1.0.json"
    with open(path, encoding="utf-8") as f:
        return {k: tuple(v) for k, v in json.load(f)["keys"].items()}


def test_vae_shapes_are_the_real_checkpoints():
    real = {k: v for k, v in _manifest_keys().items() if k.startswith("first_stage_model.")}
    assert real and tiny.vae_shapes() == real


def test_full_checkpoint_is_deterministic_and_detected():
    a, b = tiny.full_checkpoint("512", seed=10), tiny.full_checkpoint("512", seed=10)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.diffusion_model.out.2.weight"],
                           tiny.full_checkpoint("512", seed=11)["model.diffusion_model.out.2.weight"])
    real = _manifest_keys()
    prefixes = ("model.diffusion_model.", "image_proj_model.", "cond_stage_model.", "embedder.", "first_stage_model.")
    assert {k.split(".")[0] for k in a} == {k.split(".")[0] for k in real if k.startswith(prefixes)}
    def leaves(keys):                                                # layer kinds, whatever the block numbers
        return {".".join(p for p in k.split(".") if not p.isdigit()) for k in keys}

    unet = ("model.diffusion_model.", "image_proj_model.")
    assert leaves(k for k in a if k.startswith(unet)) == leaves(k for k in real if k.startswith(unet))
    det = detect_variant({k: tuple(v.shape) for k, v in a.items()}, metadata=tiny.variant_metadata("512"))
    assert det.variant == "512"
    det256 = detect_variant({k: tuple(v.shape) for k, v in tiny.unet_and_p("256", 40).items()})
    assert det256.variant == "256"


def _write(path, tensors, metadata):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def test_small_config_comes_from_the_metadata_and_nothing_is_guessed(tmp_path):
    """A tiny file says so in its metadata and is built with that registry entry; the same weights without that
    metadata are validated against the real 512 model and refused in one line (no retry with a tiny config)."""
    from comfyui_dynamicrafter.model.checkpoint import META_CONFIG, open_checkpoint
    from comfyui_dynamicrafter.model.detect import file_variant, validate_checkpoint
    from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
    from comfyui_dynamicrafter.model.variants import SMALL_CONFIGS, get_variant

    sd = tiny.unet_and_p("512", seed=3)
    meta = tiny.variant_metadata("512")
    assert meta[META_CONFIG] == "tiny"
    with open_checkpoint(_write(tmp_path / "small.safetensors", sd, meta)) as ck:
        det = detect_variant(ck)
        assert (det.variant, det.decided_by, det.config) == ("512", "metadata", "tiny")
        assert "config 'tiny'" in det.reason and "pipeline check" in det.reason
        v = file_variant(det)
        assert v.extra["config"] == "tiny" and v.resampler.embedding_dim == tiny.VISION_WIDTH == 64
        assert v.unet.model_channels == SMALL_CONFIGS["tiny"]["unet"]["model_channels"]
        validate_checkpoint(ck, v)                                          # fits: no error
    # the same weights without the config metadata: the real 512 model, refused with one line
    with open_checkpoint(_write(tmp_path / "unmarked.safetensors", sd, tiny.variant_metadata("512", None))) as ck:
        det = detect_variant(ck)
        assert det.config is None and file_variant(det) is get_variant("512")
        with pytest.raises(DynamiCrafterInputError) as err:
            validate_checkpoint(ck, file_variant(det))
    msg = str(err.value)
    assert "\n" not in msg and "of the 512 model" in msg and "wrong shape" in msg
    # a config the registry does not have: refused before anything is built
    bad = dict(meta, **{META_CONFIG: "huge"})
    with open_checkpoint(_write(tmp_path / "other.safetensors", sd, bad)) as ck:
        with pytest.raises(DynamiCrafterInputError) as err:
            detect_variant(ck)
    msg = str(err.value)
    assert "\n" not in msg and "'huge'" in msg and META_CONFIG in msg


def test_trainer_tiny_config_fits_the_tiny_checkpoint():
    """The trainer's `tiny: true` (get_variant(..., tiny=True)) is the config model/tiny.py writes files for."""
    from comfyui_dynamicrafter.model.variants import get_variant

    for name in ("512", "256"):
        v = get_variant(name, tiny=True)
        sd = tiny.unet_and_p(name, seed=1)
        p_in = sd["image_proj_model.proj_in.weight"].shape
        assert p_in == (v.resampler.dim, v.resampler.embedding_dim) == (v.resampler.dim, tiny.VISION_WIDTH)
        assert v.unet.context_dim == tiny.TEXT_WIDTH

"""model/tiny.py: the tiny stand-in checkpoints use the real key layout and are deterministic."""
import json

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

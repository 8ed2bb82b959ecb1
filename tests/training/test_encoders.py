"""Encoders: the real OpenCLIP ViT-H-14 towers built here load the DynamiCrafter checkpoint's ``cond_stage_model`` /
``embedder`` weights (key and shape manifest of the real checkpoint), and the tiny towers give the shapes the UNet
context and P expect (text penultimate layer + ln_final: [B, 77, D]; image last-layer tokens without ln_post:
[B, 257, C])."""
import json

import pytest
import torch

from comfyui_dynamicrafter.tests.fixtures import fixtures_root
from comfyui_dynamicrafter.training.encoders import (TINY_CLIP, ImageEncoder, TextEncoder, _load_clip_weights,
                                                      build_open_clip)


def _manifest():
    p = fixtures_root().parent / "checkpoint_layout" / "manifest_inference_512_v1.0.json"
    if not p.is_file():
        pytest.fail(f"checkpoint layout manifest missing: {p} (shared/fixtures is part of the project's contract)")
    return json.loads(p.read_text())["keys"]


def test_real_towers_match_the_checkpoint_layout():
    keys = _manifest()
    with torch.device("meta"):
        clip = build_open_clip(tiny=False)
    own = {k: tuple(v.shape) for k, v in clip.state_dict().items()}

    def part(prefix):
        return {k[len(prefix):]: tuple(v["shape"] if isinstance(v, dict) else v) for k, v in keys.items()
                if k.startswith(prefix)}

    text, image = part("cond_stage_model.model."), part("embedder.model.")
    need_text = [k for k in own if not k.startswith("visual.") and not k.startswith(("logit_", "text_projection"))]
    need_image = [k for k in own if k.startswith("visual.")]
    assert need_text and need_image
    assert all(text.get(k) == own[k] for k in need_text), [k for k in need_text if text.get(k) != own[k]][:5]
    assert all(image.get(k) == own[k] for k in need_image), [k for k in need_image if image.get(k) != own[k]][:5]
    assert own["visual.positional_embedding"] == (257, 1280) and own["ln_final.weight"] == (1024,)


def test_tiny_towers_shapes_and_weight_loading():
    clip = build_open_clip(tiny=True, seed=0)
    text, image = TextEncoder(clip), ImageEncoder(clip)
    t = text(["a red square moving left", ""])
    x = image(torch.rand(2, 3, 16, 24) * 2 - 1)
    assert t.shape == (2, 77, TINY_CLIP["text"]["width"]) and x.shape == (2, 257, TINY_CLIP["vision"]["width"])
    # penultimate: changing the last text block changes nothing; no ln_post: changing it changes nothing
    with torch.no_grad():
        clip.transformer.resblocks[-1].mlp.c_fc.weight.add_(1.0)
        clip.visual.ln_post.weight.add_(1.0)
    assert torch.equal(text(["a red square moving left", ""]), t)
    assert torch.equal(image(torch.zeros(1, 3, 16, 24)), ImageEncoder(build_open_clip(tiny=True, seed=0))(
        torch.zeros(1, 3, 16, 24)))
    # weights from bare open_clip keys, both towers
    other = build_open_clip(tiny=True, seed=1)
    sd = other.state_dict()
    report = _load_clip_weights(clip, {"text": sd, "image": sd})
    assert len(report) == 2 and torch.equal(TextEncoder(clip)([""]), TextEncoder(other)([""]))

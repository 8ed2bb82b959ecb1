"""(5) Adapter export: only the trained weights + metadata; ``model.adapters.validate_adapter`` accepts the model it
was trained for and refuses another variant or another P shape with one clear line; the merged checkpoint equals
base + adapter and loads with the pack's own checkpoint loader. (Applying it in the ComfyUI graph: the nodes' tests.)
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_dynamicrafter.model import adapters as ad
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.tests.model.loading import load_dynamicrafter
from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.loop import train
from comfyui_dynamicrafter.training.stages import get_stage, stage_variant

from .conftest import run_cli, save_unet_checkpoint, tiny_settings

OVR = dict(unet_overrides={"temporal_length": 4}, resampler_overrides={"video_length": 4})


def _variant(name="512", **res):
    base = get_variant(name, tiny=True)
    v = stage_variant(base, get_stage("finetune"), OVR["unet_overrides"], dict(OVR["resampler_overrides"], **res))
    return v


def _modules(v, seed=5):
    torch.manual_seed(seed)
    return UNetModel(v.unet), Resampler(v.resampler)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, video_data):
    d = str(tmp_path_factory.mktemp("adapter"))
    v = _variant()
    unet, proj = _modules(v)
    base = save_unet_checkpoint(os.path.join(d, "base.safetensors"), unet, proj, drop=())
    s = tiny_settings(os.path.join(d, "run"), video_data[0], init_checkpoint=base, groups=["lora", "P"], max_steps=2,
                      save_every=2, lora_rank=4, lora_alpha=8.0, export_dtype="fp32")
    result = train(TrainConfig.from_dict(s))
    return {"dir": d, "base": base, "adapter": result["adapter"]["adapter"], "variant": v, "unet": unet, "proj": proj,
            "ckpt": result["last_checkpoint"]}


def test_adapter_holds_only_trained_weights_and_metadata(trained):
    tensors, meta = ad.read_adapter(trained["adapter"])
    p_keys = {k for k in tensors if k.startswith("image_proj_model.")}
    lora = ad.lora_modules(tensors)
    assert p_keys == {"image_proj_model." + k for k in trained["proj"].state_dict()}
    assert lora and all(m.startswith("model.diffusion_model.") and (".attn1." in m or ".attn2." in m) for m in lora)
    assert set(tensors) == p_keys | {m + s for m in lora for s in (ad.LORA_DOWN, ad.LORA_UP, ad.LORA_ALPHA)}
    assert meta[ad.META_VARIANT] == "512" and meta[ad.META_STAGE] == "finetune"
    assert json.loads(meta[ad.META_GROUPS]) == ["lora", "P"] and meta[ad.META_STEP] == "2"
    assert meta[ad.META_BASE_SHA] == __import__("hashlib").sha256(open(trained["base"], "rb").read()).hexdigest()
    assert json.loads(meta[ad.META_P_CONFIG])["video_length"] == 4 and meta[ad.META_LORA_RANK] == "4"
    assert float(tensors[lora[0] + ad.LORA_ALPHA]) == 8.0


def test_validate_accepts_its_model(trained):
    tensors, meta = ad.read_adapter(trained["adapter"])
    info = ad.validate_adapter(tensors, meta, trained["variant"], ad.model_shapes(trained["unet"], trained["proj"]))
    assert info.trains_p and info.stage == "finetune" and info.step == 2
    assert all(r == 4 and a == 8.0 for r, a in info.lora.values())


def test_validate_refuses_another_variant(trained):
    tensors, meta = ad.read_adapter(trained["adapter"])
    v1024 = _variant("1024")
    unet, proj = _modules(v1024)
    with pytest.raises(DynamiCrafterInputError) as e:
        ad.validate_adapter(tensors, meta, v1024, ad.model_shapes(unet, proj), name="adapter 'x'")
    msg = str(e.value)
    assert "\n" not in msg and "variant 512" in msg and "1024" in msg
    print(msg)


@pytest.mark.parametrize("res", [{"video_length": 16}, {"embedding_dim": 32}, {"num_queries": 8}])
def test_validate_refuses_another_p_shape(trained, res):
    tensors, meta = ad.read_adapter(trained["adapter"])
    v = _variant(**res)
    unet, proj = _modules(v)
    with pytest.raises(DynamiCrafterInputError) as e:
        ad.validate_adapter(tensors, meta, v, ad.model_shapes(unet, proj))
    msg = str(e.value)
    assert "\n" not in msg and "query transformer P" in msg
    print(msg)
    # Even without the recorded P config, the P tensors themselves are checked.
    meta2 = {k: val for k, val in meta.items() if k != ad.META_P_CONFIG}
    with pytest.raises(DynamiCrafterInputError, match="P tensor"):
        ad.validate_adapter(tensors, meta2, v, ad.model_shapes(unet, proj))


def test_validate_refuses_a_file_that_is_not_an_adapter(trained, tmp_path):
    p = str(tmp_path / "plain.safetensors")
    save_file({"x": torch.zeros(2)}, p)
    with pytest.raises(DynamiCrafterInputError, match="DynamiCrafter adapter"):
        ad.read_adapter(p)


def test_merged_checkpoint_equals_base_plus_adapter(trained):
    out = os.path.join(trained["dir"], "cli_adapter.safetensors")
    merged = os.path.join(trained["dir"], "merged.safetensors")
    r = run_cli(["export", "--checkpoint", trained["ckpt"], "--out", out, "--merged", merged, "--dtype", "fp32"])
    assert r.returncode == 0, r.stderr[-3000:]
    a1, a2 = load_file(trained["adapter"]), load_file(out)
    assert a1.keys() == a2.keys() and all(torch.equal(a1[k], a2[k]) for k in a1)   # CLI export == end-of-run export
    state = {"model.diffusion_model." + k: v.clone() for k, v in trained["unet"].state_dict().items()}
    state.update({"image_proj_model." + k: v.clone() for k, v in trained["proj"].state_dict().items()})
    ad.merge_adapter(state, a1)
    m = load_file(merged)
    assert set(state) <= set(m)
    worst = max(float((m[k] - state[k]).abs().max()) for k in state)
    assert worst < 1e-6, worst
    changed = [k for k in state if not torch.equal(m[k], trained["unet"].state_dict().get(
        k[len("model.diffusion_model."):], trained["proj"].state_dict().get(k[len("image_proj_model."):])))]
    assert changed
    # The pack's loader takes the merged file as a DynamiCrafter checkpoint of the recorded variant.
    loaded = load_dynamicrafter(merged, variant=trained["variant"])
    x = torch.randn(1, 8, 4, 8, 12)
    ctx = torch.randn(1, 77 + 64, 64)
    t = torch.tensor([500])
    tokens = torch.randn(1, 257, trained["variant"].resampler.embedding_dim)   # CLIP image tokens P reads
    with torch.no_grad():
        y_base = trained["unet"].eval()(x, t, torch.cat([ctx[:, :77], trained["proj"](tokens)], 1))
        loaded.unet.eval()
        y_new = loaded.unet(x, t, torch.cat([ctx[:, :77], trained["proj"](tokens)], 1))
    assert not torch.allclose(y_base, y_new)                                           # the adapter changes the output

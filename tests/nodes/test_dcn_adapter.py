"""DCN_ApplyAdapter inside a real host (in-process executor), with adapters the trainer exports.

The adapters come from the real training path (``training.loop.train`` -> ``training.export``) on the tiny 512
variant of tests/nodes/tinyckpt.py: a few optimizer steps on a tiny synthetic video set, starting from the very
checkpoint the graph loads. Checked:

- the adapted graph's latents differ from the plain graph's; strength 0 gives the plain output; the plain model gives
  its original output again after the adapted one ran (the host unpatched it);
- the host's patches (LoRA + full tensors, on this host's patch format) give exactly ``merge_adapter``'s weights, also
  stacked, and the input MODEL and P are left as they were;
- an adapter of another variant (the 256 model; metadata 1024 on the 512 model), of another P shape, or a file that
  is not an adapter is refused by the node with one line in the host's error report, before any patching.
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_dynamicrafter.model import adapters as ad
from comfyui_dynamicrafter.tests import hosting
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

ADAPTER = "dc_test_finetune.safetensors"          # LoRA + image K/V + P, trained on the tiny 512 checkpoint
FOR_1024 = "dc_test_for_1024.safetensors"         # the same tensors, metadata variant 1024 (in models/loras)
OTHER_P = "dc_test_p_clip48.safetensors"          # P trained with a 48-wide CLIP input (the model's P takes 64)
NOT_ADAPTER = "dc_test_plain_lora.safetensors"    # a LoRA file without the adapter metadata (in models/loras)
SEED, STEPS = 3, 3
_tick = itertools.count()


class DCNTestPassModel:
    """Test probe: passes MODEL through and is 'changed' every run, so the sampler after it always runs again."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **_kw):
        return f"run-{next(_tick)}"

    def run(self, model):
        return (model,)


def _train(out_dir, csv, init, **over):
    from comfyui_dynamicrafter.training.config import TrainConfig
    from comfyui_dynamicrafter.training.loop import train

    s = dict(stage="finetune", variant="512", tiny=True, data_csv=csv, height=32, width=32, frames=4, batch_size=1,
             grad_accum=1, num_workers=0, max_steps=2, save_every=100, lr=1e-2, progress=False, output_dir=out_dir,
             frame_stride_max=2, ema=False, init_checkpoint=init, resume="none")
    s.update(over)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig.from_dict(s))["adapter"]["adapter"]
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def adapters(host, dc, tmp_path_factory):
    """Train + export the adapters, put them into temporary adapter / lora folders of the host."""
    from comfyui_dynamicrafter.training import demo as synth

    fp = host.modules["folder_paths"]
    fnp = fp.folder_names_and_paths
    assert "dynamicrafter_adapters" in fnp, "the pack did not register its adapter folder"
    work = tmp_path_factory.mktemp("adapter_training")
    folders = {"dynamicrafter_adapters": str(tmp_path_factory.mktemp("dynamicrafter_adapters")),
               "loras": str(tmp_path_factory.mktemp("loras"))}
    csv, _ = synth.make_video_dataset(str(work / "videos"), n_clips=2, n_frames=8, height=16, width=24)
    ck = tinyckpt.checkpoints()
    # 1. the custom-adapter case on the graph's own checkpoint: LoRA on the attention projections + image K/V + P
    #    (the trainer's tiny config is the tiny checkpoint's: P takes 64-wide CLIP tokens)
    a = _train(str(work / "run_a"), csv, ck["full"], groups=["lora", "image_kv", "P"], lora_rank=4, lora_alpha=8.0)
    # 2. P only, from a checkpoint whose P takes 48-wide CLIP tokens: the "another P shape" adapter
    b = _train(str(work / "run_b"), csv, ck["other_encoders"], groups=["P"], max_steps=1,
               resampler_overrides={"embedding_dim": 48})
    tensors, meta = ad.read_adapter(a)
    save_file(tensors, os.path.join(folders["dynamicrafter_adapters"], ADAPTER), metadata=meta)
    save_file(load_file(b), os.path.join(folders["dynamicrafter_adapters"], OTHER_P),
              metadata=ad.read_adapter(b)[1])
    save_file(tensors, os.path.join(folders["loras"], FOR_1024), metadata=dict(meta, **{ad.META_VARIANT: "1024"}))
    save_file({k: v for k, v in tensors.items() if ad.is_lora_key(k, tensors)}, os.path.join(folders["loras"], NOT_ADAPTER))
    with host.swapped_folders(folders):
        yield {"tensors": tensors, "meta": meta, "path": a}


def _graph(adapter=None, strength=1.0, model_ckpt=None):
    """Conditioning + exact sampler (latent sink); with ``adapter`` the DCN_ApplyAdapter node "20" feeds the sampler's
    MODEL and the image encoder's P, else the pass-through probe "21" feeds the sampler."""
    g = S.add_exact_sampler(S.conditioning_graph(**({} if model_ckpt is None else {"model_ckpt": model_ckpt})),
                            seed=SEED, steps=STEPS, decode=False, prefix="dcn_adapter")
    src = S.model_ref(g)
    if adapter is None:
        g["21"] = {"class_type": "DCNTestPassModel", "inputs": {"model": src}}
        g["7"]["inputs"]["model"] = ["21", 0]
        return g
    g["20"] = {"class_type": "DCN_ApplyAdapter", "inputs": {"model": src, "image_proj": [src[0], 1],
                                                            "adapter_name": adapter, "strength_model": strength}}
    g["7"]["inputs"]["model"] = ["20", 0]
    g["5"]["inputs"]["image_proj"] = ["20", 1]
    return g


def _latents(host, g) -> torch.Tensor:
    with host.register_nodes({"DCNTestPassModel": DCNTestPassModel}):
        host.run_prompt(g)
    return host.node_output("7")[0][0]["samples"].float().clone()


def test_adapter_is_listed_from_both_folders(host, adapters):
    node = host.node_class_mappings["DCN_ApplyAdapter"]
    names = node.INPUT_TYPES()["required"]["adapter_name"][0]
    assert {ADAPTER, OTHER_P, FOR_1024, NOT_ADAPTER} <= set(names)


def test_adapter_changes_the_output_and_unloads_cleanly(host, adapters, record_property):
    plain = _latents(host, _graph())
    adapted = _latents(host, _graph(ADAPTER, 1.0))
    g = _graph(ADAPTER, 1.0)
    g["5"]["inputs"]["image_proj"] = ["1", 1]              # the loaded P: only the UNet patches act
    unet_only = _latents(host, g)
    again = _latents(host, _graph())                       # same loaded MODEL, after the adapted clone ran
    zero = _latents(host, _graph(ADAPTER, 0.0))
    change = (adapted - plain).abs().max().item()
    unet_change = (unet_only - plain).abs().max().item()
    unpatch = (again - plain).abs().max().item()
    zero_diff = (zero - plain).abs().max().item()
    for k, v in (("max_output_change", change), ("unet_only_change", unet_change), ("after_unpatch_diff", unpatch),
                 ("strength0_diff", zero_diff)):
        record_property(k, v)
    print(f"adapter (host {host.info.describe()}): max |adapted - plain| {change:.4g} (latent max "
          f"{plain.abs().max():.3g}; UNet patches alone {unet_change:.4g}); plain again after the adapter {unpatch:.3g}; strength 0 {zero_diff:.3g}")
    assert torch.isfinite(adapted).all()
    assert change > 1e-2 * plain.abs().max().item()
    assert unet_change > 1e-2 * plain.abs().max().item()
    assert unpatch == 0.0
    assert zero_diff == 0.0


def _host_calculate_weight(patcher):
    try:
        from comfy.lora import calculate_weight          # current hosts
        return calculate_weight
    except ImportError:
        return patcher.calculate_weight                   # 2024-03: a ModelPatcher method


def _patched_state(patcher, base):
    """What the host writes into each patched weight: its calculate_weight over the patch list, from ``base``."""
    calc = _host_calculate_weight(patcher)
    out = {}
    for key, patches in patcher.patches.items():
        full = "model." + key
        out[full] = calc(patches, base[full].float().clone(), key)
    return out


def test_host_patches_give_the_merged_weights_and_stack(host, adapters, record_property):
    _latents(host, _graph())
    model, proj = host.node_output("1")[0][0], host.node_output("1")[1][0]
    mod = S.pack_module(host, "nodes.adapter")
    base = {k: v.float() for k, v in load_file(tinyckpt.checkpoints()["full"]).items()
            if k.startswith((ad.UNET_PREFIX, ad.P_PREFIX))}
    tensors = adapters["tensors"]
    proj_before = {k: v.clone() for k, v in proj.model.state_dict().items()}
    n_patches = {k: len(v) for k, v in model.patches.items()}

    m1, p1, _ = mod.apply_adapter(model, proj, ADAPTER, 0.5)
    m2, p2, _ = mod.apply_adapter(m1, p1, ADAPTER, 0.5)                 # stacked on the first
    once = ad.merge_adapter({k: v.clone() for k, v in base.items()}, tensors, 0.5)
    twice = ad.merge_adapter({k: v.clone() for k, v in once.items()}, tensors, 0.5)
    worst = 0.0
    for patcher, want, proj_out in ((m1, once, p1), (m2, twice, p2)):
        got = _patched_state(patcher, base)
        unet_keys = {k for k in want if k.startswith(ad.UNET_PREFIX) and not torch.equal(want[k], base[k])}
        assert unet_keys and unet_keys <= set(got)
        worst = max([worst] + [(got[k] - want[k]).abs().max().item() for k in got])
        for k, v in proj_out.model.state_dict().items():
            worst = max(worst, (v - want[ad.P_PREFIX + k]).abs().max().item())
    record_property("max_weight_diff_vs_merge_adapter", worst)
    print(f"host patches vs merge_adapter (strength 0.5, once and stacked): max abs diff {worst:.3g}")
    assert worst < 1e-5
    assert {k: len(v) for k, v in m2.patches.items()} == {k: 2 for k in m1.patches}
    # the inputs are untouched: no patch added to the loaded MODEL, P's weights as loaded
    assert {k: len(v) for k, v in model.patches.items()} == n_patches
    assert p1 is not proj and all(torch.equal(v, proj_before[k]) for k, v in proj.model.state_dict().items())


REFUSED = {  # case: (adapter, model file (None: the 512 full file), words the one-line message holds)
    "another_variant_model": (ADAPTER, "v256", ["variant 512", "DynamiCrafter 256 model"]),
    "another_variant_metadata": (FOR_1024, None, ["variant 1024", "DynamiCrafter 512 model"]),
    "another_p_shape": (OTHER_P, None, ["query transformer P", "proj_in", "CLIP width 48"]),
    "not_an_adapter": (NOT_ADAPTER, None, [f"adapter '{NOT_ADAPTER}'", "DynamiCrafter adapter", "trainer"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_wrong_adapter_is_refused_before_patching(host, dc, adapters, case):
    name, ckpt, needles = REFUSED[case]
    g = _graph(name, 1.0, model_ckpt=None if ckpt is None else dc[ckpt])
    src = S.model_ref(g)[0]
    with pytest.raises(hosting.PromptExecutionError) as e:
        host.run_prompt(g)
    msg = e.value.exception_message
    print(f"{case}: {msg}")
    assert str(e.value.node_id) == "20" and e.value.node_type == "DCN_ApplyAdapter"
    assert "\n" not in msg and "Traceback" not in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    model = host.node_output(src)[0][0]
    assert not any(model.patches.values())                            # nothing was patched


def test_256_image_kv_adapter_sets_its_alpha_gates(host, dc, adapters, tmp_path, record_property):
    """The 256 model's learnable ``attn2.alpha`` gates train with image_kv; their adapter keys end in ``.alpha`` like
    a LoRA pair's alpha, and the node still applies them (as full tensors)."""
    from comfyui_dynamicrafter.training import demo as synth

    ck = tinyckpt.checkpoints()
    csv, _ = synth.make_video_dataset(str(tmp_path / "videos"), n_clips=1, n_frames=8, height=16, width=24)
    path = _train(str(tmp_path / "run"), csv, ck["v256"], variant="256", groups=["image_kv"], max_steps=1,
                  export_dtype="fp32")
    tensors, _ = ad.read_adapter(path)
    gates = [k for k in tensors if k.endswith("attn2.alpha")]
    assert gates and not ad.lora_modules(tensors)
    loaded = S.pack_module(host, "nodes.loader").load_checkpoint(ck["v256"])
    mod = S.pack_module(host, "nodes.adapter")
    fp = host.modules["folder_paths"]
    d = fp.folder_names_and_paths["dynamicrafter_adapters"][0][0]
    os.symlink(path, os.path.join(d, "dc_test_256_image_kv.safetensors"))
    host.refresh_models()
    try:
        m, p, summary = mod.apply_adapter(loaded.model, loaded.projector, "dc_test_256_image_kv.safetensors", 1.0)
    finally:
        os.unlink(os.path.join(d, "dc_test_256_image_kv.safetensors"))
        host.refresh_models()
    assert p is loaded.projector                                     # no P weights in this adapter
    base = {k: v.float() for k, v in load_file(ck["v256"]).items() if k.startswith(ad.UNET_PREFIX)}
    got = _patched_state(m, base)
    assert set(got) == set(tensors)                                  # every gate and every image K/V weight
    worst = max((got[k] - tensors[k].float()).abs().max().item() for k in tensors)
    moved = max((tensors[k].float() - base[k]).abs().max().item() for k in gates)
    record_property("max_diff_vs_adapter", worst)
    print(f"256 image_kv adapter: {len(gates)} alpha gates (moved up to {moved:.3g} by training), patched weights vs "
          f"adapter max abs diff {worst:.3g}; {summary}")
    assert moved > 0 and worst < 1e-6

"""The model follows the host's memory management (issue "Speed and memory"): a second run reuses the loaded
model, nothing of ours stays alive once the host unloads it and drops its cache, and the host's low-VRAM loading
(weights left on the offload device, cast on use) covers every layer and changes nothing.

CPU only here: the host never chooses low-VRAM on a CPU device, so the low-VRAM test asks the ModelPatcher for it
directly, as ``load_models_gpu`` does on a small GPU (a memory budget of 1 byte: every layer is left behind).
"""
from __future__ import annotations

import gc
import inspect
import weakref

import torch

from comfyui_dynamicrafter.tests.nodes import dcn_support as S


def _loaded_entry(mm, patcher):
    return next((lm for lm in mm.current_loaded_models if lm.model is patcher), None)


def test_second_run_reuses_the_loaded_model(host, dc):
    import comfy.model_management as mm

    host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=1, seed=5, decode=False))
    patcher = host.node_output("1")[0][0]
    entry = _loaded_entry(mm, patcher)
    assert entry is not None, "the host does not list the DynamiCrafter model as loaded"
    weights = {n: p.data_ptr() for n, p in patcher.model.named_parameters()}
    res = host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=1, seed=6, decode=False))
    cached = [d.get("nodes", []) for e, d in res.messages if e == "execution_cached"]
    assert res.success and cached and "1" in cached[0]                    # the loader did not run again
    assert host.node_output("1")[0][0] is patcher and _loaded_entry(mm, patcher) is entry
    assert {n: p.data_ptr() for n, p in patcher.model.named_parameters()} == weights   # no reload, no copy


def test_nothing_stays_after_the_host_unloads(host, dc):
    host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=1, seed=7, prefix="dcn_resident"))
    out = host.node_output("1")
    refs = {"MODEL": weakref.ref(out[0][0].model), "UNet": weakref.ref(out[0][0].model.diffusion_model),
            "image_proj": weakref.ref(out[1][0]), "CLIP": weakref.ref(out[2][0]),
            "CLIP_VISION": weakref.ref(out[3][0]), "VAE": weakref.ref(out[4][0])}
    del out
    host.free_memory()                                                     # what the host's /free does
    alive = [name for name, r in refs.items() if r() is not None]
    holders = {name: [type(h).__name__ for h in gc.get_referrers(refs[name]())][:5] for name in alive}
    assert not alive, f"still alive after the host unloaded everything: {holders}"


def _lowvram_load(patcher, device):
    """Ask the host's ModelPatcher for a low-VRAM load with a 1-byte budget (2024 and 2025 host APIs)."""
    if hasattr(patcher, "load") and "lowvram_model_memory" in inspect.signature(patcher.load).parameters:
        patcher.load(device, lowvram_model_memory=1)
    else:
        patcher.patch_model_lowvram(device, lowvram_model_memory=1)


def test_low_vram_loading_casts_every_layer_and_changes_nothing(host, dc):
    import comfy.model_management as mm
    import comfy.ops

    host.reset_cache()
    mm.unload_all_models()
    host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=1, seed=8, decode=False))
    patcher, positive = host.node_output("1")[0][0], host.node_output("6")[0][0]
    base = patcher.model
    unet = base.diffusion_model
    sampling = S.pack_module(host, "nodes.sampling")
    noise = torch.randn(S.FRAMES, 4, S.SIZE // 8, S.SIZE // 8, generator=torch.Generator().manual_seed(0))
    conds = sampling._cat_conds([sampling._branch_conds(base, positive, noise, "cpu", "positive", 0)], "cpu")
    sigma = base.model_sampling.sigmas[500].repeat(S.FRAMES)

    def run():
        with torch.inference_mode():
            return base.apply_model(noise, sigma, **conds).clone()

    full = run()
    # every layer holding weights is one the host can leave behind and cast on use (0-dim gates ride along)
    holders = [(n, m) for n, m in unet.named_modules() if any(p.dim() > 0 for p in m.parameters(recurse=False))]
    stuck = [f"{n} ({type(m).__name__})" for n, m in holders if not hasattr(m, "comfy_cast_weights")]
    assert holders and not stuck, f"layers the host cannot cast on use: {stuck[:5]}"

    mm.unload_all_models()
    _lowvram_load(patcher, torch.device("cpu"))
    try:
        lowvram = {id(m) for _, m in holders if m.comfy_cast_weights}
        assert lowvram == {id(m) for _, m in holders}, "the host left some layers fully loaded on a 1-byte budget"
        cast = set()
        original = comfy.ops.cast_bias_weight

        def counting(s, *a, **kw):
            cast.add(id(s))
            return original(s, *a, **kw)

        comfy.ops.cast_bias_weight = counting
        try:
            low = run()
        finally:
            comfy.ops.cast_bias_weight = original
        assert cast == lowvram, f"{len(lowvram - cast)} low-VRAM layers were not cast on use"
        torch.testing.assert_close(low, full, atol=1e-6, rtol=1e-6)
        print(f"low-VRAM load: {len(lowvram)} layers cast on use, output max diff "
              f"{(low - full).abs().max().item():.3g}")
    finally:
        patcher.unpatch_model(patcher.offload_device)
        host.reset_cache()
        mm.unload_all_models()

"""The host's own model features on the pack's MODEL: EasyCache, LazyCache, TorchCompileModel, and the host's patcher.

Each works on the paths the host runs it on, or is refused in one line, never silently ignored:
- EasyCache wraps the diffusion model (WrappersMP.DIFFUSION_MODEL): our UNet call runs the host's wrappers, so with
  DCN_Guider + SamplerCustomAdvanced it skips UNet calls; LazyCache wraps the guider's predict_noise, same path.
  Proof of skipping: the UNet's own calls are counted (a spy that calls through) and the host's log line
  "<name> - skipped n/N steps". Speed and the difference against the uncached run at equal steps are reported.
- DCN_Sampler runs its own DDIM loop, which does not run the host's sampling-loop wrappers: both are refused there.
- TorchCompileModel swaps the diffusion model for torch.compile's module inside apply_model (APPLY_MODEL wrapper),
  which both the exact sampler and the host's samplers call: same output, and dynamo compiled graphs.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import re
import time

import pytest
import torch

from comfyui_dynamicrafter.cli.headless import capture_logs
from comfyui_dynamicrafter.tests import hosting
from comfyui_dynamicrafter.tests.nodes import dcn_support as S

STEPS = 12
# Settings of the cached runs (the host's widgets) and the bound on their result's difference to the uncached run
# (relative L2 distance of the sampled latent), measured on the tiny random-weight model: EasyCache caches the UNet's
# output (v) and stays close at the host's default threshold; LazyCache caches the guider's denoised output, which on
# the zero-SNR schedule (sigma up to ~4500) moves with x itself, so it needs a low threshold and stays coarser.
CACHE = {"EasyCache": dict(reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False),
         "LazyCache": dict(reuse_threshold=0.06, start_percent=0.15, end_percent=0.95, verbose=False)}
REL_L2_BOUND = {"EasyCache": 0.1, "LazyCache": 0.5}


def _needs(host, *names):
    missing = [n for n in names if n not in host.node_class_mappings]
    if missing:
        pytest.skip(f"this host has no {', '.join(missing)} node (it came after 2024-03): {host.info.describe()}")


@contextlib.contextmanager
def unet_calls(host):
    """Counts the pack's UNet evaluations (DynamiCrafterUNet._forward, the real call; nothing replaced)."""
    cls = S.pack_module(host, "nodes.native").DynamiCrafterUNet
    original = cls._forward
    count = {"n": 0}

    def counting(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    cls._forward = counting
    try:
        yield count
    finally:
        cls._forward = original


def _guider_graph(seed: int, patch: str = None):
    model = ["1", 0]
    extra = {}
    if patch is not None:
        extra["30"] = {"class_type": patch, "inputs": dict(CACHE[patch], model=["1", 0])}
        model = ["30", 0]
    guider = {"class_type": "DCN_Guider", "inputs": {
        "model": model, "positive": ["6", 0], "image_only": ["6", 1], "negative": ["6", 2],
        "cfg_text": 7.5, "cfg_image": 4.5, "guidance_rescale": 0.7, "mode": "multi"}}
    g = S.guider_graph(guider, {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}, STEPS, seed)
    g.update(extra)
    S.add_sink(g, ["24", 0], f"dcn_feature_{patch or 'plain'}")
    return g


def _timed(host, g):
    with unet_calls(host) as calls, capture_logs(logging.INFO) as logs:
        t0 = time.perf_counter()
        host.run_prompt(g)
        seconds = time.perf_counter() - t0
    return host.node_output("24")[0][0]["samples"].float().clone(), seconds, calls["n"], logs.text()


def _easycache_knows_output_channels() -> bool:
    """Whether this host's EasyCache caches only the model's output channels (v0.3.70, 2025-11-18, and later)."""
    import comfy_extras.nodes_easycache as ec
    return "output_channels" in inspect.signature(ec.EasyCacheHolder.__init__).parameters


@pytest.mark.parametrize("patch", ["EasyCache", "LazyCache"])
def test_cache_skips_unet_calls_with_the_guider(host, dc_guider, patch, record_property):
    _needs(host, patch)
    host.run_prompt(_guider_graph(seed=1))                      # warm: model loaded, conditioning cached
    if patch == "EasyCache" and not _easycache_knows_output_channels():
        # this host's EasyCache would return one conditioning's rows for our 8-channel input: refused, one line
        with pytest.raises(hosting.PromptExecutionError) as ei:
            host.run_prompt(_guider_graph(seed=2, patch=patch))
        msg = ei.value.exception_message
        assert ei.value.node_id == "24" and "\n" not in msg and "v0.3.70" in msg and "8 input channels" in msg
        return
    plain, t_plain, n_plain, _ = _timed(host, _guider_graph(seed=2))
    cached, t_cached, n_cached, log = _timed(host, _guider_graph(seed=2, patch=patch))
    m = re.search(rf"{patch} - skipped (\d+)/(\d+) steps", log)
    assert m, f"the host did not report {patch}'s skipped steps:\n{log[-2000:]}"
    skipped, total = int(m.group(1)), int(m.group(2))
    rel = float((cached - plain).norm() / plain.norm())
    figures = dict(patch=patch, steps=STEPS, skipped=skipped, unet_calls=(n_plain, n_cached),
                   seconds=(round(t_plain, 3), round(t_cached, 3)), speedup=round(t_plain / t_cached, 2),
                   rel_l2=round(rel, 4), max_abs=round(float((cached - plain).abs().max()), 4))
    record_property("figures", figures)
    print(f"\n{host.info.describe()}: {figures}")
    assert total == STEPS and skipped >= 1
    assert n_cached < n_plain, (n_cached, n_plain)               # the UNet really ran fewer times
    assert n_plain - n_cached == skipped * (n_plain // STEPS)   # one skip = that step's UNet call(s)
    assert 0 < rel < REL_L2_BOUND[patch], rel


@pytest.mark.parametrize("patch", ["EasyCache", "LazyCache"])
def test_cache_is_refused_by_the_exact_sampler(host, dc, patch):
    _needs(host, patch)
    g = S.conditioning_graph()
    g["30"] = {"class_type": patch, "inputs": dict(CACHE[patch], model=["1", 0])}
    g = S.add_exact_sampler(g, steps=2, decode=False)
    g["7"]["inputs"]["model"] = ["30", 0]
    with pytest.raises(hosting.PromptExecutionError) as ei:
        host.run_prompt(g)
    msg = ei.value.exception_message
    assert ei.value.node_id == "7" and "\n" not in msg
    assert patch.lower() in msg.lower() and "DCN_Guider" in msg and "SamplerCustomAdvanced" in msg


@pytest.mark.parametrize("node", ["DCN_Sampler", "DCN_Guider"])
def test_cfg_patches_are_refused_by_the_packs_cfg(host, dc, node):
    """RescaleCFG (a host CFG patch, on every host) would be ignored by the pack's own dual CFG: refused."""
    if node == "DCN_Guider" and not host.features.get("cfg_guider"):
        pytest.skip(f"this host has no CFGGuider, so no DCN_Guider (2024-03 ComfyUI): {host.info.describe()}")
    g = S.conditioning_graph()
    g["30"] = {"class_type": "RescaleCFG", "inputs": {"model": ["1", 0], "multiplier": 0.7}}
    if node == "DCN_Sampler":
        g = S.add_exact_sampler(g, steps=2, decode=False)
        g["7"]["inputs"]["model"] = ["30", 0]
    else:
        g = _guider_graph(seed=1)
        g["30"] = {"class_type": "RescaleCFG", "inputs": {"model": ["1", 0], "multiplier": 0.7}}
        g["20"]["inputs"]["model"] = ["30", 0]
    with pytest.raises(hosting.PromptExecutionError) as ei:
        host.run_prompt(g)
    msg = ei.value.exception_message
    assert ei.value.node_id == ("7" if node == "DCN_Sampler" else "20") and "\n" not in msg
    assert "sampler_cfg_function" in msg and node in msg


def test_torch_compile_model_runs_compiled(host, dc):
    _needs(host, "TorchCompileModel")
    import torch._dynamo.utils as dyn

    plain = S.add_exact_sampler(S.conditioning_graph(), seed=3, steps=2, decode=False, prefix="dcn_compile_plain")
    host.run_prompt(plain)
    ref = host.node_output("7")[0][0]["samples"].float().clone()
    g = S.add_exact_sampler(S.conditioning_graph(), seed=3, steps=2, decode=False, prefix="dcn_compiled")
    g["30"] = {"class_type": "TorchCompileModel", "inputs": {"model": ["1", 0], "backend": "inductor"}}
    g["7"]["inputs"]["model"] = ["30", 0]
    graphs = dyn.counters["stats"]["unique_graphs"]
    host.run_prompt(g, timeout=1800)
    got = host.node_output("7")[0][0]["samples"].float()
    assert dyn.counters["stats"]["unique_graphs"] > graphs        # dynamo compiled our UNet's forward
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_model_is_built_with_the_hosts_patcher_class(host, dc):
    import comfy.model_patcher as mp
    host.run_prompt(S.add_sink(S.conditioning_graph(), ["6", 3], "dcn_patcher"))
    patcher = host.node_output("1")[0][0]
    want = getattr(mp, "CoreModelPatcher", None) or mp.ModelPatcher
    assert type(patcher) is want

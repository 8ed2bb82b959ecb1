"""Model-sampling isolation (upstream ComfyUI bug #16490: under dynamic VRAM a ``ModelSamplingDiscrete`` schedule
leaked into later runs). Three prompts in one host: our MODEL, then a stock SD latent model (the host's own
``BaseModel`` + ``UNetModel`` at a tiny config, built like tests/nodes/tinycontrolnet.py builds the host's ControlNet),
then our MODEL again. Each run's sigmas are its own: equal to a freshly built schedule (what a fresh process gets),
and the second run of our MODEL samples bit-identically to the first."""
from __future__ import annotations

import inspect
import types

import torch

from comfyui_dynamicrafter.model.tiny import init_tensor
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinycontrolnet

STEPS = 4


def stock_unet_config() -> dict:
    """The host UNetModel config of a tiny SD-style latent model whose text width is the tiny CLIP's."""
    c = tinycontrolnet.controlnet_config()
    for k in ("hint_channels",):
        c.pop(k)
    depth = list(c["transformer_depth"])
    per_level = depth[::c["num_res_blocks"]]
    # output blocks pop their depth from the end of the list: listed in the input levels' order
    c.update(out_channels=4, transformer_depth_output=[d for d in per_level for _ in range(c["num_res_blocks"] + 1)])
    return c


class IsoStockModel:
    """Test probe: the host's stock EPS latent model (``ModelSamplingDiscrete``), seeded random weights."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "tests"

    def build(self):
        import comfy.model_base
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models_base

        config = comfy.supported_models_base.BASE(stock_unet_config())
        model = comfy.model_base.BaseModel(config, device="cpu")
        gen = torch.Generator().manual_seed(5)
        sd = {k: init_tensor(k, t.shape, gen) for k, t in model.diffusion_model.state_dict().items()}
        model.diffusion_model.load_state_dict(sd)
        return (comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device()),)


def _sample_tail(g, model, positive, negative, latent, seed=3):
    g["21"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "simple", "steps": STEPS,
                                                           "denoise": 1.0}}
    g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["7"] = {"class_type": "SamplerCustom", "inputs": {
        "model": model, "add_noise": True, "noise_seed": seed, "cfg": 3.0, "positive": positive,
        "negative": negative, "sampler": ["23", 0], "sigmas": ["21", 0], "latent_image": latent}}
    return S.add_sink(g, ["7", 0], "dcn_isolation")


def _ours():
    g = S.conditioning_graph()
    return _sample_tail(g, S.model_ref(g), ["6", 0], ["6", 2], ["6", 3])


def _stock():
    g = {"1": {"class_type": "DCN_Loader", "inputs": {"ckpt_name": "dc_tiny_full.safetensors", "variant": "auto",
                                                      "weight_dtype": "default"}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["1", 2]}},
         "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 2]}},
         "5": {"class_type": "EmptyLatentImage", "inputs": {"width": S.SIZE, "height": S.SIZE, "batch_size": 1}},
         "30": {"class_type": "IsoStockModel", "inputs": {}}}
    return _sample_tail(g, ["30", 0], ["3", 0], ["4", 0], ["5", 0])


def _run(host, g):
    host.reset_cache()
    host.run_prompt(g)
    model = host.node_output(g["21"]["inputs"]["model"][0])[0][0]
    ms = (model.get_model_object("model_sampling") if hasattr(model, "get_model_object")   # 2024-03: no patches
          else model.model.model_sampling)
    return (host.node_output("21")[0][0].clone(), ms.sigmas.detach().clone(),
            host.node_output("7")[0][0]["samples"].clone())


def _simple_scheduler(ms, steps):
    """The host's simple scheduler over a model_sampling (hosts before 2024-04 take the model that holds it)."""
    import comfy.samplers

    first = next(iter(inspect.signature(comfy.samplers.simple_scheduler).parameters))
    return comfy.samplers.simple_scheduler(ms if first == "model_sampling" else types.SimpleNamespace(model_sampling=ms),
                                           steps)


def test_each_runs_sigmas_are_its_own(host, dc):
    import comfy.model_sampling
    import comfy.samplers
    import comfy.supported_models_base

    sampling = S.pack_module(host, "nodes.sampling")
    with host.register_nodes({"IsoStockModel": IsoStockModel}):
        ours1 = _run(host, _ours())
        stock = _run(host, _stock())
        ours2 = _run(host, _ours())
    # fresh schedules, as a fresh process builds them
    variant_schedule = host.node_output("1")[0][0].model.model_config.variant.schedule
    fresh_ours = sampling.make_model_sampling(variant_schedule)
    fresh_stock = comfy.model_sampling.ModelSamplingDiscrete(comfy.supported_models_base.BASE(stock_unet_config()))
    for name, (sched, table, _), fresh in (("ours, first", ours1, fresh_ours), ("stock", stock, fresh_stock),
                                           ("ours, again", ours2, fresh_ours)):
        want = _simple_scheduler(fresh, STEPS)
        print(f"{name}: sigmas {[round(float(s), 4) for s in sched]}")
        assert torch.equal(table, fresh.sigmas), name
        assert torch.equal(sched, want), name
    assert not torch.equal(ours1[0], stock[0])                      # the two schedules differ (zero-SNR, rescale)
    assert torch.equal(ours1[2], ours2[2])                          # same prompt, same numbers after the stock run

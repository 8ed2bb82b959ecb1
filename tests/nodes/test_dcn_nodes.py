"""The pack's nodes inside a real host (in-process executor): registry rules, the exact sampler against model/'s
reference DDIM, the host's KSampler on the pack's model_sampling, full image -> video graphs (image-to-video,
interpolation, loop), cancelling, and the bad-input messages in the host's error report."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from comfyui_dynamicrafter.model.checkpoint import PART_PREFIX
from comfyui_dynamicrafter.model.schedule import ddim_timesteps
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAKEN = {"DynamiCrafterLoader", "DynamiCrafterProcessor", "DownloadAndLoadDynamiCrafterModel",
         "DynamiCrafterModelLoader", "DownloadAndLoadCLIPModel", "DownloadAndLoadCLIPVisionModel", "DynamiCrafterI2V",
         "DynamiCrafterBatchInterpolation", "ToonCrafterInterpolation", "ToonCrafterDecode",
         "DynamiCrafterLoadInitNoise", "DownloadAndLoadDynamiCrafterCNModel", "DynamiCrafterCNLoader",
         "DynamiCrafterControlnetApply", "DynamiCrafterInterpLoader", "DynamiCrafter Simple",
         "DynamiCrafterInterp Simple", "ToonCrafterNode", "ToonCrafterWithSketch"}


def _pack_nodes(host):
    mod = host.pack_module
    assert mod is not None, host.pack_import_error
    return mod.NODE_CLASS_MAPPINGS, mod.NODE_DISPLAY_NAME_MAPPINGS


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------
def test_registry_rules(host, dc):
    classes, display = _pack_nodes(host)
    expected = {"DCN_Loader", "DCN_ImageEncode", "DCN_Conditioning", "DCN_Sampler", "DCN_Sigmas"}
    if host.features["cfg_guider"]:
        expected.add("DCN_Guider")
    assert expected <= set(classes)
    assert ("DCN_Guider" in classes) == bool(host.features["cfg_guider"])  # registered only where CFGGuider exists
    assert not set(classes) & TAKEN
    assert set(display) == set(classes)
    for name, cls in classes.items():
        assert host.node_class_mappings[name] is cls
        assert cls.CATEGORY.startswith("DynamiCrafter/")
        assert os.path.isfile(os.path.join(REPO, "web", "docs", f"{name}.md")), f"web/docs/{name}.md missing"
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, set(spec)
        assert set(spec.get("hidden", {}).values()) <= {"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID"}, spec["hidden"]
        for key, section in spec.items():
            if key == "hidden":                                            # filled by the host, never a widget
                continue
            for inp, (typ, *opts) in section.items():
                o = opts[0] if opts else {}
                assert o.get("tooltip"), f"{name}.{inp} has no tooltip"
                if typ in ("INT", "FLOAT"):
                    assert {"min", "max", "step"} <= set(o), f"{name}.{inp} lacks min/max/step"


def test_encoder_configs_from_real_shapes_match_the_hosts(host):
    """The shape-derived encoder configs reproduce the host's own ViT-H text/vision configs for the real layout."""
    loader = S.pack_module(host, "nodes.loader")
    with open(tinyckpt.manifest_path(), encoding="utf-8") as f:
        keys = {k: tuple(v) for k, v in json.load(f)["keys"].items()}
    text = {k[len(PART_PREFIX["text_encoder"]):]: v for k, v in keys.items() if k.startswith("cond_stage_model.")}
    vision = {k[len("embedder."):]: v for k, v in keys.items() if k.startswith("embedder.")}
    import comfy.clip_vision
    import comfy.sd1_clip
    comfy_dir = os.path.dirname(comfy.sd1_clip.__file__)
    sd2 = os.path.join(comfy_dir, "text_encoders", "sd2_clip_config.json")
    sd2 = sd2 if os.path.isfile(sd2) else os.path.join(comfy_dir, "sd2_clip_config.json")
    with open(sd2) as f:
        host_text = json.load(f)
    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")) as f:
        host_vision = json.load(f)
    ours_t = loader.text_config_from_shapes(text)
    ours_v = loader.vision_config_from_shapes(vision)
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "hidden_act",
              "max_position_embeddings", "vocab_size", "projection_dim", "layer_norm_eps"):
        assert ours_t[k] == host_text[k], k
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "hidden_act",
              "image_size", "patch_size", "projection_dim", "layer_norm_eps", "num_channels"):
        assert ours_v[k] == host_vision[k], k


def test_model_sampling_is_the_reference_schedule(host):
    """Table sigmas give the reference's model input sqrt(ac) s x and x0 = (sqrt(ac) x_t - sqrt(1-ac) v) / s."""
    sampling = S.pack_module(host, "nodes.sampling")
    v = S.get_variant("512")
    ms = sampling.make_model_sampling(v.schedule)
    ref = S.Reference.__new__(S.Reference)
    ref.variant = v
    s, ac = ref.scales()
    gen = torch.Generator().manual_seed(0)
    for t in (0, 19, 399, 400, 500, 979):
        sigma = ms.sigmas[t:t + 1]
        x_t, vout = torch.randn(2, 4, 3, 3, generator=gen).double()
        x = (x_t / (ac[t].sqrt() * s[t])).float()
        assert int(ms.timestep(sigma)) == t
        torch.testing.assert_close(ms.calculate_input(sigma, x).double(), x_t, rtol=2e-6, atol=2e-6)
        den = ms.calculate_denoised(sigma, vout.float(), x).double()
        want = (ac[t].sqrt() * x_t - (1 - ac[t]).sqrt() * vout) / s[t]
        torch.testing.assert_close(den, want, rtol=2e-5, atol=2e-5)
        back = ms.model_output_from_denoised(sigma, den.float(), x).double()
        torch.testing.assert_close(back, vout, rtol=1e-3, atol=1e-3)
    sig = sampling.reference_sigmas(ms, 50, "uniform_trailing")
    assert sig[-1] == 0 and len(sig) == 51
    assert torch.equal(sig[:-1], ms.sigmas[ddim_timesteps(50, "uniform_trailing").flip(0)])


# ---------------------------------------------------------------------------------------------------------------------
# 1. the exact sampler node == model/'s ddim_sample
# ---------------------------------------------------------------------------------------------------------------------
EXACT_ATOL, EXACT_RTOL = 1e-5, 4e-6  # |diff| <= atol + rtol * max|reference| (float32, batched vs host kernels)
EXACT_CASES = {  # id: (model file or None for the full 512 file, variant, mode, eta, guidance rescale, spacing)
    "512-multi-eta1-rescale": (None, "512", "multi", 1.0, 0.7, "uniform_trailing"),
    "512-single-eta0": (None, "512", "single", 0.0, 0.0, "uniform_trailing"),
    "256-eps-multi-eta1": ("v256", "256", "multi", 1.0, 0.0, "uniform"),
}


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_exact_sampler_equals_reference_ddim(host, dc, case, record_property):
    ckpt, variant, mode, eta, rescale, spacing = EXACT_CASES[case]
    seed, steps = 11, 6
    kw = {} if ckpt is None else {"model_ckpt": dc[ckpt]}
    g = S.add_exact_sampler(S.conditioning_graph(**kw), seed=seed, steps=steps, eta=eta, guidance_rescale=rescale,
                            mode=mode, decode=False)
    host.run_prompt(g)
    got = host.node_output("7")[0][0]["samples"]                           # [T, 4, h, w] host latent scale
    ref = S.Reference(tinyckpt.checkpoints()[ckpt or "full"], host.node_output("6"), variant)
    sampling = S.pack_module(host, "nodes.sampling")
    want = ref.sample(seed, steps, step_noise_seed=sampling.step_noise_seed(seed), eta=eta, spacing=spacing,
                      cfg_text=7.5, cfg_image=4.5, guidance_rescale=rescale, mode=mode)
    want = want[0].transpose(0, 1) / S.LATENT_SCALE
    diff = (got.float() - want).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"exact sampler vs model/ ddim_sample ({case}; host {host.info.describe()}): max abs diff {diff:.3g} "
          f"(latent max {want.abs().max():.3g})")
    assert got.shape == (S.FRAMES, 4, S.SIZE // 8, S.SIZE // 8)
    assert diff <= EXACT_ATOL + EXACT_RTOL * want.abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# host KSampler (single CFG) on the pack's model_sampling == reference DDIM eta 0
# ---------------------------------------------------------------------------------------------------------------------
KSAMPLER_ATOL = 5e-3


def test_host_ksampler_euler_is_reference_ddim(host, dc, record_property):
    seed, steps = 5, 10                                                   # 1000/10: "simple" = uniform_trailing
    g = S.conditioning_graph()
    g["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["6", 0], "negative": ["6", 2], "latent_image": ["6", 3],
        "denoise": 1.0}}
    S.add_decode(g, ["7", 0], "dcn_ksampler")
    res = host.run_prompt(g)
    got = host.node_output("7")[0][0]["samples"].float() * S.LATENT_SCALE  # x0 estimate at the last step
    assert len(res.outputs["9"]["images"]) == S.FRAMES                    # VAEDecode gives T frames
    ref = S.Reference(tinyckpt.checkpoints()["full"], host.node_output("6"))
    _, traj = ref.sample(seed, steps, eta=0.0, spacing="uniform_trailing", cfg_text=6.0, mode="single",
                         return_trajectory=True)
    s, _ = ref.scales()
    last = traj[-1]
    want = (last["pred_x0"][0] / s[last["t"]].float()).transpose(0, 1)    # unscaled x0 of the last DDIM step
    diff = (got - want).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"KSampler euler/simple vs reference DDIM eta 0 single CFG: max abs diff {diff:.3g} "
          f"(x0 max {want.abs().max():.3g}; host {host.info.describe()})")
    assert diff < KSAMPLER_ATOL


def test_samplercustom_dcn_sigmas_euler_on_the_eps_model(host, dc, record_property):
    """256 (eps, no zero-SNR, 'uniform' spacing): SamplerCustom + DCN_Sigmas + euler == reference DDIM eta 0."""
    seed, steps = 8, 5
    g = S.conditioning_graph(model_ckpt=dc["v256"])
    g["20"] = {"class_type": "DCN_Sigmas", "inputs": {"model": ["10", 0], "steps": steps, "spacing": "auto"}}
    g["21"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["7"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["10", 0], "add_noise": True, "noise_seed": seed, "cfg": 5.0, "positive": ["6", 0],
        "negative": ["6", 2], "sampler": ["21", 0], "sigmas": ["20", 0], "latent_image": ["6", 3]}}
    S.add_sink(g, ["7", 0], "dcn_eps")
    host.run_prompt(g)
    sig = host.node_output("20")[0][0]
    assert len(sig) == steps + 1 and sig[-1] == 0
    got = host.node_output("7")[0][0]["samples"].float() * S.LATENT_SCALE
    ref = S.Reference(tinyckpt.checkpoints()["v256"], host.node_output("6"), "256")
    _, traj = ref.sample(seed, steps, eta=0.0, spacing="uniform", cfg_text=5.0, mode="single",
                         return_trajectory=True)
    assert [t["t"] for t in traj] == [801, 601, 401, 201, 1]
    want = traj[-1]["pred_x0"][0].transpose(0, 1)
    diff = (got - want).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"SamplerCustom euler + DCN_Sigmas (256, eps) vs reference DDIM eta 0: max abs diff {diff:.3g} "
          f"(x0 max {want.abs().max():.3g})")
    assert diff < KSAMPLER_ATOL


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
def test_weight_dtypes(host, dc, dtype):
    """Storage dtypes through the host's cast-on-use layers: the sampler runs and stays close to fp32."""
    if not hasattr(torch, "float8_e4m3fn") and dtype.startswith("fp8"):
        pytest.skip("this torch has no float8")
    runs = {}
    for wd in ("fp32", dtype):
        g = S.add_exact_sampler(S.conditioning_graph(), steps=2, seed=2, decode=False)
        g["1"]["inputs"]["weight_dtype"] = wd
        host.run_prompt(g)
        patcher = host.node_output("1")[0][0]
        runs[wd] = host.node_output("7")[0][0]["samples"].float()
        concat = host.node_output("6")[0][0][0][1]["dcn_video"]["concat_latent"]
        if wd != "fp32":  # the conditioning is rebuilt (new loader outputs): deterministic VAE latent
            assert torch.equal(concat, runs["concat"])
        runs["concat"] = concat
        unet = patcher.model.diffusion_model
        want = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None)}[wd]
        assert unet.weight_dtype == want and unet.input_blocks[0][0].weight.dtype == want
        assert patcher.model.get_dtype() == want
    assert torch.isfinite(runs[dtype]).all()
    rel = ((runs[dtype] - runs["fp32"]).abs().max() / runs["fp32"].abs().max()).item()
    print(f"{dtype} weights vs fp32: max relative diff {rel:.3g}")
    assert rel < (0.2 if dtype.startswith("fp8") else 0.05)


def test_layers_and_attention_are_the_hosts(host, dc):
    """The UNet's layers are the host's ops classes and every attention call goes through the host's kernel."""
    import comfy.ldm.modules.attention as attention
    import comfy.ops

    calls = []
    original = attention.optimized_attention

    def counting(q, k, v, heads, *a, **kw):
        calls.append(q.shape)
        return original(q, k, v, heads, *a, **kw)

    g = S.add_exact_sampler(S.conditioning_graph(), steps=1, seed=1, decode=False)
    attention.optimized_attention = counting
    try:
        host.run_prompt(g)
    finally:
        attention.optimized_attention = original
    unet = host.node_output("1")[0][0].model.diffusion_model
    assert calls, "no attention call reached the host's optimized_attention"
    hosts_ops = {getattr(comfy.ops.disable_weight_init, n) for n in ("Linear", "Conv2d", "Conv3d", "GroupNorm",
                                                                       "LayerNorm")}
    hosts_ops |= {getattr(comfy.ops.manual_cast, n) for n in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm")}
    kinds = {type(m) for m in unet.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d,
                                                               torch.nn.LayerNorm))}
    assert kinds and kinds <= hosts_ops, kinds - hosts_ops


def test_exact_sampler_projects_the_context_once_per_run(host, dc):
    """The exact sampler's conds are the same every step: each cross-attention projects their K/V once per run
    (under the host's inference_mode), and nothing is kept after it. Values: the reference test above."""
    host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=1, seed=3, decode=False))
    unet = host.node_output("1")[0][0].model.diffusion_model
    calls = []
    hook = unet.output_blocks[-1][1].transformer_blocks[0].attn2.to_k.register_forward_hook(
        lambda *a: calls.append(1))
    try:
        host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=4, seed=4, decode=False))
    finally:
        hook.remove()
    assert host.node_output("1")[0][0].model.diffusion_model is unet        # the cached loader's model ran
    assert len(calls) == 1, f"text K/V projected {len(calls)} times in 4 steps"
    assert unet.context_cache_size == 0 and unet._kv_entries is None


# ---------------------------------------------------------------------------------------------------------------------
# 3. full graphs: image -> video frames
# ---------------------------------------------------------------------------------------------------------------------
GRAPHS = S.GRAPHS


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_full_graph_image_to_video_frames(host, dc, kind):
    g = S.add_exact_sampler(S.conditioning_graph(**GRAPHS[kind]), steps=3, prefix=f"dcn_{kind}")
    res = host.run_prompt(g)
    images = res.outputs["9"]["images"]
    assert len(images) == S.FRAMES
    frames = host.node_output("8")[0][0]
    assert tuple(frames.shape) == (S.FRAMES, S.SIZE, S.SIZE, 3) and torch.isfinite(frames).all()
    info = host.node_output("10" if "10" in g else "1")[5][0]
    assert ("512-interp" in info) == (kind != "image_to_video")
    concat = host.node_output("6")[0][0][0][1]["dcn_video"]["concat_latent"]
    if kind == "image_to_video":
        assert torch.equal(concat[0], concat[-1]) and torch.equal(concat[0], concat[1])
    else:
        assert concat[1:-1].abs().max() == 0 and concat[0].abs().max() > 0
        assert torch.equal(concat[0], concat[-1]) == (kind == "loop")


# ---------------------------------------------------------------------------------------------------------------------
# 4. cancel
# ---------------------------------------------------------------------------------------------------------------------
def test_cancel_stops_within_one_step_and_the_next_prompt_runs(host, dc):
    g = S.add_exact_sampler(S.conditioning_graph(), steps=400, seed=3, decode=False)
    host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=2, seed=3, decode=False))  # warm: model loaded
    model_before = host.node_output("1")[0][0]
    pending = host.queue_prompt(g)
    first = pending.wait_for_event("progress", timeout=120, node="7")
    assert first is not None, "the sampler never reported progress"
    host.interrupt()
    t0 = time.monotonic()
    with host.server._lock:
        at_request = sum(1 for e, d in host.server.events[pending.event_start:]
                         if e == "progress" and str(d.get("node")) == "7")
    res = pending.wait(120, check=False)
    assert res.interrupted is not None, res.messages
    assert str(res.interrupted.get("node_id")) == "7"
    progress = [d for e, d in res.events if e == "progress" and str(d.get("node")) == "7"]
    # at most the step that was running when the request came finishes (its progress is then not even reported)
    assert len(progress) <= at_request + 1 and progress[-1]["value"] < 400
    print(f"interrupted after {progress[-1]['value']} of {progress[-1]['max']} steps, "
          f"{time.monotonic() - t0:.2f} s after the request")
    res2 = host.run_prompt(S.add_exact_sampler(S.conditioning_graph(), steps=2, seed=4, decode=False))
    cached = [d.get("nodes", []) for e, d in res2.messages if e == "execution_cached"]
    assert res2.success and cached and "1" in cached[0]                   # the loaded model was reused
    assert host.node_output("1")[0][0] is model_before
    assert torch.isfinite(host.node_output("7")[0][0]["samples"]).all()


# ---------------------------------------------------------------------------------------------------------------------
# 5. bad input -> clear one-line messages in the host's report
# ---------------------------------------------------------------------------------------------------------------------
class DCNTestImage:
    """Probe: a deterministic IMAGE with a chosen size and channel count (RGBA / grayscale cases)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 8, "max": 512}),
                             "height": ("INT", {"default": 64, "min": 8, "max": 512}),
                             "channels": ("INT", {"default": 3, "min": 1, "max": 4})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, width, height, channels):
        g = torch.Generator().manual_seed(width * 1000 + height * 10 + channels)
        return (torch.rand(1, height, width, channels, generator=g),)


def _bad(kind):
    g = S.conditioning_graph()
    if kind == "vit_l_clip_vision":  # a 48-wide image encoder where P expects 64 (stands in for ViT-L vs ViT-H)
        g["12"] = {"class_type": "DCN_Loader", "inputs": {"ckpt_name": "dc_tiny_other_encoders.safetensors",
                                                          "variant": "auto", "weight_dtype": "default"}}
        g["5"]["inputs"]["clip_vision"] = ["12", 3]
        return g, "5", ["clip_vision", "expected 64-dim tokens", "found 48-dim tokens", "CLIPVisionLoader"]
    if kind == "sd15_text_encoder":  # 48-dim text tokens where the model uses 64 (stands in for SD1.5's 768)
        g["12"] = {"class_type": "DCN_Loader", "inputs": {"ckpt_name": "dc_tiny_other_encoders.safetensors",
                                                          "variant": "auto", "weight_dtype": "default"}}
        g["3"]["inputs"]["clip"] = ["12", 2]
        return g, "6", ["positive conditioning", "expected 64-dim text tokens", "found 48-dim text tokens"]
    if kind == "width_not_usable":
        g["6"]["inputs"]["width"] = 500
        return g, "6", ["width", "multiple of 8", "found 500"]
    if kind == "height_too_small":
        g["6"]["inputs"]["height"] = 40
        return g, "6", ["height", "found 40"]
    if kind == "one_frame":
        g["6"]["inputs"]["frames"] = 1
        return g, "6", ["frames", "smaller than min of 2"]
    if kind == "end_image_other_size":
        g["11"] = {"class_type": "DCNTestImage", "inputs": {"width": 96, "height": 64, "channels": 3}}
        g["6"]["inputs"]["end_image"] = ["11", 0]
        return g, "6", ["end_image", "start image's size 64x64", "found 96x64"]
    if kind == "not_dynamicrafter":
        g["1"]["inputs"]["ckpt_name"] = "sd15_pruned.safetensors"
        return g, "1", ["not a DynamiCrafter model", "Stable Diffusion 1.x"]
    if kind == "plain_text_conditioning_to_ksampler":
        g["7"] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["6", 3], "denoise": 1.0}}
        S.add_sink(g, ["7", 0], "dcn_bad")
        return g, "7", ["DCN_Conditioning", "plain text conditioning"]
    raise KeyError(kind)


BAD = ["vit_l_clip_vision", "sd15_text_encoder", "width_not_usable", "height_too_small", "one_frame",
       "end_image_other_size", "not_dynamicrafter", "plain_text_conditioning_to_ksampler"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_gets_a_clear_message(host, dc, kind):
    g, node, needles = _bad(kind)
    if "7" not in g:
        g = S.add_exact_sampler(g, steps=1, decode=False)
    with host.register_nodes({"DCNTestImage": DCNTestImage}):
        res = host.run_prompt(g, check=False)
    text = res.error_text()
    print(f"{kind}: {text}")
    assert not res.success
    if res.error is not None:
        assert str(res.error["node_id"]) == node
        assert "\n" not in res.error["exception_message"].strip()
        assert "Traceback" not in res.error["exception_message"]
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"


@pytest.mark.parametrize("channels,note", [(4, "RGBA image, alpha channel dropped"),
                                           (1, "grayscale image, repeated to RGB")])
def test_rgba_and_grayscale_images_are_converted_with_a_note(host, dc, channels, note):
    g = S.add_exact_sampler(S.conditioning_graph(), steps=1, decode=False)
    g["2"] = {"class_type": "DCNTestImage", "inputs": {"width": 64, "height": 64, "channels": channels}}
    with host.register_nodes({"DCNTestImage": DCNTestImage}):
        res = host.run_prompt(g)
    texts = " ".join(" ".join(res.outputs[n].get("text", [])) for n in ("5", "6") if n in res.outputs)
    assert note in texts
    assert torch.isfinite(host.node_output("7")[0][0]["samples"]).all()

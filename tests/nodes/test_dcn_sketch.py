"""ToonCrafter sketch guidance inside a real host: the sketch encoder loaded from the host's controlnet folder, the
guidance node on the tiny ToonCrafter model, in DCN_Sampler, KSampler and (hosts with guiders) DCN_Guider; dense
== sparse-on-every-frame exactly; sparse {0, 8} leaves every other frame's residuals at exact zero; bad input refused
in one line before sampling."""
from __future__ import annotations

import itertools
import os

import pytest
import torch

from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

FRAMES = 10
SKETCH = "toon_tiny_sketch_encoder.safetensors"
RGB_CN = "dc_tiny_rgb_controlnet.safetensors"
_tick = itertools.count()


class DCNTest_Sketches:
    """Test probe: ``count`` deterministic line drawings (dark strokes on white) as one IMAGE batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 2, "min": 1, "max": 64}),
                             "width": ("INT", {"default": 64, "min": 8, "max": 512}),
                             "height": ("INT", {"default": 64, "min": 8, "max": 512}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, count, width, height, seed):
        g = torch.Generator().manual_seed(seed)
        img = torch.ones(count, height, width, 3)
        for i in range(count):
            for _ in range(3):                                             # three strokes per sketch
                y = int(torch.randint(0, height - 2, (1,), generator=g))
                x0, x1 = sorted(int(v) for v in torch.randint(0, width, (2,), generator=g))
                img[i, y:y + 2, x0:x1 + 1] = 0.0
        return (img,)


PROBES = {"DCNTest_Sketches": DCNTest_Sketches}


@pytest.fixture(scope="module")
def toon(host, dc):
    """The tiny ToonCrafter file in the dynamicrafter folder; the sketch encoder and an RGB ControlNet in a
    controlnet folder (taken out again at the end)."""
    import folder_paths

    files = tinyckpt.toon_checkpoints()
    dst = os.path.join(host.model_dirs["dynamicrafter"], os.path.basename(files["toon"]))
    if not os.path.lexists(dst):
        os.symlink(files["toon"], dst)
    sk = tinyckpt.sketch_files()
    folder = os.path.dirname(sk["sketch"])
    folder_paths.add_model_folder_path("controlnet", folder)
    host.refresh_models()
    yield os.path.basename(files["toon"])
    paths = folder_paths.folder_names_and_paths["controlnet"][0]
    if folder in paths:
        paths.remove(folder)
    host.refresh_models()


def _graph(ckpt, sampler="DCN_Sampler", strength=None, indices="all", count=FRAMES, size=64, sketch_w=64,
           encoder=SKETCH):
    g = S.conditioning_graph(ckpt=ckpt, frames=FRAMES, end=S.END)
    pos, img, neg = ["6", 0], ["6", 1], ["6", 2]
    if strength is not None:
        g["20"] = {"class_type": "DCN_SketchEncoderLoader", "inputs": {"sketch_encoder_name": encoder}}
        g["21"] = {"class_type": "DCNTest_Sketches", "inputs": {"count": count, "width": sketch_w, "height": size,
                                                                "seed": 3}}
        g["22"] = {"class_type": "DCN_ToonSketchGuidance", "inputs": {
            "positive": pos, "image_only": img, "negative": neg, "sketch_encoder": ["20", 0],
            "sketches": ["21", 0], "frame_indices": indices, "strength": strength, "start_percent": 0.0,
            "end_percent": 1.0, "lines": "dark lines on white"}}
        pos, img, neg = ["22", 0], ["22", 1], ["22", 2]
    if sampler == "DCN_Sampler":
        g["7"] = {"class_type": "DCN_Sampler", "inputs": {
            "model": ["1", 0], "positive": pos, "image_only": img, "negative": neg, "latent": ["6", 3], "seed": 7,
            "steps": 2, "cfg_text": 7.5, "cfg_image": 1.0, "eta": 1.0, "guidance_rescale": 0.7, "spacing": "auto",
            "mode": "single"}}
    elif sampler == "KSampler":
        g["7"] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "simple",
            "positive": pos, "negative": neg, "latent_image": ["6", 3], "denoise": 1.0}}
    else:                                                                  # DCN_Guider + SamplerCustomAdvanced
        g["12"] = {"class_type": "DCN_Guider", "inputs": {
            "model": ["1", 0], "positive": pos, "image_only": img, "negative": neg, "cfg_text": 7.5,
            "cfg_image": 1.0, "guidance_rescale": 0.7, "mode": "single"}}
        g["13"] = {"class_type": "DCN_Sigmas", "inputs": {"model": ["1", 0], "steps": 2, "spacing": "auto"}}
        g["14"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        g["15"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}}
        g["7"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["15", 0], "guider": ["12", 0], "sampler": ["14", 0], "sigmas": ["13", 0],
            "latent_image": ["6", 3]}}
    return S.add_sink(g, ["7", 0], f"dcn_sketch_{next(_tick)}")


def _sampled(host, g):
    with host.register_nodes(PROBES):
        host.run_prompt(g)
    return host.node_output("7")[0][0]["samples"].clone()


def _samplers(host):
    import comfy.samplers

    return ["DCN_Sampler", "KSampler"] + (["DCN_Guider"] if hasattr(comfy.samplers, "CFGGuider") else [])


def test_sketch_guidance_steers_every_sampler(host, toon):
    for sampler in _samplers(host):
        none = _sampled(host, _graph(toon, sampler))
        zero = _sampled(host, _graph(toon, sampler, strength=0.0))
        dense = _sampled(host, _graph(toon, sampler, strength=0.6))
        assert torch.equal(zero, none), sampler                            # strength 0: residuals exactly 0
        diff = float((dense - none).abs().max())
        print(f"{sampler}: dense sketches (strength 0.6) vs none, max abs latent diff {diff:.4g}")
        assert diff > 1e-3, sampler


def test_sparse_on_every_frame_is_dense_exactly(host, toon):
    dense = _sampled(host, _graph(toon, strength=0.6, indices="all"))
    every = _sampled(host, _graph(toon, strength=0.6, indices=", ".join(map(str, range(FRAMES)))))
    assert torch.equal(every, dense)


def test_sparse_frames_get_zero_residuals_on_every_branch(host, toon):
    g = _graph(toon, strength=0.6, indices="0, 8", count=2)
    _sampled(host, g)
    out = host.node_output("22")                                           # positive, image_only, negative
    controls = [c[0][1]["control"] for c in (out[0][0], out[1][0], out[2][0])]
    assert controls[0] is controls[1] is controls[2]                       # every CFG branch: the same sketches
    ctl = controls[0]
    model = host.node_output("1")[0][0]
    cond = {"c_crossattn": torch.randn(2 * FRAMES, 77, 64), "dcn_image_tokens": torch.randn(2 * FRAMES, 16, 64),
            "dcn_frames": FRAMES}
    x = torch.randn(2 * FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # two branches' rows
    ms = model.model.model_sampling
    ctl.pre_run(model.model, lambda a: ms.percent_to_sigma(a))
    try:
        with torch.no_grad():
            res = ctl.get_control(x, torch.full((2 * FRAMES,), float(ms.sigmas[500])), cond, 2)
    finally:
        ctl.cleanup()
    assert len(res["output"]) == 4 and len(res["middle"]) == 1             # the tiny UNet's 4 skips + middle
    for r in res["output"] + res["middle"]:
        r5 = r.reshape(2, FRAMES, *r.shape[1:])
        others = [f for f in range(FRAMES) if f not in (0, 8)]
        assert torch.count_nonzero(r5[:, others]) == 0
        assert all(float(r5[b, f].abs().max()) > 0 for b in range(2) for f in (0, 8))


def _refused(host, g):
    with host.register_nodes(PROBES):
        res = host.run_prompt(g, check=False)
    text = res.error_text(" | ")
    assert not res.success and "\n" not in text.strip() and "Traceback" not in text, text
    assert "7" not in res.executed_nodes(), "the sampler ran"
    return text


def test_bad_sketch_input_is_refused_in_one_line_before_sampling(host, toon, dc, caplog):
    assert "hint_channels 3" in _refused(host, _graph(toon, strength=0.6, encoder=RGB_CN))
    assert "one sketch per frame index" in _refused(host, _graph(toon, strength=0.6, indices="0, 4, 8", count=2))
    assert "0..9" in _refused(host, _graph(toon, strength=0.6, indices="0, 10", count=2))
    g = _graph(toon, strength=0.6, indices="0, 8", count=2)
    g["1"]["inputs"]["ckpt_name"] = dc["full"]                             # the 512 model: not ToonCrafter
    g["6"]["inputs"].pop("end_image")
    assert "ToonCrafter" in _refused(host, g)
    with caplog.at_level("WARNING", logger="DynamiCrafter"):
        _sampled(host, _graph(toon, strength=0.6, indices="0, 8", count=2, sketch_w=96))
    said = [r.getMessage() for r in caplog.records if "sketch of 96x64" in r.getMessage()]
    assert said and "cropped at the left and right" in said[0], said

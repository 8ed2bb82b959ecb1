"""Issue 14 at the in-process executor (the host's real PromptExecutor, API-format graphs as the server gets them):
a NaN anywhere ends in one line naming it and no saved output; conditioning built for another variant is refused;
a ControlNet attached with the host's own ControlNetLoader + ControlNetApplyAdvanced changes the video (strength 0
is bit-identical to none) through the pack's sampler and the host's KSampler; a model folder with symlink loops
lists at once."""
from __future__ import annotations

import itertools
import os
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.tiny import full_checkpoint, variant_metadata
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinycontrolnet

PREFIX = "dcn_robust"
CONTROLNET = "dc_tiny_controlnet.safetensors"
_tick = itertools.count()


# ---------------------------------------------------------------------------------------------------------------------
# test probes (registered only while a test runs)
# ---------------------------------------------------------------------------------------------------------------------
class DCNTestNaNImage:
    """An IMAGE of the test size with one NaN pixel."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 64, "min": 16, "max": 256})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, size):
        img = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(5))
        img[0, size // 2, size // 3, 1] = float("nan")
        return (img,)


class DCNTestNaNFromCall:
    """MODEL -> MODEL whose UNet input turns NaN from the n-th model call on (a host model wrapper, the way any
    patch node could break a run mid-way)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "call": ("INT", {"default": 3, "min": 1, "max": 100})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **_kw):
        return f"run-{next(_tick)}"

    def patch(self, model, call):
        m = model.clone()
        count = {"n": 0}

        def wrapper(apply_model, args):
            count["n"] += 1
            x = args["input"]
            if count["n"] >= call:
                x = x * float("nan")
            return apply_model(x, args["timestep"], **args["c"])

        m.set_model_unet_function_wrapper(wrapper)
        return (m,)


PROBES = {"DCNTestNaNImage": DCNTestNaNImage, "DCNTestNaNFromCall": DCNTestNaNFromCall}


def _saved(host, prefix: str):
    out = host.dirs["output"]
    return sorted(f for f in os.listdir(out) if f.startswith(prefix))


def _run_refused(host, g, prefix):
    with host.register_nodes(PROBES):
        res = host.run_prompt(g, check=False)
    text = res.error_text(" | ")
    assert not res.success, "the run succeeded"
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert _saved(host, prefix) == [], "an output was saved"
    return res, text


def _video_graph(prefix, **sampler):
    """Conditioning -> DCN_Sampler -> VAEDecode -> DCN_SaveVideo (the shipped workflows' chain)."""
    g = S.add_exact_sampler(S.conditioning_graph(), steps=3, decode=True, prefix=prefix, **sampler)
    g["9"] = {"class_type": "DCN_SaveVideo", "inputs": {"images": ["8", 0], "filename_prefix": prefix, "fps": 8.0,
                                                         "format": "mp4", "crf": 19}}
    return g


# ---------------------------------------------------------------------------------------------------------------------
# NaN / Inf numbers, weights, images, latents
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,value", [("cfg_text", float("nan")), ("cfg_text", "nan"), ("cfg_image", float("inf")),
                                        ("guidance_rescale", float("nan")), ("eta", "NaN")])
def test_nan_number_refused_naming_the_input(host, dc, name, value):
    prefix = f"{PREFIX}_num_{next(_tick)}"
    g = _video_graph(prefix)
    g["7"]["inputs"][name] = value
    res, text = _run_refused(host, g, prefix)
    assert name in text, text
    assert "finite" in text or "bigger than max" in text, text  # Inf: the host's own range check says it


def test_nan_weights_refused_naming_the_tensor(host, dc):
    sd = full_checkpoint("512", seed=10)
    key = "model.diffusion_model.output_blocks.1.0.in_layers.2.weight"
    sd[key] = sd[key].clone()
    sd[key].view(-1)[7] = float("nan")
    path = os.path.join(host.model_dirs["dynamicrafter"], "dc_tiny_nan_weights.safetensors")
    save_file(sd, path, metadata=variant_metadata("512"))
    host.refresh_models()
    prefix = f"{PREFIX}_w_{next(_tick)}"
    g = _video_graph(prefix)
    g["1"]["inputs"]["ckpt_name"] = "dc_tiny_nan_weights.safetensors"
    try:
        res, text = _run_refused(host, g, prefix)
    finally:
        os.remove(path)  # 190 MB (the real-size VAE): not kept for the rest of the session
        host.refresh_models()
    assert "output_blocks.1.0.in_layers.2.weight" in text and "1 NaN" in text, text
    assert str(res.error["node_id"]) == "1"


def test_nan_image_refused(host, dc):
    prefix = f"{PREFIX}_img_{next(_tick)}"
    g = _video_graph(prefix)
    g["2"] = {"class_type": "DCNTestNaNImage", "inputs": {"size": S.SIZE}}
    res, text = _run_refused(host, g, prefix)
    assert "image" in text and "1 NaN" in text, text
    assert str(res.error["node_id"]) in ("5", "6")


def test_nan_mid_sampling_names_the_step_pack_sampler(host, dc):
    prefix = f"{PREFIX}_lat_{next(_tick)}"
    g = _video_graph(prefix)
    g["20"] = {"class_type": "DCNTestNaNFromCall", "inputs": {"model": ["1", 0], "call": 2}}
    g["7"]["inputs"]["model"] = ["20", 0]
    res, text = _run_refused(host, g, prefix)
    assert "step 2 of 3" in text or "timestep" in text, text


def test_nan_mid_sampling_host_ksampler(host, dc):
    prefix = f"{PREFIX}_ks_{next(_tick)}"
    g = S.conditioning_graph()
    g["20"] = {"class_type": "DCNTestNaNFromCall", "inputs": {"model": ["1", 0], "call": 3}}
    g["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["20", 0], "seed": 0, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["6", 0], "negative": ["6", 2], "latent_image": ["6", 3], "denoise": 1.0}}
    S.add_decode(g, ["7", 0], prefix)
    res, text = _run_refused(host, g, prefix)
    assert "timestep" in text and "NaN" in text, text


NAN_ADAPTER, OK_ADAPTER = "dc_test_nan_lora.safetensors", "dc_test_small_lora.safetensors"
LORA_MODULE = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module", autouse=True)
def _host_model_folders(host):
    """The folders this module adds to the host (adapters, loras, controlnet) are taken out again at its end, so later
    modules see only the harness's own folders."""
    import folder_paths
    saved = {k: (list(v[0]), v[1]) for k, v in folder_paths.folder_names_and_paths.items()}
    yield
    for k in list(folder_paths.folder_names_and_paths):
        if k not in saved:
            folder_paths.folder_names_and_paths.pop(k)
    for k, (paths, exts) in saved.items():
        folder_paths.folder_names_and_paths[k] = (paths, exts)
    host.refresh_models()


@pytest.fixture(scope="module")
def adapters(host, dc, tmp_path_factory):
    """Two one-pair LoRA adapters (the trainer's format) for the tiny 512 model; one holds a NaN."""
    import folder_paths
    from comfyui_dynamicrafter.model import adapters as ad

    folder = str(tmp_path_factory.mktemp("dynamicrafter_adapters"))
    g = torch.Generator().manual_seed(3)
    pair = {LORA_MODULE + ad.LORA_DOWN: torch.randn(2, 32, generator=g) * 0.1,
            LORA_MODULE + ad.LORA_UP: torch.randn(32, 2, generator=g) * 0.1,
            LORA_MODULE + ad.LORA_ALPHA: torch.tensor(2.0)}
    meta = {ad.META_FORMAT: ad.FORMAT, ad.META_VARIANT: "512", ad.META_STAGE: "finetune", ad.META_GROUPS: '["lora"]'}
    save_file(pair, os.path.join(folder, OK_ADAPTER), metadata=meta)
    bad = dict(pair)
    bad[LORA_MODULE + ad.LORA_UP] = bad[LORA_MODULE + ad.LORA_UP].clone()
    bad[LORA_MODULE + ad.LORA_UP][5, 1] = float("nan")
    save_file(bad, os.path.join(folder, NAN_ADAPTER), metadata=meta)
    folder_paths.add_model_folder_path("dynamicrafter_adapters", folder)
    host.refresh_models()


def _adapter_graph(prefix, name, strength):
    g = _video_graph(prefix)
    g["40"] = {"class_type": "DCN_ApplyAdapter", "inputs": {"model": ["1", 0], "image_proj": ["1", 1],
                                                            "adapter_name": name, "strength_model": strength}}
    g["7"]["inputs"]["model"] = ["40", 0]
    g["5"]["inputs"]["image_proj"] = ["40", 1]
    return g


def test_nan_adapter_refused_naming_the_tensor(host, adapters):
    prefix = f"{PREFIX}_ad_{next(_tick)}"
    res, text = _run_refused(host, _adapter_graph(prefix, NAN_ADAPTER, 1.0), prefix)
    assert NAN_ADAPTER in text and "attn1.to_q.lora_up.weight' holds 1 NaN" in text, text
    assert str(res.error["node_id"]) == "40"


def test_nan_adapter_strength_refused(host, adapters):
    prefix = f"{PREFIX}_ads_{next(_tick)}"
    res, text = _run_refused(host, _adapter_graph(prefix, OK_ADAPTER, "nan"), prefix)
    assert "strength_model" in text and "finite" in text, text


def test_run_too_big_for_the_device_refused_before_sampling(host, dc):
    """Finding 3: the allowed 8192x8192 ended in a raw 34 GB allocation error after the model load."""
    prefix = f"{PREFIX}_mem_{next(_tick)}"
    g = _video_graph(prefix)
    g["6"]["inputs"].update(width=8192, height=8192, frames=16)
    res, text = _run_refused(host, g, prefix)
    assert text.startswith("width/height/frames: expected a run that fits in") and "8192x8192 x 16 frames needs at " \
        "least" in text, text
    assert str(res.error["node_id"]) == "6"


def test_adapter_in_loras_is_named_where_stock_loaders_ignore_it(host, adapters, tmp_path, caplog):
    """Finding 5: an adapter in models/loras is listed by the stock LoRA loaders and silently does nothing there."""
    import folder_paths

    loras = tmp_path / "loras"
    loras.mkdir()
    src = os.path.join(folder_paths.folder_names_and_paths["dynamicrafter_adapters"][0][-1], OK_ADAPTER)
    os.symlink(src, loras / "dc_native_in_loras.safetensors")
    folder_paths.add_model_folder_path("loras", str(loras))
    host.refresh_models()
    # the stock loader really changes nothing with it (what the warning is about)
    g = S.add_exact_sampler(S.conditioning_graph(), steps=2, decode=False, prefix=f"{PREFIX}_lo_{next(_tick)}")
    plain = _sampled(host, g)
    g["41"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name":
                                                               "dc_native_in_loras.safetensors", "strength_model": 1.0}}
    g["7"]["inputs"]["model"] = ["41", 0]
    assert torch.equal(_sampled(host, g), plain)
    with caplog.at_level("WARNING", logger="DynamiCrafter"):
        names = host.node_class_mappings["DCN_ApplyAdapter"].INPUT_TYPES()["required"]["adapter_name"][0]
    assert "dc_native_in_loras.safetensors" in names
    said = [r.getMessage() for r in caplog.records if "dc_native_in_loras" in r.getMessage()]
    assert len(said) == 1 and "ComfyUI's LoRA loaders list it but find none of its keys" in said[0], said


# ---------------------------------------------------------------------------------------------------------------------
# conditioning of another variant
# ---------------------------------------------------------------------------------------------------------------------
def test_conditioning_of_another_variant_refused(host, dc):
    """P of the 256 model (frame stride) builds the conditioning; the 512 model samples it."""
    prefix = f"{PREFIX}_var_{next(_tick)}"
    g = S.conditioning_graph(model_ckpt="dc_tiny_256.safetensors")
    g = S.add_exact_sampler(g, steps=2, decode=False, prefix=prefix)
    g["7"]["inputs"]["model"] = ["1", 0]
    res, text = _run_refused(host, g, prefix)
    assert "256" in text and "512" in text, text


# ---------------------------------------------------------------------------------------------------------------------
# ControlNet through the host's own nodes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def controlnet(host, dc, tmp_path_factory):
    import folder_paths

    folder = str(tmp_path_factory.mktemp("controlnet"))
    tinycontrolnet.write(folder, CONTROLNET)
    folder_paths.add_model_folder_path("controlnet", folder)
    host.refresh_models()
    return CONTROLNET


def _with_controlnet(g, strength: float, image_only: bool = True):
    g = dict(g)
    g["30"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}}
    g["31"] = {"class_type": "LoadImage", "inputs": {"image": S.END}}   # the hint: another picture
    g["32"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["6", 2], "control_net": ["30", 0], "image": ["31", 0],
        "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
    return g


def _exact_graph(strength=None):
    g = S.add_exact_sampler(S.conditioning_graph(), steps=2, decode=False, prefix=f"{PREFIX}_cn_{next(_tick)}")
    if strength is not None:
        g = _with_controlnet(g, strength)
        g["7"]["inputs"]["positive"] = ["32", 0]
        g["7"]["inputs"]["negative"] = ["32", 1]
    return g


def _ksampler_graph(strength=None):
    g = S.conditioning_graph()
    pos, neg = ["6", 0], ["6", 2]
    if strength is not None:
        g = _with_controlnet(g, strength)
        pos, neg = ["32", 0], ["32", 1]
    g["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": pos, "negative": neg, "latent_image": ["6", 3], "denoise": 1.0}}
    return S.add_sink(g, ["7", 0], f"{PREFIX}_cnk_{next(_tick)}")


def _sampled(host, g):
    """The sampler node's LATENT, read from the executor's output cache after the run."""
    host.run_prompt(g)
    return host.node_output("7")[0][0]["samples"].clone()


@pytest.mark.parametrize("graph", [_exact_graph, _ksampler_graph])
def test_controlnet_changes_the_output_strength_zero_is_none(host, controlnet, graph):
    none = _sampled(host, graph())
    zero = _sampled(host, graph(0.0))
    one = _sampled(host, graph(1.0))
    assert torch.equal(zero, none)
    diff = float((one - none).abs().max())
    print(f"{graph.__name__}: ControlNet strength 1 vs none, max abs latent diff {diff:.4g}")
    assert diff > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# symlink loops in a searched model folder
# ---------------------------------------------------------------------------------------------------------------------
def test_symlink_loops_in_model_folder_list_at_once(host, dc):
    folder = host.model_dirs["dynamicrafter"]
    loops = [os.path.join(folder, n) for n in ("loop_a", "loop_b")]
    for p in loops:
        if not os.path.lexists(p):
            os.symlink(".", p)
    try:
        host.refresh_models()
        got = {}
        t0 = time.monotonic()
        worker = threading.Thread(target=lambda: got.update(spec=host.node_class_mappings["DCN_Loader"].INPUT_TYPES()),
                                  daemon=True)  # the hosts' own os.walk(followlinks=True) never returns here
        worker.start()
        worker.join(timeout=30)
        seconds = time.monotonic() - t0
        assert "spec" in got, f"the loader's listing still runs after {seconds:.0f} s"
        names = got["spec"]["required"]["ckpt_name"][0]
        assert "dc_tiny_full.safetensors" in names and not any(n.startswith("loop_") for n in names)
        assert seconds < 5, seconds
    finally:
        for p in loops:
            os.remove(p)
        host.refresh_models()


# ---------------------------------------------------------------------------------------------------------------------
# one table of ranges: what generate.py checks before a host starts is what the widgets declare
# ---------------------------------------------------------------------------------------------------------------------
def test_cli_ranges_are_the_widgets_ranges(host):
    from comfyui_dynamicrafter.model.limits import RANGES

    ncm = host.node_class_mappings
    where = {"width": "DCN_Conditioning", "height": "DCN_Conditioning", "frames": "DCN_Conditioning",
             "motion": "DCN_Conditioning", "steps": "DCN_Sampler", "cfg": ("DCN_Sampler", "cfg_text"),
             "eta": "DCN_Sampler", "guidance_rescale": "DCN_Sampler", "fps": "DCN_SaveVideo", "crf": "DCN_SaveVideo",
             "adapter_strength": ("DCN_ApplyAdapter", "strength_model"),
             "sketch_strength": ("DCN_ToonSketchGuidance", "strength")}
    for name, (lo, hi) in RANGES.items():
        node, widget = where[name] if isinstance(where[name], tuple) else (where[name], name)
        opts = ncm[node].INPUT_TYPES()["required"][widget][1]
        assert (opts["min"], opts["max"]) == (lo, hi), (name, opts)


def test_symlink_loops_real_server_lists_the_loader(host_server):
    """Finding 2 at the server: the loader's listing (GET /object_info) hung with two links to '.' in its folder."""
    srv = host_server()
    folder = srv.model_dirs["dynamicrafter"]
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "dc_listed.safetensors"), "wb").close()
    for n in ("loop_a", "loop_b"):
        os.symlink(".", os.path.join(folder, n))
    srv.start()
    t0 = time.monotonic()
    info = srv.get("/object_info/DCN_Loader", timeout=60)
    seconds = time.monotonic() - t0
    names = info["DCN_Loader"]["input"]["required"]["ckpt_name"][0]
    assert names == ["dc_listed.safetensors"] and seconds < 30, (names, seconds)
    assert "links back to a folder above it" in srv.log_tail(200)


def test_save_video_on_a_full_output_folder_is_one_line(host, dc, tmp_path):
    """The save node on a full file system: one line, no partial file (the writers are atomic)."""
    import subprocess

    import folder_paths

    disk = tmp_path / "out"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                      timeout=20).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    old = folder_paths.get_output_directory()
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * free)
        folder_paths.set_output_directory(str(disk))
        prefix = f"{PREFIX}_full_{next(_tick)}"
        res = host.run_prompt(_video_graph(prefix), check=False)
        text = res.error_text(" | ")
        assert not res.success and "\n" not in text.strip() and "Traceback" not in text, text
        assert text.startswith("DynamiCrafter Save Video: expected about") and "free some space" in text, text
        assert sorted(os.listdir(disk)) == ["filler"]
    finally:
        folder_paths.set_output_directory(old)
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)

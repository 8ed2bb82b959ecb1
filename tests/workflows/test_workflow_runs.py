"""Every shipped API workflow runs through the host's real executor on tiny random weights and writes a video file
with the expected frame count and frame rate (read back with PyAV). Only what a user would change is changed: the
model file picked in ckpt_name (a tiny stand-in), and a small size / frame count / step count for speed."""
from __future__ import annotations

import json
import os
import time

import pytest

from comfyui_dynamicrafter.tests.workflows import wfcheck

FRAMES, SIZE, STEPS = 4, 64, 2
LONG_FRAMES = 20  # long-video graphs keep more frames than one 16-frame window (two windows)
RUNS = [wfcheck.name_of(p) for p in wfcheck.ui_files()]


def frames_of(api: dict) -> int:
    """Frames the shrunk graph makes: a keyframe chain's (N-1)*15+1, else the frames widget after shrink."""
    for node in api.values():
        if node["class_type"] == "DCN_Conditioning" and "keyframes" in node["inputs"]:
            return 2 * 15 + 1                                              # start + a batch of 2 keyframes
        if node["class_type"] == "DCN_ToonSketchGuidance":
            return 1 + max(int(i) for i in node["inputs"]["frame_indices"].split(","))  # the sketches' frames
    long = any(n["class_type"] == "DCN_Windows" for n in api.values())
    return LONG_FRAMES if long else FRAMES


def shrink(api: dict, tiny_names: dict) -> dict:
    p = json.loads(json.dumps(api))
    for node in p.values():
        inp, t = node["inputs"], node["class_type"]
        if t == "DCN_Loader":
            inp["ckpt_name"] = tiny_names[inp["ckpt_name"]]
        elif t == "DCN_Conditioning":
            inp.update(width=SIZE, height=SIZE, frames=frames_of(api))
        elif t == "DCN_SketchEncoderLoader":
            inp["sketch_encoder_name"] = tiny_names[inp["sketch_encoder_name"]]
        elif t in ("DCN_Sampler", "DCN_Sigmas"):
            inp["steps"] = STEPS
    return p


def expected_fps(api: dict) -> float:
    for node in api.values():
        if node["class_type"] in ("DCN_SaveVideo", "CreateVideo"):
            return float(node["inputs"]["fps"])
    raise AssertionError("no video node")


def video_files(outputs: dict, output_dir: str) -> list:
    """Paths of the videos the output nodes reported (the pack's "gifs" entries, the host's video previews)."""
    paths = []
    for ui in outputs.values():
        for entry in (ui.get("gifs") or []) + (ui.get("images") or []):
            if entry.get("type") == "output" and os.path.splitext(entry["filename"])[1] in (".mp4", ".webp", ".gif"):
                paths.append(os.path.join(output_dir, entry.get("subfolder", ""), entry["filename"]))
    return sorted(set(paths))


def probe(path: str):
    import av
    with av.open(path) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, float(s.average_rate), (s.width, s.height), s.codec_context.name


@pytest.mark.parametrize("name", RUNS)
def test_workflow_runs_and_writes_the_video(name, wf_host, wf_tiny):
    api = wfcheck.load(os.path.join(wfcheck.API_DIR, name + ".json"))
    missing = [n["class_type"] for n in api.values() if n["class_type"] not in wf_host.node_class_mappings]
    if missing:
        pytest.skip(f"{name} needs {sorted(set(missing))}, which this host ({wf_host.info.describe()}) lacks "
                    "(SamplerCustomAdvanced and guiders came in 2024-04): run it with COMFYUI_PATH=<current ComfyUI>")
    prompt = shrink(api, wf_tiny)
    workflow = wfcheck.load(os.path.join(wfcheck.UI_DIR, name + ".json"))
    t0 = time.perf_counter()
    res = wf_host.run_prompt(prompt, timeout=600, extra_data={"extra_pnginfo": {"workflow": workflow}})
    seconds = time.perf_counter() - t0
    files = video_files(res.outputs, wf_host.dirs["output"])
    assert len(files) == 1, res.outputs
    frames, fps, size, codec = probe(files[0])
    assert frames == frames_of(api)
    assert fps == pytest.approx(expected_fps(api))
    assert size == (SIZE, SIZE)
    assert codec == "h264"
    if any(n["class_type"] == "DCN_SaveVideo" for n in prompt.values()):   # the graph rides along in the file
        import av
        with av.open(files[0]) as c:
            assert json.loads(c.metadata["prompt"]) == prompt
            assert json.loads(c.metadata["workflow"]) == workflow
    print(f"{name} on {wf_host.info.describe()}: {os.path.basename(files[0])}, {frames} frames, {fps:g} fps, "
          f"{size[0]}x{size[1]} {codec}, {seconds:.1f} s")


def test_missing_model_file_names_the_file_and_the_folders(wf_host, wf_tiny):
    """A shipped workflow whose model file is not installed fails validation with the file and the folders searched."""
    from comfyui_dynamicrafter.tests import hosting

    api = wfcheck.load(os.path.join(wfcheck.API_DIR, "dynamicrafter_512_image_to_video.json"))
    with pytest.raises(hosting.PromptValidationError) as err:
        wf_host.run_prompt(api)    # the shipped names (dynamicrafter_512.ckpt ...) are not in the test's model folders
    text = str(err.value) + json.dumps(err.value.node_errors)
    loader = next(n for n in api.values() if n["class_type"] == "DCN_Loader")
    assert f"model file {loader['inputs']['ckpt_name']!r} not found" in text
    assert "dynamicrafter" in text and "searched" in text

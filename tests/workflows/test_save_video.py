"""DCN_SaveVideo as the host loaded it: mp4 (H.264, crf, fps, metadata), animated WebP and GIF, odd frame sizes,
the preview in the ui result, and a readable error for input that is not an IMAGE batch."""
from __future__ import annotations

import json
import os

import pytest
import torch


def _node(host):
    return host.node_class_mappings["DCN_SaveVideo"]()


def _frames(t=5, h=33, w=47):
    g = torch.Generator().manual_seed(0)
    return torch.rand((t, h, w, 3), generator=g)


def test_mp4_frames_fps_crf_metadata_and_preview(wf_host):
    import av
    node = _node(wf_host)
    out = wf_host.dirs["output"]
    res = node.save(_frames(), "savetest/clip", "mp4", 12.0, 23, prompt={"1": {"class_type": "X", "inputs": {}}},
                    extra_pnginfo={"workflow": {"nodes": []}})
    ui = res["ui"]
    (entry,) = ui["gifs"]
    path = os.path.join(out, entry["subfolder"], entry["filename"])
    assert entry["subfolder"] == "savetest" and entry["filename"].endswith(".mp4") and entry["type"] == "output"
    assert entry["format"] == "video/h264-mp4" and entry["frame_count"] == 5 and entry["frame_rate"] == 12.0
    assert os.path.isfile(path) and not os.path.exists(path + ".part")
    with av.open(path) as c:
        s = c.streams.video[0]
        assert sum(1 for _ in c.decode(s)) == 5
        assert float(s.average_rate) == 12.0
        assert (s.width, s.height) == (48, 34)  # odd sides padded for yuv420p
        assert s.codec_context.name == "h264"
        assert json.loads(c.metadata["workflow"]) == {"nodes": []}
        assert "prompt" in c.metadata
    # preview: an animated WebP in the temp folder, flagged animated for the front end
    (prev,) = ui["images"]
    assert prev["type"] == "temp" and prev["filename"].endswith(".webp") and ui["animated"] == (True,)


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_animated_image_formats(fmt, wf_host):
    from PIL import Image
    prompt, workflow = {"1": {"class_type": "X", "inputs": {}}}, {"nodes": [{"id": 1}]}
    res = _node(wf_host).save(_frames(6, 40, 64), "savetest/anim", fmt, 10.0, 19, prompt=prompt,
                              extra_pnginfo={"workflow": workflow})
    ui = res["ui"]
    (entry,) = ui["gifs"]
    assert ui["images"] == [{k: entry[k] for k in ("filename", "subfolder", "type")}]
    path = os.path.join(wf_host.dirs["output"], entry["subfolder"], entry["filename"])
    with Image.open(path) as im:
        assert im.format == fmt.upper() and im.n_frames == 6 and im.size == (64, 40)
        if fmt == "webp":                                            # the host's EXIF convention for the graph
            exif = im.getexif()
            assert exif[0x0110] == "prompt:" + json.dumps(prompt)
            assert json.loads(exif[0x010F].split(":", 1)[1]) == workflow
        im.seek(1)
        im.load()
        assert im.info.get("duration") == 100


def test_bad_input_says_what_to_connect(wf_host):
    with pytest.raises(ValueError, match="VAEDecode"):
        _node(wf_host).save(torch.rand(32, 32, 3), "savetest/bad", "mp4", 8.0, 19)
    # the widget declarations are the whole validation: the host refuses crf 60 or fps 500 itself (a VALIDATE_INPUTS
    # naming them would turn that off; tests/nodes/test_dcn_validation.py runs such graphs)
    assert not hasattr(wf_host.node_class_mappings["DCN_SaveVideo"], "VALIDATE_INPUTS")


def test_disable_metadata_leaves_the_graph_out(wf_host, monkeypatch):
    """The host's --disable-metadata flag: no prompt / workflow in the mp4."""
    import av
    from comfy.cli_args import args
    monkeypatch.setattr(args, "disable_metadata", True)
    res = _node(wf_host).save(_frames(2, 16, 16), "savetest/nometa", "mp4", 8.0, 23,
                              prompt={"1": {"class_type": "X", "inputs": {}}}, extra_pnginfo={"workflow": {}})
    entry = res["ui"]["gifs"][0]
    with av.open(os.path.join(wf_host.dirs["output"], entry["subfolder"], entry["filename"])) as c:
        assert "prompt" not in c.metadata and "workflow" not in c.metadata

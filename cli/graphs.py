"""The shipped API-format workflows (workflows/api/) that generate.py runs: reading one, and filling in a run's values
(node roles found through the links, not by id), and reading back the video it wrote."""
from __future__ import annotations

import json
import os
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the pack folder
WORKFLOWS = {
    "image_to_video": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_image_to_video.json"),
    "interpolation": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_interpolation.json"),
    "loop": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_loop.json"),
    "long_video": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_long_video.json"),
    "keyframes": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_keyframes.json"),
    "long_loop": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_long_loop.json"),
    "tooncrafter": os.path.join(ROOT, "workflows", "api", "tooncrafter_interpolation.json"),
    "adapter": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_adapter.json"),
    "tooncrafter_sketch": os.path.join(ROOT, "workflows", "api", "tooncrafter_sketch_interpolation.json"),
}


class UserError(Exception):
    """Bad input or a missing file: printed as it is (no traceback), exit status 2."""


# =====================================================================================================================
# filling in a shipped workflow
# =====================================================================================================================
def load_workflow(kind: str) -> dict:
    path = WORKFLOWS[kind]
    try:
        with open(path, encoding="utf-8") as f:
            graph = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"workflow {os.path.relpath(path, ROOT)}: not a readable JSON graph ({e}); restore the file "
                        "from the pack (git checkout, or reinstall)") from None
    if not isinstance(graph, dict) or not all(isinstance(v, dict) and "class_type" in v for v in graph.values()):
        raise UserError(f"workflow {os.path.relpath(path, ROOT)}: not an API-format graph; restore the file from the "
                        "pack (git checkout, or reinstall)")
    return graph


def _nodes_of(prompt: dict, class_type: str) -> List[str]:
    return [k for k, v in prompt.items() if v.get("class_type") == class_type]


def _one(prompt: dict, class_type: str) -> str:
    ids = _nodes_of(prompt, class_type)
    if len(ids) != 1:
        raise RuntimeError(f"the workflow has {len(ids)} {class_type} nodes, expected one")
    return ids[0]


def _source(prompt: dict, node: str, input_name: str) -> str:
    link = prompt[node]["inputs"].get(input_name)
    if not isinstance(link, list):
        raise RuntimeError(f"the workflow's node {node} has no link on {input_name}")
    return str(link[0])


def _drop_images(p: dict, link) -> None:
    """Remove the LoadImage nodes feeding ``link`` and the ImageBatch chain joining them."""
    node = p.get(str(link[0])) if isinstance(link, list) else None
    if node is None or node["class_type"] not in ("ImageBatch", "LoadImage"):
        return
    p.pop(str(link[0]))
    for src in node["inputs"].values():
        _drop_images(p, src)


def _set_images(p: dict, node: str, input_name: str, names: List[str], first_id: int) -> None:
    """An IMAGE input fed by LoadImage nodes of ``names`` joined by a chain of ImageBatch nodes (ids from first_id),
    replacing the shipped images there."""
    if not names:
        raise RuntimeError(f"this workflow needs images for {input_name}")
    _drop_images(p, p[node]["inputs"].get(input_name))
    ids = iter(str(i) for i in range(first_id, first_id + 1000))
    loads = []
    for name in names:
        nid = next(ids)
        p[nid] = {"class_type": "LoadImage", "inputs": {"image": name}}
        loads.append([nid, 0])
    link = loads[0]
    for nxt in loads[1:]:
        nid = next(ids)
        p[nid] = {"class_type": "ImageBatch", "inputs": {"image1": link, "image2": nxt}}
        link = [nid, 0]
    p[node]["inputs"][input_name] = link


def _set_sketches(p: dict, s: dict) -> None:
    """The sketch guidance node's sketches (LoadImage chain), their frames and the sketch encoder's file."""
    for node in _nodes_of(p, "DCN_ToonSketchGuidance"):
        if not s.get("sketches"):
            raise RuntimeError("this workflow needs sketches")
        _set_images(p, node, "sketches", [name for name, _ in s["sketches"]], 2000)
        p[node]["inputs"]["frame_indices"] = ", ".join(str(i) for _, i in s["sketches"])
    for node in _nodes_of(p, "DCN_SketchEncoderLoader"):
        p[node]["inputs"]["sketch_encoder_name"] = s["sketch_encoder"]


def apply_settings(prompt: dict, s: dict) -> dict:
    """The shipped workflow with the run's values (node roles found through the links, not by id)."""
    p = json.loads(json.dumps(prompt))
    loader, cond, samp, save = (_one(p, t) for t in ("DCN_Loader", "DCN_Conditioning", "DCN_Sampler",
                                                     "DCN_SaveVideo"))
    p[loader]["inputs"].update(ckpt_name=s["ckpt_name"], variant=s["variant"])
    p[_source(p, cond, "start_image")]["inputs"]["image"] = s["image"]
    if "end_image" in p[cond]["inputs"]:
        if s.get("end_image") is None:
            raise RuntimeError("this workflow needs an end image")
        p[_source(p, cond, "end_image")]["inputs"]["image"] = s["end_image"]
    if "keyframes" in p[cond]["inputs"]:
        _set_images(p, cond, "keyframes", s.get("keyframes") or [], 1000)
        p[cond]["inputs"]["loop"] = bool(s.get("loop"))
    p[_source(p, cond, "positive")]["inputs"]["text"] = s["prompt"]
    p[_source(p, cond, "negative")]["inputs"]["text"] = s["negative"]
    p[cond]["inputs"].update(width=s["width"], height=s["height"], frames=s["frames"], motion=s["motion"])
    p[samp]["inputs"].update(seed=s["seed"], steps=s["steps"], cfg_text=s["cfg"], cfg_image=s["cfg_image"],
                             eta=s["eta"], guidance_rescale=s["guidance_rescale"])
    p[save]["inputs"].update(filename_prefix="generate/dynamicrafter", format=s["format"], fps=float(s["fps"]),
                             crf=s["crf"])
    _set_sketches(p, s)
    for node in _nodes_of(p, "DCN_ApplyAdapter"):
        if s.get("adapter") is None:
            raise RuntimeError("this workflow needs an adapter file")
        p[node]["inputs"].update(adapter_name=s["adapter"], strength_model=float(s["adapter_strength"]))
    return p


def probe_video(path: str) -> Tuple[int, float, Tuple[int, int]]:
    """(frames, fps, (width, height)) of the written file."""
    if path.endswith(".mp4"):
        import av
        with av.open(path) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            return n, float(s.average_rate or s.guessed_rate), (s.width, s.height)
    from PIL import Image
    with Image.open(path) as im:
        n = getattr(im, "n_frames", 1)
        if n > 1:
            im.seek(1)
        im.load()
        dur = im.info.get("duration") or 0
        return n, (1000.0 / dur if dur else 0.0), im.size

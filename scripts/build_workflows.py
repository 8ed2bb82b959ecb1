"""Writes the shipped workflows from one description per graph: the UI-format file (example_workflows/<name>.json:
what users drag in, and what newer hosts list in their template browser), its API-format twin
(workflows/api/<name>.json, what generate.py runs), and the two example input images (workflows/input/).

    .venv/bin/python scripts/build_workflows.py          # rewrite the files
    .venv/bin/python scripts/build_workflows.py --check  # exit 1 when a committed file differs

The slot and widget lists below are written by hand on purpose: tests/workflows/test_workflow_files.py checks every
node, link and widget value against the INPUT_TYPES / RETURN_TYPES of a real host, converts each UI file to the
API format on its own to compare it with the twin, and checks that the committed files are what this script writes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import runpy
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a script: the pack folder as the package comfyui_dynamicrafter (stdlib only)
    __package__ = runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]() + ".scripts"
from ..cli.weights import MODEL_FILES, WORKFLOW_FOLDER  # noqa: E402 (after the registration above)
WF_DIR = os.path.join(ROOT, "workflows")
UI_DIR = os.path.join(ROOT, "example_workflows")  # the one UI copy: newer hosts serve this folder as templates
API_DIR = os.path.join(WF_DIR, "api")
INPUT_DIR = os.path.join(WF_DIR, "input")
START_IMAGE = "dynamicrafter_example_start.png"
END_IMAGE = "dynamicrafter_example_end.png"

# The model files the workflows name (weights.MODEL_FILES: generate.py downloads them under these names).
CKPT_512 = MODEL_FILES["512"].filename
CKPT_INTERP = MODEL_FILES["512-interp"].filename
CKPT_TOON = MODEL_FILES["tooncrafter"].filename
MODEL_ENTRIES = {m.filename: m.models_entry() for m in MODEL_FILES.values()}

PROMPT = "a small sailboat drifting on gentle waves at sunset, the sun glowing above the sea"
LOOP_PROMPT = "a small sailboat rocking on gentle waves at sunset"
SEED = 123
ADAPTER_FILE = "adapter.safetensors"   # the trainer's output name (training/README.md)

# Per type: (non-widget input slots [(name, type)], output slots [(name, type)], widget names in order).
# A widget name None is a front-end-only value (seed control, image upload): in the UI file, not in the API file.
SPECS: Dict[str, Tuple[list, list, list]] = {
    "DCN_Loader": ([], [("model", "MODEL"), ("image_proj", "DCN_IMAGE_PROJ"), ("clip", "CLIP"),
                        ("clip_vision", "CLIP_VISION"), ("vae", "VAE"), ("info", "STRING")],
                   ["ckpt_name", "variant", "weight_dtype"]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], ["image", None]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], ["text"]),
    "DCN_ImageEncode": ([("clip_vision", "CLIP_VISION"), ("image_proj", "DCN_IMAGE_PROJ"), ("image", "IMAGE")],
                        [("image_embeds", "DCN_IMAGE_EMBEDS")], []),
    "DCN_Conditioning": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                          ("image_embeds", "DCN_IMAGE_EMBEDS"), ("vae", "VAE"), ("start_image", "IMAGE"),
                          ("end_image", "IMAGE"), ("keyframes", "IMAGE")],
                         [("positive", "CONDITIONING"), ("image_only", "CONDITIONING"),
                          ("negative", "CONDITIONING"), ("latent", "LATENT")],
                         ["width", "height", "frames", "motion", "loop"]),
    "DCN_Sampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("image_only", "CONDITIONING"),
                     ("negative", "CONDITIONING"), ("latent", "LATENT"), ("windows", "DCN_WINDOWS")],
                    [("LATENT", "LATENT")],
                    ["seed", None, "steps", "cfg_text", "cfg_image", "eta", "guidance_rescale", "spacing", "mode"]),
    "DCN_Guider": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("image_only", "CONDITIONING"),
                    ("negative", "CONDITIONING")], [("GUIDER", "GUIDER")],
                   ["cfg_text", "cfg_image", "guidance_rescale", "mode"]),
    "DCN_Sigmas": ([("model", "MODEL")], [("SIGMAS", "SIGMAS")], ["steps", "spacing"]),
    "DCN_Windows": ([], [("DCN_WINDOWS", "DCN_WINDOWS")],
                    ["context_length", "context_overlap", "context_schedule", "fuse_method", "freenoise",
                     "max_windows_per_call"]),
    "ImageBatch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")], []),
    "DCN_ToonDecode": ([("vae", "VAE"), ("samples", "LATENT"), ("start_image", "IMAGE"), ("end_image", "IMAGE")],
                       [("IMAGE", "IMAGE")], ["splice_middle", "memory_cap_mb"]),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")], ["sampler_name"]),
    "RandomNoise": ([], [("NOISE", "NOISE")], ["noise_seed", None]),
    "SamplerCustomAdvanced": ([("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"),
                               ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                              [("output", "LATENT"), ("denoised_output", "LATENT")], []),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], []),
    "DCN_ApplyAdapter": ([("model", "MODEL"), ("image_proj", "DCN_IMAGE_PROJ")],
                         [("model", "MODEL"), ("image_proj", "DCN_IMAGE_PROJ")], ["adapter_name", "strength_model"]),
    "DCN_SaveVideo": ([("images", "IMAGE")], [], ["filename_prefix", "format", "fps", "crf"]),
    "Note": ([], [], [None]),
}
VIRTUAL = {"Note"}  # front-end-only nodes: in the UI file, never in the API file


class Graph:
    def __init__(self, name: str, title: str):
        self.name, self.title = name, title
        self.nodes: List[dict] = []
        self.links: List[list] = []

    def add(self, type_: str, pos, size, widgets=(), title: Optional[str] = None, color: Optional[str] = None) -> int:
        inputs, outputs, wnames = SPECS[type_]
        widgets = list(widgets)
        if len(widgets) != len(wnames):
            raise ValueError(f"{type_}: {len(widgets)} widget values for {wnames}")
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": 0, "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {} if type_ in VIRTUAL else {"Node name for S&R": type_},
                "widgets_values": widgets}
        if type_ in VIRTUAL:
            node["properties"]["text"] = ""
        if title:
            node["title"] = title
        if color:
            node["color"], node["bgcolor"] = color[0], color[1]
        if not node["inputs"]:
            del node["inputs"]
        if not outputs:
            node["outputs"] = []
        self.nodes.append(node)
        return nid

    def connect(self, src: int, out_name: str, dst: int, in_name: str):
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        oi = next(i for i, o in enumerate(s["outputs"]) if o["name"] == out_name)
        ii = next(i for i, o in enumerate(d["inputs"]) if o["name"] == in_name)
        lid = max((l[0] for l in self.links), default=0) + 1               # ids stay unique after a removal
        typ = s["outputs"][oi]["type"]
        self.links.append([lid, src, oi, dst, ii, typ])
        s["outputs"][oi]["links"].append(lid)
        d["inputs"][ii]["link"] = lid

    def _order(self):
        deps = {n["id"]: {l[1] for l in self.links if l[3] == n["id"]} for n in self.nodes}
        done: List[int] = []
        while len(done) < len(self.nodes):
            for n in self.nodes:
                if n["id"] not in done and deps[n["id"]] <= set(done):
                    done.append(n["id"])
                    break
        for i, nid in enumerate(done):
            self.nodes[nid - 1]["order"] = i

    def ui(self) -> dict:
        self._order()
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None if n["type"] not in VIRTUAL else o["links"]
        return {"last_node_id": len(self.nodes), "last_link_id": max((l[0] for l in self.links), default=0),
                "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.6, "offset": [10, 10]}, "dynamicrafter": {"name": self.name,
                                                                                       "title": self.title}},
                "version": 0.4}

    def api(self) -> dict:
        out = {}
        by_target = {(l[3], l[4]): l for l in self.links}
        for n in self.nodes:
            if n["type"] in VIRTUAL:
                continue
            inputs_spec, _, wnames = SPECS[n["type"]]
            inputs = {}
            for i, (name, _t) in enumerate(inputs_spec):
                l = by_target.get((n["id"], i))
                if l is not None:
                    inputs[name] = [str(l[1]), l[2]]
            for name, value in zip(wnames, n["widgets_values"]):
                if name is not None:
                    inputs[name] = value
            out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                 "_meta": {"title": n.get("title", n["type"])}}
        return out


NOTE_COLOR = ("#432", "#653")


def _model_note(ckpt: str, repo: str, extra: str = "") -> str:
    stem = os.path.splitext(ckpt)[0]
    variant = next(v for v, m in MODEL_FILES.items() if m.filename == ckpt)
    fetch = "python generate.py --download-only" + ("" if variant == "512" else f" --variant {variant}")
    return (f"MODEL FILE - pick it in DynamiCrafter Loader > ckpt_name\n"
            f"{ckpt} goes into ComfyUI/models/{WORKFLOW_FOLDER}/\n"
            f"(models/dynamicrafter or models/diffusion_models work too).\n"
            f"It is model.ckpt of huggingface.co/{repo}, renamed (the Missing Models panel offers it);\n"
            f"or let this pack fetch it (from the pack's folder):\n  {fetch}\n"
            f"Press R (refresh) after adding it. The one file holds the UNet, the image adapter, the text and "
            f"image encoders and the VAE. Safetensors instead of pickle: python convert.py convert "
            f"{ckpt} {stem}.safetensors --variant {variant} (then pick that name).\n"
            f"A pruned repack (e.g. dynamicrafter_*_fp16_pruned.safetensors) has no text/image encoder: take CLIP "
            f"from CLIPLoader (SD2.1 text encoder, type stable_diffusion) and CLIP_VISION from CLIPVisionLoader "
            f"(CLIP-ViT-H-14).\n\n"
            f"IMAGE: LoadImage reads ComfyUI/input/ - upload your own, or copy the examples from this pack's "
            f"workflows/input/.\n{extra}")


def _common(g: Graph, ckpt: str, variant: str, prompt: str, end: bool, adapter: bool = False):
    """Loader, images, prompts, image encode; with ``adapter``, a DCN_ApplyAdapter on the loader's MODEL and P whose
    P feeds the image encode (the caller connects its MODEL to the sampler)."""
    loader = g.add("DCN_Loader", (30, 380), (370, 200), [ckpt, variant, "default"])
    g.nodes[loader - 1]["properties"]["models"] = [dict(MODEL_ENTRIES[ckpt])]
    start = g.add("LoadImage", (30, 630), (370, 340), [START_IMAGE, "image"], title="Start image")
    end_id = g.add("LoadImage", (30, 1010), (370, 340), [END_IMAGE, "image"], title="End image") if end else None
    pos = g.add("CLIPTextEncode", (450, 60), (400, 170), [prompt], title="Positive prompt")
    neg = g.add("CLIPTextEncode", (450, 290), (400, 120), [""], title="Negative prompt (empty = reference)")
    enc = g.add("DCN_ImageEncode", (450, 470), (320, 80))
    g.connect(loader, "clip", pos, "clip")
    g.connect(loader, "clip", neg, "clip")
    g.connect(loader, "clip_vision", enc, "clip_vision")
    if adapter:
        apply = g.add("DCN_ApplyAdapter", (450, 600), (360, 110), [ADAPTER_FILE, 1.0], title="Your adapter")
        g.connect(loader, "model", apply, "model")
        g.connect(loader, "image_proj", apply, "image_proj")
        g.connect(apply, "image_proj", enc, "image_proj")
    else:
        g.connect(loader, "image_proj", enc, "image_proj")
    g.connect(start, "IMAGE", enc, "image")
    return loader, start, end_id, pos, neg, enc


def _conditioning(g, loader, start, end_id, pos, neg, enc, motion: int, loop: bool, frames: int = 16) -> int:
    cond = g.add("DCN_Conditioning", (900, 60), (320, 270), [512, 320, frames, motion, loop])
    g.connect(pos, "CONDITIONING", cond, "positive")
    g.connect(neg, "CONDITIONING", cond, "negative")
    g.connect(enc, "image_embeds", cond, "image_embeds")
    g.connect(loader, "vae", cond, "vae")
    g.connect(start, "IMAGE", cond, "start_image")
    if end_id is not None:
        g.connect(end_id, "IMAGE", cond, "end_image")
    return cond


def _exact_tail(g, loader, cond, prefix: str, steps: int = 50, windows: Optional[list] = None,
                model: Optional[int] = None):
    samp = g.add("DCN_Sampler", (1270, 60), (330, 330),
                 [SEED, "fixed", steps, 7.5, 7.5, 1.0, 0.7, "auto", "multi"])
    if windows is not None:
        win = g.add("DCN_Windows", (1270, 440), (330, 200), windows, title="Context windows (long video)")
        g.connect(win, "DCN_WINDOWS", samp, "windows")
    for name in ("positive", "image_only", "negative"):
        g.connect(cond, name, samp, name)
    g.connect(cond, "latent", samp, "latent")
    g.connect(model or loader, "model", samp, "model")
    dec = g.add("VAEDecode", (1650, 60), (210, 50))
    g.connect(samp, "LATENT", dec, "samples")
    g.connect(loader, "vae", dec, "vae")
    save = g.add("DCN_SaveVideo", (1650, 170), (360, 420), [prefix, "mp4", 8.0, 19])
    g.connect(dec, "IMAGE", save, "images")


def _exact_graph(name: str, title: str, ckpt: str, repo: str, note: str, variant: str, prompt: str, end: bool,
                 motion: int, loop: bool, prefix: str) -> Graph:
    """A graph that samples with DCN_Sampler and saves with DCN_SaveVideo, so it runs on every host."""
    g = Graph(name, title)
    g.add("Note", (30, 30), (370, 300), [_model_note(ckpt, repo, note)], color=NOTE_COLOR)
    loader, start, end_id, pos, neg, enc = _common(g, ckpt, variant, prompt, end=end)
    cond = _conditioning(g, loader, start, end_id, pos, neg, enc, motion=motion, loop=loop)
    _exact_tail(g, loader, cond, prefix)
    return g


# The three graphs of _exact_graph: UI file name, title, model file, its Hugging Face repository, the note's text,
# variant, prompt, end image, motion, loop, output prefix.
EXACT_GRAPHS = {
    "image_to_video": (
        "dynamicrafter_512_image_to_video", "DynamiCrafter 512: image to video", CKPT_512, "Doubiiu/DynamiCrafter_512",
        "\nDEFAULTS (512 model): 512x320, 16 frames, motion (fps input) 24, 50 DDIM steps, eta 1.0, cfg 7.5 "
        "text / 7.5 image, guidance rescale 0.7; the file is written at 8 fps like the reference.",
        "auto", PROMPT, False, 24, False, "DynamiCrafter/i2v"),
    "interpolation": (
        "dynamicrafter_512_interpolation", "DynamiCrafter 512-interp: start + end image", CKPT_INTERP,
        "Doubiiu/DynamiCrafter_512_Interp",
        "\nThe interpolation model (variant 512-interp) makes the frames between the start and the end image "
        "(same size). Defaults: 512x320, 16 frames, motion 5, 50 steps, cfg 7.5 / 7.5, rescale 0.7, 8 fps.",
        "512-interp", PROMPT, True, 5, False, "DynamiCrafter/interp"),
    "loop": (
        "dynamicrafter_512_loop", "DynamiCrafter 512-interp: looping video", CKPT_INTERP,
        "Doubiiu/DynamiCrafter_512_Interp",
        "\nLoop: the interpolation model ends the video on the start image again (loop = true). Defaults: "
        "512x320, 16 frames, motion 5, 50 steps, cfg 7.5 / 7.5, rescale 0.7, 8 fps.",
        "512-interp", LOOP_PROMPT, False, 5, True, "DynamiCrafter/loop"),
}


ADAPTER_NOTE = (
    "ADAPTER FILE - pick it in 'Your adapter' (DynamiCrafter Apply Adapter) > adapter_name\n"
    f"{ADAPTER_FILE} is what the pack's trainer writes (python train.py --config ...: output_dir/{ADAPTER_FILE}; "
    "see training/README.md, 'From my videos to my adapter in my workflow'). It goes into "
    "ComfyUI/models/dynamicrafter_adapters/ (models/loras works too); rename it freely, press R after adding it. "
    "It must be trained for the loaded variant (512 here). strength_model 1.0 = as trained, 0 = no change. "
    "From the command line: python generate.py ... --adapter FILE[:strength].")


def adapter_graph() -> Graph:
    """image_to_video with the trainer's adapter applied between the loader's MODEL / P and the rest."""
    g = Graph("dynamicrafter_512_adapter", "DynamiCrafter 512: image to video with your trained adapter")
    g.add("Note", (30, 30), (370, 300), [_model_note(
        CKPT_512, "Doubiiu/DynamiCrafter_512", "\n" + ADAPTER_NOTE + "\nDEFAULTS as the image-to-video workflow: "
        "512x320, 16 frames, motion 24, 50 DDIM steps, eta 1.0, cfg 7.5 / 7.5, rescale 0.7, 8 fps.")],
        color=NOTE_COLOR)
    loader, start, _, pos, neg, enc = _common(g, CKPT_512, "auto", PROMPT, end=False, adapter=True)
    apply = next(n["id"] for n in g.nodes if n["type"] == "DCN_ApplyAdapter")
    cond = _conditioning(g, loader, start, None, pos, neg, enc, motion=24, loop=False)
    _exact_tail(g, loader, cond, "DynamiCrafter/adapter", model=apply)
    return g


LONG_FRAMES = 64
LONG_NOTE = ("\nLONG VIDEO: {frames} frames sampled in 16-frame context windows (the trained length) that overlap by 4 "
             "frames and are fused every step (DynamiCrafter Context Windows; without that node DCN_Sampler uses "
             "these same defaults). Each window sees its own frames' conditioning; time and memory grow with the "
             "number of windows, not with the frame count squared. 512x320, motion 24, 50 steps, 8 fps.")


def long_video() -> Graph:
    g = Graph("dynamicrafter_512_long_video", "DynamiCrafter 512: long video (64 frames, context windows)")
    g.add("Note", (30, 30), (370, 300), [_model_note(CKPT_512, "Doubiiu/DynamiCrafter_512",
                                                     LONG_NOTE.format(frames=LONG_FRAMES))], color=NOTE_COLOR)
    loader, start, _, pos, neg, enc = _common(g, CKPT_512, "auto", PROMPT, end=False)
    cond = _conditioning(g, loader, start, None, pos, neg, enc, motion=24, loop=False, frames=LONG_FRAMES)
    _exact_tail(g, loader, cond, "DynamiCrafter/long", windows=[16, 4, "standard_static", "pyramid", False, 1])
    return g


def long_loop() -> Graph:
    g = Graph("dynamicrafter_512_long_loop", "DynamiCrafter 512: long loop (64 frames, wrapping windows)")
    g.add("Note", (30, 30), (370, 300), [_model_note(
        CKPT_512, "Doubiiu/DynamiCrafter_512",
        "\nLONG LOOP: 64 frames with loop = true on the image-to-video model. The start image conditions every "
        "frame and the 16-frame context windows wrap around (looped_static): the last frame leads into the first, "
        "so the file plays as a seamless loop. 512x320, motion 24, 50 steps, 8 fps.")], color=NOTE_COLOR)
    loader, start, _, pos, neg, enc = _common(g, CKPT_512, "auto", LOOP_PROMPT, end=False)
    cond = _conditioning(g, loader, start, None, pos, neg, enc, motion=24, loop=True, frames=LONG_FRAMES)
    _exact_tail(g, loader, cond, "DynamiCrafter/long_loop", windows=[16, 4, "looped_static", "pyramid", False, 1])
    return g


def keyframes() -> Graph:
    g = Graph("dynamicrafter_512_keyframes", "DynamiCrafter 512-interp: keyframe chain (3 images, 31 frames)")
    g.add("Note", (30, 30), (370, 300), [_model_note(
        CKPT_INTERP, "Doubiiu/DynamiCrafter_512_Interp",
        "\nKEYFRAMES: the start image, then the keyframes batch (ImageBatch: add more with further ImageBatch "
        "nodes). Each pair of consecutive keyframes is one 16-frame interpolation; neighbouring segments share "
        "their boundary frame, so N images give (N-1)*15+1 frames (3 images: 31); the frames widget is not used. "
        "loop = true adds a segment back to the start image. 512x320, motion 5, 50 steps, 8 fps.")],
        color=NOTE_COLOR)
    loader, start, end_id, pos, neg, enc = _common(g, CKPT_INTERP, "512-interp", PROMPT, end=True)
    g.nodes[end_id - 1]["title"] = "Keyframe 2"
    third = g.add("LoadImage", (30, 1390), (370, 340), [START_IMAGE, "image"], title="Keyframe 3")
    batch = g.add("ImageBatch", (450, 620), (210, 50), title="Keyframes after the start image")
    g.connect(end_id, "IMAGE", batch, "image1")
    g.connect(third, "IMAGE", batch, "image2")
    cond = _conditioning(g, loader, start, None, pos, neg, enc, motion=5, loop=False, frames=31)
    g.connect(batch, "IMAGE", cond, "keyframes")
    _exact_tail(g, loader, cond, "DynamiCrafter/keyframes")
    return g


TOON_PROMPT = "a cartoon sailboat gliding over the waves at sunset"


def tooncrafter() -> Graph:
    """ToonCrafter: two cartoon frames in, the in-between video out (reference scripts/run.sh settings), decoded by
    DCN_ToonDecode with the start/end references and the middle-frame splice."""
    g = Graph("tooncrafter_interpolation", "ToonCrafter: cartoon interpolation between two frames")
    g.add("Note", (30, 30), (370, 300), [_model_note(CKPT_TOON, "Doubiiu/ToonCrafter",
          "\nToonCrafter makes the frames between two cartoon frames (same size). Defaults (reference run.sh): "
          "512x320, 16 frames, frame stride 10 (5-30, smaller = more motion), 50 steps, eta 1.0, cfg 7.5 on text "
          "only (mode single), rescale 0.7. Decode with DynamiCrafter ToonCrafter Decode (VAEDecode would skip "
          "the start/end references).")], color=NOTE_COLOR)
    loader, start, end_id, pos, neg, enc = _common(g, CKPT_TOON, "auto", TOON_PROMPT, end=True)
    cond = _conditioning(g, loader, start, end_id, pos, neg, enc, motion=10, loop=False)
    samp = g.add("DCN_Sampler", (1270, 60), (330, 330), [SEED, "fixed", 50, 7.5, 7.5, 1.0, 0.7, "auto", "single"])
    for name in ("positive", "image_only", "negative"):
        g.connect(cond, name, samp, name)
    g.connect(cond, "latent", samp, "latent")
    g.connect(loader, "model", samp, "model")
    dec = g.add("DCN_ToonDecode", (1650, 60), (300, 150), [True, 0])
    g.connect(loader, "vae", dec, "vae")
    g.connect(samp, "LATENT", dec, "samples")
    g.connect(start, "IMAGE", dec, "start_image")
    g.connect(end_id, "IMAGE", dec, "end_image")
    save = g.add("DCN_SaveVideo", (1650, 270), (360, 420), ["ToonCrafter/interp", "mp4", 8.0, 19])
    g.connect(dec, "IMAGE", save, "images")
    return g


def advanced() -> Graph:
    g = Graph("dynamicrafter_512_advanced_guider", "DynamiCrafter 512: SamplerCustomAdvanced + dual-CFG guider")
    g.add("Note", (30, 30), (370, 300), [_model_note(CKPT_512, "Doubiiu/DynamiCrafter_512",
          "\nNEEDS A HOST FROM 2024-04 OR LATER (SamplerCustomAdvanced, guiders). The "
          "DynamiCrafter guider (dual CFG + reference guidance rescale) drives the host's own samplers on the "
          "reference DDIM sigmas; euler on them is DDIM with eta 0. Older hosts: use the image-to-video workflow.")],
          color=NOTE_COLOR)
    loader, start, _, pos, neg, enc = _common(g, CKPT_512, "auto", PROMPT, end=False)
    cond = _conditioning(g, loader, start, None, pos, neg, enc, motion=24, loop=False)
    guider = g.add("DCN_Guider", (1270, 60), (330, 180), [7.5, 7.5, 0.7, "multi"])
    for name in ("positive", "image_only", "negative"):
        g.connect(cond, name, guider, name)
    g.connect(loader, "model", guider, "model")
    sigmas = g.add("DCN_Sigmas", (1270, 300), (330, 90), [50, "auto"])
    g.connect(loader, "model", sigmas, "model")
    sampler = g.add("KSamplerSelect", (1270, 440), (330, 60), ["euler"])
    noise = g.add("RandomNoise", (1270, 550), (330, 90), [SEED, "fixed"])
    sca = g.add("SamplerCustomAdvanced", (1650, 60), (290, 110))
    g.connect(noise, "NOISE", sca, "noise")
    g.connect(guider, "GUIDER", sca, "guider")
    g.connect(sampler, "SAMPLER", sca, "sampler")
    g.connect(sigmas, "SIGMAS", sca, "sigmas")
    g.connect(cond, "latent", sca, "latent_image")
    dec = g.add("VAEDecode", (2000, 60), (210, 50))
    g.connect(sca, "output", dec, "samples")
    g.connect(loader, "vae", dec, "vae")
    # the pack's saver, not the host's CreateVideo + SaveVideo: their inputs changed (v0.33: CreateVideo's bit_depth,
    # SaveVideo's format/codec as nested dynamic combos), so one file could not fit every host
    save = g.add("DCN_SaveVideo", (2000, 170), (360, 420), ["DynamiCrafter/advanced", "mp4", 8.0, 19])
    g.connect(dec, "IMAGE", save, "images")
    return g


# ---- ToonCrafter sketch guidance (issue 22): one self-contained addition ----------------------------------------------
SKETCH_ENCODER = "sketch_encoder.ckpt"
SKETCH_IMAGES = ("tooncrafter_sketch_05.png", "tooncrafter_sketch_10.png")
SPECS.update({
    "DCN_SketchEncoderLoader": ([], [("DCN_SKETCH_ENCODER", "DCN_SKETCH_ENCODER")], ["sketch_encoder_name"]),
    "DCN_ToonSketchGuidance": ([("positive", "CONDITIONING"), ("image_only", "CONDITIONING"),
                                ("negative", "CONDITIONING"), ("sketch_encoder", "DCN_SKETCH_ENCODER"),
                                ("sketches", "IMAGE")],
                               [("positive", "CONDITIONING"), ("image_only", "CONDITIONING"),
                                ("negative", "CONDITIONING")],
                               ["frame_indices", "strength", "start_percent", "end_percent", "lines"]),
})


def tooncrafter_sketch() -> Graph:
    """ToonCrafter interpolation steered by two sketches (frames 5 and 10 of 16): sparse sketch guidance."""
    g = tooncrafter()
    g.name, g.title = "tooncrafter_sketch_interpolation", "ToonCrafter: interpolation guided by sketches"
    g.nodes[0]["widgets_values"][0] += (
        "\nSKETCH ENCODER - pick it in DynamiCrafter Sketch Encoder Loader: sketch_encoder.ckpt of "
        "huggingface.co/Doubiiu/ToonCrafter goes into ComfyUI/models/controlnet/. Sketches: dark lines on white, "
        "one per frame index (here frames 5 and 10); 'all' takes one sketch per frame. Frames without a sketch get "
        "no guidance. strength 0.6 = the reference default.")
    samp = next(n["id"] for n in g.nodes if n["type"] == "DCN_Sampler")
    cond = next(n["id"] for n in g.nodes if n["type"] == "DCN_Conditioning")
    g.links = [l for l in g.links if not (l[1] == cond and l[3] == samp and l[2] < 3)]
    for n in g.nodes:
        for o in n["outputs"]:
            o["links"] = [i for i in o["links"] if any(l[0] == i for l in g.links)]
    for i in g.nodes[samp - 1]["inputs"][1:4]:
        i["link"] = None
    loader = g.add("DCN_SketchEncoderLoader", (900, 400), (320, 60), [SKETCH_ENCODER])
    g.nodes[loader - 1]["properties"]["models"] = [{   # the front end's Missing Models entry (folder controlnet)
        "name": SKETCH_ENCODER, "url": f"https://huggingface.co/Doubiiu/ToonCrafter/resolve/main/{SKETCH_ENCODER}",
        "directory": "controlnet"}]
    a = g.add("LoadImage", (900, 520), (320, 300), [SKETCH_IMAGES[0], "image"], title="Sketch for frame 5")
    b = g.add("LoadImage", (900, 860), (320, 300), [SKETCH_IMAGES[1], "image"], title="Sketch for frame 10")
    batch = g.add("ImageBatch", (1270, 720), (210, 50))
    g.connect(a, "IMAGE", batch, "image1")
    g.connect(b, "IMAGE", batch, "image2")
    guide = g.add("DCN_ToonSketchGuidance", (1270, 430), (330, 250), ["5, 10", 0.6, 0.0, 1.0, "dark lines on white"])
    for name in ("positive", "image_only", "negative"):
        g.connect(cond, name, guide, name)
        g.connect(guide, name, samp, name)
    g.connect(loader, "DCN_SKETCH_ENCODER", guide, "sketch_encoder")
    g.connect(batch, "IMAGE", guide, "sketches")
    return g


def sketch_images() -> Dict[str, "object"]:
    """The boat's outline at frames 5 and 10 of the example interpolation: dark lines on white, 512x320."""
    from PIL import Image, ImageDraw

    out = {}
    for name, bx in zip(SKETCH_IMAGES, (212.0, 240.0)):
        img = Image.new("RGB", (512, 320), (255, 255, 255))
        d = ImageDraw.Draw(img)
        by = 190 + 62
        d.line([(0, 190), (512, 190)], fill=(0, 0, 0), width=2)
        d.polygon([(bx - 46, by), (bx + 46, by), (bx + 32, by + 16), (bx - 32, by + 16)], outline=(0, 0, 0))
        d.polygon([(bx - 2, by - 4), (bx - 2, by - 86), (bx - 44, by - 6)], outline=(0, 0, 0))
        d.polygon([(bx + 3, by - 4), (bx + 3, by - 70), (bx + 34, by - 6)], outline=(0, 0, 0))
        d.line([(bx, by), (bx, by - 92)], fill=(0, 0, 0), width=3)
        out[name] = img
    return out


GRAPHS = {**{kind: functools.partial(_exact_graph, *args) for kind, args in EXACT_GRAPHS.items()},
          "long_video": long_video, "keyframes": keyframes, "long_loop": long_loop, "advanced": advanced,
          "tooncrafter": tooncrafter, "adapter": adapter_graph, "tooncrafter_sketch": tooncrafter_sketch}


def example_images() -> Dict[str, "object"]:
    """Two 512x320 pictures of one sunset sea scene, the boat and the sun a little further on in the second."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    def scene(boat_x: float, sun_y: float):
        w, h, horizon = 512, 320, 190
        y = np.linspace(0, 1, horizon)[:, None, None]
        top, low = np.array([40, 50, 110]), np.array([250, 150, 80])
        sky = (top * (1 - y) + low * y) * np.ones((1, w, 1))
        ys = np.linspace(0, 1, h - horizon)[:, None, None]
        sea_top, sea_low = np.array([170, 90, 70]), np.array([20, 30, 60])
        sea = (sea_top * (1 - ys) + sea_low * ys) * np.ones((1, w, 1))
        xx = np.arange(w)[None, :]
        yy = np.arange(h - horizon)[:, None]
        waves = 12 * np.sin(xx / 9.0 + yy * 0.9) * np.exp(-yy / 90.0) * (yy % 7 < 2)
        sea = np.clip(sea + waves[..., None], 0, 255)
        img = Image.fromarray(np.concatenate([sky, sea], 0).astype(np.uint8))
        d = ImageDraw.Draw(img)
        d.ellipse([330 - 34, sun_y - 34, 330 + 34, sun_y + 34], fill=(255, 220, 140))
        d.rectangle([0, horizon, w, horizon + 2], fill=(230, 140, 90))
        bx, by = boat_x, horizon + 62
        d.polygon([(bx - 46, by), (bx + 46, by), (bx + 32, by + 16), (bx - 32, by + 16)], fill=(35, 25, 30))
        d.polygon([(bx - 2, by - 4), (bx - 2, by - 86), (bx - 44, by - 6)], fill=(245, 235, 220))
        d.polygon([(bx + 3, by - 4), (bx + 3, by - 70), (bx + 34, by - 6)], fill=(230, 215, 200))
        d.line([(bx, by), (bx, by - 92)], fill=(30, 20, 20), width=3)
        return img.filter(ImageFilter.SMOOTH)

    return {START_IMAGE: scene(190.0, 120.0), END_IMAGE: scene(262.0, 138.0)}


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def outputs() -> Dict[str, str]:
    """Relative path -> file text of every JSON file this script writes."""
    files = {}
    for build in GRAPHS.values():
        g = build()
        files[os.path.relpath(os.path.join(UI_DIR, g.name + ".json"), ROOT)] = _dump(g.ui())
        files[os.path.relpath(os.path.join(API_DIR, g.name + ".json"), ROOT)] = _dump(g.api())
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for rel, text in outputs().items():
        path = os.path.join(ROOT, rel)
        old = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if old != text:
            stale.append(rel)
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    if not args.check:
        os.makedirs(INPUT_DIR, exist_ok=True)
        for name, img in {**example_images(), **sketch_images()}.items():
            path = os.path.join(INPUT_DIR, name)
            if not os.path.isfile(path):
                img.save(path, optimize=True)
    if args.check and stale:
        print("out of date:", *stale, sep="\n  ")
        return 1
    print(("checked" if args.check else "wrote") + f" {len(outputs())} files" + (f", changed: {stale}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

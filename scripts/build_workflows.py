"""Writes the shipped workflows from one description per graph: the UI-format file (example_workflows/<name>.json:
what users drag in, and what newer hosts list in their template browser), its API-format twin
(workflows/api/<name>.json, what generate.py runs), and the example input images and sketches (workflows/input/).

    .venv/bin/python scripts/build_workflows.py          # rewrite the files
    .venv/bin/python scripts/build_workflows.py --check  # exit 1 when a committed file differs

The slot and widget lists below are written by hand on purpose: tests/workflows/test_workflow_files.py checks every
node, link and widget value against the INPUT_TYPES / RETURN_TYPES of a real host, converts each UI file to the
API format on its own to compare it with the twin, and checks that the committed files are what this script writes.
The defaults a graph carries (sampler widgets, size, frames, motion, the ToonCrafter decode, and the numbers in its
note) are read from its variant in the registry (model/variants.py; the sampler's: model/config.py SamplerDefaults).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from ..model.variants import get_variant  # noqa: E402
WF_DIR = os.path.join(ROOT, "workflows")
UI_DIR = os.path.join(ROOT, "example_workflows")  # the one UI copy: newer hosts serve this folder as templates
API_DIR = os.path.join(WF_DIR, "api")
INPUT_DIR = os.path.join(WF_DIR, "input")
START_IMAGE = "dynamicrafter_example_start.png"
END_IMAGE = "dynamicrafter_example_end.png"

PROMPT = "a small sailboat drifting on gentle waves at sunset, the sun glowing above the sea"
LOOP_PROMPT = "a small sailboat rocking on gentle waves at sunset"
TOON_PROMPT = "a cartoon sailboat gliding over the waves at sunset"
SEED, FPS, CRF = 123, 8.0, 19          # generate.py COMMON_DEFAULTS: the same run
ADAPTER_FILE = "adapter.safetensors"   # the trainer's output name (training/README.md)
SKETCH_ENCODER = "sketch_encoder.ckpt"
SKETCH_IMAGES = ("tooncrafter_sketch_05.png", "tooncrafter_sketch_10.png")
MODEL_ENTRIES = {m.filename: m.models_entry() for m in MODEL_FILES.values()}
CONDS = ("positive", "image_only", "negative")

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
                         [(n, "CONDITIONING") for n in CONDS] + [("latent", "LATENT")],
                         ["width", "height", "frames", "motion", "loop"]),
    "DCN_Sampler": ([("model", "MODEL")] + [(n, "CONDITIONING") for n in CONDS] + [("latent", "LATENT"),
                                                                                   ("windows", "DCN_WINDOWS")],
                    [("LATENT", "LATENT")],
                    ["seed", None, "steps", "cfg_text", "cfg_image", "eta", "guidance_rescale", "spacing", "mode"]),
    "DCN_Guider": ([("model", "MODEL")] + [(n, "CONDITIONING") for n in CONDS], [("GUIDER", "GUIDER")],
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
    "DCN_SketchEncoderLoader": ([], [("DCN_SKETCH_ENCODER", "DCN_SKETCH_ENCODER")], ["sketch_encoder_name"]),
    "DCN_ToonSketchGuidance": ([(n, "CONDITIONING") for n in CONDS] + [("sketch_encoder", "DCN_SKETCH_ENCODER"),
                                                                       ("sketches", "IMAGE")],
                               [(n, "CONDITIONING") for n in CONDS],
                               ["frame_indices", "strength", "start_percent", "end_percent", "lines"]),
    "Note": ([], [], [None]),
}
VIRTUAL = {"Note"}  # front-end-only nodes: in the UI file, never in the API file
NOTE_COLOR = ("#432", "#653")


class Graph:
    """One workflow in the UI format; ``at``: role -> node id; ``v``: the registry variant it runs, ``frames`` its
    length."""

    def __init__(self, name: str, title: str, variant: str, frames: Optional[int] = None):
        self.name, self.title, self.v = name, title, get_variant(variant)
        self.frames = frames or self.v.frames
        self.nodes: List[dict] = []
        self.links: List[list] = []
        self.at: Dict[str, int] = {}

    def add(self, role: str, type_: str, pos, size, widgets=(), title: Optional[str] = None, color=None,
            models: Optional[list] = None, **sources: str):
        """Node ``role`` of ``type_``, then its inputs from ``sources`` (see ``link``)."""
        inputs, outputs, wnames = SPECS[type_]
        if len(widgets) != len(wnames):
            raise ValueError(f"{type_}: {len(widgets)} widget values for {wnames}")
        node = {"id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
                "order": 0, "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"text": ""} if type_ in VIRTUAL else {"Node name for S&R": type_},
                "widgets_values": list(widgets)}
        if models:  # the front end's Missing Models entries
            node["properties"]["models"] = models
        if title:
            node["title"] = title
        if color:
            node["color"], node["bgcolor"] = color
        if not node["inputs"]:
            del node["inputs"]
        self.nodes.append(node)
        self.at[role] = node["id"]
        self.link(role, **sources)

    def link(self, dst: str, **sources: str):
        """Links into node ``dst``: source role -> its outputs, space-separated, each "name" (the input's name too)
        or "output:input"; in the order given (it numbers the links)."""
        d = self.nodes[self.at[dst] - 1]
        for src, names in sources.items():
            s = self.nodes[self.at[src] - 1]
            for out_name, _, in_name in (n.partition(":") for n in names.split()):
                oi = next(i for i, o in enumerate(s["outputs"]) if o["name"] == out_name)
                ii = next(i for i, o in enumerate(d["inputs"]) if o["name"] == (in_name or out_name))
                lid = max((l[0] for l in self.links), default=0) + 1       # ids stay unique after a removal
                self.links.append([lid, s["id"], oi, d["id"], ii, s["outputs"][oi]["type"]])
                s["outputs"][oi]["links"].append(lid)
                d["inputs"][ii]["link"] = lid

    def unlink(self, dst: str, *names: str):
        """Drop the links into ``dst``'s inputs ``names`` (their ids are not reused)."""
        inputs = [i for i in self.nodes[self.at[dst] - 1]["inputs"] if i["name"] in names]
        gone = {i["link"] for i in inputs}
        self.links = [l for l in self.links if l[0] not in gone]
        for o in (o for n in self.nodes for o in n["outputs"]):
            o["links"] = [i for i in o["links"] if i not in gone]
        for i in inputs:
            i["link"] = None

    def _order(self):
        deps = {n["id"]: {l[1] for l in self.links if l[3] == n["id"]} for n in self.nodes}
        done: List[int] = []
        while len(done) < len(self.nodes):
            done.append(next(n["id"] for n in self.nodes if n["id"] not in done and deps[n["id"]] <= set(done)))
        for i, nid in enumerate(done):
            self.nodes[nid - 1]["order"] = i

    def ui(self) -> dict:
        self._order()
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"] and n["type"] not in VIRTUAL:
                    o["links"] = None
        return {"last_node_id": len(self.nodes), "last_link_id": max((l[0] for l in self.links), default=0),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.6, "offset": [10, 10]},
                          "dynamicrafter": {"name": self.name, "title": self.title}},
                "version": 0.4}

    def api(self) -> dict:
        out = {}
        by_target = {(l[3], l[4]): l for l in self.links}
        for n in self.nodes:
            if n["type"] in VIRTUAL:
                continue
            inputs_spec, _, wnames = SPECS[n["type"]]
            inputs = {name: [str(by_target[n["id"], i][1]), by_target[n["id"], i][2]]
                      for i, (name, _t) in enumerate(inputs_spec) if (n["id"], i) in by_target}
            inputs.update((name, value) for name, value in zip(wnames, n["widgets_values"]) if name is not None)
            out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                 "_meta": {"title": n.get("title", n["type"])}}
        return out


def _values(g: Graph) -> dict:
    """The numbers a note names: the variant's defaults (model/variants.py) and this graph's frames."""
    return dict(dataclasses.asdict(g.v.sampling), size=f"{g.v.width}x{g.v.height}", frames=g.frames,
                motion=g.v.default_motion, range="%d-%d" % g.v.motion_range, rescale=g.v.guidance_rescale,
                fps=f"{FPS:g}")


def _note(g: Graph, text: str):
    """The model note (node 1): where the model file goes and how to get it, then ``text`` with _values filled in."""
    variant = g.v.name
    ckpt, repo = MODEL_FILES[variant].filename, MODEL_FILES[variant].repo
    stem = os.path.splitext(ckpt)[0]
    fetch = "python generate.py --download-only" + ("" if variant == "512" else f" --variant {variant}")
    g.add("note", "Note", (30, 30), (370, 300), [
        f"MODEL FILE - pick it in DynamiCrafter Loader > ckpt_name\n"
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
        f"workflows/input/.\n" + text.format(**_values(g))], color=NOTE_COLOR)


def _inputs(g: Graph, pick: str, prompt: str, end: bool, loop: bool, adapter: bool = False, keyframes: bool = False):
    """Loader, images, prompts, image encode, conditioning; with ``adapter``, a DCN_ApplyAdapter on the loader's MODEL
    and P whose P feeds the image encode; with ``keyframes``, a third image batched after the second."""
    ckpt = MODEL_FILES[g.v.name].filename
    g.add("loader", "DCN_Loader", (30, 380), (370, 200), [ckpt, pick, "default"], models=[dict(MODEL_ENTRIES[ckpt])])
    g.add("start", "LoadImage", (30, 630), (370, 340), [START_IMAGE, "image"], title="Start image")
    if end or keyframes:
        g.add("end", "LoadImage", (30, 1010), (370, 340), [END_IMAGE, "image"],
              title="Keyframe 2" if keyframes else "End image")
    g.add("text", "CLIPTextEncode", (450, 60), (400, 170), [prompt], title="Positive prompt", loader="clip")
    g.add("negative", "CLIPTextEncode", (450, 290), (400, 120), [""], title="Negative prompt (empty = reference)",
          loader="clip")
    g.add("enc", "DCN_ImageEncode", (450, 470), (320, 80), loader="clip_vision")
    if adapter:
        g.add("adapter", "DCN_ApplyAdapter", (450, 600), (360, 110), [ADAPTER_FILE, 1.0], title="Your adapter",
              loader="model image_proj")
    proj = "adapter" if adapter else "loader"
    g.link("enc", **{proj: "image_proj"}, start="IMAGE:image")
    if keyframes:
        g.add("third", "LoadImage", (30, 1390), (370, 340), [START_IMAGE, "image"], title="Keyframe 3")
        g.add("batch", "ImageBatch", (450, 620), (210, 50), title="Keyframes after the start image",
              end="IMAGE:image1", third="IMAGE:image2")
    last = {"end": "IMAGE:end_image"} if end else {"batch": "IMAGE:keyframes"} if keyframes else {}
    g.add("cond", "DCN_Conditioning", (900, 60), (320, 270), [g.v.width, g.v.height, g.frames, g.v.default_motion,
                                                               loop], text="CONDITIONING:positive",
          negative="CONDITIONING:negative", enc="image_embeds", loader="vae", start="IMAGE:start_image", **last)


def _save(g: Graph, pos, prefix: str):
    g.add("save", "DCN_SaveVideo", pos, (360, 420), [prefix, "mp4", FPS, CRF], dec="IMAGE:images")


def _exact_tail(g: Graph, prefix: str, windows: Optional[list]):
    """DCN_Sampler with the variant's defaults, decode (ToonCrafter's own for a dual-reference variant), save."""
    s = g.v.sampling
    g.add("samp", "DCN_Sampler", (1270, 60), (330, 330),
          [SEED, "fixed", s.steps, s.cfg_text, s.cfg_image, s.eta, g.v.guidance_rescale, "auto", s.mode])
    if windows is not None:
        g.add("win", "DCN_Windows", (1270, 440), (330, 200), windows, title="Context windows (long video)")
        g.link("samp", win="DCN_WINDOWS:windows")
    model = "adapter" if "adapter" in g.at else "loader"
    g.link("samp", cond=" ".join(CONDS) + " latent", **{model: "model"})
    if g.v.toon_decode is not None:
        g.add("dec", "DCN_ToonDecode", (1650, 60), (300, 150), [g.v.toon_decode.splice_middle, 0], loader="vae",
              samp="LATENT:samples", start="IMAGE:start_image", end="IMAGE:end_image")
        return _save(g, (1650, 270), prefix)
    g.add("dec", "VAEDecode", (1650, 60), (210, 50), samp="LATENT:samples", loader="vae")
    _save(g, (1650, 170), prefix)


def _exact_graph(name: str, title: str, variant: str, note: str, prefix: str, prompt: str = PROMPT,
                 pick: str = "auto", end: bool = False, loop: bool = False, frames: Optional[int] = None,
                 adapter: bool = False, keyframes: bool = False, windows: Optional[list] = None) -> Graph:
    """A graph that samples with DCN_Sampler and saves with DCN_SaveVideo, so it runs on every host: ``variant`` the
    registry's (its file, defaults and decode), ``pick`` the loader's variant widget."""
    g = Graph(name, title, variant, frames)
    _note(g, note)
    _inputs(g, pick, prompt, end, loop, adapter, keyframes)
    _exact_tail(g, prefix, windows)
    return g


# The notes' defaults: {size}, {frames}, {motion}, {steps}, {eta}, {cfg_text}, ... from _values.
SHORT = ("{size}, {frames} frames, motion {motion}, {steps} steps, cfg {cfg_text} / {cfg_image}, rescale {rescale}, "
         "{fps} fps.")
LONG = "{size}, motion {motion}, {steps} steps, {fps} fps."
ADAPTER_NOTE = (
    "ADAPTER FILE - pick it in 'Your adapter' (DynamiCrafter Apply Adapter) > adapter_name\n"
    f"{ADAPTER_FILE} is what the pack's trainer writes (python train.py --config ...: output_dir/{ADAPTER_FILE}; "
    "see training/README.md, 'From my videos to my adapter in my workflow'). It goes into "
    "ComfyUI/models/dynamicrafter_adapters/ (models/loras works too); rename it freely, press R after adding it. "
    "It must be trained for the loaded variant (512 here). strength_model 1.0 = as trained, 0 = no change. "
    "From the command line: python generate.py ... --adapter FILE[:strength].")
LONG_FRAMES = 64
# kind -> the arguments of _exact_graph
EXACT_GRAPHS = {
    "image_to_video": dict(
        name="dynamicrafter_512_image_to_video", title="DynamiCrafter 512: image to video", variant="512",
        note="\nDEFAULTS (512 model): {size}, {frames} frames, motion (fps input) {motion}, {steps} DDIM steps, eta "
             "{eta}, cfg {cfg_text} text / {cfg_image} image, guidance rescale {rescale}; the file is written at "
             "{fps} fps like the reference.", prefix="DynamiCrafter/i2v"),
    "interpolation": dict(
        name="dynamicrafter_512_interpolation", title="DynamiCrafter 512-interp: start + end image",
        variant="512-interp", pick="512-interp", end=True, prefix="DynamiCrafter/interp",
        note="\nThe interpolation model (variant 512-interp) makes the frames between the start and the end image "
             "(same size). Defaults: " + SHORT),
    "loop": dict(
        name="dynamicrafter_512_loop", title="DynamiCrafter 512-interp: looping video", variant="512-interp",
        pick="512-interp", prompt=LOOP_PROMPT, loop=True, prefix="DynamiCrafter/loop",
        note="\nLoop: the interpolation model ends the video on the start image again (loop = true). Defaults: "
             + SHORT),
    "long_video": dict(
        name="dynamicrafter_512_long_video", title="DynamiCrafter 512: long video (64 frames, context windows)",
        variant="512", frames=LONG_FRAMES, prefix="DynamiCrafter/long",
        windows=[16, 4, "standard_static", "pyramid", False, 1],
        note="\nLONG VIDEO: {frames} frames sampled in 16-frame context windows (the trained length) that overlap by 4 "
             "frames and are fused every step (DynamiCrafter Context Windows; without that node DCN_Sampler uses "
             "these same defaults). Each window sees its own frames' conditioning; time and memory grow with the "
             "number of windows, not with the frame count squared. " + LONG),
    "keyframes": dict(
        name="dynamicrafter_512_keyframes", title="DynamiCrafter 512-interp: keyframe chain (3 images, 31 frames)",
        variant="512-interp", pick="512-interp", keyframes=True, frames=31, prefix="DynamiCrafter/keyframes",
        note="\nKEYFRAMES: the start image, then the keyframes batch (ImageBatch: add more with further ImageBatch "
             "nodes). Each pair of consecutive keyframes is one 16-frame interpolation; neighbouring segments share "
             "their boundary frame, so N images give (N-1)*15+1 frames (3 images: 31); the frames widget is not "
             "used. loop = true adds a segment back to the start image. " + LONG),
    "long_loop": dict(
        name="dynamicrafter_512_long_loop", title="DynamiCrafter 512: long loop (64 frames, wrapping windows)",
        variant="512", prompt=LOOP_PROMPT, loop=True, frames=LONG_FRAMES, prefix="DynamiCrafter/long_loop",
        windows=[16, 4, "looped_static", "pyramid", False, 1],
        note="\nLONG LOOP: {frames} frames with loop = true on the image-to-video model. The start image conditions "
             "every frame and the 16-frame context windows wrap around (looped_static): the last frame leads into "
             "the first, so the file plays as a seamless loop. " + LONG),
    # ToonCrafter: two cartoon frames in, the in-between video out (reference scripts/run.sh settings), decoded by
    # DCN_ToonDecode with the start/end references and the middle-frame splice
    "tooncrafter": dict(
        name="tooncrafter_interpolation", title="ToonCrafter: cartoon interpolation between two frames",
        variant="tooncrafter", prompt=TOON_PROMPT, end=True, prefix="ToonCrafter/interp",
        note="\nToonCrafter makes the frames between two cartoon frames (same size). Defaults (reference run.sh): "
             "{size}, {frames} frames, frame stride {motion} ({range}, smaller = more motion), {steps} steps, eta "
             "{eta}, cfg {cfg_text} on text only (mode {mode}), rescale {rescale}. Decode with DynamiCrafter "
             "ToonCrafter Decode (VAEDecode would skip the start/end references)."),
    # image_to_video with the trainer's adapter applied between the loader's MODEL / P and the rest
    "adapter": dict(
        name="dynamicrafter_512_adapter", title="DynamiCrafter 512: image to video with your trained adapter",
        variant="512", adapter=True, prefix="DynamiCrafter/adapter",
        note="\n" + ADAPTER_NOTE + "\nDEFAULTS as the image-to-video workflow: {size}, {frames} frames, motion "
             "{motion}, {steps} DDIM steps, eta {eta}, cfg {cfg_text} / {cfg_image}, rescale {rescale}, {fps} fps."),
}


def advanced() -> Graph:
    g = Graph("dynamicrafter_512_advanced_guider", "DynamiCrafter 512: SamplerCustomAdvanced + dual-CFG guider", "512")
    _note(g, "\nNEEDS A HOST FROM 2024-04 OR LATER (SamplerCustomAdvanced, guiders). The DynamiCrafter guider (dual "
          "CFG + reference guidance rescale) drives the host's own samplers on the reference DDIM sigmas; euler on "
          "them is DDIM with eta 0. Older hosts: use the image-to-video workflow.")
    _inputs(g, "auto", PROMPT, end=False, loop=False)
    s = g.v.sampling
    g.add("guider", "DCN_Guider", (1270, 60), (330, 180), [s.cfg_text, s.cfg_image, g.v.guidance_rescale, s.mode],
          cond=" ".join(CONDS), loader="model")
    g.add("sigmas", "DCN_Sigmas", (1270, 300), (330, 90), [s.steps, "auto"], loader="model")
    g.add("sampler", "KSamplerSelect", (1270, 440), (330, 60), ["euler"])
    g.add("noise", "RandomNoise", (1270, 550), (330, 90), [SEED, "fixed"])
    g.add("sca", "SamplerCustomAdvanced", (1650, 60), (290, 110), noise="NOISE:noise", guider="GUIDER:guider",
          sampler="SAMPLER:sampler", sigmas="SIGMAS:sigmas", cond="latent:latent_image")
    g.add("dec", "VAEDecode", (2000, 60), (210, 50), sca="output:samples", loader="vae")
    # the pack's saver, not the host's CreateVideo + SaveVideo: their inputs changed (v0.33: CreateVideo's bit_depth,
    # SaveVideo's format/codec as nested dynamic combos), so one file could not fit every host
    _save(g, (2000, 170), "DynamiCrafter/advanced")
    return g


def tooncrafter_sketch() -> Graph:
    """ToonCrafter interpolation steered by two sketches (frames 5 and 10 of 16): sparse sketch guidance (issue 22)."""
    g = _exact_graph(**EXACT_GRAPHS["tooncrafter"])
    g.name, g.title = "tooncrafter_sketch_interpolation", "ToonCrafter: interpolation guided by sketches"
    g.nodes[0]["widgets_values"][0] += (
        "\nSKETCH ENCODER - pick it in DynamiCrafter Sketch Encoder Loader: sketch_encoder.ckpt of "
        "huggingface.co/Doubiiu/ToonCrafter goes into ComfyUI/models/controlnet/. Sketches: dark lines on white, "
        "one per frame index (here frames 5 and 10); 'all' takes one sketch per frame. Frames without a sketch get "
        "no guidance. strength 0.6 = the reference default.")
    g.unlink("samp", *CONDS)
    g.add("sketch_encoder", "DCN_SketchEncoderLoader", (900, 400), (320, 60), [SKETCH_ENCODER], models=[{
        "name": SKETCH_ENCODER, "url": f"https://huggingface.co/Doubiiu/ToonCrafter/resolve/main/{SKETCH_ENCODER}",
        "directory": "controlnet"}])
    g.add("a", "LoadImage", (900, 520), (320, 300), [SKETCH_IMAGES[0], "image"], title="Sketch for frame 5")
    g.add("b", "LoadImage", (900, 860), (320, 300), [SKETCH_IMAGES[1], "image"], title="Sketch for frame 10")
    g.add("batch", "ImageBatch", (1270, 720), (210, 50), a="IMAGE:image1", b="IMAGE:image2")
    g.add("guide", "DCN_ToonSketchGuidance", (1270, 430), (330, 250), ["5, 10", 0.6, 0.0, 1.0, "dark lines on white"])
    for name in CONDS:
        g.link("guide", cond=name)
        g.link("samp", guide=name)
    g.link("guide", sketch_encoder="DCN_SKETCH_ENCODER:sketch_encoder", batch="IMAGE:sketches")
    return g


GRAPHS = {**{kind: functools.partial(_exact_graph, **kw) for kind, kw in EXACT_GRAPHS.items()},
          "advanced": advanced, "tooncrafter_sketch": tooncrafter_sketch}


def _boat(d, bx: float, by: float, fills=(None, None, None), mast=(0, 0, 0), outline=None):
    """Hull, two sails and mast of the example boat, its keel line at ``by``."""
    d.polygon([(bx - 46, by), (bx + 46, by), (bx + 32, by + 16), (bx - 32, by + 16)], fill=fills[0], outline=outline)
    d.polygon([(bx - 2, by - 4), (bx - 2, by - 86), (bx - 44, by - 6)], fill=fills[1], outline=outline)
    d.polygon([(bx + 3, by - 4), (bx + 3, by - 70), (bx + 34, by - 6)], fill=fills[2], outline=outline)
    d.line([(bx, by), (bx, by - 92)], fill=mast, width=3)


def input_images() -> Dict[str, "object"]:
    """Two 512x320 pictures of one sunset sea scene, the boat and the sun a little further on in the second; the
    boat's outline at frames 5 and 10 of the example interpolation (the sketches: dark lines on white)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    w, h, horizon = 512, 320, 190

    def scene(boat_x: float, sun_y: float):
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
        _boat(d, boat_x, horizon + 62, ((35, 25, 30), (245, 235, 220), (230, 215, 200)), mast=(30, 20, 20))
        return img.filter(ImageFilter.SMOOTH)

    def sketch(boat_x: float):
        img = Image.new("RGB", (w, h), (255, 255, 255))
        d = ImageDraw.Draw(img)
        d.line([(0, horizon), (w, horizon)], fill=(0, 0, 0), width=2)
        _boat(d, boat_x, horizon + 62, outline=(0, 0, 0))
        return img

    return {START_IMAGE: scene(190.0, 120.0), END_IMAGE: scene(262.0, 138.0),
            SKETCH_IMAGES[0]: sketch(212.0), SKETCH_IMAGES[1]: sketch(240.0)}


def outputs() -> Dict[str, str]:
    """Relative path -> file text of every JSON file this script writes."""
    files = {}
    for g in (build() for build in GRAPHS.values()):
        for folder, obj in ((UI_DIR, g.ui()), (API_DIR, g.api())):
            files[os.path.relpath(os.path.join(folder, g.name + ".json"), ROOT)] = json.dumps(
                obj, indent=2, ensure_ascii=False) + "\n"
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = ap.parse_args(argv)
    files = outputs()
    stale = [rel for rel, text in files.items() if not os.path.isfile(os.path.join(ROOT, rel))
             or open(os.path.join(ROOT, rel), encoding="utf-8").read() != text]
    if args.check and stale:
        print("out of date:", *stale, sep="\n  ")
        return 1
    if not args.check:
        for rel in stale:
            os.makedirs(os.path.dirname(os.path.join(ROOT, rel)), exist_ok=True)
            with open(os.path.join(ROOT, rel), "w", encoding="utf-8") as f:
                f.write(files[rel])
        os.makedirs(INPUT_DIR, exist_ok=True)
        for name, img in input_images().items():
            if not os.path.isfile(os.path.join(INPUT_DIR, name)):
                img.save(os.path.join(INPUT_DIR, name), optimize=True)
    print(("checked" if args.check else "wrote") + f" {len(files)} files" + (f", changed: {stale}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

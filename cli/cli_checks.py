"""generate.py's checks of single arguments (images from their header, numbers against the widgets' ranges, the
adapter, the output place): each a one-line error before any host starts."""
from __future__ import annotations

import os
import tempfile
from typing import List, Tuple

from ..model.errors import DynamiCrafterInputError
from ..model.limits import RANGES, check_image_file
from .graphs import UserError

OUT_FORMATS = {".mp4": "mp4", ".webp": "webp", ".gif": "gif"}
TINY_LABEL = ".tiny-random-weights"


def check_image(path: str, what: str):
    """The CLI's one check of an image argument, before any host starts: the file is there and readable, its header
    bounded, every frame decoded (model/limits.check_image_file) -> its ImageHeader (``.path`` absolute)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise UserError(f"{what}: {path} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{what}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what}: {path} cannot be read (permission denied)")
    hdr = check_image_file(path, what)
    if min(hdr.width, hdr.height) < 16:
        raise UserError(f"{what}: {path} is {hdr.width}x{hdr.height} px; use an image of at least 64x64")
    return hdr


def check_images(args, kind: str):
    """Every image argument through check_image -> (start path, later keyframe paths, end path or None); sizes that
    the graph would change silently are refused: an end image of another size than the start image (the
    conditioning refuses it after the model loads), later keyframes of different sizes (the host's ImageBatch crops
    and scales each to the first one's size before the pack sees them). (A chain too long for the frames: the plan's
    refusal, cli/request.py.)"""
    if kind == "tooncrafter" and args.frames is not None and args.frames < 4:
        raise UserError(f"--frames {args.frames} with --variant tooncrafter: expected at least 4 (its decoder "
                        "splices the middle frame); use 16, the trained length")
    start = check_image(args.image, "--image")
    later = [check_image(k, "--keyframes") for k in (args.keyframes or [])[1:]]
    end = check_image(args.end_image, "--end-image") if args.end_image else None
    if end is not None and (end.width, end.height) != (start.width, start.height):
        raise UserError(f"--end-image: {end.path} is {end.width}x{end.height} px, the start image "
                        f"{start.width}x{start.height}; give two images of one size (crop or resize one first)")
    for k in later[1:]:
        if (k.width, k.height) != (later[0].width, later[0].height):
            raise UserError(f"--keyframes: {k.path} is {k.width}x{k.height} px but {later[0].path} is "
                            f"{later[0].width}x{later[0].height}: ComfyUI's ImageBatch would crop and scale it to "
                            "that size before the pack sees it; give the keyframes after the first one size")
    return start.path, [k.path for k in later], end.path if end else None


# flag -> (argument name, RANGES key): the numbers checked (finite, in the widgets' range) before a host starts
NUMBER_FLAGS = {"--width": ("width", "width"), "--height": ("height", "height"), "--frames": ("frames", "frames"),
                "--steps": ("steps", "steps"), "--motion": ("motion", "motion"), "--cfg": ("cfg", "cfg"),
                "--cfg-image": ("cfg_image", "cfg"), "--eta": ("eta", "eta"),
                "--guidance-rescale": ("guidance_rescale", "guidance_rescale"), "--fps": ("fps", "fps"),
                "--crf": ("crf", "crf")}


def check_numbers(args) -> None:
    """Every number finite and within the range its widget takes, named by its flag (before any host starts)."""
    from ..model.guards import check_finite_number  # lazy: torch comes with it: loaded once a run is asked for (generate.py --help and its refusals stay fast)

    for flag, (name, key) in NUMBER_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        lo, hi = RANGES[key]
        check_finite_number(flag, value, lo, hi)
        if name in ("width", "height") and value and (value < 64 or value % 8):
            raise DynamiCrafterInputError(flag, "0 (the variant's own) or a multiple of 8 from 64 to 8192 px",
                                          str(value), "pick a size such as 512 or 320")


def check_adapter(value: str) -> Tuple[str, float]:
    """--adapter FILE[:strength] -> (absolute path, strength): an existing .safetensors file and a finite strength in
    DCN_ApplyAdapter's range (before any host starts; the node validates the tensors against the model)."""
    from ..model.guards import check_finite_number  # lazy: torch comes with it: loaded once a run is asked for (generate.py --help and its refusals stay fast)

    lo, hi = RANGES["adapter_strength"]
    path, strength = value, 1.0
    head, sep, tail = value.rpartition(":")
    # FILE:strength; a file whose name holds ':' and a drive letter ("C:\\...") stay paths
    if sep and head and not os.path.isfile(os.path.expanduser(value)) and not {"/", os.sep} & set(tail):
        path, strength = head, check_finite_number("--adapter strength", tail, lo, hi,
                                                   todo=f"give FILE or FILE:strength with a strength from {lo:g} "
                                                        f"to {hi:g} (1.0 = as trained, 0 = no change)")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise UserError(f"--adapter: {path} is not a file; give the trainer's adapter.safetensors "
                        "(output_dir/adapter.safetensors, see training/README.md)")
    if not path.endswith(".safetensors"):
        raise UserError(f"--adapter: {path} is not a .safetensors file; give the trainer's adapter.safetensors")
    return path, strength


def labelled_output(out: str, tiny: bool) -> str:
    if not tiny:
        return out
    stem, ext = os.path.splitext(out)
    return out if stem.endswith(TINY_LABEL) else stem + TINY_LABEL + ext


def check_output(out: str) -> Tuple[str, str]:
    """-> (absolute path, format). The folder is created when missing; a probe file proves it is writable."""
    path = os.path.abspath(os.path.expanduser(out))
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUT_FORMATS:
        raise UserError(f"--out {out}: the file name must end in one of {', '.join(OUT_FORMATS)} (it picks the format)")
    if os.path.isdir(path):
        raise UserError(f"--out {out}: is a folder; give a file name such as {os.path.join(out, 'video' + ext)}")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".generate-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write into {folder} ({e.strerror or e}); choose another place") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"--out {out}: the file exists and cannot be overwritten (permission denied)")
    return path, OUT_FORMATS[ext]


def check_sketches(specs, frames: int) -> List[Tuple[str, int]]:
    """--sketch FILE:FRAME ... -> [(absolute path, frame)]: each image through check_image, each frame a whole number
    within the video and given once, every sketch one size (ComfyUI's ImageBatch would crop and scale the later ones
    to the first one's size before the pack sees them)."""
    out, seen = [], {}
    for spec in specs or []:
        path, sep, frame = str(spec).rpartition(":")
        if not sep or not path or not frame.strip().isdigit():
            raise UserError(f"--sketch: expected FILE:FRAME (e.g. a.png:0), found {spec!r}; add the frame number the "
                            "sketch is for after a colon")
        index = int(frame)
        if index >= frames:
            raise UserError(f"--sketch {spec}: frame {index} is outside the video's {frames} frames (0 to "
                            f"{frames - 1}); use a frame below {frames} or more --frames")
        if index in seen:
            raise UserError(f"--sketch: frame {index} has two sketches ({seen[index]} and {path}); give one per frame")
        seen[index] = path
        out.append((check_image(path, "--sketch"), index))
    first = out[0][0] if out else None
    for hdr, _ in out[1:]:
        if (hdr.width, hdr.height) != (first.width, first.height):
            raise UserError(f"--sketch: {hdr.path} is {hdr.width}x{hdr.height} px but {first.path} is "
                            f"{first.width}x{first.height}: ComfyUI's ImageBatch would crop and scale it to that "
                            "size before the pack sees it; give the sketches one size")
    return [(hdr.path, index) for hdr, index in out]

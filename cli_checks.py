"""generate.py's checks of single arguments (images from their header, numbers against the widgets' ranges, the
adapter, the output place): each a one-line error before any host starts."""
from __future__ import annotations

import os
import tempfile
from typing import Tuple

if __package__:
    from .graphs import UserError
    from .model.errors import DynamiCrafterInputError
    from .model.limits import RANGES, check_image_file
else:  # generate.py run as a script has registered the package comfyui_dynamicrafter
    from graphs import UserError
    from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
    from comfyui_dynamicrafter.model.limits import RANGES, check_image_file

OUT_FORMATS = {".mp4": "mp4", ".webp": "webp", ".gif": "gif"}
TINY_LABEL = ".tiny-random-weights"


def check_image(path: str, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise UserError(f"{what}: {path} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{what}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what}: {path} cannot be read (permission denied)")
    # the header only: size x frames against the pixel limit and 16-bit greyscale (LoadImage whitens it), before any
    # pixel is decoded
    hdr = check_image_file(path, what)
    if min(hdr.width, hdr.height) < 16:
        raise UserError(f"{what}: {path} is {hdr.width}x{hdr.height} px; use an image of at least 64x64")
    return path


# flag -> (argument name, RANGES key): the numbers checked (finite, in the widgets' range) before a host starts
NUMBER_FLAGS = {"--width": ("width", "width"), "--height": ("height", "height"), "--frames": ("frames", "frames"),
                "--steps": ("steps", "steps"), "--motion": ("motion", "motion"), "--cfg": ("cfg", "cfg"),
                "--cfg-image": ("cfg_image", "cfg"), "--eta": ("eta", "eta"),
                "--guidance-rescale": ("guidance_rescale", "guidance_rescale"), "--fps": ("fps", "fps"),
                "--crf": ("crf", "crf")}


def check_numbers(args) -> None:
    """Every number finite and within the range its widget takes, named by its flag (before any host starts)."""
    if __package__:  # torch comes with it: imported once a run is asked for, not at import
        from .model.guards import check_finite_number
    else:
        from comfyui_dynamicrafter.model.guards import check_finite_number

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
    if __package__:
        from .model.guards import check_finite_number
    else:
        from comfyui_dynamicrafter.model.guards import check_finite_number

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

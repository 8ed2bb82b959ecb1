"""Inspect or convert DynamiCrafter checkpoints (safe loading only):

    python convert.py inspect model.ckpt                      # variant, reason, parts, dtypes
    python convert.py convert model.ckpt dynamicrafter_512.safetensors --variant 512 --dtype fp16
    python convert.py convert sketch_encoder.ckpt sketch_encoder.safetensors --dtype fp16   # ToonCrafter sketches

Registers the pack folder as the package ``comfyui_dynamicrafter`` (as train.py and generate.py do) and calls
``model/converter.py``. Exit status 0, or 2 with one line on stderr for a bad file or argument.
"""
import argparse
import os
import runpy
import sys
from typing import Optional, Sequence

if not __package__:  # run as a script: the pack folder as the package comfyui_dynamicrafter (stdlib only)
    __package__ = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli", "bootstrap.py"))[
        "register"]()

from .model import converter as conv  # noqa: E402 (after the registration above)
from .model.errors import DynamiCrafterInputError  # noqa: E402
from .model.sketch_io import convert_sketch_encoder, is_sketch_file  # noqa: E402
from .model.variants import variant_names  # noqa: E402

def main(argv: Optional[Sequence[str]] = None) -> int:
    names = variant_names()
    ap = argparse.ArgumentParser(prog="python convert.py",
                                 description="Inspect or convert DynamiCrafter checkpoints (safe loading only).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("inspect", help="show the detected variant and the parts of a checkpoint")
    pi.add_argument("path")
    pi.add_argument("--variant", default=None, help=f"one of {names} or auto")
    pc = sub.add_parser("convert", help="write a .safetensors with metadata (variant, source, parts)")
    pc.add_argument("src")
    pc.add_argument("dst")
    pc.add_argument("--variant", default=None, help=f"one of {names} or auto")
    pc.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    pc.add_argument("--parts", default="unet,image_proj", help=f"comma list of {list(conv.PARTS)} or 'all'")
    pc.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "convert" and is_sketch_file(args.src):  # ToonCrafter's sketch encoder (a ControlNet)
            path, n = convert_sketch_encoder(args.src, args.dst, args.dtype, args.overwrite)
            print(f"wrote {path}: ToonCrafter sketch encoder, {n} tensors ({args.dtype}); put it in models/controlnet")
        elif args.cmd == "inspect":
            info = conv.inspect_checkpoint(args.path, args.variant)
            print(f"{info.path}: {info.format}, family {info.detection.family}, variant {info.detection.variant} "
                  f"({info.detection.decided_by})")
            print(f"reason: {info.detection.reason}")
            print("parts: " + ", ".join(f"{p}={n}" for p, n in info.part_counts.items() if n))
            print(f"storage dtype: {info.storage_dtype}; metadata: {info.metadata or '{}'}")
            for note in info.notes:
                print(f"note: {note}")
        else:
            res = conv.convert_checkpoint(args.src, args.dst, args.variant, args.dtype, args.parts, args.overwrite)
            print(f"wrote {res.path}: {res.tensors} tensors, {res.bytes / 2**30:.2f} GiB, variant "
                  f"{res.detection.variant} ({res.detection.decided_by}); {res.detection.reason}")
    except DynamiCrafterInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

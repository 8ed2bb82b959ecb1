"""generate.py's step 1: the command line read into a checked ``Request``. What the video is (image, pair, keyframe
chain, loop; its frame count) is model/plan.py's ``plan_video``: the request carries its ``VideoPlan`` and picks the
shipped workflow that makes it; its refusals are reworded to name the flag. Then the room for the run, before any
host starts."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..model.errors import DynamiCrafterInputError
from ..model.fileio import check_free_space
from ..model.limits import available_memory, check_run_memory, estimate_run_bytes
from ..model.variants import get_variant
from .cli_checks import check_adapter, check_images, check_numbers, check_output, check_sketches, labelled_output
from .cli_flags import check_flags
from .graphs import ROOT, UserError
from .weights import MODEL_FILES, ModelFile

if TYPE_CHECKING:
    from ..model.plan import VideoPlan

EXAMPLE_START = os.path.join(ROOT, "workflows", "input", "dynamicrafter_example_start.png")
EXAMPLE_END = os.path.join(ROOT, "workflows", "input", "dynamicrafter_example_end.png")
EXAMPLE_PROMPT = "a small sailboat drifting on gentle waves at sunset, the sun glowing above the sea"
DEFAULT_VARIANT = "512"          # image to video; "512-interp" for a pair or a chain (the model made for them)


@dataclasses.dataclass
class Request:
    """What the command line asks for, checked: the workflow kind, the variant, the video's plan, readable images, a
    writable output."""
    kind: str                        # a WORKFLOWS key
    variant: str
    plan: "VideoPlan"                # model/plan.py: what the video is, its frames
    image: Optional[str] = None      # absolute paths (None with --download-only)
    end_image: Optional[str] = None
    keyframes: List[str] = dataclasses.field(default_factory=list)   # after the start image
    out_path: Optional[str] = None
    fmt: Optional[str] = None
    adapter: Optional[str] = None    # --adapter: absolute path of the file, and its strength
    adapter_strength: float = 1.0
    sketches: List[Tuple[str, int]] = dataclasses.field(default_factory=list)   # --sketch: (absolute path, frame)

    @property
    def model_file(self) -> ModelFile:
        return MODEL_FILES[self.variant]


def plan_request(args) -> "VideoPlan":
    """The VideoPlan of the arguments (model/plan.py decides and refuses); its refusals name the flag. The variant's
    trained length is the window; without --variant the CLI picks the model the plan is made for (so no refusal of
    a long loop for the 512-interp model it would not pick)."""
    from ..model.plan import plan_video  # lazy: torch comes with it (model/windows.py): --help and the flag refusals stay fast
    from ..model.windows import MAX_FRAMES, chain_frames  # lazy: as above

    window = get_variant(args.variant or DEFAULT_VARIANT).frames
    n = len(args.keyframes or [])
    try:
        plan, _notes = plan_video(args.frames or window, window, end_image=bool(args.end_image), keyframes=n,
                                  loop=bool(args.loop), interp=bool(args.variant and get_variant(args.variant).interp),
                                  name=args.variant or DEFAULT_VARIANT)
    except DynamiCrafterInputError as e:
        if e.what != "keyframes":
            raise DynamiCrafterInputError(f"--{e.what}", e.expected, e.found, e.todo) from None
        most = max(k for k in range(2, n) if chain_frames(k, window, bool(args.loop)) <= MAX_FRAMES)
        raise UserError(f"--keyframes: expected at most {most} images (a chain of at most {MAX_FRAMES} frames), found "
                        f"{n} = {chain_frames(n, window, bool(args.loop))} frames; use fewer keyframes") from None
    if plan.has_end and plan.frames > plan.window:
        raise UserError(f"--end-image with --frames {plan.frames}: interpolation covers at most {plan.window} frames; "
                        "use --keyframes for longer interpolation")
    return plan


def workflow_kind(args, plan: "VideoPlan") -> str:
    """The shipped workflow (a WORKFLOWS key) that makes the plan with the flags given."""
    if plan.kind == "chain":
        kind = "keyframes"
    elif plan.kind == "pair":
        kind = "loop" if plan.loop else "interpolation"
    elif plan.frames > plan.window:            # sampled in context windows
        kind = "long_loop" if plan.loop_windows else "long_video"
    else:
        kind = "image_to_video"
    if args.variant == "tooncrafter" or args.sketch:                     # its own workflow: the ToonCrafter decode
        if kind != "interpolation" and not (args.download_only and kind == "image_to_video"):
            raise UserError(f"{'--sketch' if args.sketch else '--variant tooncrafter'}: ToonCrafter interpolates "
                            "between two frames: give --image and --end-image (no --loop, --keyframes or --frames over "
                            f"{plan.window})")
        kind = "tooncrafter_sketch" if args.sketch else "tooncrafter"
    if args.adapter is not None:
        if kind != "image_to_video":
            raise UserError(f"--adapter: the adapter workflow is image to video (up to {plan.window} frames, one start "
                            "image); leave out --end-image, --loop, --keyframes and --variant tooncrafter")
        kind = "adapter"
    return kind


def _demo_inputs(args) -> None:
    """--demo: the example image, prompt and output name where none are given."""
    if args.demo:
        args.image = args.image or EXAMPLE_START
        args.prompt = args.prompt or EXAMPLE_PROMPT
        args.out = args.out or "demo.mp4"


def read_request(args) -> Request:
    """Step 1: the arguments, with --demo's defaults; images and the output place checked before anything heavy."""
    _demo_inputs(args)
    check_flags(args)
    if args.keyframes:
        if len(args.keyframes) < 2:
            raise UserError(f"--keyframes: expected at least 2 images, found {len(args.keyframes)}; give the start "
                            "image and at least one more")
        if args.image or args.end_image:
            raise UserError("--keyframes: the first keyframe is the start image; leave out --image / --end-image")
        args.image = args.keyframes[0]
    plan = plan_request(args)
    kind = workflow_kind(args, plan)
    variant = args.variant or ("tooncrafter" if args.sketch else
                               "512-interp" if plan.kind in ("pair", "chain") else DEFAULT_VARIANT)
    req = Request(kind, variant, plan)
    if args.download_only:
        return req
    missing = [f"--{n}" for n in ("image", "prompt", "out") if getattr(args, n) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (python generate.py --help)")
    check_numbers(args)
    if args.adapter is not None:
        req.adapter, req.adapter_strength = check_adapter(args.adapter)
    if args.ckpt and os.path.dirname(args.ckpt) and not os.path.isfile(os.path.expanduser(args.ckpt)):
        raise UserError(f"--ckpt: {os.path.abspath(os.path.expanduser(args.ckpt))} is not a file (give a file "
                        "name from the model folders or the path of a checkpoint)")
    req.image, req.keyframes, req.end_image = check_images(args, kind)
    req.sketches = check_sketches(args.sketch, plan.frames)
    req.out_path, req.fmt = check_output(labelled_output(args.out, args.tiny))
    return req


def planned_size(args, variant: str, tiny: bool) -> Tuple[int, int, int]:
    """(width, height, frames) the run will use: the arguments, else the variant's (or the tiny check's) own."""
    v = get_variant(variant)
    w, h = v.tiny_size if tiny else (v.width, v.height)
    return args.width or w, args.height or h, args.frames or v.frames


def check_room(args, req: Request, cpu: bool) -> None:
    """Before the host starts: the run's activations against the device's memory (a lower bound), and the output's
    folder against a (small) estimate of the video's size."""
    w, h, frames = planned_size(args, req.variant, args.tiny)
    unet = get_variant(req.variant, tiny="tiny" if args.tiny else False).unet
    have, label = available_memory("cpu" if cpu else "cuda")
    check_run_memory(estimate_run_bytes(unet, w, h, frames, branches=3, dtype_bytes=2), have, label,
                     f"{w}x{h} x {frames} frames", what="--width/--height/--frames")
    # H.264 / WebP / GIF of this many pixels take at least about 1/200 byte per pixel (+ headers): far below the
    # real size, so a refusal here is certain, and the final move checks the real size again
    need = 1024 + w * h * frames // 200
    check_free_space(os.path.dirname(req.out_path), need, "--out")
    check_free_space(tempfile.gettempdir(), need, "TMPDIR (the host's input and output folders of this run)")

"""generate.py's rule for its flags: every flag given is used by the graph it builds (or by the run: weights, host,
device), or the run is refused before any host starts, in one line naming the flag that would be ignored and the
flag it would be ignored with. One table: a new flag that some other flag makes pointless is one more entry."""
from __future__ import annotations

from typing import Callable, List, NamedTuple

from .graphs import UserError

# Flags whose values go into the graph (workflow, node inputs, input images); the rest are used by the run itself.
GRAPH_FLAGS = ("--image", "--end-image", "--keyframes", "--loop", "--prompt", "--negative", "--out", "--variant",
               "--frames", "--steps", "--seed", "--cfg", "--cfg-image", "--eta", "--guidance-rescale", "--motion",
               "--fps", "--crf", "--width", "--height", "--adapter", "--sketch")
RUN_FLAGS = {"--tiny": "the tiny random-weight checkpoint instead of the real one",
             "--demo": "the example inputs where none are given; the real model when it can run, else the tiny check",
             "--ckpt": "which checkpoint file the loader picks",
             "--no-download": "no download of a missing checkpoint",
             "--download-only": "only the checkpoint download",
             "--models-dir": "an extra model folder, searched first and listed by the loader",
             "--comfyui": "which ComfyUI runs the graph",
             "--cpu": "the device",
             "--cache-dir": "where the tiny checkpoint is kept (--tiny, or the demo's fallback)"}


def given(args, flag: str) -> bool:
    """The flag was given on the command line (defaults are None / False, filled in later by generate.py)."""
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    return value is not None and value is not False


def _out_ext(args) -> str:
    return (args.out or "").rsplit(".", 1)[-1].lower() if "." in (args.out or "") else ""


class Ignored(NamedTuple):
    flag: str                        # the flag that would have no effect ...
    other: str                       # ... with this one (as the message names it)
    when: Callable[[object], bool]   # the other flag's condition, given ``args`` (the flag itself is given)
    why: str                         # why, and what to do


# Checked in this order: --download-only first (it ignores everything), then --sketch (it needs ToonCrafter's pair).
IGNORED: List[Ignored] = [
    Ignored(f, "--download-only", lambda a: given(a, "--download-only"),
            "--download-only fetches the weights and stops; run again without it to make a video")
    for f in GRAPH_FLAGS + ("--tiny", "--demo", "--no-download", "--cpu", "--cache-dir") if f != "--variant"
] + [
    Ignored("--sketch", other, lambda a, o=other: given(a, o),
            "sketch guidance is for ToonCrafter's start -> end interpolation; give --image, --end-image and --sketch")
    for other in ("--loop", "--keyframes", "--adapter")
] + [
    Ignored("--sketch", "--variant (not tooncrafter)", lambda a: given(a, "--variant") and a.variant != "tooncrafter",
            "sketch guidance needs ToonCrafter's sketch encoder; use --variant tooncrafter or leave out --variant"),
    Ignored("--end-image", "--loop", lambda a: given(a, "--loop"),
            "a loop ends on the start image; for start -> end -> start use --keyframes a.png b.png --loop"),
    Ignored("--frames", "--keyframes", lambda a: given(a, "--keyframes"),
            "a keyframe chain sets its own length, (N-1)*15+1 frames (N*15 with --loop); leave out --frames"),
    Ignored("--ckpt", "--tiny", lambda a: given(a, "--tiny"),
            "--tiny runs its own random-weight checkpoint; leave out one of them"),
    Ignored("--no-download", "--tiny", lambda a: given(a, "--tiny"), "--tiny downloads nothing; leave out --no-download"),
    Ignored("--crf", "--out *.gif", lambda a: _out_ext(a) == "gif",
            "a GIF has no quality setting (crf is H.264's; .webp uses quality 100 - crf); leave out --crf"),
]


def check_flags(args) -> None:
    """Refuse the first flag that the run would ignore, naming it and the flag it is ignored with."""
    for rule in IGNORED:
        if given(args, rule.flag) and rule.when(args):
            raise UserError(f"{rule.flag} is ignored with {rule.other}: {rule.why}")

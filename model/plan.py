"""What a video is: one frozen ``VideoPlan``, made by one pure function (``plan_video``) from the frame count, the
images given, the keyframes and the loop switch. The conditioning node builds it and attaches it to the conditioning;
windows, the host model, the samplers and generate.py read its fields; nothing derives the mode a second time.

Kinds (the concat latent's layout, model/conditioning.py and model/windows.py):
- ``image``: the start image on every frame (image-to-video; a long video samples in context windows; ``loop``
  there means the windows wrap around);
- ``pair``: the start image on frame 0, the end image (the start image again for a loop) on frame T-1, zeros between
  (interpolation, at most the trained length);
- ``chain``: keyframe k on frame k(W-1), zeros between: 16-frame interpolations sharing their boundary frames,
  closed back to the start image with ``loop``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .errors import DynamiCrafterInputError
from .log import logger
from .windows import MAX_FRAMES, WindowSpec, chain_frames, chain_spec, check_window_conditioning

KINDS = ("image", "pair", "chain")


@dataclass(frozen=True)
class VideoPlan:
    """The frames of a video and which frames carry which image; the windows it samples in."""

    kind: str                  # one of KINDS
    frames: int                # frames of the video (of the window, for ``for_window``)
    window: int = 16           # the model's trained length (P's frames)
    keyframes: int = 0         # images of a chain, the start image included (0 for image / pair)
    loop: bool = False         # ends on the start image (pair, chain) or windows wrap around (image)

    @property
    def loop_windows(self) -> bool:
        """The windows wrap around: a closed chain, or a loop longer than the window (image kind)."""
        return self.loop and (self.kind == "chain" or (self.kind == "image" and self.frames > self.window))

    @property
    def has_end(self) -> bool:
        """The last frame carries an image (a start/end pair or a loop over one window)."""
        return self.kind == "pair"

    def check_window(self, index_list) -> None:
        """Refuse a window whose frames would see the wrong conditioning (model/windows.py)."""
        check_window_conditioning(self.kind, self.frames, index_list, self.keyframes, self.loop_windows)

    def windows(self, spec: Optional[WindowSpec]) -> Optional[WindowSpec]:
        """The windows a run uses: a chain's own segments; a long loop's looped windows; else ``spec`` or, over the
        trained length, the default windows (with a note)."""
        if self.kind == "chain":
            own = chain_spec(self.window, self.loop_windows, spec.fuse if spec else "pyramid",
                             spec.max_windows_per_call if spec else 1)
            if spec is not None and (spec.length, spec.overlap) != (own.length, own.overlap):
                logger.info("keyframe chain: its own windows (%d frames, overlap 1, one per segment) replace the "
                            "DCN_Windows settings", self.window)
            return own
        if self.frames <= (spec.length if spec else self.window):
            return spec
        if self.kind == "pair":
            raise DynamiCrafterInputError(
                "frames", f"at most {spec.length if spec else self.window} frames for start/end-image interpolation",
                str(self.frames), "use keyframes (an IMAGE batch) for longer interpolation, or fewer frames")
        if spec is None:
            spec = WindowSpec()
            logger.info("%d frames: sampled in %d-frame context windows (overlap %d, %s, %s); DCN_Windows changes it",
                        self.frames, spec.length, spec.overlap, spec.schedule, spec.fuse)
        if self.loop_windows and not spec.schedule.startswith("looped"):
            spec = WindowSpec(spec.length, spec.overlap, "looped_static", spec.fuse, spec.max_windows_per_call,
                              spec.freenoise)
            logger.info("loop: windows wrap around (looped_static)")
        spec.check(self.frames, self.window)
        return spec


def _chain(frames: int, window: int, keyframes: int, loop: bool, interp: bool, name: str,
           notes: List[str]) -> VideoPlan:
    chained = chain_frames(keyframes, window, loop)
    if frames != chained:
        notes.append(f"{keyframes} keyframes ({'closed loop, ' if loop else ''}{window}-frame segments sharing their "
                     f"boundary frame): {chained} frames (the frames widget's {frames} is not used)")
    if chained > MAX_FRAMES:
        raise DynamiCrafterInputError("keyframes", f"a chain of at most {MAX_FRAMES} frames "
                                      f"({(MAX_FRAMES - 1) // (window - 1) + 1} keyframes)",
                                      f"{keyframes} keyframes = {chained} frames", "use fewer keyframes")
    if not interp:
        notes.append(f"keyframe chain with the {name} model (trained for image-to-video); the 512-interp model is "
                     "made for it")
    return VideoPlan("chain", chained, window, keyframes, loop)


def _frame_notes(plan: VideoPlan, interp: bool, name: str, notes: List[str]) -> None:
    if plan.kind == "pair" and not interp:
        notes.append(f"interpolation/loop with the {name} model (trained for image-to-video); the 512-interp model "
                     "is made for it")
    if plan.frames > plan.window:
        notes.append(f"{plan.frames} frames: DCN_Sampler samples them in {plan.window}-frame context windows "
                     "(DCN_Windows sets them), as does the host's Context Windows (Manual) node; other samplers run "
                     f"all frames in one pass with the image tokens made for {plan.window} frames shared (off the "
                     "trained setting)")
    elif plan.frames != plan.window:
        notes.append(f"{plan.frames} frames: the image tokens are made for {plan.window} frames and are shared by "
                     "all frames (as the reference does)")


def plan_video(frames: int, window: int, *, end_image: bool = False, keyframes: int = 0, loop: bool = False,
               interp: bool = True, name: str = "512-interp") -> Tuple[VideoPlan, List[str]]:
    """The VideoPlan of a request, and the notes on what was changed or ignored; a request that cannot be made is
    refused in one line. ``keyframes``: images of a chain with the start image (0: none); ``interp``/``name``: the
    model's (its trained task, for the notes)."""
    if not 2 <= frames <= MAX_FRAMES:
        raise DynamiCrafterInputError("frames", f"2 to {MAX_FRAMES}", str(frames), "use 16 (the trained length) or "
                                      "more with context windows")
    notes: List[str] = []
    if loop and end_image:
        notes.append("loop is on: the end image is ignored, the video ends on the start image")
    if keyframes:
        if end_image and not loop:
            notes.append("keyframes are connected: the end image is ignored (the chain ends on the last keyframe)")
        plan = _chain(frames, window, keyframes, loop, interp, name, notes)
    elif loop and frames > window:
        if interp:
            raise DynamiCrafterInputError(
                "loop", f"at most {window} frames with the {name} model's start/end loop", f"{frames} frames",
                "connect keyframes (a closed chain) or use the 512 image-to-video model, whose long loops wrap the "
                "context windows around")
        notes.append(f"loop over {frames} frames: the start image conditions every frame and the context windows "
                     "wrap around (the last frame leads into the first)")
        plan = VideoPlan("image", frames, window, 0, True)
    elif loop or end_image:
        plan = VideoPlan("pair", frames, window, 0, loop)
    else:
        plan = VideoPlan("image", frames, window)
    _frame_notes(plan, interp, name, notes)
    return plan, notes


def for_frames(plan: Optional[VideoPlan], frames: int, window: int = 16) -> VideoPlan:
    """The plan of a conditioning for a video of ``frames`` frames (image-to-video when there is none)."""
    if plan is None:
        return VideoPlan("image", frames, window)
    return plan if plan.frames == frames else dataclasses.replace(plan, frames=frames)

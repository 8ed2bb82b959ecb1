"""Context windows for videos longer than the trained length: a pure planner (index lists + fusion weights), FreeNoise,
and the per-window conditioning math of long image-to-video, keyframe chains and loops.

A plan covers T frames with windows of exactly W frames (the variant's trained length, 16), consecutive windows
sharing ``overlap`` frames. Each denoiser output is fused frame by frame as ``sum_w weight_w(f) * out_w(f)`` with the
weights of every frame summing to 1 (ComfyUI's ``comfy/context_windows.py`` accumulates raw weights and divides by
their sum per frame: the same numbers). Names follow that host:

schedules
  standard_static   windows start at 0, W-overlap, 2(W-overlap), ...; the last one is shifted back to end on frame T-1
                    (never shortened), so the tail always gets a full window.
  standard_uniform  as static, but every sampling step shifts the window joins by a phase from the "ordered halving"
                    sequence (0, 1/2, 1/4, 3/4, ... of the stride), so seams fall on different frames each step; a
                    window [0, W) keeps the head covered and the last window is shifted back as above.
  looped_static     closed loop: windows wrap around (frame T-1 is followed by frame 0) and the joint T-1 -> 0 is
                    overlapped like any other. Not a host schedule (the host's looped_uniform always shifts).
  looped_uniform    closed loop with the per-step shift of standard_uniform.
fusion weights (raw, per window position; normalised per frame afterwards)
  flat              1 everywhere (plain average).
  pyramid           1, 2, ..., W/2, W/2, ..., 1: frames near a window's centre count most (FreeNoise's weighting).
  overlap-linear    1, with a linear ramp over the first / last ``overlap`` frames of a window that has a neighbour
                    on that side (a window at the start or end of a non-looped video keeps weight 1 there).

Keyframe chains: N keyframes -> N-1 segments of W frames, consecutive segments sharing their boundary frame, so the
video has (N-1)(W-1)+1 frames (closed: N segments, the last back to keyframe 0, N(W-1) frames). That is exactly a
``standard_static`` (or ``looped_static``) plan with overlap 1, whose windows are the segments; the full-length concat
latent holds keyframe k on frame k(W-1) and zeros elsewhere, so slicing it by a window's index list gives that
segment's own interpolation conditioning (start latent first, end latent last).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .errors import DynamiCrafterInputError
from .limits import MAX_FRAMES  # noqa: F401 (the frame limit, stated once; re-exported for nodes/ and plan.py)
from .log import logger

SCHEDULES = ("standard_static", "standard_uniform", "looped_static", "looped_uniform")
FUSE_METHODS = ("pyramid", "flat", "overlap-linear")


# ----------------------------------------------------------------------------------------------------------------
# planner
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowPlan:
    """Windows over ``frames`` frames: ``windows[i]`` the frame indices of window i (length W, looped plans wrap),
    ``weights`` [n_windows, W] float64 fusion weights, normalised so the weights of each frame sum to 1."""

    frames: int
    length: int
    overlap: int
    schedule: str
    fuse: str
    windows: Tuple[Tuple[int, ...], ...]
    weights: torch.Tensor

    @property
    def single(self) -> bool:
        """True when one window covers the whole video in order (sampling is then the unwindowed one)."""
        return len(self.windows) == 1 and self.windows[0] == tuple(range(self.frames))

    def frame_weight_sums(self) -> torch.Tensor:
        """Sum of the normalised weights of every frame ([frames], all 1 for a valid plan)."""
        s = torch.zeros(self.frames, dtype=torch.float64)
        for idx, w in zip(self.windows, self.weights):
            s.index_add_(0, torch.tensor(idx), w)
        return s


def ordered_halving(step: int) -> float:
    """The bit-reversed fraction of ``step`` (0, 1/2, 1/4, 3/4, 1/8, ...): the per-step phase of uniform schedules."""
    return int(f"{int(step):064b}"[::-1], 2) / float(1 << 64)


def check_window_settings(frames: int, length: int, overlap: int, schedule: str, fuse: str) -> None:
    """One-line errors for impossible settings (before any heavy work)."""
    if not isinstance(frames, int) or frames < 1 or frames > MAX_FRAMES:
        raise DynamiCrafterInputError("frames", f"1 to {MAX_FRAMES}", repr(frames), f"use at most {MAX_FRAMES} frames")
    if not isinstance(length, int) or length < 2:
        raise DynamiCrafterInputError("context window length", "at least 2 frames (16 = the trained length)",
                                      repr(length), "use 16")
    if not isinstance(overlap, int) or overlap < 0 or overlap >= length:
        raise DynamiCrafterInputError("context window overlap", f"0 to {length - 1} (less than the window)",
                                      repr(overlap), "use about a quarter of the window, e.g. 4 for 16")
    if schedule not in SCHEDULES:
        raise DynamiCrafterInputError("context schedule", f"one of {list(SCHEDULES)}", repr(schedule),
                                      "pick one of the listed schedules")
    if fuse not in FUSE_METHODS:
        raise DynamiCrafterInputError("context fuse method", f"one of {list(FUSE_METHODS)}", repr(fuse),
                                      "pick one of the listed methods")


def _starts(frames: int, length: int, stride: int, schedule: str, step: int) -> List[int]:
    looped = schedule.startswith("looped")
    phase = int(ordered_halving(step) * stride) if schedule.endswith("uniform") else 0
    if looped:
        return [(phase + j * stride) % frames for j in range(math.ceil(frames / stride))]
    last = frames - length
    starts = [0] if phase > 0 else []
    s = phase
    while s < last:
        starts.append(s)
        s += stride
    starts.append(last)                                                    # the tail window, shifted back
    out: List[int] = []
    for s in starts:
        if s not in out:
            out.append(s)
    return out


def _raw_weights(fuse: str, length: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    if fuse == "flat":
        return torch.ones(length, dtype=torch.float64)
    if fuse == "pyramid":
        half = (length + 1) // 2
        ramp = list(range(1, half + 1))
        seq = ramp + ramp[::-1][length % 2:]                               # 1..W/2, W/2..1 (odd: one centre)
        return torch.tensor(seq, dtype=torch.float64)
    w = torch.ones(length, dtype=torch.float64)                            # overlap-linear
    if overlap > 0:
        ramp = torch.linspace(1e-37, 1.0, overlap, dtype=torch.float64)
        if left:
            w[:overlap] = ramp
        if right:
            w[length - overlap:] = ramp.flip(0)
    return w


def plan_windows(frames: int, length: int = 16, overlap: int = 4, schedule: str = "standard_static",
                 fuse: str = "pyramid", step: int = 0) -> WindowPlan:
    """Index lists and normalised fusion weights of the windows of one sampling step (module docstring).

    ``frames <= length`` gives one window over all frames (weights 1) whatever the schedule.
    """
    check_window_settings(frames, length, overlap, schedule, fuse)
    if frames <= length:
        return WindowPlan(frames, frames, 0, schedule, fuse, (tuple(range(frames)),),
                          torch.ones(1, frames, dtype=torch.float64))
    stride = length - overlap
    looped = schedule.startswith("looped")
    windows = tuple(tuple((s + i) % frames for i in range(length))
                    for s in _starts(frames, length, stride, schedule, step))
    raw = torch.stack([_raw_weights(fuse, length, overlap, left=looped or idx[0] != 0,
                                    right=looped or idx[-1] != frames - 1) for idx in windows])
    total = torch.zeros(frames, dtype=torch.float64)
    for idx, w in zip(windows, raw):
        total.index_add_(0, torch.tensor(idx), w)
    weights = torch.stack([w / total[list(idx)] for idx, w in zip(windows, raw)])
    return WindowPlan(frames, length, overlap, schedule, fuse, windows, weights)


@dataclass(frozen=True)
class WindowSpec:
    """Settings of windowed sampling: the planner's arguments, ``max_windows_per_call`` (windows evaluated in ONE
    denoiser call; 0 = all; each costs the memory of one W-frame step) and ``freenoise`` (``freenoise_noise``)."""

    length: int = 16
    overlap: int = 4
    schedule: str = "standard_static"
    fuse: str = "pyramid"
    max_windows_per_call: int = 1
    freenoise: bool = False

    def plan(self, frames: int, step: int = 0) -> WindowPlan:
        return plan_windows(frames, self.length, self.overlap, self.schedule, self.fuse, step)

    def check(self, frames: int, trained_length: Optional[int] = None) -> None:
        """One-line errors for bad settings; a note when the window is not the model's trained length."""
        check_window_settings(frames, self.length, self.overlap, self.schedule, self.fuse)
        if not isinstance(self.max_windows_per_call, int) or self.max_windows_per_call < 0:
            raise DynamiCrafterInputError("max_windows_per_call", "0 (all windows in one call) or more",
                                          repr(self.max_windows_per_call), "use 1 for the least memory")
        if trained_length is not None and self.length != trained_length and frames > self.length:
            logger.warning("context windows of %d frames: the model is trained on %d; the image tokens are then "
                           "shared by all frames of a window and motion quality drops", self.length, trained_length)


# ----------------------------------------------------------------------------------------------------------------
# FreeNoise
# ----------------------------------------------------------------------------------------------------------------
def freenoise_noise(noise: torch.Tensor, length: int, overlap: int, seed: int, dim: int = 2) -> torch.Tensor:
    """FreeNoise noise rescheduling (Qiu et al. 2023, "FreeNoise: Tuning-Free Longer Video Diffusion via Noise
    Rescheduling", sec. 3.2): the frames after the first window are filled, one stride at a time, with shuffled
    copies of the noise ``length`` frames earlier, so every window sees a permutation of the first window's noise.
    The shuffles come from a CPU generator seeded with ``seed`` (the same rule as ComfyUI's context-window FreeNoise).
    Returns a new tensor; ``noise`` is not modified."""
    out = noise.clone()
    frames = out.shape[dim]
    stride = length - overlap
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    for start in range(0, max(0, frames - length), stride):
        place = start + length
        n = min(stride, frames - place)
        if n <= 0:
            break
        src = torch.randperm(n, generator=gen) + start
        out.narrow(dim, place, n).copy_(out.index_select(dim, src.to(out.device)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# conditioning of long videos
# ----------------------------------------------------------------------------------------------------------------
def chain_frames(keyframes: int, length: int = 16, loop: bool = False) -> int:
    """Frames of a keyframe chain: (N-1)(W-1)+1, or N(W-1) closed back to the first keyframe."""
    if keyframes < 2:
        raise DynamiCrafterInputError("keyframes", "at least 2 images for a chain", str(keyframes),
                                      "connect an IMAGE batch with one image per keyframe")
    if length < 2:
        raise DynamiCrafterInputError("context window length", "at least 2 frames", repr(length), "use 16")
    return keyframes * (length - 1) if loop else (keyframes - 1) * (length - 1) + 1


def chain_spec(length: int = 16, loop: bool = False, fuse: str = "pyramid",
               max_windows_per_call: int = 1) -> WindowSpec:
    """The windows of a keyframe chain: one per segment (static, overlap 1; looped when closed)."""
    return WindowSpec(length, 1, "looped_static" if loop else "standard_static", fuse, max_windows_per_call)


def keyframe_positions(keyframes: int, length: int = 16, loop: bool = False) -> List[int]:
    """Frame index of every keyframe in the chain (k (W-1))."""
    chain_frames(keyframes, length, loop)
    return [k * (length - 1) for k in range(keyframes)]


def keyframe_concat(latents: torch.Tensor, length: int = 16, loop: bool = False) -> torch.Tensor:
    """Full-length concat latent of a chain: latents [N, C, h, w] -> [T, C, h, w] with keyframe k on frame k(W-1),
    zeros between. A segment window's slice is then [start, 0, ..., 0, end], the interpolation conditioning."""
    n = latents.shape[0]
    frames = chain_frames(n, length, loop)
    out = latents.new_zeros((frames,) + tuple(latents.shape[1:]))
    out[torch.tensor(keyframe_positions(n, length, loop))] = latents
    return out


def check_chain_windows(plan: WindowPlan, keyframes: int, loop: bool = False) -> None:
    """Refuse a plan whose windows are not the chain's segments (a window between keyframes would see no image)."""
    pos = keyframe_positions(keyframes, plan.length, loop)
    frames = chain_frames(keyframes, plan.length, loop)
    segments = {tuple((p + i) % frames for i in range(plan.length)) for p in (pos if loop else pos[:-1])}
    if plan.frames != frames or set(plan.windows) != segments:
        raise DynamiCrafterInputError(
            "keyframe chain windows", f"{len(segments)} windows of {plan.length} frames from keyframe to keyframe "
            f"over {frames} frames (overlap 1, static schedule)",
            f"{len(plan.windows)} windows {[(w[0], w[-1]) for w in plan.windows][:4]} over {plan.frames} frames",
            "use the chain's own windows (static schedule, overlap 1, window = the segment length)")


def window_slice(full: torch.Tensor, index_list: Sequence[int], dim: int) -> torch.Tensor:
    """``full`` restricted to a window's frames along ``dim`` (a copy, in window order; wraps as the list does)."""
    return full.index_select(dim, torch.tensor(list(index_list), device=full.device))


def window_image_tokens(tokens: torch.Tensor, length: int, video_length: int = 16) -> torch.Tensor:
    """Image tokens for a window: P's ``video_length`` x 16 tokens are made for ``video_length`` frames, so a window of
    that length reuses them unchanged (per-frame tokens in the UNet); any other length gets the same tokens, which
    the UNet then shares by all frames of the window (off-distribution, as the reference does for T != 16)."""
    if length != video_length:
        logger.info("window of %d frames: the %d image tokens are shared by all its frames (made for %d frames)",
                    length, tokens.shape[-2], video_length)
    return tokens


CONCAT_KINDS = ("image", "pair", "chain")


def check_window_conditioning(kind: str, frames: int, index_list: Sequence[int], keyframes: int = 0,
                              loop: bool = False) -> None:
    """Refuse a window that would run with the wrong conditioning (one line, before the UNet runs).

    kind "image": the start image on every frame (image-to-video), any window is right. "pair": a start (and end)
    image only on the first / last frame, right only for a window over the whole video. "chain": keyframes every
    W-1 frames, right only for a window from one keyframe to the next (``keyframe_concat``)."""
    idx = tuple(int(i) for i in index_list)
    if kind == "image" or idx == tuple(range(frames)):
        return
    if kind == "pair":
        raise DynamiCrafterInputError(
            "context window", f"one window over all {frames} frames for start/end-image interpolation",
            f"a window of {len(idx)} frames ({idx[0]}..{idx[-1]}) that sees neither image",
            f"use keyframes (a chain of (N-1)*{len(idx) - 1}+1 frames) or at most {len(idx)} frames")
    if kind == "chain":
        seg = len(idx) - 1
        ok = (seg > 0 and idx[0] % seg == 0 and frames == chain_frames(keyframes, len(idx), loop)
              and idx == tuple((idx[0] + i) % frames for i in range(len(idx)))
              and (loop or idx[0] + seg < frames))                         # an open chain never wraps
        if not ok:
            raise DynamiCrafterInputError(
                "context window", f"a window from one keyframe to the next (frames k*{seg} .. k*{seg}+{seg}) of "
                f"the {frames}-frame keyframe chain", f"a window {idx[0]}..{idx[-1]} of {len(idx)} frames",
                "use the chain's windows: length = the segment length, overlap 1, static schedule")
        return
    raise DynamiCrafterInputError("conditioning kind", f"one of {list(CONCAT_KINDS)}", repr(kind),
                                  "rebuild the conditioning with DCN_Conditioning")

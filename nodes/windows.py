"""Context windows in the host: the DCN_Windows options node, and per-window conditioning of our MODEL under the host's
own context windows (``ContextWindowsManual``, dim 0: frames as batch).

One implementation slices our conditioning for a window (``window_cond``): the concat latent's rows by the window's
index list, the frame count set to the window's length, the image tokens and text unchanged (a 16-frame window reuses
P's 256 tokens, one per frame), and the conditioning layout checked (``model.windows.check_window_conditioning``)
so a window never runs with the wrong concat. Hosts call it through
- ``IndexListCallbacks.RESIZE_COND_ITEM`` (ComfyUI 2026-01 and later), registered on the context handler when sampling
  starts (an ON_PRE_RUN callback on our ModelPatcher);
- ``DynamiCrafterModel.apply_model`` for hosts without that callback (2025-10 does not slice model conds on dim 0):
  the concat stays full-length through the host (``FrameConcat`` is never truncated to a window's batch) and is
  sliced there by ``transformer_options["context_window"].index_list``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

import comfy.conds

from ..model.errors import DynamiCrafterInputError
from . import compat
from ..model.plan import VideoPlan, for_frames
from ..model.windows import FUSE_METHODS, MAX_FRAMES, SCHEDULES, WindowSpec
from .widgets import widget_problem

LAYOUT_KEY = "dcn_layout"
WINDOWED_KEYS = ("c_concat", "dcn_frames", LAYOUT_KEY)


class FrameConcat(comfy.conds.CONDNoiseShape):
    """The concat latent over all T frames. A window's batch (fewer rows than T) keeps all T rows, so the model
    slices the window's own frames (``window_cond``) instead of the host truncating to the first frames."""

    def process_cond(self, batch_size, area=None, **kwargs):
        rows = self.cond.shape[0]
        if 1 < batch_size < rows:
            data = self.cond
            if area is not None:
                dims = len(area) // 2
                for i in range(dims):
                    data = data.narrow(i + 2, area[i + dims], area[i])
            return self._copy_with(data)
        return super().process_cond(batch_size, area=area, **kwargs)


class Layout(comfy.conds.CONDConstant):
    """The conditioning's VideoPlan (model/plan.py): what a window must look like (``VideoPlan.check_window``)."""


def layout_of(info: dict, frames: int) -> VideoPlan:
    """The VideoPlan of a conditioning record (DCN_Conditioning's) for a video of ``frames`` frames."""
    return for_frames(info.get("plan"), int(frames))


def retained_rows(index_list: Sequence[int], retain: Sequence[int], layout: VideoPlan) -> list:
    """The concat rows of a window under the host's ``cond_retain_index_list`` (ComfyUI v0.33): window position r
    takes frame r's rows instead of frame ``index_list[r]``'s. For image-to-video every frame's concat is the start
    image, so "0" (the host's "keep the start image in every window") changes nothing: the pack's own windows. A
    keyframe chain's windows already hold their own keyframes: refused there, as positions outside the window."""
    idx = [int(i) for i in index_list]
    if not retain:
        return idx
    if layout.kind != "image":
        raise DynamiCrafterInputError(
            "cond_retain_index_list", "empty for start/end-image and keyframe conditioning (each window already "
            "gets its own keyframes' rows)", repr(",".join(str(r) for r in retain)), "clear cond_retain_index_list")
    bad = [r for r in retain if not 0 <= r < min(len(idx), layout.frames)]
    if bad:
        raise DynamiCrafterInputError("cond_retain_index_list", f"window positions 0 to {len(idx) - 1}",
                                      repr(",".join(str(r) for r in retain)), "use 0 (the start image) or clear it")
    for r in retain:
        idx[r] = r
    return idx


def window_cond(key: str, value, index_list: Sequence[int], layout: VideoPlan, retain: Sequence[int] = ()):
    """One conditioning item of our MODEL for a window (``None``: the item is not frame-dependent).

    ``value`` is a cond object (``comfy.conds``) or its tensor / int. c_concat: rows of the window (a [K*T] stack of
    K conds is sliced per cond; ``retain``: the host's cond_retain_index_list, ``retained_rows``); dcn_frames: the
    window length; dcn_layout: checked, unchanged."""
    frames = layout.frames
    idx = [int(i) for i in index_list]
    if key == LAYOUT_KEY:
        layout.check_window(idx)
        return value
    if key == "dcn_frames":
        return comfy.conds.CONDConstant(len(idx)) if isinstance(value, comfy.conds.CONDRegular) else len(idx)
    if key == "c_concat":
        tensor = value.cond if isinstance(value, comfy.conds.CONDRegular) else value
        rows = tensor.shape[0]
        if rows % frames:
            if rows % len(idx) == 0:
                return value                                               # already the window's rows
            raise DynamiCrafterInputError("context window", f"a concat latent of {frames} frames per video",
                                          f"{rows} rows", "connect the LATENT of DCN_Conditioning")
        k = rows // frames
        sel = torch.tensor(retained_rows(idx, retain, layout), device=tensor.device)
        out = tensor.reshape((k, frames) + tuple(tensor.shape[1:])).index_select(1, sel)
        out = out.reshape((k * len(idx),) + tuple(tensor.shape[1:]))
        return value._copy_with(out) if isinstance(value, comfy.conds.CONDRegular) else out
    return None


def resize_cond_item(cond_key, cond_value, window, x_in, device, new_cond_item, retain: Sequence[int] = ()):
    """``IndexListCallbacks.RESIZE_COND_ITEM`` of the host's context windows: our items for ``window`` (``retain``:
    the handler's cond_retain_index_list, bound when the callback is registered)."""
    if isinstance(new_cond_item.get("plan"), VideoPlan):
        # the conditioning node's record (read by extra_conds before sampling, not by the model): kept as it is
        # (the 2026-01 host's generic path calls a plain tensor here and fails)
        return cond_value if isinstance(cond_value, torch.Tensor) else None
    if cond_key not in WINDOWED_KEYS:
        return None
    layout_item = new_cond_item.get(LAYOUT_KEY)
    if layout_item is None:
        return None
    layout = layout_item.cond if isinstance(layout_item, comfy.conds.CONDRegular) else layout_item
    if getattr(window, "causal_anchor_index", None) is not None:
        raise DynamiCrafterInputError("causal_window_fix", "off for DynamiCrafter", "a window with a causal fix "
                                      "frame", "set causal_window_fix to false on ContextWindowsManual")
    out = window_cond(cond_key, cond_value, window.index_list, layout, retain)
    if isinstance(out, comfy.conds.CONDRegular) and isinstance(out.cond, torch.Tensor) and device is not None:
        out = out._copy_with(out.cond.to(device))
    return out


def apply_window(x: torch.Tensor, c_concat, transformer_options, kwargs: dict):
    """apply_model for hosts without RESIZE_COND_ITEM (and a check on those with it): the window's concat rows and
    frame count. Returns (c_concat, kwargs)."""
    window = transformer_options.get("context_window") if isinstance(transformer_options, dict) else None
    layout = kwargs.get(LAYOUT_KEY)
    if window is None or layout is None:
        return c_concat, kwargs
    idx = list(window.index_list)
    if getattr(window, "dim", 0) != 0:
        raise DynamiCrafterInputError("context windows dim", "0 (DynamiCrafter's frames are the batch)",
                                      str(window.dim), "set dim 0 on ContextWindowsManual")
    if len(idx) == layout.frames:
        return c_concat, kwargs
    window_cond(LAYOUT_KEY, layout, idx, layout)
    if x.shape[0] % len(idx):
        raise DynamiCrafterInputError("context window", f"a batch of whole {len(idx)}-frame windows",
                                      f"{x.shape[0]} rows", "use ContextWindowsManual with dim 0")
    kwargs = dict(kwargs, dcn_frames=len(idx))
    if c_concat is not None and c_concat.shape[0] != x.shape[0]:
        c_concat = window_cond("c_concat", c_concat, idx, layout)
    if c_concat is not None and c_concat.shape[0] != x.shape[0]:
        raise DynamiCrafterInputError("context window", f"{x.shape[0]} concat rows", f"{c_concat.shape[0]}",
                                      "use ContextWindowsManual with dim 0")
    return c_concat, kwargs


def prepare_handler(handler) -> None:
    """Ready the host's context handler for our MODEL (each run, idempotent): ``resize_cond_item`` registered where
    the host has RESIZE_COND_ITEM, dim 0 required, and one sigma for its step lookup."""
    if handler is None or getattr(handler, "callbacks", None) is None:
        return
    compat.add_resize_cond_item(handler, "dcn", lambda: _resize_callback(handler))
    if getattr(handler, "dim", 0) != 0:
        raise DynamiCrafterInputError("context windows dim", "0 (DynamiCrafter's frames are the batch)",
                                      str(handler.dim), "set dim 0 on ContextWindowsManual")
    if not getattr(handler, "_dcn_checked", False) and hasattr(handler, "should_use_context"):
        use = handler.should_use_context

        def checked(model, conds, x_in, *args, **kwargs):
            check_host_options(handler, int(x_in.shape[0]), conds)
            return use(model, conds, x_in, *args, **kwargs)

        handler.should_use_context = checked
        handler._dcn_checked = True
    compat.one_sigma_step(handler)


def _resize_callback(handler):
    """Our RESIZE_COND_ITEM callback for ``handler``, its cond_retain_index_list bound."""
    retain = compat.context_window_options(handler)["cond_retain_index_list"]
    return lambda *a: resize_cond_item(*a, retain=retain)


def check_host_options(handler, frames: int, conds=None) -> None:
    """Refuse, in one line before the first window runs, the host's window options (ComfyUI v0.33's
    ContextWindowsManual) that mean nothing or something else for DynamiCrafter; only when the handler will window
    (``frames`` > its context_length: otherwise the host ignores every option, for every model). The README's table
    of the host's window settings says the same."""
    length = int(handler.context_length)
    if frames <= length:
        return
    o = compat.context_window_options(handler)
    if o["latent_retain_index_list"]:
        raise DynamiCrafterInputError(
            "latent_retain_index_list", "empty for DynamiCrafter (its start image is in the concat conditioning, not "
            "in the noise latent)", repr(",".join(map(str, o["latent_retain_index_list"]))),
            "clear it (cond_retain_index_list 0 keeps the start image in every window)")
    if o["context_stride"] != 1:
        raise DynamiCrafterInputError(
            "context_stride", "1 for DynamiCrafter (windows of consecutive frames: its fps conditioning describes "
            "those)", str(o["context_stride"]), "set context_stride to 1")
    if o["split_conds_to_windows"]:
        raise DynamiCrafterInputError(
            "split_conds_to_windows", "off for DynamiCrafter (the pack's windows have no per-window prompts)", "on",
            "set split_conds_to_windows to false")
    if o["causal_window_fix"]:
        raise DynamiCrafterInputError(
            "causal_window_fix", f"off for DynamiCrafter (its temporal attention is not causal; the fix frame would "
            f"make {length + 1}-frame windows)", "on", "set causal_window_fix to false on ContextWindowsManual")
    if o["schedule"] == "batched" and frames % length:
        raise DynamiCrafterInputError(
            "context_schedule batched", f"a frame count that is a multiple of context_length {length} (every "
            f"window {length} frames, as the pack's windows)", f"{frames} frames (a last window of "
            f"{frames % length})", f"use {frames - frames % length} or {frames - frames % length + length} frames, "
            "or standard_static")


def _on_pre_run(patcher) -> None:
    """ModelPatcher ON_PRE_RUN callback (the host calls it when sampling starts, before the first step)."""
    prepare_handler((getattr(patcher, "model_options", None) or {}).get("context_handler"))


def install(patcher) -> None:
    """Give a ModelPatcher of our model the host-window hook (no-op on hosts without patcher callbacks)."""
    compat.add_pre_run_callback(patcher, "dcn_windows", _on_pre_run)  # 2024 hosts: no context windows at all


# ================================================================================================================
# DCN_Windows
# ================================================================================================================
class DCN_Windows:
    """Context-window settings for DCN_Sampler: 16-frame windows over a long video, fused each step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "context_length": ("INT", {"default": 16, "min": 2, "max": MAX_FRAMES, "step": 1,
                                       "tooltip": "Frames per window; 16 = the trained length (other lengths share "
                                                  "the image tokens over the window and lose motion quality)."}),
            "context_overlap": ("INT", {"default": 4, "min": 0, "max": MAX_FRAMES - 1, "step": 1,
                                        "tooltip": "Frames shared by neighbouring windows (less than the window)."}),
            "context_schedule": (list(SCHEDULES), {"default": "standard_static",
                                                   "tooltip": "static: fixed windows, the last shifted back to the "
                                                              "end; uniform: joins move every step; looped: the "
                                                              "video is a closed loop (windows wrap around)."}),
            "fuse_method": (list(FUSE_METHODS), {"default": "pyramid",
                                                 "tooltip": "Weights of overlapping windows: pyramid (centre "
                                                            "frames count most), flat, overlap-linear (ramps)."}),
            "freenoise": ("BOOLEAN", {"default": False,
                                      "tooltip": "FreeNoise: later windows start from shuffled copies of the first "
                                                 "window's noise (more consistent content, same cost)."}),
            "max_windows_per_call": ("INT", {"default": 1, "min": 0, "max": 64, "step": 1,
                                             "tooltip": "Windows per UNet call: more is faster on a GPU with "
                                                        "memory to spare; 0 = all. 1 = the memory of 16 frames."}),
        }}

    RETURN_TYPES = ("DCN_WINDOWS",)
    OUTPUT_TOOLTIPS = ("Context-window settings for DCN_Sampler's windows input.",)
    FUNCTION = "windows"
    CATEGORY = "DynamiCrafter/sampling"
    DISPLAY_NAME = "DynamiCrafter Context Windows"
    DESCRIPTION = "Long videos: sample in windows of the trained length, fused every step (keyframe chains use " \
                  "their own segments)."

    @classmethod
    def VALIDATE_INPUTS(cls, context_length=None, context_overlap=None):
        problem = widget_problem(cls, context_length=context_length, context_overlap=context_overlap)
        if problem is not True:
            return problem
        if context_length is not None and context_overlap is not None and int(context_overlap) >= int(context_length):
            return (f"context_overlap: expected less than context_length ({context_length}), found {context_overlap}; "
                    "use about a quarter of the window")
        return True

    def windows(self, context_length, context_overlap, context_schedule, fuse_method, freenoise,
                max_windows_per_call):
        spec = WindowSpec(int(context_length), int(context_overlap), context_schedule, fuse_method,
                          int(max_windows_per_call), bool(freenoise))
        spec.check(max(int(context_length) + 1, 2))
        return (spec,)


def resolve_windows(spec: Optional[WindowSpec], info: dict, frames: int, trained: int) -> Optional[WindowSpec]:
    """The windows a run uses (``VideoPlan.windows``): a keyframe chain's own segments; a long loop's looped windows;
    else ``spec`` or, for a video longer than the trained length, the default windows (with a note)."""
    return for_frames(info.get("plan"), frames, trained).windows(spec)

"""ToonCrafter sketch guidance in the host: the sketch encoder's loader and the guidance node.

The host's ``ControlNetLoader`` cannot carry the sketch encoder faithfully (it would feed a 3-channel hint, the text
tokens alone as context and fixed 64-wide heads), so the encoder has its own loader and rides on the conditioning as
a host ControlNet object (``SketchControl``, a ``comfy.controlnet.ControlBase``): every sampler that asks a cond's
ControlNet for residuals -- KSampler, SamplerCustom(Advanced) with DCN_Guider, and DCN_Sampler (nodes/control.py) --
gets the sketch residuals and hands them to the UNet as ``control``, the path host ControlNets take
(model/control.py). The guidance node attaches ONE object to positive, image_only and negative: every CFG branch
gets the sketches, each with its own context (the reference rule), and the host batches the branches together.

Sparse sketches: indices are frames of the whole video. A frame without a sketch gets exactly zero residual. Under
the host's context windows each window gets the sketches of the frames it covers, at their place in the window (its
``index_list``). DCN_Sampler's own windows / keyframe chains refuse ControlNets (nodes/sampling.py), sketches too.
"""
from __future__ import annotations

from typing import List, Optional

import torch

import comfy.controlnet
import comfy.model_management
import comfy.model_patcher

from ..model.errors import DynamiCrafterInputError
from ..model.limits import RANGES
from ..model.log import logger
from ..model.sketch import SketchEncoder, sketch_residuals
from ..model.sketch_hint import aspect_note, check_sketch_count, frame_mask, parse_frame_indices, sketch_hints
from ..model.sketch_io import load_sketch_encoder
from . import compat
from .control import KINDS
from .native import COND_KEY, video_context, video_timesteps

SKETCH_TYPE = "DCN_SKETCH_ENCODER"
FOLDER = "controlnet"
TOON_VARIANT = "tooncrafter"


class SketchControl(comfy.controlnet.ControlBase):
    """The sketch encoder + per-frame hints [T, 1, 8h, 8w] and mask [T] of one video, as a host ControlNet."""

    def __init__(self, encoder: SketchEncoder, patcher, hints: torch.Tensor, mask: torch.Tensor, strength: float,
                 percent=(0.0, 1.0)):
        super().__init__()
        self.encoder, self.patcher, self.hints, self.mask = encoder, patcher, hints, mask
        self.cond_hint_original = hints
        self.strength, self.timestep_percent_range = float(strength), tuple(percent)
        self.model_sampling_current = None

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        super().cleanup()
        self.model_sampling_current = None

    def get_models(self):
        return super().get_models() + [self.patcher]

    def copy(self):
        c = SketchControl(self.encoder, self.patcher, self.hints, self.mask, self.strength,
                          self.timestep_percent_range)
        c.previous_controlnet = self.previous_controlnet
        return c

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None):
        topts = transformer_options if isinstance(transformer_options, dict) else {}
        prev = None
        if self.previous_controlnet is not None:
            prev = compat.get_control(self.previous_controlnet, x_noisy, t, cond, batched_number, topts)
        if self.strength == 0 or (self.timestep_range is not None and (t[0] > self.timestep_range[0]
                                                                       or t[0] < self.timestep_range[1])):
            return prev                                                    # no guidance: the encoder does not run
        return _merge(self.residuals(x_noisy, t, cond, topts), prev)

    def residuals(self, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, topts: dict) -> dict:
        """The host's batch (rows ``(b t)``, host variable x, sigmas) -> the UNet's ``control`` dict."""
        ms = self.model_sampling_current
        window = topts.get("context_window")
        idx = list(window.index_list) if window is not None else list(range(int(cond.get("dcn_frames") or
                                                                                 x_noisy.shape[0])))
        n, t_len = x_noisy.shape[0], len(idx)
        if n % t_len or max(idx) >= self.hints.shape[0]:
            raise DynamiCrafterInputError("sketch guidance", f"batches of the {self.hints.shape[0]}-frame video the "
                                          "sketches were made for", f"{n} rows, frames {idx[0]}..{idx[-1]}",
                                          "make the sketch guidance from the conditioning that is sampled")
        b = n // t_len
        xt = ms.calculate_input(sigma, x_noisy)                            # [(b t), 4, h, w] the UNet's x_t
        if tuple(self.hints.shape[-2:]) != (xt.shape[-2] * 8, xt.shape[-1] * 8):
            raise DynamiCrafterInputError("sketch guidance", f"a latent of {self.hints.shape[-1]}x"
                                          f"{self.hints.shape[-2]} px (the conditioning's)",
                                          f"{xt.shape[-1] * 8}x{xt.shape[-2] * 8} px", "sample the conditioning's "
                                          "LATENT")
        dt = self.encoder.dtype
        ts = video_timesteps(ms.timestep(sigma).float(), b, t_len)
        ctx = video_context(cond["c_crossattn"], cond.get("dcn_image_tokens"), b, t_len).to(dt)
        x5 = xt.to(dt).reshape(b, t_len, *xt.shape[1:]).transpose(1, 2)   # [b, 4, t, h, w]
        control = sketch_residuals(self.encoder, x5, ts, ctx, self.hints[idx].to(dt), self.mask[idx],
                                   self.strength)
        return {k: [r.to(x_noisy.dtype) for r in v] for k, v in control.items()}


def _merge(out: dict, prev: Optional[dict]) -> Optional[dict]:
    """Residuals of this and a previous ControlNet on the same cond, summed (the host's rule), aligned from the end
    (the UNet pops them)."""
    if not prev:
        return out or None
    if not out:
        return prev
    merged = {}
    for kind in KINDS:
        a, b = list(out.get(kind) or []), list(prev.get(kind) or [])
        n = max(len(a), len(b))
        a, b = [None] * (n - len(a)) + a, [None] * (n - len(b)) + b
        merged[kind] = [y if x is None else x if y is None else x + y for x, y in zip(a, b)]
    return merged


# =================================================================================================================
# loader
# =================================================================================================================
def list_sketch_encoders() -> List[str]:
    return compat.list_files([FOLDER])


def load_sketch(name_or_path: str):
    """A file (a name in the host's controlnet folder, or a path) -> (encoder, its model patcher)."""
    path = compat.find_file([FOLDER], name_or_path) or name_or_path
    mm = comfy.model_management
    device = mm.get_torch_device()
    dtype = torch.float32
    if device.type != "cpu" and mm.should_use_fp16(device):
        dtype = torch.float16
    encoder = load_sketch_encoder(path, dtype=dtype)
    logger.info("sketch encoder %s: %d residuals, %s", name_or_path, len(encoder.zero_convs) + 1, dtype)
    patcher = comfy.model_patcher.ModelPatcher(encoder, load_device=device, offload_device=mm.unet_offload_device())
    return encoder, patcher


class DCN_SketchEncoderLoader:
    """ToonCrafter's sketch encoder (sketch_encoder.ckpt) from the host's controlnet folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sketch_encoder_name": (list_sketch_encoders(), {
            "tooltip": "sketch_encoder.ckpt from the Doubiiu/ToonCrafter hub repo (or its .safetensors "
                       "conversion), in models/controlnet."})}}

    RETURN_TYPES = (SKETCH_TYPE,)
    OUTPUT_TOOLTIPS = ("The sketch encoder for DynamiCrafter ToonCrafter Sketch Guidance.",)
    FUNCTION = "load"
    CATEGORY = "DynamiCrafter/ToonCrafter"
    DISPLAY_NAME = "DynamiCrafter Sketch Encoder Loader"
    DESCRIPTION = "Loads ToonCrafter's sketch encoder (a 1-channel-hint ControlNet), refusing other ControlNets."

    @classmethod
    def VALIDATE_INPUTS(cls, sketch_encoder_name=None):
        if sketch_encoder_name is not None and compat.find_file([FOLDER], sketch_encoder_name) is None:
            return (f"sketch_encoder_name: {sketch_encoder_name!r} not found in the controlnet model folder; put "
                    "sketch_encoder.ckpt into models/controlnet and refresh the page")
        return True

    def load(self, sketch_encoder_name):
        return (load_sketch(sketch_encoder_name),)


# =================================================================================================================
# guidance node
# =================================================================================================================
def _video_info(positive) -> dict:
    info = next((c[1].get(COND_KEY) for c in (positive or []) if isinstance(c[1].get(COND_KEY), dict)), None)
    if info is None:
        raise DynamiCrafterInputError("positive", "DynamiCrafter conditioning (DCN_Conditioning)",
                                      "plain conditioning", "connect DCN_Conditioning's outputs")
    if info.get("variant") != TOON_VARIANT:
        raise DynamiCrafterInputError("sketch guidance", "a ToonCrafter model's conditioning (the sketch encoder "
                                      "was trained with ToonCrafter's UNet)", f"conditioning of the "
                                      f"{info.get('variant')} model", "load the ToonCrafter checkpoint")
    return info


def make_sketch_control(sketch, info: dict, sketches: torch.Tensor, frame_indices: str, strength: float,
                        start_percent: float, end_percent: float, lines: str) -> SketchControl:
    """Everything checked and preprocessed before sampling: the encoder fits the model, one sketch per index,
    indices in the video, sketch aspect (padded or cropped, logged)."""
    encoder, patcher = sketch
    concat = info["concat_latent"]                                         # [T, 4, h, w]
    frames, height, width = concat.shape[0], concat.shape[-2] * 8, concat.shape[-1] * 8
    width_ctx = info["image_tokens"].shape[-1]
    if encoder.cfg.context_dim != width_ctx:
        raise DynamiCrafterInputError("sketch_encoder", f"a sketch encoder for {width_ctx}-dim tokens (the model's)",
                                      f"one for {encoder.cfg.context_dim}-dim tokens",
                                      "use the sketch encoder made for this ToonCrafter model")
    idx = parse_frame_indices(frame_indices, frames)
    if not isinstance(sketches, torch.Tensor):
        raise DynamiCrafterInputError("sketches", "an IMAGE batch", type(sketches).__name__, "connect LoadImage")
    check_sketch_count(sketches.shape[0], idx)
    note = aspect_note((sketches.shape[1], sketches.shape[2]), height, width)
    if note:
        logger.warning("%s", note)
    hints = sketch_hints(sketches, height, width, invert=(lines == "dark lines on white"))  # [N, 1, H, W]
    full = hints.new_zeros(frames, *hints.shape[1:])
    full[idx] = hints
    return SketchControl(encoder, patcher, full, frame_mask(idx, frames), strength, (start_percent, end_percent))


def attach(cond, control: SketchControl):
    """Every entry of a CONDITIONING with the sketch control (chained after a ControlNet already there)."""
    out = []
    for text, extra in cond or []:
        d = dict(extra)
        prev = d.get("control")
        c = control.copy() if prev is not None else control
        if prev is not None:
            c.set_previous_controlnet(prev)
        d["control"] = c
        d["control_apply_to_uncond"] = False
        out.append([text, d])
    return out


LINES = ["dark lines on white", "white lines on black"]


class DCN_ToonSketchGuidance:
    """Sketch guidance for ToonCrafter: sketches on some or all frames steer the in-between motion."""

    @classmethod
    def INPUT_TYPES(cls):
        lo, hi = RANGES["sketch_strength"]
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "positive output of DCN_Conditioning (ToonCrafter)."}),
            "image_only": ("CONDITIONING", {"tooltip": "image_only output of DCN_Conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "negative output of DCN_Conditioning."}),
            "sketch_encoder": (SKETCH_TYPE, {"tooltip": "DynamiCrafter Sketch Encoder Loader."}),
            "sketches": ("IMAGE", {"tooltip": "One sketch per frame index, in the same order."}),
            "frame_indices": ("STRING", {"default": "all", "tooltip":
                "Frames (0-based) the sketches belong to, e.g. '0, 8, 15'; 'all': one sketch per frame. Frames "
                "without a sketch get no guidance."}),
            "strength": ("FLOAT", {"default": 0.6, "min": lo, "max": hi, "step": 0.01, "tooltip":
                "Residual scale (the reference's control_scale; its app offers 0-1, default 0.6)."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                "Where in the schedule the sketches start to act (0 = the first step)."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                "Where they stop acting (1 = the last step)."}),
            "lines": (LINES, {"default": LINES[0], "tooltip": "dark lines on white: sketches as drawn (inverted as "
                              "the reference does); white lines on black: already line maps."}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "image_only", "negative")
    FUNCTION = "apply"
    CATEGORY = "DynamiCrafter/ToonCrafter"
    DISPLAY_NAME = "DynamiCrafter ToonCrafter Sketch Guidance"
    DESCRIPTION = ("ToonCrafter sketch guidance (official sketch encoder): dense or sparse sketches, every CFG branch "
                   "guided, for DCN_Sampler, DCN_Guider and KSampler.")

    def apply(self, positive, image_only, negative, sketch_encoder, sketches, frame_indices, strength,
              start_percent, end_percent, lines=LINES[0]):
        if start_percent > end_percent:
            raise DynamiCrafterInputError("start_percent", f"at most end_percent ({end_percent})",
                                          f"{start_percent}", "swap the two")
        if lines not in LINES:
            raise DynamiCrafterInputError("lines", f"one of {LINES}", repr(lines), "pick one from the list")
        control = make_sketch_control(sketch_encoder, _video_info(positive), sketches, frame_indices, strength,
                                      start_percent, end_percent, lines)
        return attach(positive, control), attach(image_only, control), attach(negative, control)


NODES = (DCN_SketchEncoderLoader, DCN_ToonSketchGuidance)

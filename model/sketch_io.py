"""Reading, recognising and converting ToonCrafter's sketch encoder file (``sketch_encoder.ckpt``).

The released file is a pickle whose keys are ``cldm.ControlNet.state_dict()`` keys (optionally under
``state_dict``); read only through model/checkpoint.py (``torch.load(weights_only=True)`` or safetensors). Keys may
carry ``control_model.`` (the app's attribute, the fixtures' and converted files' prefix). What it is comes from its
keys: a ControlNet (``input_hint_block``, ``zero_convs``, ``middle_block_out``) with a 1-channel hint in the SD2.1
layout; anything else is refused in one line that says what it is and where it goes instead.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

import torch

from .checkpoint import META_CONFIG, META_DTYPE, META_FAMILY, META_SOURCE, open_checkpoint, resolve_dtype, \
    write_safetensors
from .dtypes import DTYPES, dtype_name
from .errors import DynamiCrafterInputError
from .fileio import write_errors
from .formats import describe_foreign
from .sketch import SketchConfig, SketchEncoder, sketch_config

PREFIX = "control_model."
FAMILY = "tooncrafter-sketch-encoder"
_MARKERS = ("input_hint_block.0.weight", "zero_convs.0.0.weight", "middle_block_out.0.weight")
_WHERE = "the sketch encoder goes in the host's models/controlnet folder (sketch_encoder.ckpt from Doubiiu/ToonCrafter)"

Shape = Tuple[int, ...]


def _strip(shapes: Dict[str, Shape]) -> Dict[str, Shape]:
    if shapes and all(k.startswith(PREFIX) for k in shapes):
        return {k[len(PREFIX):]: v for k, v in shapes.items()}
    return dict(shapes)


def is_controlnet(shapes: Dict[str, Shape]) -> bool:
    """A ControlNet in the ldm/cldm layout (any hint, any width), with or without ``control_model.``."""
    keys = _strip(shapes)
    return all(m in keys for m in _MARKERS)


def check_sketch_keys(shapes: Dict[str, Shape], what: str, config: Optional[str] = None,
                      cfg: Optional[SketchConfig] = None) -> SketchConfig:
    """Key names and shapes of a file -> the sketch encoder config to build, or a one-line refusal. ``config``: the
    file's registry config name (metadata); ``cfg``: an explicit config (a reference sidecar's)."""
    keys = _strip(shapes)
    if not is_controlnet(keys):
        foreign = describe_foreign(set(shapes))
        raise DynamiCrafterInputError(what, "ToonCrafter's sketch encoder (a ControlNet: input_hint_block, "
                                      "zero_convs, middle_block_out keys)", foreign or f"{len(keys)} other keys",
                                      _WHERE)
    hint = keys["input_hint_block.0.weight"]
    if hint[1] != 1:
        raise DynamiCrafterInputError(what, "ToonCrafter's sketch encoder (hint_channels 1: one grayscale line map)",
                                      f"a ControlNet for {hint[1]}-channel image hints (hint_channels {hint[1]})",
                                      "apply it with the host's ControlNetLoader + ControlNetApply; for sketch "
                                      "guidance pick sketch_encoder.ckpt")
    cfg = cfg or sketch_config(config)
    with torch.device("meta"):
        want = {k: tuple(t.shape) for k, t in SketchEncoder(cfg).state_dict().items()}
    ctx = next((s[1] for k, s in keys.items() if k.endswith("attn2.to_k.weight")), None)
    if ctx is not None and ctx != cfg.context_dim:
        raise DynamiCrafterInputError(what, f"a sketch encoder for SD2.1-layout models ({cfg.context_dim}-dim "
                                      "context, as ToonCrafter)", f"a ControlNet with {ctx}-dim context",
                                      "use sketch_encoder.ckpt; SD1.5/SDXL ControlNets do not fit ToonCrafter")
    missing = [k for k in want if k not in keys]
    extra = [k for k in keys if k not in want]
    bad = [k for k in want if k in keys and tuple(keys[k]) != want[k]]
    if missing or extra or bad:
        found = "; ".join(f"{n} {lbl} (first {lst[:2]})" for lbl, lst, n in
                          (("missing", missing, len(missing)), ("unexpected", extra, len(extra)),
                           ("of another shape", bad, len(bad))) if lst)
        raise DynamiCrafterInputError(what, f"the {len(want)} keys of the sketch encoder (cldm_v21 layout"
                                      f"{', config ' + config if config else ''})", found,
                                      "use the released sketch_encoder.ckpt or a file converted from it")
    return cfg


def load_sketch_encoder(path: Union[str, os.PathLike], dtype: torch.dtype = torch.float32, device=None,
                        operations=None, attention=None, cfg: Optional[SketchConfig] = None) -> SketchEncoder:
    """A sketch encoder file (.ckpt / .safetensors) -> the eval-mode module, loaded strictly."""
    with open_checkpoint(path) as ck:
        what = f"sketch encoder file '{ck.name}'"
        shapes = ck.shapes()
        cfg = check_sketch_keys(shapes, what, ck.metadata.get(META_CONFIG), cfg)
        strip = len(PREFIX) if all(k.startswith(PREFIX) for k in shapes) else 0
        sd = {k[strip:]: ck.tensor(k).to(dtype) for k in shapes}
    with torch.device("meta"):
        net = SketchEncoder(cfg, dtype=dtype, operations=operations, attention=attention)
    net.load_state_dict(sd, strict=True, assign=True)
    return net.to(device or "cpu").eval().requires_grad_(False)


def is_sketch_file(path: Union[str, os.PathLike]) -> bool:
    with open_checkpoint(path) as ck:
        return is_controlnet(ck.shapes())


def convert_sketch_encoder(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], dtype="fp16",
                           overwrite: bool = False, cfg: Optional[SketchConfig] = None) -> Tuple[str, int]:
    """Write the sketch encoder as ``.safetensors`` (``control_model.`` keys, the pack's metadata); returns (path,
    tensors). Validated first, streamed one tensor at a time and atomically."""
    target = resolve_dtype(dtype)
    if target not in DTYPES.values():
        raise DynamiCrafterInputError("dtype", "fp16, bf16 or fp32", repr(dtype), "pick one of those")
    dst = os.fspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise DynamiCrafterInputError("convert destination", "a path that does not exist yet", repr(dst),
                                      "remove it or pass overwrite=True (--overwrite)")
    with open_checkpoint(src) as ck:
        shapes = ck.shapes()
        config = ck.metadata.get(META_CONFIG)
        check_sketch_keys(shapes, f"sketch encoder file '{ck.name}'", config, cfg)
        strip = len(PREFIX) if all(k.startswith(PREFIX) for k in shapes) else 0
        names = {PREFIX + k[strip:]: k for k in shapes}
        items = [(n, shapes[k], target if ck.dtype(k).is_floating_point else ck.dtype(k)) for n, k in names.items()]
        meta = {META_FAMILY: FAMILY, META_SOURCE: ck.name, META_DTYPE: dtype_name(target), "format": "pt"}
        if config:
            meta[META_CONFIG] = config
        with write_errors(dst, "convert destination"):
            write_safetensors(dst, items, lambda n: ck.tensor(names[n]), meta, finite=f"sketch encoder '{ck.name}'")
    return dst, len(items)

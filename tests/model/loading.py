"""Test-only: load a DynamiCrafter checkpoint straight into the pack's UNetModel + Resampler (no host), through the
product's own reading, detection and validation (model/checkpoint.py, model/detect.py).

The tests use it to compare a file's weights with what was written, and as the reference model the host runs are
checked against; the product loads through nodes/loader.py into the host's classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch

from comfyui_dynamicrafter.model.checkpoint import PARTS, CheckpointFile, open_checkpoint, resolve_dtype
from comfyui_dynamicrafter.model.config import Variant
from comfyui_dynamicrafter.model.detect import detect_variant, file_variant, validate_checkpoint
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.log import logger
from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel


@dataclass
class LoadedCheckpoint:
    """A DynamiCrafter checkpoint loaded into modules.

    ``unet`` / ``image_proj``: the UNetModel and Resampler (eval mode) with the file's weights (strict).
    ``other``: the requested other parts as state dicts with their prefix removed ("vae", "text_encoder",
    "image_encoder", "schedule", "rest"), in their storage dtype on the CPU.
    ``part_counts``: how many keys each part has in the file. ``metadata``: the safetensors header metadata.
    """

    variant: Variant
    family: str
    reason: str
    decided_by: str
    unet: torch.nn.Module
    image_proj: torch.nn.Module
    other: Dict[str, Dict[str, torch.Tensor]]
    part_counts: Dict[str, int]
    metadata: Dict[str, str]
    path: str
    format: str
    storage_dtype: Optional[torch.dtype]
    dtype: torch.dtype
    notes: List[str] = field(default_factory=list)


def _materialize(ck: CheckpointFile, part: str, ctor, cfg, dtype, device, kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        model = ctor(cfg, dtype=dtype, device="meta", **kwargs)
    expected = model.state_dict()
    sd: Dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        t = ck.tensor(ck.parts[part][key])
        target = ref.dtype if t.is_floating_point() else t.dtype
        sd[key] = t.to(device=device, dtype=target)  # no copy when dtype and device already match
        del t
    del expected
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # a module with non-persistent buffers would need them rebuilt: a bug here, not bad input
        raise RuntimeError(f"{type(model).__name__} still has meta tensors after loading: {left[:5]}")
    return model.eval()


def load_dynamicrafter(path: Union[str, os.PathLike], variant: Union[None, str, Variant] = None,
                       dtype: Union[None, str, torch.dtype] = None, device: Union[str, torch.device] = "cpu",
                       operations=None, attention: Optional[Callable] = None,
                       other_parts: Iterable[str] = ()) -> LoadedCheckpoint:
    """Open, detect, validate, then load a DynamiCrafter checkpoint into UNetModel + Resampler (strict, assign).

    ``variant``: None/"auto", a registry name, or a Variant (e.g. a tiny one for tests; its name must suit the
    keys). ``dtype``: compute dtype (None = the UNet's storage dtype); tensors are converted one at a time, so the
    peak is the model plus one tensor. ``other_parts``: which other parts to return as state dicts.
    """
    other_parts = tuple(other_parts)
    for p in other_parts:
        if p not in PARTS[2:]:
            raise DynamiCrafterInputError("other_parts", f"names among {list(PARTS[2:])}", repr(p), "fix the name")
    want = resolve_dtype(dtype)
    with open_checkpoint(path) as ck:
        det = detect_variant(ck, variant=variant)
        v = variant if isinstance(variant, Variant) else file_variant(det)
        validate_checkpoint(ck, v)
        storage = ck.storage_dtype("unet")
        compute = want or storage or torch.float32
        logger.info("checkpoint '%s': loading %s (%s, stored %s, compute %s) on %s", ck.name, v.name, ck.format,
                    storage, compute, device)
        kwargs = {"operations": operations}
        unet_kwargs = dict(kwargs, **({"attention": attention} if attention is not None else {}))
        unet = _materialize(ck, "unet", UNetModel, v.unet, compute, device, unet_kwargs)
        proj = _materialize(ck, "image_proj", Resampler, v.resampler, compute, device, kwargs)
        other = {p: {k: ck.tensor(full) for k, full in ck.parts[p].items()} for p in other_parts}
        result = LoadedCheckpoint(
            variant=v, family=det.family, reason=det.reason, decided_by=det.decided_by, unet=unet,
            image_proj=proj, other=other, part_counts={p: len(ck.parts[p]) for p in PARTS},
            metadata=dict(ck.metadata), path=ck.path, format=ck.format, storage_dtype=storage, dtype=compute,
            notes=list(ck.notes),
        )
    return result

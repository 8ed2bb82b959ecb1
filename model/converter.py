"""Inspecting and converting DynamiCrafter checkpoints (the API behind ``convert.py``).

``convert_checkpoint`` writes a ``.safetensors`` with the official prefixes and this pack's metadata (variant,
family, source, parts, dtype, and the registry config of small files), streamed one tensor at a time and atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple, Union

import torch

from .checkpoint import (FORMAT_VERSION, META_CONFIG, META_DTYPE, META_FAMILY, META_FORMAT, META_PARTS, META_SOURCE,
                         META_VARIANT, PART_PREFIX, PARTS, SAFETENSORS_EXTS, open_checkpoint, resolve_dtype,
                         write_safetensors)
from .config import Variant
from .detect import Detection, detect_variant, file_variant, validate_checkpoint
from .dtypes import DTYPES, dtype_name
from .errors import DynamiCrafterInputError
from .fileio import write_errors
from .log import logger

@dataclass(frozen=True)
class CheckpointInfo:
    """What ``inspect_checkpoint`` reports without reading any tensor."""

    detection: Detection
    path: str
    format: str
    part_counts: Dict[str, int]
    storage_dtype: Optional[torch.dtype]
    metadata: Dict[str, str]
    notes: Tuple[str, ...]


def inspect_checkpoint(path: Union[str, os.PathLike], variant: Union[None, str, Variant] = None) -> CheckpointInfo:
    """Detection, part sizes and storage dtype of a checkpoint, from its header / mmap only."""
    with open_checkpoint(path) as ck:
        det = detect_variant(ck, variant=variant)
        return CheckpointInfo(det, ck.path, ck.format, {p: len(ck.parts[p]) for p in PARTS},
                              ck.storage_dtype("unet"), dict(ck.metadata), tuple(ck.notes))



@dataclass(frozen=True)
class ConvertResult:
    path: str
    detection: Detection
    parts: Tuple[str, ...]
    tensors: int
    bytes: int
    metadata: Dict[str, str]


def _parse_parts(parts: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    if isinstance(parts, str):
        parts = PARTS if parts.strip().lower() == "all" else [p.strip() for p in parts.split(",") if p.strip()]
    parts = tuple(parts)
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise DynamiCrafterInputError("parts", f"names among {list(PARTS)} or 'all'", repr(bad or parts),
                                      "fix the list, e.g. unet,image_proj")
    return tuple(p for p in PARTS if p in parts)


def convert_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                       variant: Union[None, str, Variant] = None, dtype: Union[str, torch.dtype] = "fp16",
                       parts: Union[str, Iterable[str]] = ("unet", "image_proj"),
                       overwrite: bool = False) -> ConvertResult:
    """Write ``src`` as a ``.safetensors`` with the official prefixes and this pack's metadata (variant, family,
    source file name, format version, parts, dtype), streamed one tensor at a time and atomically.

    The UNet and P are validated against the variant's modules first. Floating weights are cast to ``dtype``;
    the schedule buffers are always stored in float32. Old ``framestride_embed`` names are written renamed.
    """
    target = resolve_dtype(dtype)
    if target not in DTYPES.values():
        raise DynamiCrafterInputError("dtype", "fp16, bf16 or fp32", repr(dtype), "pick one of those")
    parts = _parse_parts(parts)
    dst = os.fspath(dst)
    if not dst.lower().endswith(SAFETENSORS_EXTS):
        raise DynamiCrafterInputError("convert destination", "a .safetensors path", repr(dst), "rename the output")
    if os.path.exists(dst):
        if os.path.exists(src) and os.path.samefile(src, dst):
            raise DynamiCrafterInputError("convert destination", "a new file", "the source file itself",
                                          "write to another name")
        if not overwrite:
            raise DynamiCrafterInputError("convert destination", "a path that does not exist yet", repr(dst),
                                          "remove it or pass overwrite=True (--overwrite)")
    with open_checkpoint(src) as ck:
        det = detect_variant(ck, variant=variant)
        v = variant if isinstance(variant, Variant) else file_variant(det)
        validate_checkpoint(ck, v, [p for p in ("unet", "image_proj") if p in parts])
        names: Dict[str, str] = {}  # output name -> normalized key in ck
        items = []
        for part in parts:
            for key, full in ck.parts[part].items():
                out = PART_PREFIX[part] + key
                dt = ck.dtype(full)
                if not isinstance(dt, torch.dtype):
                    raise DynamiCrafterInputError(f"checkpoint '{ck.name}'", "ordinary tensor dtypes",
                                                  f"{full}: {dt}", "convert from an fp16/bf16/fp32 file")
                if part == "schedule":
                    dt = torch.float32
                elif dt.is_floating_point:
                    dt = target
                names[out] = full
                items.append((out, ck.shape(full), dt))
        meta = {
            META_FORMAT: FORMAT_VERSION, META_VARIANT: det.variant, META_FAMILY: det.family,
            META_SOURCE: ck.name, META_PARTS: ",".join(parts), META_DTYPE: dtype_name(target), "format": "pt",
        }
        config = det.config or v.extra.get("config")
        if config is not None:
            meta[META_CONFIG] = config
        logger.info("convert '%s' -> '%s': %s, parts %s, %s", ck.name, os.path.basename(dst), det.variant,
                    ",".join(parts), dtype_name(target))
        def read(name: str) -> torch.Tensor:
            try:
                return ck.tensor(names[name])
            except OSError as err:  # the source, not the destination: named as such
                raise DynamiCrafterInputError(f"checkpoint '{ck.name}'", "a readable source file",
                                              f"{err.strerror or err} reading '{names[name]}'",
                                              "check the source file and its disk, then convert again") from None

        with write_errors(dst, "convert destination"):
            size = write_safetensors(dst, items, read, meta, finite=f"checkpoint '{ck.name}'")
    return ConvertResult(dst, det, parts, len(items), size, meta)

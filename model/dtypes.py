"""The one table of dtype names the pack accepts (widgets, configs, converter, metadata) and their torch dtypes."""
from __future__ import annotations

from typing import Dict, List

import torch

from .errors import DynamiCrafterInputError

# Short name -> dtype: the names the pack writes (metadata, configs, widgets).
DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# fp8 storage formats, where this torch build has them (weights only; compute stays in a float type).
FP8_DTYPES: Dict[str, torch.dtype] = {
    name: getattr(torch, "float8_" + name[4:])
    for name in ("fp8_e4m3fn", "fp8_e5m2") if hasattr(torch, "float8_" + name[4:])
}
# Other spellings users and other tools write, read but never written.
ALIASES: Dict[str, str] = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
                           "bfloat16": "bf16"}


def compute_dtype_names() -> List[str]:
    """The float types a model can compute in, short names."""
    return list(DTYPES)


def dtype_from_name(name: str, *, what: str = "dtype", allow_fp8: bool = False) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` ... -> ``torch.bfloat16``; a one-line error naming the accepted names otherwise."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    table = {**DTYPES, **FP8_DTYPES} if allow_fp8 else DTYPES
    if key not in table:
        raise DynamiCrafterInputError(what, "one of " + ", ".join(table), repr(name), "pick one of those names")
    return table[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the short name the pack writes)."""
    for name, dt in {**DTYPES, **FP8_DTYPES}.items():
        if dt == dtype:
            return name
    return str(dtype).replace("torch.", "")

"""Safe checkpoint I/O for DynamiCrafter: open, split by prefix, detect the variant, validate, load, convert.

Reading is safe by construction: ``.safetensors`` through ``safetensors.safe_open`` (header first, tensors on demand);
pickle files (``.ckpt``/``.pt``/``.pth``/``.bin``) only through ``torch.load(weights_only=True)``, memory-mapped when
the file is a zip archive, so a pickle that tries to run code is refused and a 10 GB file costs no RAM until read.

File layouts understood (each one is built and read in tests/model/test_checkpoint.py):
- the official full ``model.ckpt``: ``{"state_dict": {...}}`` with prefixes ``model.diffusion_model.`` (UNet),
  ``image_proj_model.`` (P), ``first_stage_model.`` (VAE), ``cond_stage_model.`` (text encoder), ``embedder.``
  (image encoder) and the schedule buffers (``betas`` ... ``scale_arr``);
- DeepSpeed files (no ``state_dict``; a ``module`` dict whose keys carry the 16-character ``_forward_module.``
  wrapper prefix, which the reference strips with ``key[16:]``), and a plain DDP ``module.`` prefix;
- pruned files with UNet + P only: the official prefixes, or ComfyUI's ``diffusion_model.`` for the UNet, or bare
  UNet keys (``input_blocks.`` ...) - in the last two cases P must carry ``image_proj_model.`` or ``image_proj.``
  (bare P keys such as ``layers.0`` are too generic to claim);
- old 256 files storing ``framestride_embed.*`` for ``fps_embedding.*`` (renamed on load, as the reference does).

Weights cannot tell 512, 1024 and 512-interp apart; the variant comes from this pack's metadata
(``dynamicrafter.variant``), else the caller's choice, else a file-name hint, else 512, and the reason is always
returned and logged. Files this module writes (``convert_checkpoint``) carry the official prefixes and that metadata.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file (python model/checkpoint.py ...): enter as the package
    import os as _os
    import runpy as _runpy
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    import _bootstrap

    _runpy.run_module(f"{_bootstrap.register()}.model.checkpoint", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import argparse
import functools
import json
import math
import os
import pickle
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .config import Variant
from .fileio import atomic_file
from .errors import DynamiCrafterInputError
from .log import logger
from .variants import VARIANTS, get_variant, variant_names

# ----------------------------------------------------------------------------------------------------------------
# Layout facts
# ----------------------------------------------------------------------------------------------------------------
FORMAT_VERSION = "1"
META_VARIANT = "dynamicrafter.variant"
META_FAMILY = "dynamicrafter.family"
META_FORMAT = "dynamicrafter.format_version"
META_SOURCE = "dynamicrafter.source"
META_PARTS = "dynamicrafter.parts"
META_DTYPE = "dynamicrafter.dtype"

SAFETENSORS_EXTS = (".safetensors", ".sft")
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")

PARTS = ("unet", "image_proj", "vae", "text_encoder", "image_encoder", "schedule", "rest")
# Prefix under which each part is written (the official full-checkpoint layout).
PART_PREFIX = {
    "unet": "model.diffusion_model.",
    "image_proj": "image_proj_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.",
    "image_encoder": "embedder.",
    "schedule": "",
    "rest": "",
}
# Every prefix accepted on read, per part (first match wins; two different ones for one part is an error).
_READ_PREFIXES = (
    ("model.diffusion_model.", "unet"),
    ("diffusion_model.", "unet"),
    ("image_proj_model.", "image_proj"),
    ("image_proj.", "image_proj"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("embedder.", "image_encoder"),
)
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_arr",
)
# First key component of every UNet key (manifest), used to claim bare UNet keys of pruned files.
_UNET_TOP = frozenset({"input_blocks", "middle_block", "output_blocks", "init_attn", "time_embed",
                       "fps_embedding", "framestride_embed", "out"})
_DEEPSPEED_WRAPPER = "_forward_module."  # 16 characters: what the reference's key[16:] removes

FAMILIES = ("256", "512-family", "tooncrafter")
FAMILY_VARIANTS: Dict[str, Tuple[str, ...]] = {
    "256": ("256",),
    "512-family": ("512", "1024", "512-interp"),
    # ToonCrafter's UNet is the 512 architecture run in interpolation mode (its inference config, loop/interp).
    "tooncrafter": ("512-interp",),
}
_FAMILY_DEFAULT = {"256": "256", "512-family": "512", "tooncrafter": "512-interp"}

_DTYPE_NAMES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
_SHORT_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_ST_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _ST_CODES[getattr(torch, _name)] = _code
_ST_DTYPES = {v: k for k, v in _ST_CODES.items()}

Shape = Tuple[int, ...]


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first(items: Sequence[str], n: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """``None`` | torch dtype | "fp16"/"bf16"/"fp32" (and long names) -> torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPE_NAMES:
        raise DynamiCrafterInputError("dtype", "one of fp16, bf16, fp32", repr(dtype), "pick one of those")
    return _DTYPE_NAMES[key]


# ----------------------------------------------------------------------------------------------------------------
# Opening a file (header / mmap only)
# ----------------------------------------------------------------------------------------------------------------
def _sniff(path: str) -> str:
    """'safetensors' | 'zip' | 'pickle' from the first bytes (a renamed file is still read by its content)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "pickle"


def _pickle_error(name: str, err: BaseException) -> DynamiCrafterInputError:
    msg = str(err)
    if "Weights only load failed" in msg:
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        obj = f"the Python object '{m.group(1)}'" if m else "a pickle instruction that plain weights never need"
        return DynamiCrafterInputError(
            f"checkpoint '{name}'",
            "only tensors and plain containers (read with torch.load(weights_only=True))",
            f"{obj}, which weights-only loading does not allow (unpickling it can run code); refused, nothing "
            "was executed",
            "use a .safetensors version of this model from a source you trust",
        )
    return DynamiCrafterInputError(
        f"checkpoint '{name}'", "a complete PyTorch checkpoint",
        f"a file that cannot be read ({type(err).__name__}: {_one_line(msg, 120)})",
        "the file is incomplete or damaged: download it again and compare its size with the source",
    )


def _unwrap_pickle(obj: Any, name: str) -> Tuple[Dict[str, torch.Tensor], bool, List[str]]:
    """The state dict inside a loaded pickle -> (flat dict, came_from_deepspeed_module, notes)."""
    notes: List[str] = []
    deepspeed = False
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
        notes.append("state dict taken from 'state_dict'")
    elif isinstance(obj, Mapping) and isinstance(obj.get("module"), Mapping):
        obj = obj["module"]
        deepspeed = True
        notes.append("DeepSpeed file: state dict taken from 'module'")
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        found = sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise DynamiCrafterInputError(
            f"checkpoint '{name}'", "a state dict of tensors, or a dict holding one under 'state_dict' or 'module'",
            f"top-level entries {found}", "use the model's .ckpt/.safetensors weights file",
        )
    flat = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = len(obj) - len(flat)
    if skipped:
        notes.append(f"{skipped} non-tensor entries ignored")
    return flat, deepspeed, notes


def _normalize_keys(keys: Sequence[str], deepspeed: bool,
                    what: str = "checkpoint") -> Tuple[Dict[str, str], List[str], bool]:
    """Original file keys -> {normalized key: original key}, notes, had_old_framestride_name."""
    notes: List[str] = []
    strip = 0
    if deepspeed and keys:
        # Reference: new_pl_sd[key[16:]] = state_dict['module'][key] (Lightning's '_forward_module.' wrapper).
        if all(k.startswith(_DEEPSPEED_WRAPPER) for k in keys):
            strip = len(_DEEPSPEED_WRAPPER)
        elif all(len(k) > 16 and k[15] == "." and k[:16] == keys[0][:16] for k in keys):
            strip = 16
        if strip:
            notes.append(f"DeepSpeed wrapper prefix '{keys[0][:strip]}' removed (reference: key[16:])")
    stripped = [k[strip:] for k in keys]
    if stripped and all(k.startswith("module.") for k in stripped):
        stripped = [k[len("module."):] for k in stripped]
        notes.append("wrapper prefix 'module.' removed")
    out: Dict[str, str] = {}
    old_name = False
    for new, orig in zip(stripped, keys):
        if "framestride_embed" in new:
            old_name = True
            new = new.replace("framestride_embed", "fps_embedding")
        if new in out:
            raise DynamiCrafterInputError(
                what, "each weight once", f"'{new}' twice (as '{out[new]}' and '{orig}')",
                "remove the duplicate (old 'framestride_embed' and new 'fps_embedding' names together?)",
            )
        out[new] = orig
    if old_name:
        notes.append("old name 'framestride_embed' renamed to 'fps_embedding' (256 files)")
    return out, notes, old_name


def split_keys(keys: Iterable[str], what: str = "checkpoint") -> Tuple[Dict[str, Dict[str, str]], List[str]]:
    """Normalized full keys -> {part: {key inside the part: full key}} for every part in PARTS, plus notes.

    Raises if one part appears under two prefixes (e.g. both ``model.diffusion_model.`` and ``diffusion_model.``).
    """
    parts: Dict[str, Dict[str, str]] = {p: {} for p in PARTS}
    used: Dict[str, set] = {p: set() for p in PARTS}
    schedule = set(SCHEDULE_KEYS)
    for k in keys:
        for prefix, part in _READ_PREFIXES:
            if k.startswith(prefix):
                parts[part][k[len(prefix):]] = k
                used[part].add(prefix)
                break
        else:
            if k in schedule:
                parts["schedule"][k] = k
            else:
                parts["rest"][k] = k
    notes: List[str] = []
    for part, prefixes in used.items():
        if len(prefixes) > 1:
            raise DynamiCrafterInputError(
                what, f"one key prefix for the {part} weights", f"several: {sorted(prefixes)}",
                "the file mixes two layouts; use the original checkpoint or convert each part separately",
            )
    if not parts["unet"]:
        bare = {k: k for k in parts["rest"] if k.split(".", 1)[0] in _UNET_TOP}
        if any(k.startswith("input_blocks.") for k in bare):
            for k in bare:
                del parts["rest"][k]
            parts["unet"] = bare
            notes.append("bare UNet keys (no prefix)")
    for part, prefixes in used.items():
        if prefixes and next(iter(prefixes)) not in (PART_PREFIX[part],):
            notes.append(f"{part} under prefix '{next(iter(prefixes))}'")
    return parts, notes


class CheckpointFile:
    """An opened checkpoint: names, shapes and dtypes without reading tensor data; ``tensor(key)`` reads one.

    Keys are normalized (wrappers stripped, ``framestride_embed`` renamed) and split into ``parts``:
    ``parts[part][key inside the part] = full normalized key``. Use as a context manager or call ``close()``.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        self.metadata: Dict[str, str] = {}
        self.notes: List[str] = []
        self._handle = None
        self._tensors: Optional[Dict[str, torch.Tensor]] = None
        self._st_info: Dict[str, Tuple[Shape, torch.dtype]] = {}
        if not os.path.isfile(self.path):
            raise DynamiCrafterInputError(
                "checkpoint", "an existing file", f"nothing at '{self.path}'", "check the path or the model folder"
            )
        ext = os.path.splitext(self.name)[1].lower()
        if ext not in SAFETENSORS_EXTS + PICKLE_EXTS:
            raise DynamiCrafterInputError(
                f"checkpoint '{self.name}'", f"one of {list(SAFETENSORS_EXTS + PICKLE_EXTS)}",
                f"extension '{ext or '(none)'}'", "use the DynamiCrafter .ckpt or a .safetensors file",
            )
        if os.path.getsize(self.path) < 16:
            raise DynamiCrafterInputError(
                f"checkpoint '{self.name}'", "a checkpoint file", f"only {os.path.getsize(self.path)} bytes",
                "the file is incomplete or damaged: download it again",
            )
        kind = _sniff(self.path)
        deepspeed = False
        if kind == "safetensors" or (ext in SAFETENSORS_EXTS and kind != "zip"):  # a renamed .ckpt is still read
            self.format = "safetensors"
            orig_keys = self._open_safetensors()
        else:
            self.format = "pickle"
            obj = self._torch_load(mmap=(kind == "zip"))
            if kind != "zip":
                self.notes.append("legacy (non-zip) pickle: read into memory, it cannot be memory-mapped")
            self._tensors, deepspeed, notes = _unwrap_pickle(obj, self.name)
            del obj
            self.notes += notes
            orig_keys = list(self._tensors)
        what = f"checkpoint '{self.name}'"
        self.keys, notes, self.old_framestride_name = _normalize_keys(orig_keys, deepspeed, what)
        self.notes += notes
        self.parts, notes = split_keys(self.keys, what)
        self.notes += notes

    # -- readers ------------------------------------------------------------------------------------------------
    def _open_safetensors(self) -> List[str]:
        from safetensors import SafetensorError, safe_open

        try:
            self._handle = safe_open(self.path, framework="pt", device="cpu")
            self.metadata = dict(self._handle.metadata() or {})
            keys = list(self._handle.keys())
            for k in keys:
                sl = self._handle.get_slice(k)
                code = sl.get_dtype()
                self._st_info[k] = (tuple(sl.get_shape()), _ST_DTYPES.get(code, code))
        except SafetensorError as err:
            self._handle = None
            raise DynamiCrafterInputError(
                f"checkpoint '{self.name}'", "a complete .safetensors file",
                f"a damaged file ({_one_line(str(err), 120)})",
                "the file is incomplete or damaged: download it again and compare its size with the source",
            ) from None
        return keys

    def _torch_load(self, mmap: bool):
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
                struct.error) as err:  # what torch.load raises for refused, truncated or garbled files
            raise _pickle_error(self.name, err) from None

    def shape(self, key: str) -> Shape:
        orig = self.keys[key]
        if self._tensors is not None:
            return tuple(self._tensors[orig].shape)
        return self._st_info[orig][0]

    def dtype(self, key: str):
        orig = self.keys[key]
        if self._tensors is not None:
            return self._tensors[orig].dtype
        return self._st_info[orig][1]

    def shapes(self) -> Dict[str, Shape]:
        return {k: self.shape(k) for k in self.keys}

    def part_shapes(self, part: str) -> Dict[str, Shape]:
        return {k: self.shape(full) for k, full in self.parts[part].items()}

    def tensor(self, key: str) -> torch.Tensor:
        """Read one tensor (normalized full key); pickle tensors stay memory-mapped until converted."""
        orig = self.keys[key]
        if self._tensors is not None:
            return self._tensors[orig]
        from safetensors import SafetensorError

        try:
            return self._handle.get_tensor(orig)
        except SafetensorError as err:
            raise DynamiCrafterInputError(
                f"checkpoint '{self.name}'", f"readable data for '{key}'", _one_line(str(err), 120),
                "the file is damaged: download it again",
            ) from None

    def storage_dtype(self, part: str = "unet") -> Optional[torch.dtype]:
        """The floating dtype holding most elements of ``part`` (None if the part is empty)."""
        count: Dict[Any, int] = {}
        for full in self.parts[part].values():
            dt = self.dtype(full)
            if isinstance(dt, torch.dtype) and dt.is_floating_point:
                count[dt] = count.get(dt, 0) + math.prod(self.shape(full))
        return max(count, key=count.get) if count else None

    def close(self) -> None:
        self._handle = None
        self._tensors = None

    def __enter__(self) -> "CheckpointFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: Union[str, os.PathLike]) -> CheckpointFile:
    """Open ``path`` safely (header / mmap only). Raises DynamiCrafterInputError with one line on bad files."""
    return CheckpointFile(path)


# ----------------------------------------------------------------------------------------------------------------
# Detection predicates (on key names; work on full or part-stripped keys)
# ----------------------------------------------------------------------------------------------------------------
def _shape_of(keys, suffix: str) -> Optional[Shape]:
    if not isinstance(keys, Mapping):
        return None
    for k, v in keys.items():
        if k.endswith(suffix):
            shape = v["shape"] if isinstance(v, Mapping) else v
            return tuple(shape) if shape is not None else None
    return None


def is_dynamicrafter_unet(keys: Iterable[str]) -> bool:
    """All three DynamiCrafter UNet markers: temporal conv (``temopral_conv``, sic), ``init_attn``, image K/V ``to_k_ip``."""
    conv = init = ip = False
    for k in keys:
        conv = conv or ".temopral_conv." in k
        init = init or k.startswith("init_attn.") or ".init_attn." in k
        ip = ip or ".to_k_ip." in k
    return conv and init and ip


def has_learnable_alpha(keys: Iterable[str]) -> bool:
    """The 256 model's learnable image-attention gates ``...attn2.alpha`` (16 of them)."""
    return any(k.endswith("attn2.alpha") for k in keys)


def has_old_framestride_name(keys: Iterable[str]) -> bool:
    """Old 256 files name the motion embedding ``framestride_embed`` (reference renames it to ``fps_embedding``)."""
    return any("framestride_embed" in k for k in keys)


def is_tooncrafter(keys: Iterable[str]) -> bool:
    """ToonCrafter's dual-reference VAE decoder (``AutoencoderKL_Dualref``): ``decoder.attn_refinement.*`` keys.

    Diff of the ToonCrafter and 512 manifests: +148 ``first_stage_model.decoder.*`` keys (``attn_refinement``,
    ``time_stack``, ``mix_factor``, ``conv_out.time_mix_conv``). Only ``attn_refinement`` is unique to it: SVD's
    temporal decoder has the other three.
    """
    return any(("decoder.attn_refinement." in k) for k in keys)


def _temporal(keys: Iterable[str]) -> bool:
    return any(m in k for k in keys for m in (".temopral_conv.", ".time_stack.", "time_mixer", "motion_modules."))


def looks_like_svd(keys: Iterable[str]) -> bool:
    """Stable Video Diffusion: VideoUNet ``time_stack`` / ``time_mixer`` blocks inside the diffusion model."""
    return any("diffusion_model." in k and (".time_stack." in k or ".time_mixer." in k) for k in keys)


def looks_like_sdxl(keys) -> bool:
    """SDXL: ``conditioner.embedders`` text encoders, ``label_emb``, cross-attention width 2048, no temporal layers."""
    keys_l = list(keys)
    if _temporal(keys_l):
        return False
    if any(k.startswith("conditioner.embedders.") for k in keys_l) and any(".label_emb." in f".{k}" for k in keys_l):
        return True
    shape = _shape_of(keys, "transformer_blocks.0.attn2.to_k.weight")
    return bool(shape and shape[-1] == 2048)


def looks_like_sd15(keys) -> bool:
    """SD 1.x: CLIP-L text encoder (``cond_stage_model.transformer.``) or cross-attention width 768, no temporal."""
    keys_l = list(keys)
    if _temporal(keys_l) or looks_like_sdxl(keys):
        return False
    if any(k.startswith("cond_stage_model.transformer.") for k in keys_l):
        return True
    shape = _shape_of(keys, "transformer_blocks.0.attn2.to_k.weight")
    return bool(shape and shape[-1] == 768)


def looks_like_sd2(keys) -> bool:
    """SD 2.x: UNet without temporal layers and without image K/V, cross-attention width 1024."""
    keys_l = list(keys)
    if _temporal(keys_l) or looks_like_sdxl(keys) or looks_like_sd15(keys):
        return False
    has_unet = any(k.startswith(("model.diffusion_model.input_blocks.", "input_blocks.")) for k in keys_l)
    return has_unet and not any(".to_k_ip." in k for k in keys_l)


def looks_like_videocrafter(keys: Iterable[str]) -> bool:
    """VideoCrafter text-to-video: the same temporal UNet (``temopral_conv``) but no image K/V (``to_k_ip``)."""
    keys_l = list(keys)
    return any(".temopral_conv." in k for k in keys_l) and not any(".to_k_ip." in k for k in keys_l)


def looks_like_animatediff(keys: Iterable[str]) -> bool:
    """An AnimateDiff motion module (``motion_modules.``)."""
    return any("motion_modules." in k for k in keys)


def looks_like_diffusers(keys: Iterable[str]) -> bool:
    """A diffusers-format UNet (``down_blocks.`` / ``conv_in.weight`` at top level)."""
    keys_l = list(keys)
    return any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys_l) or "conv_in.weight" in keys_l


def looks_like_vae_only(keys: Iterable[str]) -> bool:
    """A stand-alone VAE (encoder/decoder keys, nothing else)."""
    keys_l = list(keys)
    return bool(keys_l) and all(k.split(".", 1)[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv",
                                                       "first_stage_model") for k in keys_l)


def looks_like_clip(keys: Iterable[str]) -> bool:
    """A stand-alone CLIP text or vision tower."""
    keys_l = list(keys)
    return bool(keys_l) and all(k.startswith(("text_model.", "vision_model.", "visual.", "transformer.", "model.",
                                              "logit_scale", "text_projection", "positional_embedding",
                                              "token_embedding", "ln_final", "visual_projection"))
                                for k in keys_l) and not any("diffusion_model" in k for k in keys_l)


_FOREIGN = (
    (looks_like_svd, "a Stable Video Diffusion checkpoint (time_stack/time_mixer blocks)"),
    (looks_like_sdxl, "an SDXL image checkpoint (conditioner.embedders, label_emb, cross-attention width 2048)"),
    (looks_like_sd15, "a Stable Diffusion 1.x image checkpoint (CLIP-L text encoder, cross-attention width 768)"),
    (looks_like_animatediff, "an AnimateDiff motion module (motion_modules.*)"),
    (looks_like_videocrafter, "a VideoCrafter text-to-video UNet (temporal layers but no image K/V 'to_k_ip')"),
    (looks_like_sd2, "a Stable Diffusion 2.x image checkpoint (no temporal layers, no image K/V)"),
    (looks_like_diffusers, "a diffusers-format UNet (down_blocks/up_blocks)"),
    (looks_like_vae_only, "a VAE alone"),
    (looks_like_clip, "a CLIP text or vision encoder alone"),
)


def describe_foreign(keys) -> Optional[str]:
    """What a non-DynamiCrafter key set looks like, or None if unrecognised."""
    for pred, text in _FOREIGN:
        if pred(keys):
            return text
    return None


# ----------------------------------------------------------------------------------------------------------------
# Variant decision
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    """What a checkpoint is: ``family`` (by keys), the registry ``variant`` to build, and why (``reason``)."""

    family: str
    variant: str
    reason: str
    decided_by: str  # "keys" | "metadata" | "argument" | "filename" | "default"


def _hint_from_name(name: str) -> List[str]:
    stem = os.path.splitext(name)[0].lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", stem) if t]
    hits = []
    if any(("interp" in t) or ("loop" in t) or ("toon" in t) for t in tokens):
        hits.append("512-interp")
    for size in ("1024", "256"):
        if any(t == size or re.fullmatch(rf"[a-z]*{size}[a-z]*", t) for t in tokens):
            hits.append(size)
    if not hits and any(t == "512" or re.fullmatch(r"[a-z]*512[a-z]*", t) for t in tokens):
        hits.append("512")
    return hits


def variant_hint_from_filename(filename: Optional[str]) -> Tuple[Optional[str], str]:
    """A variant suggested by the file name, else by its folder (the official files are all ``model.ckpt`` in
    folders such as ``DynamiCrafter_1024``): tokens '1024', '512', '256', 'interp'/'loop'/'toon'. Returns the
    variant (None when there is no hint or the hints disagree) and a note saying which."""
    if not filename:
        return None, "no file name"
    base = os.path.basename(filename)
    folder = os.path.basename(os.path.dirname(filename)) if os.path.dirname(filename) else ""
    for label, name in (("file name", base), ("folder name", folder)):
        hits = _hint_from_name(name) if name else []
        if len(hits) == 1:
            return hits[0], f"the {label} '{name}' suggests {hits[0]}"
        if len(hits) > 1:
            return None, f"the {label} '{name}' suggests several variants {hits}"
    return None, f"neither the file name '{base}' nor its folder gives a hint"


def _variant_name(variant: Union[None, str, Variant]) -> Optional[str]:
    if variant is None:
        return None
    if isinstance(variant, Variant):
        return variant.name
    name = str(variant).strip()
    if name.lower() in ("", "auto"):
        return None
    if name not in VARIANTS:
        raise DynamiCrafterInputError(
            "variant", f"one of {variant_names()} (or 'auto')", repr(name), "pick one of the listed variant names"
        )
    return name


def _decide(parts: Dict[str, Dict[str, str]], flat: Mapping[str, Any], metadata: Mapping[str, str],
            variant: Union[None, str, Variant], filename: Optional[str], old_name: bool, what: str) -> Detection:
    unet = parts["unet"]
    if not unet or not is_dynamicrafter_unet(unet):
        looks = describe_foreign(flat)
        found = looks or f"{len(flat)} keys starting {_first(sorted(flat))}"
        raise DynamiCrafterInputError(
            what,
            "a DynamiCrafter checkpoint (UNet with 'temopral_conv', 'init_attn' and image K/V 'to_k_ip', plus "
            "'image_proj_model.*')",
            found,
            "this file is not a DynamiCrafter model: pick the DynamiCrafter model.ckpt (Hugging Face "
            "Doubiiu/DynamiCrafter_512, _1024, _512_Interp) or a pruned DynamiCrafter .safetensors"
            + ("; load SD/SDXL/SVD files with the host's own loaders" if looks else ""),
        )
    explicit = _variant_name(variant)
    alpha = has_learnable_alpha(unet)
    toon = is_tooncrafter(parts["vae"])
    n_alpha = sum(k.endswith("attn2.alpha") for k in unet)
    if alpha or old_name:
        family = "256"
        evidence = ("keys say 256: " + ", ".join(
            ([f"{n_alpha} learnable 'attn2.alpha' gates"] if alpha else [])
            + (["old name 'framestride_embed'"] if old_name else [])))
    elif toon:
        family = "tooncrafter"
        n = sum("decoder.attn_refinement." in k for k in parts["vae"])
        evidence = f"keys say ToonCrafter: dual-reference VAE decoder ({n} 'decoder.attn_refinement' keys)"
    else:
        family = "512-family"
        evidence = "keys say 512-family: no 'attn2.alpha' gates" + (
            " and no ToonCrafter decoder keys" if parts["vae"] else "")

    meta_variant = metadata.get(META_VARIANT) or None
    meta_family = metadata.get(META_FAMILY) or None
    if meta_variant is not None and meta_variant not in VARIANTS:
        raise DynamiCrafterInputError(
            what, f"metadata '{META_VARIANT}' among {variant_names()}", repr(meta_variant),
            "the file was written by a newer or different tool; choose the variant explicitly or reconvert it",
        )
    if meta_family is not None:
        if meta_family not in FAMILIES:
            raise DynamiCrafterInputError(what, f"metadata '{META_FAMILY}' among {list(FAMILIES)}",
                                          repr(meta_family), "reconvert the file with this pack")
        if meta_family == "tooncrafter" and family == "512-family" and not parts["vae"]:
            family = "tooncrafter"
            evidence = "metadata says ToonCrafter (pruned file without the VAE, keys as 512-family)"
        elif meta_family != family:
            raise DynamiCrafterInputError(
                what, f"metadata family '{meta_family}' to match the weights", evidence,
                "the file's metadata is wrong: reconvert it from the original checkpoint",
            )

    allowed = FAMILY_VARIANTS[family]
    if explicit is not None and explicit not in allowed:
        why = evidence + (" (the 256 model has 16)" if explicit == "256" and family == "512-family" else "")
        raise DynamiCrafterInputError(
            f"variant for {what}", f"one of {list(allowed)} for this file, since the {why}",
            f"'{explicit}' chosen explicitly",
            f"choose 'auto' or one of {list(allowed)}, or pick the checkpoint file of the {explicit} model",
        )
    if meta_variant is not None and meta_variant not in allowed:
        raise DynamiCrafterInputError(
            what, f"metadata variant among {list(allowed)} ({evidence})", f"'{meta_variant}'",
            "the file's metadata is wrong: reconvert it from the original checkpoint",
        )
    if meta_variant is not None and explicit is not None and explicit != meta_variant:
        raise DynamiCrafterInputError(
            f"variant for {what}", f"'{meta_variant}' (the file's metadata '{META_VARIANT}', written at conversion)",
            f"'{explicit}' chosen explicitly",
            f"choose 'auto' or '{meta_variant}', or reconvert the original file with --variant {explicit}",
        )

    if len(allowed) == 1:
        chosen, by = allowed[0], "keys"
        why = f"variant '{chosen}' from the keys"
        if family == "tooncrafter":
            why += " (ToonCrafter runs as the 512 interpolation model)"
    elif meta_variant is not None:
        chosen, by = meta_variant, "metadata"
        why = f"variant '{chosen}' from the file's metadata '{META_VARIANT}' (written by the converter)"
    elif explicit is not None:
        chosen, by = explicit, "argument"
        why = f"variant '{chosen}' as chosen explicitly"
    else:
        hint, note = variant_hint_from_filename(filename)
        if hint is not None and hint in allowed:
            chosen, by = hint, "filename"
            why = f"variant '{chosen}' because {note} (no metadata, no explicit choice)"
        else:
            chosen, by = _FAMILY_DEFAULT[family], "default"
            why = (f"variant '{chosen}' by default: the weights of 512, 1024 and 512-interp are identical in layout "
                   f"and there was no metadata, no explicit choice, and {note}; choose the variant if this is the "
                   f"1024 or interpolation model")
    return Detection(family=family, variant=chosen, reason=f"{why}; {evidence}", decided_by=by)


def detect_variant(keys: Union[CheckpointFile, Mapping[str, Any], Iterable[str]],
                   metadata: Optional[Mapping[str, str]] = None, variant: Union[None, str, Variant] = None,
                   filename: Optional[str] = None) -> Detection:
    """Family and variant of a checkpoint from its keys (a CheckpointFile, key->shape mapping or key list).

    Order for the 512 family: metadata > explicit ``variant`` > file-name hint > 512. An explicit choice or
    metadata that contradicts the keys is refused. Logs and returns the reason.
    """
    if isinstance(keys, CheckpointFile):
        ck = keys
        parts, flat, old = ck.parts, ck.shapes(), ck.old_framestride_name
        metadata = ck.metadata if metadata is None else metadata
        filename = ck.path if filename is None else filename
        what = f"checkpoint '{ck.name}'"
    else:
        flat = dict(keys) if isinstance(keys, Mapping) else {k: None for k in keys}
        norm, _, old = _normalize_keys(list(flat), deepspeed=False)
        flat = {n: flat[o] for n, o in norm.items()}
        parts, _ = split_keys(flat)
        what = f"checkpoint '{os.path.basename(filename)}'" if filename else "checkpoint"
    det = _decide(parts, flat, metadata or {}, variant, filename, old, what)
    logger.info("%s: %s", what, det.reason)
    return det


# ----------------------------------------------------------------------------------------------------------------
# Validation against the model (built on the meta device)
# ----------------------------------------------------------------------------------------------------------------
def _unet_cls():
    from .unet import UNetModel

    return UNetModel


def _resampler_cls():
    from .resampler import Resampler

    return Resampler


@functools.lru_cache(maxsize=16)
def _expected_shapes(kind: str, cfg) -> Dict[str, Shape]:
    ctor = _unet_cls() if kind == "unet" else _resampler_cls()
    with torch.device("meta"):
        model = ctor(cfg, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def expected_shapes(variant: Union[str, Variant]) -> Dict[str, Dict[str, Shape]]:
    """{"unet": {key: shape}, "image_proj": {key: shape}} the variant's modules expect (meta-device build)."""
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    return {"unet": dict(_expected_shapes("unet", v.unet)),
            "image_proj": dict(_expected_shapes("image_proj", v.resampler))}


def check_part(found: Mapping[str, Shape], expected: Mapping[str, Shape], what: str, label: str,
               variant_name: str) -> None:
    """Raise ONE line naming the first missing / unexpected keys and the first wrong shape, if any."""
    prefix = PART_PREFIX.get(label, "")
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [(k, tuple(found[k]), tuple(expected[k])) for k in expected
             if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_first([prefix + k for k in missing])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first([prefix + k for k in unexpected])})")
    if wrong:
        k, fs, es = wrong[0]
        problems.append(f"{len(wrong)} of wrong shape, first {prefix}{k} {list(fs)} where the model has {list(es)}")
    if not found:
        todo = (f"the file holds no {label} weights ('{prefix}*'); use a full DynamiCrafter checkpoint or one "
                "converted with parts unet,image_proj")
    else:
        todo = (f"use the original DynamiCrafter checkpoint of the {variant_name} model (or reconvert it); if you "
                "chose the variant yourself, check that choice")
    raise DynamiCrafterInputError(
        what, f"the {len(expected)} {label} weights of the {variant_name} model", "; ".join(problems), todo
    )


def validate_checkpoint(ck: CheckpointFile, variant: Variant, parts: Sequence[str] = ("unet", "image_proj")) -> None:
    """Compare the file's UNet / P keys and shapes with the modules of ``variant`` before any tensor is read."""
    what = f"checkpoint '{ck.name}'"
    for part in parts:
        cfg = variant.unet if part == "unet" else variant.resampler
        check_part(ck.part_shapes(part), _expected_shapes(part, cfg), what, part, variant.name)
    for part in parts:
        bad = sorted({str(ck.dtype(f)) for f in ck.parts[part].values()
                      if not (isinstance(ck.dtype(f), torch.dtype) and ck.dtype(f).is_floating_point)})
        if bad:
            raise DynamiCrafterInputError(
                what, f"floating-point {part} weights (fp32/fp16/bf16)", f"storage dtypes {bad}",
                "quantized files are not supported: use an fp16/bf16/fp32 checkpoint",
            )


# ----------------------------------------------------------------------------------------------------------------
# Loading into modules
# ----------------------------------------------------------------------------------------------------------------
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
        v = variant if isinstance(variant, Variant) else get_variant(det.variant)
        validate_checkpoint(ck, v)
        storage = ck.storage_dtype("unet")
        compute = want or storage or torch.float32
        logger.info("checkpoint '%s': loading %s (%s, stored %s, compute %s) on %s", ck.name, v.name, ck.format,
                    storage, compute, device)
        kwargs = {"operations": operations}
        unet_kwargs = dict(kwargs, **({"attention": attention} if attention is not None else {}))
        unet = _materialize(ck, "unet", _unet_cls(), v.unet, compute, device, unet_kwargs)
        proj = _materialize(ck, "image_proj", _resampler_cls(), v.resampler, compute, device, kwargs)
        other = {p: {k: ck.tensor(full) for k, full in ck.parts[p].items()} for p in other_parts}
        result = LoadedCheckpoint(
            variant=v, family=det.family, reason=det.reason, decided_by=det.decided_by, unet=unet,
            image_proj=proj, other=other, part_counts={p: len(ck.parts[p]) for p in PARTS},
            metadata=dict(ck.metadata), path=ck.path, format=ck.format, storage_dtype=storage, dtype=compute,
            notes=list(ck.notes),
        )
    return result


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


# ----------------------------------------------------------------------------------------------------------------
# Writing (streamed safetensors, atomic)
# ----------------------------------------------------------------------------------------------------------------
def write_safetensors(path: Union[str, os.PathLike], items: Sequence[Tuple[str, Shape, torch.dtype]],
                      read: Callable[[str], torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> int:
    """Stream tensors into a ``.safetensors`` file atomically; returns the file size.

    ``items`` lists (name, shape, dtype) so the header is written first; ``read(name)`` yields each tensor (of that
    shape; converted to that dtype here) one at a time, so at most one tensor is held in memory. The file is
    written to a temporary name in the same folder, fsync'ed, then renamed over ``path``.
    """
    if sys.byteorder != "little":  # the format is little-endian; keep the simple path honest
        raise RuntimeError("write_safetensors needs a little-endian machine")
    path = os.fspath(path)
    order = sorted(items, key=lambda it: (-torch.empty((), dtype=it[2]).element_size(), it[0]))
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, dt in order:
        if dt not in _ST_CODES:
            raise DynamiCrafterInputError("convert", "fp32/fp16/bf16/integer tensors", f"{name}: {dt}",
                                          "convert from a file with ordinary dtypes")
        nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        header[name] = {"dtype": _ST_CODES[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dt in order:
            t = read(name)
            if tuple(t.shape) != tuple(shape):
                raise RuntimeError(f"write_safetensors: {name} has shape {list(t.shape)}, header says {list(shape)}")
            t = t.to(dtype=dt, device="cpu").contiguous()
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t
    return os.path.getsize(path)


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
    if target not in _SHORT_DTYPE:
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
        v = variant if isinstance(variant, Variant) else get_variant(det.variant)
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
            META_SOURCE: ck.name, META_PARTS: ",".join(parts), META_DTYPE: _SHORT_DTYPE[target], "format": "pt",
        }
        logger.info("convert '%s' -> '%s': %s, parts %s, %s", ck.name, os.path.basename(dst), det.variant,
                    ",".join(parts), _SHORT_DTYPE[target])
        size = write_safetensors(dst, items, lambda name: ck.tensor(names[name]), meta)
    return ConvertResult(dst, det, parts, len(items), size, meta)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m comfyui_dynamicrafter.model.checkpoint {inspect,convert} ...``"""
    ap = argparse.ArgumentParser(prog="python -m comfyui_dynamicrafter.model.checkpoint",
                                 description="Inspect or convert DynamiCrafter checkpoints (safe loading only).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("inspect", help="show the detected variant and the parts of a checkpoint")
    pi.add_argument("path")
    pi.add_argument("--variant", default=None, help=f"one of {variant_names()} or auto")
    pc = sub.add_parser("convert", help="write a .safetensors with metadata (variant, source, parts)")
    pc.add_argument("src")
    pc.add_argument("dst")
    pc.add_argument("--variant", default=None, help=f"one of {variant_names()} or auto")
    pc.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    pc.add_argument("--parts", default="unet,image_proj", help=f"comma list of {list(PARTS)} or 'all'")
    pc.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "inspect":
            info = inspect_checkpoint(args.path, args.variant)
            print(f"{info.path}: {info.format}, family {info.detection.family}, variant {info.detection.variant} "
                  f"({info.detection.decided_by})")
            print(f"reason: {info.detection.reason}")
            print("parts: " + ", ".join(f"{p}={n}" for p, n in info.part_counts.items() if n))
            print(f"storage dtype: {info.storage_dtype}; metadata: {info.metadata or '{}'}")
            for note in info.notes:
                print(f"note: {note}")
        else:
            res = convert_checkpoint(args.src, args.dst, args.variant, args.dtype, args.parts, args.overwrite)
            print(f"wrote {res.path}: {res.tensors} tensors, {res.bytes / 2**30:.2f} GiB, variant "
                  f"{res.detection.variant} ({res.detection.decided_by}); {res.detection.reason}")
    except DynamiCrafterInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

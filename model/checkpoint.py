"""Safe checkpoint I/O for DynamiCrafter: open a file, normalise its keys, split them by part, write safetensors.

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

What the file is (family, variant, registry config) is decided in ``detect.py``; other models are recognised in
``formats.py``; ``converter.py`` writes converted files with the official prefixes and this pack's metadata.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import sys
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .dtypes import dtype_from_name
from .errors import DynamiCrafterInputError
from .fileio import atomic_file
from .guards import NonFiniteError, describe_nonfinite, is_finite_tensor

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
# The registry config the weights are built with when it is not the real one (model/variants.py SMALL_CONFIGS),
# e.g. "tiny" for the random-weight files of model/tiny.py; absent for real checkpoints.
META_CONFIG = "dynamicrafter.config"
META_TINY = "dynamicrafter.tiny"  # a human note on tiny files (older tiny files carry only this one)

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


def first_few(items: Sequence[str], n: int = 3) -> str:
    """The first ``n`` names and how many more, for one-line messages."""
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")



def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """``None`` | torch dtype | "fp16"/"bf16"/"fp32" (and long names, model/dtypes.py) -> torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return dtype_from_name(str(dtype).replace("torch.", ""))


# ----------------------------------------------------------------------------------------------------------------
# Opening a file (header / mmap only)
# ----------------------------------------------------------------------------------------------------------------
def _sniff(path: str) -> str:
    """'safetensors' | 'zip' | 'pickle' | 'unknown' from the first bytes (a renamed file is still read by its
    content)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"  # a pickle protocol 2-5 header: what torch.save's legacy format writes
    if head[:1] in (b"(", b"c", b"]", b"}", b")", b"N"):
        return "pickle"  # the usual first opcodes of a protocol 0/1 pickle (MARK, GLOBAL, empty containers, None)
    return "unknown"


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


def normalize_keys(keys: Sequence[str], deepspeed: bool,
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
        if kind == "unknown":
            with open(self.path, "rb") as f:
                first = f.read(8).hex(" ")
            raise DynamiCrafterInputError(
                f"checkpoint '{self.name}'", "a .safetensors file, a PyTorch zip checkpoint or a PyTorch pickle",
                f"none of them (first bytes {first}); nothing was unpickled",
                "the file is damaged or not a model: download it again and compare its size with the source")
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
        self.keys, notes, self.old_framestride_name = normalize_keys(orig_keys, deepspeed, what)
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
        renamed = self.name.lower().endswith(SAFETENSORS_EXTS)  # torch.load would hand a path so named to safetensors
        try:
            if renamed:
                self.notes.append("a PyTorch checkpoint named .safetensors: read as what it is (weights only)")
                with open(self.path, "rb") as f:
                    return torch.load(f, map_location="cpu", weights_only=True)
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
# Writing (streamed safetensors, atomic)
# ----------------------------------------------------------------------------------------------------------------
def write_safetensors(path: Union[str, os.PathLike], items: Sequence[Tuple[str, Shape, torch.dtype]],
                      read: Callable[[str], torch.Tensor], metadata: Optional[Mapping[str, str]] = None,
                      finite: Optional[str] = None) -> int:
    """Stream tensors into a ``.safetensors`` file atomically; returns the file size.

    ``items`` lists (name, shape, dtype) so the header is written first; ``read(name)`` yields each tensor (of that
    shape; converted to that dtype here) one at a time, so at most one tensor is held in memory. The free space for
    the whole file is checked first; the file is written to a temporary name in the same folder, fsync'ed, then
    renamed over ``path``. With ``finite`` (what to name in the message) every tensor is checked for NaN/Inf after
    the cast, and the write stops at the first bad one (nothing is left behind).
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
    with atomic_file(path, expected_bytes=8 + len(blob) + offset) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dt in order:
            t = read(name)
            if tuple(t.shape) != tuple(shape):
                raise RuntimeError(f"write_safetensors: {name} has shape {list(t.shape)}, header says {list(shape)}")
            src = t
            t = t.to(dtype=dt, device="cpu").contiguous()
            if finite is not None and not is_finite_tensor(t):  # the source is looked at only to word the message
                cast = "" if not is_finite_tensor(src) else f" after the cast to {dt} (the source values overflow it)"
                raise NonFiniteError(finite, "finite weights", f"tensor '{name}' holds {describe_nonfinite(t)}{cast}",
                                     "convert with --dtype fp32 or bf16" if cast else
                                     "the source file is damaged or from a diverged training run: use another copy")
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t, src
    return os.path.getsize(path)


"""DynamiCrafter adapter files (what the trainer exports): format, reading, validation against a model, merging.

An adapter is a ``.safetensors`` file holding only trained weights, under the official full-checkpoint keys:

- full tensors of the trained parameter groups: ``model.diffusion_model.<key>`` (UNet) and ``image_proj_model.<key>``
  (the query transformer P); they replace the model's tensors of the same key;
- LoRA pairs on attention projections, in the usual LoRA naming: ``model.diffusion_model.<module>.lora_down.weight``
  [rank, in], ``<module>.lora_up.weight`` [out, rank] and ``<module>.alpha`` (scalar); the patch is
  ``W += (alpha / rank) * up @ down`` on ``model.diffusion_model.<module>.weight``.

Metadata (strings): ``dynamicrafter.adapter.format`` ("1"), ``dynamicrafter.variant``, ``dynamicrafter.adapter.stage``,
``dynamicrafter.adapter.groups`` (JSON list), ``dynamicrafter.adapter.step``, ``dynamicrafter.adapter.base_sha256``
(sha256 of the checkpoint training started from, "none" for random init), ``dynamicrafter.adapter.base_name``,
``dynamicrafter.adapter.p_config`` (JSON of P's ResamplerConfig), ``dynamicrafter.adapter.unet_config`` (JSON of the
UNet's config), ``dynamicrafter.adapter.lora_rank`` / ``lora_alpha``, ``dynamicrafter.adapter.ema`` ("true" when
the EMA weights were exported).

``validate_adapter`` is a pure function on shapes and metadata: a loader node calls it before patching and gets one
clear line when the adapter belongs to another variant or another P shape.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from .checkpoint import META_VARIANT, PART_PREFIX
from .errors import DynamiCrafterInputError
from .log import logger

FORMAT = "1"
UNET_PREFIX = PART_PREFIX["unet"]
P_PREFIX = PART_PREFIX["image_proj"]
LORA_DOWN = ".lora_down.weight"
LORA_UP = ".lora_up.weight"
LORA_ALPHA = ".alpha"

META_FORMAT = "dynamicrafter.adapter.format"
META_STAGE = "dynamicrafter.adapter.stage"
META_GROUPS = "dynamicrafter.adapter.groups"
META_STEP = "dynamicrafter.adapter.step"
META_BASE_SHA = "dynamicrafter.adapter.base_sha256"
META_BASE_NAME = "dynamicrafter.adapter.base_name"
META_P_CONFIG = "dynamicrafter.adapter.p_config"
META_UNET_CONFIG = "dynamicrafter.adapter.unet_config"
META_LORA_RANK = "dynamicrafter.adapter.lora_rank"
META_LORA_ALPHA = "dynamicrafter.adapter.lora_alpha"
META_EMA = "dynamicrafter.adapter.ema"
# kohya copies: the key of each LoRA module -> its module path, so the pack reads its own kohya files back exactly
META_KOHYA = "dynamicrafter.adapter.kohya_modules"
KOHYA_PREFIX = "lora_unet_"

Shape = Tuple[int, ...]


@dataclass
class AdapterInfo:
    """What an adapter holds, after validation."""

    variant: str
    stage: str
    groups: List[str]
    step: int
    base_sha256: str
    full_keys: List[str] = field(default_factory=list)         # full tensors replacing model tensors
    lora: Dict[str, Tuple[int, float]] = field(default_factory=dict)  # module weight key -> (rank, alpha)
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def trains_p(self) -> bool:
        return any(k.startswith(P_PREFIX) for k in self.full_keys)


def _shape(v: Any) -> Shape:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def is_lora_key(key: str, keys: Iterable[str]) -> bool:
    """A LoRA tensor of ``keys``: a down/up weight, or the alpha of a module that has a LoRA pair (the 256 model's own
    ``attn2.alpha`` gates, trained with image_kv, are full tensors)."""
    if key.endswith((LORA_DOWN, LORA_UP)):
        return True
    return key.endswith(LORA_ALPHA) and key[: -len(LORA_ALPHA)] + LORA_DOWN in keys


def lora_modules(keys: Iterable[str]) -> List[str]:
    """Module paths (full key without the ``.lora_down.weight`` suffix) of every LoRA pair."""
    return sorted({k[: -len(LORA_DOWN)] for k in keys if k.endswith(LORA_DOWN)})


def read_adapter(path: str, device: Union[str, torch.device] = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of an adapter file (safetensors only; one line when the file is not an adapter)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise DynamiCrafterInputError(f"adapter '{path}'", "a DynamiCrafter adapter .safetensors file",
                                      f"an unreadable file ({str(err)[:120]})", "export it again with the trainer")
    if meta.get(META_KOHYA) is not None:              # the trainer's kohya copy: back to the adapter's own keys
        logger.info("adapter '%s': the trainer's kohya-key copy, read back under the adapter's own keys", path)
        return from_kohya(tensors, meta, name=f"adapter '{path}'")
    if meta.get(META_FORMAT) is None and any(k.startswith(KOHYA_PREFIX) for k in tensors):
        raise DynamiCrafterInputError(f"adapter '{path}'", "a DynamiCrafter adapter (trainer output)",
                                      "a LoRA in kohya format without DynamiCrafter metadata",
                                      "load it with ComfyUI's LoraLoaderModelOnly instead")
    if meta.get(META_FORMAT) is None:
        raise DynamiCrafterInputError(f"adapter '{path}'", "a DynamiCrafter adapter (metadata "
                                      f"'{META_FORMAT}')", "a file without it",
                                      "use a file exported by the DynamiCrafter trainer (train.py export)")
    return tensors, meta


def model_shapes(unet: Optional[torch.nn.Module] = None, image_proj: Optional[torch.nn.Module] = None) -> Dict[str, Shape]:
    """Full-checkpoint key -> shape for a loaded UNet and P (the ``model_shapes`` argument of ``validate_adapter``)."""
    out: Dict[str, Shape] = {}
    if unet is not None:
        out.update({UNET_PREFIX + k: tuple(v.shape) for k, v in unet.state_dict().items()})
    if image_proj is not None:
        out.update({P_PREFIX + k: tuple(v.shape) for k, v in image_proj.state_dict().items()})
    return out


def _variant_name(variant: Any) -> str:
    return variant if isinstance(variant, str) else getattr(variant, "name", str(variant))


def _check_header(metadata: Mapping[str, str], variant: Any, name: str) -> str:
    """The adapter's format and variant against the loaded model's; returns the variant it was trained for."""
    if metadata.get(META_FORMAT) is None:
        raise DynamiCrafterInputError(name, f"a DynamiCrafter adapter (metadata '{META_FORMAT}')",
                                      "a file without it", "use a file exported by the DynamiCrafter trainer")
    if metadata[META_FORMAT] != FORMAT:
        raise DynamiCrafterInputError(name, f"adapter format {FORMAT}", f"format {metadata[META_FORMAT]}",
                                      "update the node pack or export the adapter again")
    want = _variant_name(variant)
    got = metadata.get(META_VARIANT, "?")
    if got != want:
        raise DynamiCrafterInputError(
            name, f"an adapter for the loaded DynamiCrafter {want} model", f"one trained for variant {got}",
            f"load the {got} model for this adapter, or train an adapter on {want}")
    return got


def _check_p_config(metadata: Mapping[str, str], shapes: Mapping[str, Shape], name: str) -> None:
    """The recorded P config against the model's P (the clear message before the per-tensor check)."""
    p_model = {k: v for k, v in shapes.items() if k.startswith(P_PREFIX)}
    p_meta = metadata.get(META_P_CONFIG)
    if not (p_meta and p_model):
        return
    cfg = json.loads(p_meta)
    q = cfg.get("num_queries", 0) * cfg.get("video_length", 0)
    expect = {P_PREFIX + "latents": (1, q, cfg.get("dim")),
              P_PREFIX + "proj_in.weight": (cfg.get("dim"), cfg.get("embedding_dim")),
              P_PREFIX + "proj_out.weight": (cfg.get("output_dim"), cfg.get("dim"))}
    for k, shp in expect.items():
        if k in p_model and tuple(p_model[k]) != tuple(shp):
            raise DynamiCrafterInputError(
                name, f"an adapter for the model's query transformer P ({k[len(P_PREFIX):]} {list(p_model[k])})",
                f"one trained with P of {k[len(P_PREFIX):]} {list(shp)} "
                f"(queries {cfg.get('num_queries')}x{cfg.get('video_length')} frames, dim {cfg.get('dim')}, "
                f"CLIP width {cfg.get('embedding_dim')}, output {cfg.get('output_dim')})",
                "use an adapter trained for this model's P (same variant and P configuration)")


def _full_tensors(tensors: Mapping[str, Any], shapes: Mapping[str, Shape], name: str,
                  bad: List[str]) -> List[str]:
    """The adapter's full (non-LoRA) keys that fit the model; misfits go to ``bad`` (a P misfit raises at once)."""
    full = []
    for key, v in tensors.items():
        if is_lora_key(key, tensors):
            continue
        if key not in shapes:
            bad.append(f"{key} (not in the model)")
        elif tuple(shapes[key]) != _shape(v):
            if key.startswith(P_PREFIX):
                raise DynamiCrafterInputError(
                    name, f"P tensor {key[len(P_PREFIX):]} of shape {list(shapes[key])}",
                    f"shape {list(_shape(v))}", "use an adapter trained for this model's P (same variant and P shape)")
            bad.append(f"{key} (UNet {list(shapes[key])}, adapter {list(_shape(v))})")
        else:
            full.append(key)
    return full


def _lora_targets(tensors: Mapping[str, Any], shapes: Mapping[str, Shape],
                  bad: List[str]) -> Dict[str, Tuple[int, float]]:
    """target weight -> (rank, alpha) of every LoRA pair that fits the model; misfits go to ``bad``."""
    lora = {}
    for mod in lora_modules(tensors):
        down, up = tensors[mod + LORA_DOWN], tensors.get(mod + LORA_UP)
        target = mod + ".weight"
        if up is None:
            bad.append(f"{mod} (lora_up missing)")
            continue
        r_down, r_up = _shape(down)[0], _shape(up)[1]
        if target not in shapes:
            bad.append(f"{target} (LoRA target not in the model)")
        elif r_down != r_up or (_shape(up)[0], _shape(down)[1]) != tuple(shapes[target]):
            bad.append(f"{target} (model {list(shapes[target])}, LoRA up {list(_shape(up))} down {list(_shape(down))})")
        else:
            a = tensors.get(mod + LORA_ALPHA)
            alpha = float(a.item()) if isinstance(a, torch.Tensor) else float(r_down)
            lora[target] = (r_down, alpha)
    return lora


def validate_adapter(tensors: Mapping[str, Any], metadata: Mapping[str, str], variant: Any,
                     shapes: Mapping[str, Shape], name: str = "adapter") -> AdapterInfo:
    """Check an adapter against a model and return what it holds; raise DynamiCrafterInputError (one line) if not.

    ``tensors``: the adapter's key -> tensor (or shape). ``metadata``: its safetensors metadata. ``variant``: the
    loaded model's variant (name or Variant). ``shapes``: the model's full-checkpoint key -> shape
    (``model_shapes(unet, image_proj)``). Refused: no adapter metadata, another variant, another P shape
    (checked through the recorded P config and every ``image_proj_model.*`` tensor), a tensor the model lacks or
    has with another shape, a LoRA pair whose product does not fit the target weight.
    """
    got = _check_header(metadata, variant, name)
    _check_p_config(metadata, shapes, name)
    bad: List[str] = []
    full = _full_tensors(tensors, shapes, name, bad)
    lora = _lora_targets(tensors, shapes, bad)
    if bad:
        raise DynamiCrafterInputError(name, "tensors that fit the loaded model", f"{len(bad)} that do not, e.g. "
                                      + "; ".join(bad[:3]), "use an adapter trained on this model's architecture")
    if not full and not lora:
        raise DynamiCrafterInputError(name, "trained weights", "an empty adapter", "export it again")
    try:
        groups = json.loads(metadata.get(META_GROUPS, "[]"))
    except ValueError:
        groups = []
    return AdapterInfo(variant=got, stage=metadata.get(META_STAGE, "?"), groups=list(groups),
                       step=int(metadata.get(META_STEP, "0") or 0), base_sha256=metadata.get(META_BASE_SHA, "none"),
                       full_keys=sorted(full), lora=lora, metadata=dict(metadata))


def lora_delta(tensors: Mapping[str, torch.Tensor], module: str, dtype=torch.float32) -> torch.Tensor:
    """``(alpha / rank) * up @ down`` of one LoRA pair (module = full key without ``.lora_down.weight``)."""
    down = tensors[module + LORA_DOWN].to(dtype)
    up = tensors[module + LORA_UP].to(dtype)
    rank = down.shape[0]
    a = tensors.get(module + LORA_ALPHA)
    alpha = float(a.item()) if a is not None else float(rank)
    return (alpha / rank) * (up @ down)


def merge_adapter(state: Dict[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
                  strength: float = 1.0) -> Dict[str, torch.Tensor]:
    """Apply an adapter to a full-key state dict in place: replace full tensors (blended by ``strength``), add LoRA
    deltas. Returns ``state``. Validate first (``validate_adapter``)."""
    for key, v in tensors.items():
        if is_lora_key(key, tensors):
            continue
        old = state[key]
        new = v.to(old.dtype)
        state[key] = new if strength == 1.0 else (old.float() + strength * (new.float() - old.float())).to(old.dtype)
    for mod in lora_modules(tensors):
        w = state[mod + ".weight"]
        state[mod + ".weight"] = (w.float() + strength * lora_delta(tensors, mod)).to(w.dtype)
    return state


def kohya_name(module: str) -> str:
    """``model.diffusion_model.<path>`` -> ``lora_unet_<path with dots as underscores>`` (kohya / sd-scripts naming,
    which ComfyUI's ``model_lora_keys_unet`` maps to ``diffusion_model.<path>.weight`` on every host)."""
    if not module.startswith(UNET_PREFIX):
        raise DynamiCrafterInputError("LoRA module", f"a UNet module ({UNET_PREFIX}...)", repr(module),
                                      "only UNet LoRA pairs have kohya names")
    return KOHYA_PREFIX + module[len(UNET_PREFIX):].replace(".", "_")


def to_kohya(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Tuple[Dict[str, torch.Tensor],
                                                                                        Dict[str, str]]:
    """A LoRA-only adapter -> (tensors, metadata) under kohya keys ``lora_unet_<path>.lora_down.weight`` /
    ``.lora_up.weight`` / ``.alpha`` that ComfyUI's stock LoRA loaders apply. The metadata keeps the variant and the
    module paths (``META_KOHYA``), and drops the adapter format key: the file is for LoRA loaders; ``read_adapter``
    still reads it back. One line when the adapter holds full tensors (trained layers or P), which LoRA loaders
    cannot apply."""
    full = sorted(k for k in tensors if not is_lora_key(k, tensors))
    if full:
        raise DynamiCrafterInputError("kohya LoRA export", "an adapter of LoRA pairs only",
                                      f"{len(full)} full tensors too (e.g. {full[0]})",
                                      "use the adapter file with DCN_ApplyAdapter, or train groups: [lora] only")
    out: Dict[str, torch.Tensor] = {}
    names: Dict[str, str] = {}
    for mod in lora_modules(tensors):
        name = kohya_name(mod)
        down = tensors[mod + LORA_DOWN]
        out[name + LORA_DOWN] = down
        out[name + LORA_UP] = tensors[mod + LORA_UP]
        a = tensors.get(mod + LORA_ALPHA)
        out[name + LORA_ALPHA] = a if a is not None else torch.tensor(float(down.shape[0]))
        names[name] = mod
    meta = {k: v for k, v in metadata.items() if k != META_FORMAT}
    meta[META_KOHYA] = json.dumps(names, separators=(",", ":"))
    return out, meta


def from_kohya(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
               name: str = "adapter") -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The inverse of ``to_kohya`` (through the module paths it recorded): the adapter's own keys and metadata."""
    try:
        names = json.loads(metadata[META_KOHYA])
    except (KeyError, ValueError):
        raise DynamiCrafterInputError(name, "a kohya copy written by the DynamiCrafter trainer",
                                      "a damaged module table", "export the adapter again") from None
    out: Dict[str, torch.Tensor] = {}
    for key, v in tensors.items():
        for suffix in (LORA_DOWN, LORA_UP, LORA_ALPHA):
            if key.endswith(suffix) and key[: -len(suffix)] in names:
                out[names[key[: -len(suffix)]] + suffix] = v
                break
        else:
            raise DynamiCrafterInputError(name, "the LoRA keys its module table lists", f"the key {key!r}",
                                          "export the adapter again")
    meta = {k: v for k, v in metadata.items() if k != META_KOHYA}
    meta[META_FORMAT] = FORMAT
    return out, meta


__all__ = ["AdapterInfo", "to_kohya", "from_kohya", "kohya_name", "KOHYA_PREFIX", "validate_adapter", "read_adapter", "model_shapes", "merge_adapter", "lora_delta",
           "lora_modules", "is_lora_key", "FORMAT", "UNET_PREFIX", "P_PREFIX"]

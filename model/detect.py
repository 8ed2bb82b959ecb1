"""What a DynamiCrafter checkpoint is and whether it fits: the family (from the keys), the registry variant and
config to build, and the validation of the file's UNet / P keys and shapes against those modules.

Weights cannot tell 512, 1024 and 512-interp apart; the variant comes from this pack's metadata
(``dynamicrafter.variant``), else the caller's choice, else a file-name hint, else 512, and the reason is always
returned and logged. A file whose metadata names a small registry config (``dynamicrafter.config``, e.g. the
random-weight files of model/tiny.py) is built with that config and says so; nothing else is tried when the
weights do not fit.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .checkpoint import (META_CONFIG, META_FAMILY, META_TINY, META_VARIANT, PART_PREFIX, CheckpointFile, Shape,
                         first_few, normalize_keys, split_keys)
from .config import Variant
from .errors import DynamiCrafterInputError
from .formats import describe_foreign, has_learnable_alpha, is_dynamicrafter_unet, is_tooncrafter
from .log import logger
from .resampler import Resampler
from .unet import UNetModel
from .variants import SMALL_CONFIGS, VARIANTS, families, family_variants, get_variant, variant_names
from .tooncrafter import dualref_missing_keys

def family_of(variant: str) -> str:
    """The family written in metadata for a registry variant (its own key family, model/variants.py)."""
    return get_variant(variant).families[0]


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
    config: Optional[str] = None  # a SMALL_CONFIGS name from the file's metadata; None for real weights


def _hint_from_name(name: str) -> List[str]:
    stem = os.path.splitext(name)[0].lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", stem) if t]
    hits = []
    if any("toon" in t for t in tokens):
        hits.append("tooncrafter")
    elif any(("interp" in t) or ("loop" in t) for t in tokens):
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


def _refuse_foreign(flat: Mapping[str, Any], what: str) -> None:
    """One line for a file that is not a DynamiCrafter UNet (naming SD/SDXL/SVD files when it looks like one)."""
    looks = describe_foreign(flat)
    found = looks or f"{len(flat)} keys starting {first_few(sorted(flat))}"
    raise DynamiCrafterInputError(
        what,
        "a DynamiCrafter checkpoint (UNet with 'temopral_conv', 'init_attn' and image K/V 'to_k_ip', plus "
        "'image_proj_model.*')",
        found,
        "this file is not a DynamiCrafter model: pick the DynamiCrafter model.ckpt (Hugging Face "
        "Doubiiu/DynamiCrafter_512, _1024, _512_Interp) or a pruned DynamiCrafter .safetensors"
        + ("; load SD/SDXL/SVD files with the host's own loaders" if looks else ""),
    )


def _family_from_keys(parts: Dict[str, Dict[str, str]], old_name: bool) -> Tuple[str, str]:
    """(family, evidence) from the keys: 256 by its alpha gates or old name, ToonCrafter by its decoder, else 512."""
    unet = parts["unet"]
    alpha = has_learnable_alpha(unet)
    if alpha or old_name:
        n_alpha = sum(k.endswith("attn2.alpha") for k in unet)
        return "256", ("keys say 256: " + ", ".join(
            ([f"{n_alpha} learnable 'attn2.alpha' gates"] if alpha else [])
            + (["old name 'framestride_embed'"] if old_name else [])))
    if is_tooncrafter(parts["vae"]):
        n = sum("decoder.attn_refinement." in k for k in parts["vae"])
        return "tooncrafter", f"keys say ToonCrafter: dual-reference VAE decoder ({n} 'decoder.attn_refinement' keys)"
    return "512-family", "keys say 512-family: no 'attn2.alpha' gates" + (
        " and no ToonCrafter decoder keys" if parts["vae"] else "")


def _with_metadata_family(family: str, evidence: str, meta_family: Optional[str], vae: Mapping[str, str],
                          what: str) -> Tuple[str, str]:
    """The key family reconciled with the file's metadata family (a pruned ToonCrafter file has no VAE keys)."""
    if meta_family is None:
        return family, evidence
    if meta_family not in families():
        raise DynamiCrafterInputError(what, f"metadata '{META_FAMILY}' among {families()}",
                                      repr(meta_family), "reconvert the file with this pack")
    if meta_family == "tooncrafter" and family == "512-family" and not vae:
        return "tooncrafter", "metadata says ToonCrafter (pruned file without the VAE, keys as 512-family)"
    if meta_family == "tooncrafter" and family == "512-family":  # the decoder lost keys (a damaged file)
        missing = dualref_missing_keys(vae)
        raise DynamiCrafterInputError(
            what, "the keys of ToonCrafter's dual-reference decoder (metadata family 'tooncrafter')",
            f"{len(missing)} missing decoder keys (first {missing[:3]})",
            "the file is incomplete: use the official ToonCrafter checkpoint or reconvert it from it")
    if meta_family != family:
        raise DynamiCrafterInputError(
            what, f"metadata family '{meta_family}' to match the weights", evidence,
            "the file's metadata is wrong: reconvert it from the original checkpoint",
        )
    return family, evidence


def _check_choices(family: str, evidence: str, explicit: Optional[str], meta_variant: Optional[str],
                   what: str) -> None:
    """An explicit variant or a metadata variant that the keys (or each other) rule out is refused."""
    allowed = family_variants(family)
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


def _choose(family: str, explicit: Optional[str], meta_variant: Optional[str],
            filename: Optional[str]) -> Tuple[str, str, str]:
    """(variant, decided_by, why): keys > metadata > explicit > file name > the family's default."""
    allowed = family_variants(family)
    if len(allowed) == 1:
        why = f"variant '{allowed[0]}' from the keys"
        if family == "tooncrafter":
            why += " (the 512 interpolation UNet with ToonCrafter's dual-reference VAE decoder)"
        return allowed[0], "keys", why
    if meta_variant is not None:
        return meta_variant, "metadata", (f"variant '{meta_variant}' from the file's metadata '{META_VARIANT}' "
                                          "(written by the converter)")
    if explicit is not None:
        return explicit, "argument", f"variant '{explicit}' as chosen explicitly"
    hint, note = variant_hint_from_filename(filename)
    if hint is not None and hint in allowed:
        return hint, "filename", f"variant '{hint}' because {note} (no metadata, no explicit choice)"
    chosen = allowed[0]
    return chosen, "default", (f"variant '{chosen}' by default: the weights of 512, 1024 and 512-interp are identical "
                               f"in layout and there was no metadata, no explicit choice, and {note}; choose the "
                               f"variant if this is the 1024 or interpolation model")


def _decide(parts: Dict[str, Dict[str, str]], flat: Mapping[str, Any], metadata: Mapping[str, str],
            variant: Union[None, str, Variant], filename: Optional[str], old_name: bool, what: str) -> Detection:
    """The Detection of a file: its key family, reconciled with its metadata, the choices checked, one chosen."""
    if not parts["unet"] or not is_dynamicrafter_unet(parts["unet"]):
        _refuse_foreign(flat, what)
    explicit = _variant_name(variant)
    family, evidence = _family_from_keys(parts, old_name)
    meta_variant = metadata.get(META_VARIANT) or None
    if meta_variant is not None and meta_variant not in VARIANTS:
        raise DynamiCrafterInputError(
            what, f"metadata '{META_VARIANT}' among {variant_names()}", repr(meta_variant),
            "the file was written by a newer or different tool; choose the variant explicitly or reconvert it",
        )
    family, evidence = _with_metadata_family(family, evidence, metadata.get(META_FAMILY) or None, parts["vae"], what)
    _check_choices(family, evidence, explicit, meta_variant, what)
    chosen, by, why = _choose(family, explicit, meta_variant, filename)
    config = _config_from_metadata(metadata, what)
    if config is not None:
        evidence += (f"; config '{config}' from the file's metadata '{META_CONFIG}' (random weights: a pipeline "
                     "check, not a model)")
    return Detection(family=family, variant=chosen, reason=f"{why}; {evidence}", decided_by=by, config=config)


def _config_from_metadata(metadata: Mapping[str, str], what: str) -> Optional[str]:
    """The small registry config a file names (files of model/tiny.py written before META_CONFIG say only
    META_TINY, which means "tiny"); None for real checkpoints."""
    config = metadata.get(META_CONFIG) or ("tiny" if metadata.get(META_TINY) else None)
    if config is not None and config not in SMALL_CONFIGS:
        raise DynamiCrafterInputError(
            what, f"metadata '{META_CONFIG}' among {list(SMALL_CONFIGS)}", repr(config),
            "the file was written by a newer or different tool; rewrite it with this pack",
        )
    return config


def file_variant(det: Detection) -> Variant:
    """The registry entry to build for a detected file: the variant, in the small config its metadata names."""
    return get_variant(det.variant, tiny=det.config or False)


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
        norm, _, old = normalize_keys(list(flat), deepspeed=False)
        flat = {n: flat[o] for n, o in norm.items()}
        parts, _ = split_keys(flat)
        what = f"checkpoint '{os.path.basename(filename)}'" if filename else "checkpoint"
    det = _decide(parts, flat, metadata or {}, variant, filename, old, what)
    logger.info("%s: %s", what, det.reason)
    return det


# ----------------------------------------------------------------------------------------------------------------
# Validation against the model (built on the meta device)
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _expected_shapes(kind: str, cfg) -> Dict[str, Shape]:
    ctor = UNetModel if kind == "unet" else Resampler
    with torch.device("meta"):
        model = ctor(cfg, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


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
        problems.append(f"{len(missing)} missing ({first_few([prefix + k for k in missing])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({first_few([prefix + k for k in unexpected])})")
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

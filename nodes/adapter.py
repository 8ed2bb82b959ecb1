"""Apply a trainer adapter (``model/adapters.py`` format) to a loaded DynamiCrafter MODEL and image projector P.

The adapter is validated against the loaded model (variant, every tensor shape, P's configuration) before anything
is patched. The UNet weights go through the host's own weight patching on a clone of the ModelPatcher, so the
adapter stacks with other LoRAs / adapters and is undone when another model is loaded:

- LoRA pairs -> the host's LoRA patch: ``comfy.weight_adapter.LoRAAdapter`` on hosts that have it (2025 on), else
  the ``("lora", (up, down, alpha, mid, dora_scale, reshape))`` tuple (the 2024-03 host reads the first four);
  both compute ``W += strength * (alpha / rank) * up @ down``.
- full tensors (trained groups) -> the host's plain weight patch ``(adapter_tensor,)`` with ``strength_patch = s``
  and ``strength_model = 1 - s``: ``W = (1 - s) W + s A``, the blend the host's own model-merge nodes use. It does
  not depend on the weights' values at the time the node runs (another clone may hold them patched in place).

P is small: the node returns a new projector with the adapted weights; the input P is never changed.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch

import folder_paths

from ..model.folders import ADAPTER_FOLDER
from ..model import adapters as ad
from ..model.errors import DynamiCrafterInputError
from ..model.guards import check_state_dict_finite
from ..model.limits import RANGES
from ..model.log import logger
from . import compat
from .loader import ImageProjector

ADAPTER_EXTENSIONS = (".safetensors",)
_SEARCH = (ADAPTER_FOLDER, "loras")          # listed in this order; the first folder holding a name wins


def register_adapter_folder() -> None:
    """Register ``models/dynamicrafter_adapters`` (idempotent; a user's extra_model_paths entry keeps working)."""
    fnp = folder_paths.folder_names_and_paths
    if ADAPTER_FOLDER not in fnp:
        fnp[ADAPTER_FOLDER] = ([os.path.join(folder_paths.models_dir, ADAPTER_FOLDER)], set(ADAPTER_EXTENSIONS))


def _folders() -> List[str]:
    register_adapter_folder()
    return [k for k in _SEARCH if k in folder_paths.folder_names_and_paths]


def list_adapters() -> List[str]:
    names = compat.list_files(_folders(), ADAPTER_EXTENSIONS)
    warn_adapters_in_loras(names)
    return names


_said: Dict[Tuple[str, float], bool] = {}


def warn_adapters_in_loras(names: List[str]) -> None:
    """Name, once per file version, a DynamiCrafter adapter in ``models/loras`` that ComfyUI's own LoRA loaders list
    but cannot apply (its keys are the adapter's own, which they do not map): it works only through this node. The
    trainer's kohya-key copies of LoRA-only adapters are what the stock loaders apply, and are not named."""
    from safetensors import SafetensorError, safe_open

    for name in names:
        path = compat.find_file(["loras"], name) if "loras" in folder_paths.folder_names_and_paths else None
        if path is None:
            continue
        try:
            key = (path, os.path.getmtime(path))
            if key in _said:
                continue
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                kohya = any(k.startswith("lora_unet_") for k in f.keys())  # the stock loaders' LoRA naming
        except (OSError, SafetensorError):
            continue
        _said[key] = meta.get(ad.META_FORMAT) is not None and not kohya
        if _said[key]:
            logger.warning("models/loras/%s is a DynamiCrafter adapter: ComfyUI's LoRA loaders list it but find none "
                           "of its keys and change nothing; apply it with DynamiCrafter Apply Adapter (the trainer "
                           "also writes a kohya-key copy of a LoRA-only adapter, which the stock loaders apply)", name)


def adapter_path(name: str) -> str:
    path = compat.find_file(_folders(), name)
    if path is not None:
        return path
    raise DynamiCrafterInputError(
        "adapter_name", f"a .safetensors file in the model folders {_folders()}", repr(name),
        "put the adapter (the trainer's adapter.safetensors) into models/dynamicrafter_adapters "
        "(or refresh the page after adding it)")


# ----------------------------------------------------------------------------------------------------------------
# host patch formats
# ----------------------------------------------------------------------------------------------------------------
def lora_patch(up: torch.Tensor, down: torch.Tensor, alpha: float, loaded_keys=()):
    """One LoRA pair in the host's patch format: ``W += strength * (alpha / rank) * up @ down``."""
    weights = (up, down, float(alpha), None, None, None)  # up [out, r], down [r, in], alpha, mid, dora, reshape
    cls = compat.lora_adapter_class()
    if cls is not None:
        return cls(set(loaded_keys), weights)
    return ("lora", weights)


def unet_patches(tensors: Dict[str, torch.Tensor], info: ad.AdapterInfo, full_keys: List[str]):
    """(LoRA patches, full-tensor patches): host model keys (``diffusion_model.*``) -> patch values."""
    lora: Dict[str, object] = {}
    for mod in ad.lora_modules(tensors):
        if not mod.startswith(ad.UNET_PREFIX):
            continue
        target = mod + ".weight"
        _rank, alpha = info.lora[target]
        up, down = tensors[mod + ad.LORA_UP], tensors[mod + ad.LORA_DOWN]
        loaded = (mod + ad.LORA_UP, mod + ad.LORA_DOWN, mod + ad.LORA_ALPHA)
        lora[target[len("model."):]] = lora_patch(up, down, alpha, loaded)
    full = {k[len("model."):]: (tensors[k],) for k in full_keys if k.startswith(ad.UNET_PREFIX)}
    return lora, full


def adapted_projector(image_proj: ImageProjector, tensors: Dict[str, torch.Tensor], strength: float) -> ImageProjector:
    """A new P with the adapter's P weights (full tensors blended by strength, LoRA added); the input is untouched."""
    state = {ad.P_PREFIX + k: v.detach().clone() for k, v in image_proj.model.state_dict().items()}
    ad.merge_adapter(state, {k: v for k, v in tensors.items() if k.startswith(ad.P_PREFIX)}, strength)
    return ImageProjector(image_proj.variant, {k[len(ad.P_PREFIX):]: v.float() for k, v in state.items()})


def _check_inputs(model, image_proj):
    variant = getattr(getattr(model, "model", None), "dc_variant", None)
    if variant is None or not hasattr(model, "clone"):
        raise DynamiCrafterInputError("model", "a DynamiCrafter MODEL from DCN_Loader",
                                      type(getattr(model, "model", model)).__name__, "load the model with DCN_Loader")
    if not isinstance(getattr(image_proj, "model", None), torch.nn.Module) or not hasattr(image_proj, "variant"):
        raise DynamiCrafterInputError("image_proj", "the image projector P from DCN_Loader",
                                      type(image_proj).__name__, "connect DCN_Loader's image_proj output")
    return variant


def apply_adapter(model, image_proj, adapter_name: str, strength: float) -> Tuple[object, object, str]:
    """Validate, then patch a clone of ``model`` and build an adapted copy of ``image_proj``; returns them + info."""
    variant = _check_inputs(model, image_proj)
    label = f"adapter '{adapter_name}'"
    try:
        tensors, meta = ad.read_adapter(adapter_path(adapter_name))
    except DynamiCrafterInputError as err:   # name the file as the user picked it, not by its full path
        raise DynamiCrafterInputError(label, err.expected, err.found, err.todo) from None
    shapes = ad.model_shapes(model.model.diffusion_model, image_proj.model)
    info = ad.validate_adapter(tensors, meta, variant, shapes, name=label)
    check_state_dict_finite(tensors, label, "the adapter was saved from a diverged training run: export an earlier "
                                            "step's adapter (or lower the learning rate and train again)")
    full_keys = list(info.full_keys)
    lora, full = unet_patches(tensors, info, full_keys)
    has_p = any(k.startswith(ad.P_PREFIX) for k in tensors)
    summary = (f"{label}: stage {info.stage}, groups {', '.join(info.groups) or '?'}, step {info.step}; "
               f"{len(lora)} LoRA pairs and {len(full)} full tensors on the UNet"
               + (", P weights" if has_p else "") + f"; strength {strength:g}")
    if strength == 0.0:                        # validated, nothing to change: the inputs as they are
        return model, image_proj, summary + " (no change)"

    patched = model.clone()
    done = set()
    if lora:
        done |= {k if isinstance(k, str) else k[0] for k in patched.add_patches(lora, float(strength), 1.0)}
    if full:
        done |= {k if isinstance(k, str) else k[0] for k in patched.add_patches(full, float(strength),
                                                                                   1.0 - float(strength))}
    missed = sorted((set(lora) | set(full)) - done)
    if missed:  # validate_adapter checked them against the same model: a host that names weights otherwise
        raise DynamiCrafterInputError(label, "weights the host can patch", f"{len(missed)} it does not know "
                                      f"(first {missed[0]})", "report this with the host's version")
    new_proj = adapted_projector(image_proj, tensors, float(strength)) if has_p else image_proj
    logger.info("%s", summary)
    return patched, new_proj, summary


# ----------------------------------------------------------------------------------------------------------------
# node
# ----------------------------------------------------------------------------------------------------------------
class DCN_ApplyAdapter:
    """Apply a DynamiCrafter adapter (trainer output) to MODEL and P."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "DynamiCrafter MODEL from DCN_Loader (or from another adapter / LoRA "
                                           "node: adapters stack)."}),
            "image_proj": ("DCN_IMAGE_PROJ", {"tooltip": "The image projector P from DCN_Loader; an adapter that "
                                                         "trained P gives an adapted copy."}),
            "adapter_name": (list_adapters(), {
                "tooltip": "Adapter file (the trainer's adapter.safetensors) from models/dynamicrafter_adapters or "
                           "models/loras. It must be trained for the loaded variant and P shape."}),
            "strength_model": ("FLOAT", {
                "default": 1.0, "min": RANGES["adapter_strength"][0], "max": RANGES["adapter_strength"][1],
                "step": 0.01,
                "tooltip": "1.0 = the trained weights. LoRA parts are scaled by it; trained full tensors (and P) "
                           "are blended: (1 - s) * model + s * adapter. 0 = no change."}),
        }}

    RETURN_TYPES = ("MODEL", "DCN_IMAGE_PROJ")
    RETURN_NAMES = ("model", "image_proj")
    OUTPUT_TOOLTIPS = ("The model with the adapter's UNet weights patched in (host patching: stacks, unloads).",
                       "P with the adapter's P weights (the input P when the adapter has none).")
    FUNCTION = "apply"
    CATEGORY = "DynamiCrafter/loaders"
    DISPLAY_NAME = "DynamiCrafter Apply Adapter"
    DESCRIPTION = ("Applies an adapter trained with the pack's trainer (LoRA and/or trained layers, P) to a loaded "
                   "DynamiCrafter model; refuses adapters of another variant or P shape before patching.")

    def apply(self, model, image_proj, adapter_name, strength_model=1.0):
        m, p, summary = apply_adapter(model, image_proj, adapter_name, float(strength_model))
        return {"ui": {"text": [summary]}, "result": (m, p)}


register_adapter_folder()


NODES = (DCN_ApplyAdapter,)   # what this file adds to the registry (nodes/__init__.py)

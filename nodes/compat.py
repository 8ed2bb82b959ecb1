"""The few host (ComfyUI) APIs that differ between the 2024-03 host and current ones, behind one name each.

Each function's docstring names the difference it bridges; every feature test here looks for the API itself, never
a version number.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import types
from typing import List, Optional, Tuple

import torch

import comfy.model_management
import comfy.ops
import comfy.samplers
import folder_paths

from ..model.folders import CHECKPOINT_FOLDERS, LEGACY_FOLDER_NAMES, MODEL_FOLDER
from ..model.errors import DynamiCrafterInputError
from ..model.fileio import walk_files
from ..model.log import logger


# ----------------------------------------------------------------------------------------------------------------
# model folders
# ----------------------------------------------------------------------------------------------------------------
def _folder_key(name: str) -> Optional[str]:
    """The folder_paths key of a model folder on this host ("diffusion_models" is "unet" on 2024 hosts)."""
    fnp = folder_paths.folder_names_and_paths
    if name in fnp:
        return name
    if name in LEGACY_FOLDER_NAMES and LEGACY_FOLDER_NAMES[name] in fnp:
        return LEGACY_FOLDER_NAMES[name]
    return None


def register_model_folder() -> None:
    """Register ``models/dynamicrafter`` (idempotent; a user's extra_model_paths entry keeps working)."""
    fnp = folder_paths.folder_names_and_paths
    if MODEL_FOLDER not in fnp:
        path = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
        fnp[MODEL_FOLDER] = ([path], set(folder_paths.supported_pt_extensions))


def checkpoint_folders() -> List[str]:
    """Folders the loader lists, in priority order: dynamicrafter, diffusion_models, checkpoints."""
    keys = [_folder_key(name) for name in CHECKPOINT_FOLDERS]
    return [k for k in dict.fromkeys(keys) if k is not None and k in folder_paths.folder_names_and_paths]


_warned_loops: set = set()


def list_files(keys: List[str], extensions: Optional[Tuple[str, ...]] = None) -> List[str]:
    """File names in the host's model folders ``keys`` (first listing wins), optionally by extension.

    Our own bounded walk (model/fileio.walk_files: symlinks followed, every real folder once), not the host's
    ``get_filename_list``: its ``os.walk(followlinks=True)`` never ends on a folder with two links to ``.``. Such a
    link is named once in the log, since the host's own loaders listing that folder would still hang."""
    names: List[str] = []
    for key in keys:
        folders, exts = folder_paths.folder_names_and_paths.get(key, ([], set()))
        wanted = tuple(e.lower() for e in (extensions if extensions is not None else exts)) or None
        for folder in folders:
            found = walk_files(folder, wanted)
            for loop in found.loops:
                where = os.path.join(folder, loop)
                if where not in _warned_loops:
                    _warned_loops.add(where)
                    logger.warning("model folder %s: %s links back to a folder above it; it is listed once here, "
                                   "but ComfyUI's own loaders (os.walk with followlinks) would walk it for ever: "
                                   "remove the link", folder, where)
            if found.truncated:
                logger.warning("model folder %s: listing stopped at %s", folder, found.truncated)
            names.extend(found.files)
    return list(dict.fromkeys(names))


def find_file(keys: List[str], name: str) -> Optional[str]:
    """Full path of ``name`` in the first of the host's model folders ``keys`` that holds it, else None."""
    for key in keys:
        path = folder_paths.get_full_path(key, name)
        if path is not None and os.path.isfile(path):
            return path
    return None


def list_checkpoints() -> List[str]:
    return list_files(checkpoint_folders())


def checkpoint_path(name: str) -> str:
    path = find_file(checkpoint_folders(), name)
    if path is not None:
        return path
    raise DynamiCrafterInputError(
        "ckpt_name", "a file in the model folders", f"no {name!r} in {searched_dirs()}",
        "put the DynamiCrafter checkpoint into models/checkpoints (or models/dynamicrafter) and refresh the page",
    )


def searched_dirs() -> List[str]:
    """Every directory the loader searches, in order (what a 'file not found' message names)."""
    dirs: List[str] = []
    for key in checkpoint_folders():
        dirs.extend(folder_paths.folder_names_and_paths[key][0])
    return list(dict.fromkeys(dirs))


def missing_checkpoint(ckpt_name: Optional[str]) -> Optional[str]:
    """The one-line validation message of a loader's ``ckpt_name`` that is in none of the model folders, else None."""
    if ckpt_name is not None and ckpt_name not in list_checkpoints():
        return (f"ckpt_name: model file {ckpt_name!r} not found; searched {searched_dirs()}; put it into "
                "models/checkpoints (or models/dynamicrafter) and refresh the page")
    return None


# ----------------------------------------------------------------------------------------------------------------
# layers and attention
# ----------------------------------------------------------------------------------------------------------------
def _cast_conv1d(base):
    """A cast-on-use Conv1d for hosts whose ops lack one (2024-03), built on the host's own weight cast."""

    class Conv1d(torch.nn.Conv1d, comfy.ops.CastWeightBiasOp):
        comfy_cast_weights = getattr(base.Conv2d, "comfy_cast_weights", False)

        def reset_parameters(self):
            return None

        def forward(self, input):
            if self.comfy_cast_weights or self.weight.dtype != input.dtype:
                weight, bias = comfy.ops.cast_bias_weight(self, input)
                return self._conv_forward(input, weight, bias)
            return super().forward(input)

    return Conv1d


def layer_namespace(operations) -> types.SimpleNamespace:
    """The ``operations`` namespace model/unet.py wants, taken from the host's ops class (manual cast, fp8, ...)."""
    ops = operations or comfy.ops.disable_weight_init
    conv1d = getattr(ops, "Conv1d", None) or _cast_conv1d(ops)
    return types.SimpleNamespace(Linear=ops.Linear, Conv1d=conv1d, Conv2d=ops.Conv2d, Conv3d=ops.Conv3d,
                                 GroupNorm=ops.GroupNorm, LayerNorm=ops.LayerNorm)


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The host's attention kernel ([B, N, heads*d] in and out), looked up per call so host settings apply."""
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(q, k, v, heads)


# ----------------------------------------------------------------------------------------------------------------
# text and image encoders
# ----------------------------------------------------------------------------------------------------------------
def sd2_tokenizer():
    """The host's SD2 tokenizer class."""
    # hosts after 2024-03 moved it into comfy/text_encoders/ (there on 2025-10); the 2024-03 host has comfy/sd2_clip.py
    try:
        from comfy.text_encoders.sd2_clip import SD2Tokenizer
    except ImportError:
        from comfy.sd2_clip import SD2Tokenizer
    return SD2Tokenizer


def text_model_takes_options() -> bool:
    """Whether ``comfy.sd1_clip.SDClipModel.__init__`` takes ``model_options``."""
    # SDClipModel gained model_options after 2024-03 (there on 2025-10 and later); the 2024-03 one has none
    import comfy.sd1_clip
    return "model_options" in inspect.signature(comfy.sd1_clip.SDClipModel.__init__).parameters


def clip_size_kwargs(sd: dict) -> dict:
    """``parameters=`` (the weight count of ``sd``) for ``comfy.sd.CLIP`` where the host's CLIP takes it, else {}."""
    # comfy.sd.CLIP takes parameters (its memory estimate) after 2024-03 (there on 2025-10); the 2024-03 one does not
    import comfy.sd
    if "parameters" in inspect.signature(comfy.sd.CLIP.__init__).parameters:
        return {"parameters": sum(v.numel() for v in sd.values())}
    return {}


def clip_vision_image_size(clip_vision) -> int:
    """Input size of the host's CLIP_VISION."""
    # ClipVisionModel.image_size came after 2024-03 (there on 2025-10); the 2024-03 model is always 224
    return int(getattr(clip_vision, "image_size", 224) or 224)


@contextlib.contextmanager
def vae_posterior_mode(vae):
    """Within the block the host's VAE encodes to the posterior mode, not a sample."""
    # the 2024-03 host's DiagonalGaussianRegularizer samples (sample=True, the global RNG); 2025-10 and later default
    # to sample=False (the mode)
    reg = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
    sampling = bool(getattr(reg, "sample", False))
    if sampling:
        reg.sample = False
    try:
        yield
    finally:
        if sampling:
            reg.sample = True


# ----------------------------------------------------------------------------------------------------------------
# sampling plumbing
# ----------------------------------------------------------------------------------------------------------------
def convert_cond(cond):
    """CONDITIONING -> the host's internal cond dicts (``comfy.sampler_helpers`` now, ``comfy.sample`` in 2024)."""
    try:
        from comfy.sampler_helpers import convert_cond as fn
    except ImportError:
        from comfy.sample import convert_cond as fn
    return fn(cond)


def has_cfg_guider() -> bool:
    return hasattr(comfy.samplers, "CFGGuider")


def throw_if_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


def load_models(patchers, memory_required: float = 0) -> None:
    comfy.model_management.load_models_gpu(list(patchers), memory_required)


# ----------------------------------------------------------------------------------------------------------------
# ControlNet
# ----------------------------------------------------------------------------------------------------------------
def get_control(ctl, x, sigma, cond, batched: int, topts: dict):
    """``ctl.get_control`` on either host API."""
    # ControlBase.get_control takes transformer_options since 2024-08 (there on 2025-10); the 2024-03 one does not
    params = inspect.signature(ctl.get_control).parameters
    if "transformer_options" in params:
        return ctl.get_control(x, sigma, cond, batched, topts)
    return ctl.get_control(x, sigma, cond, batched)


# ----------------------------------------------------------------------------------------------------------------
# model patches and the model patcher
# ----------------------------------------------------------------------------------------------------------------
def _patcher_extension():
    try:
        import comfy.patcher_extension as pe
    except ImportError:  # 2024 hosts: no wrappers
        return None
    return pe if hasattr(pe, "WrappersMP") else None


def diffusion_model_wrappers(transformer_options) -> list:
    """The WrappersMP.DIFFUSION_MODEL wrappers in ``transformer_options`` (EasyCache, ...); [] on hosts without."""
    pe = _patcher_extension()
    if pe is None or not isinstance(transformer_options, dict) or not hasattr(pe.WrappersMP, "DIFFUSION_MODEL"):
        return []
    return pe.get_all_wrappers(pe.WrappersMP.DIFFUSION_MODEL, transformer_options)


def check_diffusion_wrappers(transformer_options: dict, channels_in: int, channels_out: int) -> None:
    """Refuse a diffusion-model wrapper this host's version cannot apply to our UNet. EasyCache before it learned the
    model's output channels (its holder takes no ``output_channels``: 2025-10 and older) caches the whole UNet input;
    with the concat latent (8 channels in, 4 out) its skipped steps return the rows of one conditioning only."""
    holder = transformer_options.get("easycache")
    keys = (transformer_options.get("wrappers") or {}).get("diffusion_model") or {}
    if holder is None or "easycache" not in keys or channels_in == channels_out:
        return
    if "output_channels" in inspect.signature(type(holder).__init__).parameters:
        return
    raise DynamiCrafterInputError(
        "EasyCache",
        f"a ComfyUI whose EasyCache caches the model's {channels_out} output channels (v0.3.70 of 2025-11-18 or later)",
        f"this host's EasyCache, which caches all {channels_in} input channels (the concat latent too)",
        "update ComfyUI, use LazyCache with DCN_Guider, or remove EasyCache")


def run_wrapped(fn, owner, wrappers, *args, **kwargs):
    """``fn(*args, **kwargs)`` through the host's wrapper executor, as the host's own UNets call themselves."""
    pe = _patcher_extension()
    return pe.WrapperExecutor.new_class_executor(fn, owner, wrappers).execute(*args, **kwargs)


# Wrapper kinds the host runs only inside its own sampling loop (comfy.samplers): DCN_Sampler's DDIM loop calls
# BaseModel.apply_model directly, so it runs APPLY_MODEL and DIFFUSION_MODEL wrappers (TorchCompileModel, EasyCache's
# UNet part) but never these.
SAMPLER_LOOP_WRAPPERS = ("outer_sample", "prepare_sampling", "sampler_sample", "predict_noise", "calc_cond_batch")


def transformer_options(model) -> dict:
    """The model's transformer_options with the patcher's own wrappers and callbacks merged in, as the host's
    sampling does (comfy.sampler_helpers.prepare_model_patcher): TorchCompileModel, EasyCache, ... live there."""
    topts = dict((getattr(model, "model_options", None) or {}).get("transformer_options", {}))
    for name in ("wrappers", "callbacks"):
        own = getattr(model, name, None)
        if not own:
            continue
        merged = {kind: {key: list(fns) for key, fns in by_key.items()} for kind, by_key in topts.get(name, {}).items()}
        for kind, by_key in own.items():
            for key, fns in by_key.items():
                merged.setdefault(kind, {}).setdefault(key, [])
                merged[kind][key] += [f for f in fns if f not in merged[kind][key]]
        topts[name] = merged
    return topts


def sampler_loop_patches(model) -> List[str]:
    """'key (kind)' of each patch on ``model`` that only the host's sampling loop runs (LazyCache, EasyCache)."""
    wrappers = transformer_options(model).get("wrappers", {})
    found = []
    for kind in SAMPLER_LOOP_WRAPPERS:
        for key, fns in (wrappers.get(kind) or {}).items():
            if fns:
                found.append(f"{key or 'unnamed'} ({kind})")
    return list(dict.fromkeys(found))


# model_options entries through which host nodes (RescaleCFG, PerpNeg, SAG, APG, ...) change the host's CFG step. The
# pack's DDIM sampler and guider compute DynamiCrafter's dual CFG themselves, so they run none of these.
CFG_FUNCTIONS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function")


def cfg_function_patches(model) -> List[str]:
    """The CFG patches on ``model`` (model_options entries that are set and not empty)."""
    opts = getattr(model, "model_options", None) or {}
    return [name for name in CFG_FUNCTIONS if opts.get(name)]


def lora_adapter_class():
    """The host's LoRA weight-adapter class where it has one, else None (the tuple patch format)."""
    # comfy.weight_adapter.LoRAAdapter came in 2025 (there on 2025-10); the 2024-03 host reads ("lora", (up, down, ...))
    try:
        from comfy.weight_adapter import LoRAAdapter
    except ImportError:
        return None
    return LoRAAdapter


def model_sampling(model):
    """The model_sampling object of a MODEL, with its patches (ModelSamplingDiscrete, ...) where the host has them."""
    # ModelPatcher.get_model_object came after 2024-03 (there on 2025-10); the 2024-03 patcher has none
    return model.get_model_object("model_sampling") if hasattr(model, "get_model_object") \
        else model.model.model_sampling


def add_pre_run_callback(patcher, key: str, callback) -> None:
    """``callback(patcher)`` when the host starts sampling with ``patcher`` (``CallbacksMP.ON_PRE_RUN``); nothing on
    hosts without patcher callbacks."""
    # comfy.patcher_extension's ModelPatcher callbacks came after 2024-03 (there on 2025-10); the 2024-03 host has none
    try:
        import comfy.patcher_extension as pe
    except ImportError:
        return
    if hasattr(patcher, "add_callback_with_key") and hasattr(pe, "CallbacksMP"):
        patcher.add_callback_with_key(pe.CallbacksMP.ON_PRE_RUN, key, callback)


def model_patcher_class():
    """The patcher class the host builds its own models with: ``comfy.model_patcher.CoreModelPatcher`` where the
    host names one (newer hosts point it at ModelPatcherDynamic when dynamic VRAM is on; looked up per call because
    main.py sets it after import), else ``ModelPatcher``."""
    import comfy.model_patcher as mp
    return getattr(mp, "CoreModelPatcher", None) or mp.ModelPatcher


def fp8_dtypes() -> List[str]:
    """fp8 weight-storage choices this torch offers (cast to the compute dtype on use by the host's ops)."""
    return [n for n in ("fp8_e4m3fn", "fp8_e5m2") if hasattr(torch, "float8_" + n[4:])]


# ----------------------------------------------------------------------------------------------------------------
# the host's context windows
# ----------------------------------------------------------------------------------------------------------------
def context_window_options(handler) -> dict:
    """The settings of a host context handler (``comfy.context_windows.IndexListContextHandler``) that hosts added
    after 2025-10, with the value that means "off" where this host's handler has no such attribute: ComfyUI v0.33
    (2026-08) parses ``cond_retain_index_list`` / ``latent_retain_index_list`` into lists of ints and adds
    ``split_conds_to_windows`` and ``causal_window_fix`` (on by default); ``context_stride`` and ``closed_loop`` are
    older. ``schedule`` is the schedule's name ("standard_static", "batched", ...)."""
    schedule = getattr(handler, "context_schedule", None)
    return {
        "schedule": getattr(schedule, "name", None),
        "context_stride": int(getattr(handler, "context_stride", 1) or 1),
        "cond_retain_index_list": [int(i) for i in (getattr(handler, "cond_retain_index_list", None) or [])],
        "latent_retain_index_list": [int(i) for i in (getattr(handler, "latent_retain_index_list", None) or [])],
        "split_conds_to_windows": bool(getattr(handler, "split_conds_to_windows", False)),
        "causal_window_fix": bool(getattr(handler, "causal_window_fix", False)),
    }


def add_resize_cond_item(handler, key: str, make_callback) -> None:
    """Register ``make_callback()`` under ``key`` as the context handler's RESIZE_COND_ITEM callback (once per
    handler); nothing on hosts without that callback kind."""
    # IndexListCallbacks.RESIZE_COND_ITEM: the 2026-01 host (v0.8.0) and later have it, the 2025-10 (v0.3.64) one not
    import comfy.context_windows as cw
    import comfy.patcher_extension as pe

    kind = getattr(cw.IndexListCallbacks, "RESIZE_COND_ITEM", None)
    if kind is not None and not pe.get_callbacks_with_key(kind, key, handler.callbacks):
        pe.add_callback_with_key(kind, key, make_callback(), handler.callbacks)


def one_sigma_step(handler) -> None:
    """Give the context handler's ``set_step`` one sigma (the first) whatever the host passes (idempotent): with frames
    as batch the host passes one sigma per frame (all equal)."""
    # the 2025-10 (v0.3.64) handler's set_step compares the whole timestep vector with its sigma list (a size error);
    # 2026-01 (v0.8.0) and later take timestep[0]
    if not getattr(handler, "_dcn_one_sigma", False) and hasattr(handler, "set_step"):
        step = handler.set_step
        handler.set_step = lambda timestep, model_options: step(timestep.reshape(-1)[:1], model_options)
        handler._dcn_one_sigma = True

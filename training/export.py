"""Export: the adapter file (only the trained weights + metadata; format in ``model/adapters.py``) and, on request,
a merged full checkpoint (the trained model's UNet + P, plus the VAE / text / image encoders and schedule buffers of
the checkpoint training started from, when it has them).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional

import torch

from ..model import adapters as ad
from ..model import checkpoint as ckpt
from ..model.detect import family_of
from ..model.dtypes import DTYPES
from ..model.log import logger
from .stages import DiffusionModel
from .config import TrainConfig
from .plan import run_variant
from .stages import build_model
from .state import load_checkpoint

def adapter_tensors(trained: Mapping[str, torch.Tensor], lora_alpha: float) -> Dict[str, torch.Tensor]:
    """Trainer parameter names -> adapter keys; one ``.alpha`` per LoRA pair."""
    out: Dict[str, torch.Tensor] = {}
    for name, t in trained.items():
        key = DiffusionModel.full_key(name)
        out[key] = t.detach().cpu()
        if key.endswith(ad.LORA_DOWN):
            out[key[: -len(ad.LORA_DOWN)] + ad.LORA_ALPHA] = torch.tensor(float(lora_alpha))
    return out


def adapter_metadata(variant, stage: str, groups, step: int, base_sha256: str, base_name: str, lora_rank: int,
                     lora_alpha: float, ema: bool) -> Dict[str, str]:
    import dataclasses

    return {
        ad.META_FORMAT: ad.FORMAT, ad.META_VARIANT: variant.name, ad.META_STAGE: stage,
        ad.META_GROUPS: json.dumps(list(groups)), ad.META_STEP: str(int(step)), ad.META_BASE_SHA: base_sha256,
        ad.META_BASE_NAME: base_name, ad.META_P_CONFIG: json.dumps(dataclasses.asdict(variant.resampler)),
        ad.META_UNET_CONFIG: json.dumps(dataclasses.asdict(variant.unet)), ad.META_LORA_RANK: str(lora_rank),
        ad.META_LORA_ALPHA: str(lora_alpha), ad.META_EMA: "true" if ema else "false", "format": "pt",
    }


def write_tensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], dtype: str) -> int:
    """Atomic safetensors write (``model.checkpoint.write_safetensors``); floating tensors cast to ``dtype``."""
    target = DTYPES[dtype]
    items = [(k, tuple(v.shape), target if v.is_floating_point() and v.ndim > 0 else v.dtype)
             for k, v in tensors.items()]
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    return ckpt.write_safetensors(path, items, lambda k: tensors[k], metadata)


def _trained(state: Mapping[str, Any], use_ema: bool) -> Dict[str, torch.Tensor]:
    if use_ema and state.get("ema"):
        return dict(state["ema"])
    return dict(state["trainable"])


def kohya_path(adapter_path: str) -> str:
    """``x/adapter.safetensors`` -> ``x/adapter_kohya.safetensors``."""
    stem, ext = os.path.splitext(adapter_path)
    return stem + "_kohya" + ext


def write_kohya(adapter_path: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
                dtype: str) -> Optional[str]:
    """The kohya-key copy of a LoRA-only adapter (ComfyUI's LoRA loaders); None when the adapter has full tensors."""
    if any(not ad.is_lora_key(k, tensors) for k in tensors):
        return None
    kt, km = ad.to_kohya(tensors, meta)
    path = kohya_path(adapter_path)
    write_tensors(path, kt, km, dtype)
    return path


def export_adapter_from_state(state: Mapping[str, Any], variant, out_path: str, use_ema: bool = True,
                              dtype: str = "fp16", kohya: bool = False) -> str:
    cfg = state["config"]
    ema = bool(use_ema and state.get("ema"))
    tensors = adapter_tensors(_trained(state, use_ema), state.get("lora_alpha", cfg["lora_rank"]))
    meta = adapter_metadata(variant, state["stage"], state["groups"], state["step"], state["base_sha256"],
                            os.path.basename(cfg.get("init_checkpoint") or "none"), cfg["lora_rank"],
                            state.get("lora_alpha", cfg["lora_rank"]), ema)
    size = write_tensors(out_path, tensors, meta, dtype)
    extra = write_kohya(out_path, tensors, meta, dtype) if kohya else None
    logger.info("adapter %s: %d tensors, %.2f MB (stage %s, groups %s, step %d, %s weights)%s", out_path, len(tensors),
                size / 2 ** 20, state["stage"], state["groups"], state["step"], "EMA" if ema else "raw",
                f"; kohya-key copy for ComfyUI's LoRA loaders: {extra}" if extra else "")
    return out_path


def export_merged(model: DiffusionModel, trained: Mapping[str, torch.Tensor], variant, stage: str, step: int,
                  base_checkpoint: Optional[str], out_path: str, dtype: str = "fp16", lora_alpha: float = 1.0) -> str:
    """Full checkpoint: the model's UNet + P with ``trained`` weights (LoRA merged), plus the base file's other parts."""
    state = {ad.UNET_PREFIX + k: v.detach().cpu() for k, v in model.unet.state_dict().items()}
    state.update({ad.P_PREFIX + k: v.detach().cpu() for k, v in model.image_proj.state_dict().items()})
    ad.merge_adapter(state, adapter_tensors(trained, lora_alpha))
    parts = ["unet", "image_proj"]
    handle = None
    if base_checkpoint:
        handle = ckpt.open_checkpoint(base_checkpoint)
        for part in ("vae", "text_encoder", "image_encoder", "schedule"):
            if handle.parts[part]:
                parts.append(part)
                for k, full in handle.parts[part].items():
                    state[ckpt.PART_PREFIX[part] + k] = handle.tensor(full)
    meta = {ckpt.META_SOURCE: f"DynamiCrafter trainer, stage {stage}, step {step}", ckpt.META_PARTS: ",".join(parts),
            ckpt.META_DTYPE: dtype, ckpt.META_FORMAT: ckpt.FORMAT_VERSION, "format": "pt"}
    if model.unet.cfg.in_channels == 8:  # a DynamiCrafter model: the pack's loader reads the variant from here
        meta[ckpt.META_VARIANT] = variant.name
        meta[ckpt.META_FAMILY] = family_of(variant.name)
        if variant.extra.get("config"):  # a small registry config (tiny runs): the loader builds that one
            meta[ckpt.META_CONFIG] = variant.extra["config"]
    target = DTYPES[dtype]
    items = [(k, tuple(v.shape), torch.float32 if k in ckpt.SCHEDULE_KEYS else
              (target if v.is_floating_point() else v.dtype)) for k, v in state.items()]
    try:
        size = ckpt.write_safetensors(out_path, items, lambda k: state[k], meta)
    finally:
        if handle is not None:
            handle.close()
    logger.info("merged checkpoint %s: %d tensors, %.1f MB", out_path, len(items), size / 2 ** 20)
    return out_path


def trainer_state(trainer, trained: Mapping[str, torch.Tensor], ema: Optional[Mapping[str, torch.Tensor]]) -> Dict:
    """What an adapter export needs from a live trainer (the same fields a training checkpoint holds)."""
    return {"config": trainer.cfg.to_dict(), "stage": trainer.stage.name, "groups": trainer.groups,
            "step": trainer.step, "base_sha256": trainer.base_sha256, "lora_alpha": trainer.lora_alpha,
            "trainable": dict(trained), "ema": dict(ema) if ema is not None else None}


def export_intermediate(trainer, trained: Mapping[str, torch.Tensor],
                        ema: Optional[Mapping[str, torch.Tensor]]) -> str:
    """``output_dir/adapters/adapter_step_<N>.safetensors`` (+ its kohya copy) during training (main process)."""
    cfg = trainer.cfg
    path = os.path.join(cfg.output_dir, "adapters", f"adapter_step_{trainer.step:08d}.safetensors")
    return export_adapter_from_state(trainer_state(trainer, trained, ema), trainer.variant, path, cfg.export_ema,
                                     cfg.export_dtype, kohya=cfg.export_kohya)


def export_from_trainer(trainer, trained: Mapping[str, torch.Tensor],
                        ema: Optional[Mapping[str, torch.Tensor]]) -> Dict[str, str]:
    """At the end of a run (main process, full tensors gathered): adapter (+ merged checkpoint) in the output folder."""
    cfg = trainer.cfg
    state = trainer_state(trainer, trained, ema)
    if cfg.export_merged and trainer.world > 1 and trainer.strategy == "fsdp":
        logger.warning("export_merged under FSDP: write it from the final checkpoint with `train.py export --merged`")
        cfg = dataclasses.replace(cfg, export_merged=False)
    path = os.path.join(cfg.output_dir, "adapter.safetensors")
    out = {"adapter": export_adapter_from_state(state, trainer.variant, path, cfg.export_ema, cfg.export_dtype,
                                                kohya=cfg.export_kohya)}
    if cfg.export_kohya and os.path.isfile(kohya_path(path)):
        out["kohya"] = kohya_path(path)
    if cfg.export_merged:
        out["merged"] = export_merged(trainer.model, _trained(state, cfg.export_ema), trainer.variant,
                                      trainer.stage.name, trainer.step, cfg.init_checkpoint,
                                      os.path.join(cfg.output_dir, "merged.safetensors"), cfg.export_dtype,
                                      trainer.lora_alpha)
    return out


def export_from_checkpoint(checkpoint: str, out_path: str, merged_path: Optional[str] = None,
                           use_ema: bool = True, dtype: str = "fp16", kohya: bool = True) -> Dict[str, str]:
    """``train.py export``: adapter (and merged checkpoint) from a training checkpoint, without training."""
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    stage, variant = run_variant(cfg)
    out = {"adapter": export_adapter_from_state(state, variant, out_path, use_ema, dtype, kohya=kohya)}
    if kohya and os.path.isfile(kohya_path(out_path)):
        out["kohya"] = kohya_path(out_path)
    if merged_path:
        model, _, _ = build_model(variant, stage, state["groups"], cfg.seed, cfg.init_checkpoint, cfg.init_adapters,
                                  cfg.lora_targets, cfg.lora_rank, state.get("lora_alpha", cfg.lora_rank),
                                  cfg.init_strict)
        trained = _trained(state, use_ema)
        # merge_adapter applies LoRA on top of the base weights; full tensors replace them
        base_trained = {n: t for n, t in trained.items() if not n.startswith("lora.")}
        lora = {n: t for n, t in trained.items() if n.startswith("lora.")}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in base_trained.items():
                params[n].copy_(t)
        out["merged"] = export_merged(model, lora, variant, cfg.stage, state["step"], cfg.init_checkpoint,
                                      merged_path, dtype, state.get("lora_alpha", cfg.lora_rank))
    return out

"""Command line of the trainer (``python train.py ...`` from the pack folder, or through ``torchrun``).

    train.py [train]     --config run.yaml [--setting value ...]   train (resumes from output_dir by default)
    train.py precompute  --config run.yaml                         encode the dataset once into cache_dir
    train.py export      --checkpoint ckpt.pt --out adapter.safetensors [--merged full.safetensors] [--no-ema]
    train.py dump-config [--config run.yaml] [--format yaml|json]  print every setting with its value

Every setting of ``TrainConfig`` is a flag (``--lr 1e-4``, ``--gradient-checkpointing``/``--no-gradient-checkpointing``,
lists and mappings as JSON or comma lists). Flags override the config file. Exit status: 0 done, 2 bad input,
3 stopped on a non-finite loss.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from .config import TrainConfig, dump_config, load_config_file

COMMANDS = ("train", "precompute", "export", "dump-config")


def _parse_value(text: str, annotation: str):
    ann = annotation.replace("Optional[", "").rstrip("]") if annotation.startswith("Optional[") else annotation
    if text.lower() in ("none", "null") and annotation.startswith("Optional"):
        return None
    if ann.startswith(("List", "Dict")):
        t = text.strip()
        if t.startswith(("[", "{")):
            return json.loads(t)
        if ann.startswith("Dict"):
            raise argparse.ArgumentTypeError(f"expected a JSON mapping, got {text!r}")
        items = [s.strip() for s in t.split(",") if s.strip()]
        if "float" in ann:
            return [float(s) for s in items]
        if "int" in ann:
            return [int(s) for s in items]
        return items
    if ann == "int":
        return int(text)
    if ann == "float":
        return float(text)
    return text


def _setting_help() -> Dict[str, str]:
    """Each setting's trailing comment in config.py, as its --help text."""
    import inspect
    import re

    from . import config as config_mod

    out = {}
    for line in inspect.getsource(config_mod.TrainConfig).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _metavar(ann: str) -> str:
    if ann.startswith("Optional[") and ann.endswith("]"):
        ann = ann[len("Optional["):-1]
    return ann.upper()


def _add_setting_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("settings (override the config file; `dump-config` shows them all)")
    helps = _setting_help()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        ann = str(f.type)
        text = f"{helps.get(f.name, '')} (default: {getattr(defaults, f.name)!r})".strip().replace("%", "%%")
        if ann == "bool":
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(flag, dest=f.name, default=None, metavar=_metavar(ann), help=text,
                           type=lambda s, a=ann: _parse_value(s, a))


def build_config(args: argparse.Namespace) -> TrainConfig:
    data: Dict[str, Any] = {}
    if getattr(args, "config", None):
        data.update(load_config_file(args.config))
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            data[f.name] = v
    return TrainConfig.from_dict(data)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup, e.g. by a test runner)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    h = _StderrHandler(sys.stderr)
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    h.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [h]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description="DynamiCrafter trainer: stages t2i, t2v, joint, "
                                 "finetune; adapters for ComfyUI. See training/README.md.")
    sub = ap.add_subparsers(dest="command")
    for name, helptext in (("train", "train (default command)"), ("precompute", "encode the dataset into cache_dir"),
                           ("dump-config", "print every setting")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="YAML or JSON file of settings")
        p.add_argument("-v", "--verbose", action="store_true")
        if name == "dump-config":
            p.add_argument("--format", choices=("yaml", "json"), default="yaml")
        _add_setting_flags(p)
    p = sub.add_parser("export", help="adapter (+ merged checkpoint) from a training checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="adapter .safetensors path")
    p.add_argument("--merged", default=None, help="also write a merged full checkpoint here")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train"] + argv
    args = parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        return _run(args)
    except DynamiCrafterInputError as e:
        logger.error("%s", e)
        return 2
    except Exception as e:
        from .loop import TrainingStopped

        if isinstance(e, TrainingStopped):
            logger.error("%s", e)
            return 3
        raise


def _run(args) -> int:
    if args.command == "dump-config":
        print(dump_config(build_config(args), fmt=args.format), end="")
        return 0
    if args.command == "export":
        from .export import export_from_checkpoint

        out = export_from_checkpoint(args.checkpoint, args.out, args.merged, use_ema=not args.no_ema, dtype=args.dtype)
        print(json.dumps(out))
        return 0
    cfg = build_config(args)
    if args.command == "precompute":
        return _precompute(cfg)
    from .loop import train

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        losses: List[float] = result["losses"]
        logger.info("done: step %d%s; skipped %d dataset entries; adapter %s", result["step"],
                    f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "", len(result["skipped"]),
                    result.get("adapter", {}).get("adapter"))
    return 0


def _precompute(cfg: TrainConfig) -> int:
    import torch

    from .cache import precompute
    from .data import Dropout
    from .loop import Trainer

    if not cfg.cache_dir:
        raise DynamiCrafterInputError("cache_dir", "a folder for the cache", "nothing", "set cache_dir")
    # Only the data side of a Trainer is needed: build it without the model.
    t = Trainer.__new__(Trainer)
    t.cfg = cfg
    t._setup_distributed()
    from ..model.variants import get_variant
    from .stages import get_stage, stage_variant

    t.stage = get_stage(cfg.stage)
    base = get_variant(cfg.variant, tiny=cfg.tiny)
    t.variant = stage_variant(base, t.stage, cfg.unet_overrides, cfg.resampler_overrides, cfg.schedule_overrides)
    t.frames = cfg.frames if t.stage.video else 1
    t.height, t.width = cfg.height or t.variant.height, cfg.width or t.variant.width
    t.interp = bool(t.variant.interp) and t.stage.concat
    t.cond_frame = cfg.cond_frame or ("first_last" if t.interp else "random")
    enc = t.build_encoders()
    ds = t.build_dataset(Dropout(cfg.p_drop_text, cfg.p_drop_image, cfg.p_drop_both))
    with torch.no_grad():
        precompute(ds, enc, cfg.cache_dir, t.cache_settings(), views=cfg.cache_views, cond_frames=cfg.cache_cond_frames,
                   dtype=cfg.cache_dtype, device=t.device, progress=cfg.progress)
    return 0

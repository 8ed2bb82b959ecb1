"""Command line of the trainer (``python train.py ...`` from the pack folder, or through ``torchrun``).

    train.py [train]     --config run.yaml [--setting value ...]   train (resumes from output_dir by default)
    train.py precompute  --config run.yaml                         encode the dataset once into cache_dir
    train.py export      --checkpoint ckpt.pt --out adapter.safetensors [--merged full.safetensors] [--no-ema]
                                                                   [--no-kohya]
    train.py dump-config [--config run.yaml] [--format yaml|json]  print every setting with its value
    train.py demo-data   --out folder [--clips 8 --frames 16 ...]  synthetic clips + clips.csv (tiny recipe)

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

COMMANDS = ("train", "precompute", "export", "dump-config", "demo-data")


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

    from . import config as config_mod  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

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
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup, e.g. by a test runner); while
    a tqdm progress bar is open, through ``tqdm.write`` so the line lands above the bar instead of across it."""

    def emit(self, record):
        self.stream = sys.stderr
        tq = sys.modules.get("tqdm")
        if tq is not None and getattr(tq.tqdm, "_instances", None):
            try:
                tq.tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # logging must never raise; the handler's own error path reports it
                self.handleError(record)
            return
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
    p.add_argument("--no-kohya", action="store_true", help="no kohya-key copy of a LoRA-only adapter")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("demo-data", help="write synthetic clips + clips.csv (the tiny recipe's dataset)")
    p.add_argument("--out", required=True, help="folder for the clips and clips.csv")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train"] + argv
    args = parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    from .preflight import die_with_parent  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

    die_with_parent()                     # under torchrun: this worker ends when its launcher dies
    try:
        return _run(args)
    except DynamiCrafterInputError as e:
        logger.error("%s", e)
        return 2
    except Exception as e:
        from .loop import TrainingStopped  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

        if isinstance(e, TrainingStopped):
            logger.error("%s", e)
            return 3
        raise


def _run(args) -> int:
    if args.command == "dump-config":
        print(dump_config(build_config(args), fmt=args.format), end="")
        return 0
    if args.command == "export":
        from .export import export_from_checkpoint  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)
        from .preflight import check_export_room  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

        check_export_room(args.checkpoint, args.out, args.merged, args.dtype)
        out = export_from_checkpoint(args.checkpoint, args.out, args.merged, use_ema=not args.no_ema,
                                     dtype=args.dtype, kohya=not args.no_kohya)
        print(json.dumps(out))
        return 0
    if args.command == "demo-data":
        from .demo import make_video_dataset  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)
        from .preflight import check_demo_room  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

        check_demo_room(args.out, args.clips, args.frames, args.height, args.width)
        csv_path, rows = make_video_dataset(args.out, n_clips=args.clips, n_frames=args.frames, height=args.height,
                                            width=args.width)
        logger.info("demo data: %d clips of %d frames, %dx%d, listed in %s", len(rows), args.frames, args.width,
                    args.height, csv_path)
        print(csv_path)
        return 0
    cfg = build_config(args)
    if args.command == "precompute":
        return _precompute(cfg)
    from .room import check_room_floor  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

    check_room_floor(cfg)                 # before torch is imported: a full disk is refused in seconds
    from .loop import train  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        losses: List[float] = result["losses"]
        logger.info("done: step %d%s; skipped %d dataset entries; adapter %s", result["step"],
                    f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "", len(result["skipped"]),
                    result.get("adapter", {}).get("adapter"))
    return 0


def _precompute(cfg: TrainConfig) -> int:
    """Encode the dataset into cache_dir: only the data side of a run (no model, no optimizer)."""
    import torch

    from .cache import precompute  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)
    from .plan import RunPlan, setup_processes  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

    if not cfg.cache_dir:
        raise DynamiCrafterInputError("cache_dir", "a folder for the cache", "nothing", "set cache_dir")
    from .preflight import check_data, check_output_dir, check_packages, check_weights  # lazy: the CLI imports torch and the trainer only once a command runs (--help, dump-config and the disk-room floor stay torch-free and fast)

    procs = setup_processes(cfg)
    plan = RunPlan(cfg, procs.device)
    check_packages(cfg)                                   # the same checks as a training run, before any model
    check_weights(cfg, plan.variant)
    check_data(dataclasses.replace(cfg, cache_dir=None, buckets=False), plan.stage.video, plan.frames)
    check_output_dir(dataclasses.replace(cfg, output_dir=cfg.cache_dir))
    enc = plan.build_encoders()
    ds = plan.build_dataset()
    with torch.no_grad():
        precompute(ds, enc, cfg.cache_dir, plan.cache_settings(), views=cfg.cache_views,
                   cond_frames=cfg.cache_cond_frames, dtype=cfg.cache_dtype, device=procs.device,
                   progress=cfg.progress)
    return 0

"""The trainer's disk: the room a run needs in output_dir, checked before any model is built, and a disk that fills
during the run turned into one line (exit status 2) naming the folder and the last good checkpoint.

The checkpoint's size is counted, not guessed: the trainable parameters of the run's model are counted on PyTorch's
meta device (shapes only: no weight is allocated or read, a few milliseconds for the tiny model), times 4 bytes for
the weights, the EMA and the optimizer's state per parameter."""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Dict, Iterator, Optional

from ..model.fileio import OutputWriteError, check_free_space, free_bytes, human_size

# float32 copies of each trainable parameter a checkpoint holds besides the weights: optimizer state
OPTIMIZER_SLOTS = {"adamw": 2, "adamw8bit": 1, "adafactor": 1, "prodigy": 4}
EXPORT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
MIN_CHECKPOINT = 16 << 10  # the run's config, RNG and scheduler state alone (the tiny recipe's checkpoint: 1.8 MB)


def trainable_count(plan, cfg) -> int:
    """Parameters the run trains, counted on the meta device (no weights built)."""
    import torch

    from .stages import DiffusionModel, Resampler, UNetModel, set_trainable  # lazy: torch only for the exact room count, after the torch-free floor check

    v = plan.variant
    with torch.device("meta"):
        model = DiffusionModel(UNetModel(v.unet), Resampler(v.resampler))
        if "lora" in plan.groups:
            model.add_lora(cfg.lora_targets, cfg.lora_rank, float(cfg.lora_alpha or cfg.lora_rank))
        names = set(set_trainable(model, plan.groups))
        return sum(p.numel() for n, p in model.named_parameters() if n in names)


def run_bytes(cfg, plan) -> Dict[str, int]:
    """What a run writes into output_dir at least, by part (bytes)."""
    n = trainable_count(plan, cfg)
    ckpt = n * 4 * (1 + int(bool(cfg.ema)) + OPTIMIZER_SLOTS.get(cfg.optimizer, 2)) + (64 << 10)
    parts = {"2 checkpoints": 2 * ckpt}
    if cfg.sample_every:
        videos = max(1, cfg.sample_count) * max(1, cfg.max_steps // cfg.sample_every)
        # an H.264 sample takes at least about 1/200 byte per pixel (+ its header): a lower bound
        parts[f"{videos} sample videos"] = videos * (4096 + plan.frames * plan.height * plan.width // 200)
    copies = 2 if "lora" in plan.groups and list(plan.groups) == ["lora"] else 1  # + the kohya copy
    parts["the adapter"] = copies * n * EXPORT_BYTES.get(cfg.export_dtype, 2)
    return parts


def check_room(cfg, plan) -> None:
    """Refuse a run whose output_dir cannot hold two checkpoints, the samples and the adapter (said in numbers)."""
    parts = run_bytes(cfg, plan)
    shown = ", ".join(f"{k} {human_size(v)}" for k, v in parts.items())
    check_free_space(cfg.output_dir, sum(parts.values()), f"output_dir ({shown})",
                     todo="free some space or pick another output_dir")


def check_room_floor(cfg) -> None:
    """Seconds after the start, before torch is imported: output_dir (or the folder it will be made in) against a
    floor no run goes below, two checkpoints of MIN_CHECKPOINT; ``check_room`` counts the run's own need later."""
    folder = os.path.abspath(cfg.output_dir)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    check_free_space(folder, 2 * MIN_CHECKPOINT, f"output_dir {cfg.output_dir} (2 checkpoints of at least "
                     f"{MIN_CHECKPOINT >> 10} KiB)", todo="free some space or pick another output_dir")


def _no_room(err: BaseException, folder: str) -> bool:
    if isinstance(err, OSError) and err.errno in _NO_ROOM:
        return True
    # torch.save reports a failed write as "[enforce fail at inline_container.cc] ... unexpected pos"
    return isinstance(err, RuntimeError) and "inline_container" in str(err) and free_bytes(folder) < (1 << 20)


@contextlib.contextmanager
def disk_full_is_one_line(folder: str, last_checkpoint) -> Iterator[None]:
    """Around a run: a write that fails for want of room ends in one OutputWriteError (exit 2) naming ``folder``
    and the last good checkpoint (``last_checkpoint()``: its path or None), from which the same command resumes."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not os.path.isdir(folder) or not _no_room(e, folder):
            raise
        last: Optional[str] = last_checkpoint()
        resume = (f"the same command resumes from the last good checkpoint {last}" if last
                  else "no checkpoint was written yet, the same command starts over")
        raise OutputWriteError("output_dir", f"room to write into {folder}",
                               f"the disk full ({human_size(free_bytes(folder))} free)",
                               f"free some space; {resume}") from None

"""What a config means before any model is built: the processes and device, the stage and its variant, the clip
shape and conditioning, and the data side (encoders, dataset, cache settings).

``Trainer`` builds one ``RunPlan`` and adds the model, optimizer and loop; ``train.py precompute`` builds only the
plan, so the data side exists once and both commands prepare samples identically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.distributed as dist

from ..model.dtypes import DTYPES
from ..model.errors import DynamiCrafterInputError
from ..model.variants import get_variant
from .config import TrainConfig
from .data import Dropout, ImageTextDataset, VideoCsvDataset
from .stages import get_stage, stage_variant
from .encoders import Encoders, EncoderSpec


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun job (or the single process) and its device."""

    world: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(setting: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> the device of this process (one line when no GPU is visible)."""
    want = "cuda" if setting == "auto" and torch.cuda.is_available() else ("cpu" if setting == "auto" else setting)
    if want == "cuda":
        if not torch.cuda.is_available():
            raise DynamiCrafterInputError("device", "a CUDA GPU", "none visible", "use device: cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_processes(cfg: TrainConfig) -> Processes:
    """Read torchrun's environment, pick the device, join the process group (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(world, rank, local_rank, device)


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads counted once; the affinity mask respected)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    cores.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def configure_threads(cfg: TrainConfig, device: torch.device) -> int:
    """Intra-op CPU threads of this process: ``threads`` if set, else OMP_NUM_THREADS if the environment sets it
    (torchrun sets 1 with several processes), else physical cores / processes on this machine."""
    if cfg.threads > 0:
        n = cfg.threads
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = max(1, physical_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def run_variant(cfg: TrainConfig):
    """The stage and the variant it trains (stage flags and the config's overrides applied)."""
    stage = get_stage(cfg.stage)
    base = get_variant(cfg.variant, tiny=cfg.tiny)
    return stage, stage_variant(base, stage, cfg.unet_overrides, cfg.resampler_overrides, cfg.schedule_overrides,
                                cfg.unet_dropout)


class RunPlan:
    """Stage, variant, clip shape and conditioning of a config, and the builders of the data side."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.stage, self.variant = run_variant(cfg)
        v = self.variant
        self.frames = cfg.frames if self.stage.video else 1
        self.height, self.width = cfg.height or v.height, cfg.width or v.width
        self.groups: List[str] = list(cfg.groups or self.stage.groups)
        self.interp = bool(v.interp) and self.stage.concat
        self.cond_frame = cfg.cond_frame or ("first_last" if self.interp else "random")

    def dropout(self) -> Dropout:
        cfg = self.cfg
        return Dropout(cfg.p_drop_text, cfg.p_drop_image, cfg.p_drop_both)

    def build_encoders(self):
        cfg, v = self.cfg, self.variant
        files = tuple(p for p in (cfg.clip_checkpoint, cfg.vae_checkpoint, cfg.init_checkpoint) if p)
        spec = EncoderSpec(tiny=cfg.tiny, text_width=v.unet.context_dim, image_width=v.resampler.embedding_dim,
                           weight_files=files, seed=cfg.seed)
        prec = cfg.encoder_precision or ("bf16" if self.device.type == "cuda" else "fp32")
        return Encoders(spec, dtype=DTYPES[prec], device=self.device)

    def build_dataset(self, dropout: Dropout = None):
        cfg, v = self.cfg, self.variant
        dropout = dropout or self.dropout()
        if self.stage.video:
            if not cfg.data_csv:
                raise DynamiCrafterInputError("data_csv", "a CSV of videos (path,caption[,fps])", "nothing",
                                              "set data_csv (see training/README.md)")
            return VideoCsvDataset(cfg.data_csv, cfg.data_root, self.frames, self.height, self.width,
                                   cfg.frame_stride_min, cfg.frame_stride_max, v.motion_input, self.cond_frame,
                                   cfg.seed, dropout, default_fps=float(v.default_motion if v.motion_input == "fps"
                                                                       else 24))
        return ImageTextDataset(cfg.image_folder or cfg.data_root, cfg.data_csv if not cfg.image_folder else None,
                                self.height, self.width, cfg.seed, dropout)

    def cache_settings(self) -> Dict[str, Any]:
        cfg, v = self.cfg, self.variant
        return {"stage_video": self.stage.video, "frames": self.frames, "height": self.height, "width": self.width,
                "stride": [cfg.frame_stride_min, cfg.frame_stride_max], "motion_input": v.motion_input,
                "cond_frame": self.cond_frame, "tiny": cfg.tiny, "text_width": v.unet.context_dim,
                "image_width": v.resampler.embedding_dim, "data": [cfg.data_csv, cfg.data_root, cfg.image_folder],
                "weights": [cfg.clip_checkpoint, cfg.vae_checkpoint, cfg.init_checkpoint], "seed": cfg.seed,
                "views": cfg.cache_views, "cond_frames": cfg.cache_cond_frames}


__all__ = ["Processes", "RunPlan", "configure_threads", "physical_cores", "pick_device", "run_variant",
           "setup_processes"]

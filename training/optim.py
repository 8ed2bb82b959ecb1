"""Optimizers of the trainer: AdamW (the official recipe), Adafactor (``torch.optim.Adafactor``: factored second
moments, far less state), Prodigy (``prodigyopt``, learning-rate free: use lr 1.0) and 8-bit AdamW (``bitsandbytes``,
CUDA only). The choice is a setting (``optimizer``), part of the run identity and recorded in every checkpoint."""
from __future__ import annotations

from typing import List

import torch

from ..model.errors import DynamiCrafterInputError
from .config import TrainConfig
from .preflight import OPTIONAL, need_package


def check_optimizer(cfg: TrainConfig, device: torch.device) -> None:
    """What can be said before any model exists: the package is there and the device fits (one line if not)."""
    if cfg.optimizer in OPTIONAL:
        need_package(*OPTIONAL[cfg.optimizer], "optimizer", "optimizer: adamw (or adafactor)")
    if cfg.optimizer == "adamw8bit" and device.type != "cuda":
        raise DynamiCrafterInputError("optimizer", "adamw8bit on a CUDA GPU (bitsandbytes' 8-bit kernels)",
                                      f"device {device.type}", "use optimizer: adamw or adafactor on this device")
    if cfg.optimizer == "adafactor" and not hasattr(torch.optim, "Adafactor"):
        raise DynamiCrafterInputError("optimizer", "torch >= 2.5 for torch.optim.Adafactor",
                                      f"torch {torch.__version__}", "upgrade torch or use optimizer: adamw")


def build_optimizer(cfg: TrainConfig, params: List[torch.nn.Parameter]) -> torch.optim.Optimizer:
    betas = tuple(float(b) for b in cfg.adam_betas)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    raise DynamiCrafterInputError("optimizer", "adamw | adafactor | prodigy | adamw8bit", repr(cfg.optimizer),
                                  "pick one")


__all__ = ["build_optimizer", "check_optimizer"]

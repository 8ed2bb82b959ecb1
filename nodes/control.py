"""ControlNets attached with the host's own nodes (ControlNetLoader + ControlNetApply / ControlNetApplyAdvanced), run
by the pack's exact sampler the way the host's samplers run them.

The host's samplers ask each cond's ControlNet for residuals every step (``get_control`` on the batch that cond
takes part in) and pass them to the UNet as ``control``; model/unet.py adds them where the host's SD UNet adds them
(model/control.py). The exact sampler batches its guidance branches itself, so it does the same per branch:
``pre_run`` once, ``get_control`` on each ControlNet's branches every step (zeros for a branch without one, e.g. the
image-only branch when only positive and negative carry the ControlNet), ``cleanup`` at the end.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..model.control import KINDS
from . import compat


def branch_control(converted_conds: Sequence[dict]):
    """The ControlNet of a branch's (host-converted) conditioning entry, or None."""
    return converted_conds[0].get("control") if converted_conds else None


def prepare(model, controls: Dict[str, object]) -> List[object]:
    """``pre_run`` every distinct ControlNet on ``model``'s schedule; returns the models to load with the UNet."""
    ms = model.model.model_sampling
    extra = []
    for ctl in _distinct(controls):
        ctl.pre_run(model.model, lambda a: ms.percent_to_sigma(a))
        extra += ctl.get_models()
    return extra


def cleanup(controls: Dict[str, object]) -> None:
    for ctl in _distinct(controls):
        ctl.cleanup()


def _distinct(controls: Dict[str, object]) -> list:
    out = []
    for c in controls.values():
        if c is not None and all(c is not o for o in out):
            out.append(c)
    return out


def step_control(controls: Dict[str, object], branches: Sequence[str], x: torch.Tensor, sigma: torch.Tensor,
                 conds: dict, frames: int, topts: dict) -> Optional[dict]:
    """Residuals for one batched step: ``x`` / ``sigma`` / ``conds`` have ``len(branches) * frames`` rows, branch by
    branch. Each ControlNet runs on the rows of its branches; a branch without one gets zeros. None when no branch
    has a ControlNet (or none is active at this step)."""
    groups = []
    for ctl in _distinct({b: controls.get(b) for b in branches}):
        idx = [i for i, b in enumerate(branches) if controls.get(b) is ctl]
        rows = torch.cat([torch.arange(i * frames, (i + 1) * frames) for i in idx]).to(x.device)
        cond = {k: (v[rows] if isinstance(v, torch.Tensor) and v.shape[:1] == x.shape[:1] else v)
                for k, v in conds.items()}
        out = compat.get_control(ctl, x[rows], sigma[rows], cond, len(idx), topts)
        if out is not None:
            groups.append((idx, out))
    if not groups:
        return None
    k = len(branches)
    merged = {}
    for kind in KINDS:
        n = max(len(out.get(kind) or []) for _, out in groups)
        lst = []
        for j in range(n):
            parts = [None] * k
            for idx, out in groups:
                items = out.get(kind) or []
                r = items[j - (n - len(items))] if j >= n - len(items) else None  # align from the end (popped)
                if r is not None:
                    for pos, i in enumerate(idx):
                        parts[i] = r[pos * frames:(pos + 1) * frames]
            like = next((p for p in parts if p is not None), None)
            lst.append(None if like is None else torch.cat([p if p is not None else torch.zeros_like(like)
                                                            for p in parts]))
        merged[kind] = lst
    return merged

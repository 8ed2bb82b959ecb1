"""Training checkpoints: written atomically, found again on resume, never left half-written under a final name.

A checkpoint is written to a temporary ``.<name>.tmp-<pid>-<n>`` in the same folder (model/fileio.py), flushed and
fsync'ed, then renamed over the final name with ``os.replace`` (atomic on POSIX and Windows), and the folder is fsync'ed. ``latest.json`` (same procedure)
names the newest complete checkpoint. A process killed at any point leaves either the old or the new file complete;
a stray temporary file is ignored (and removed on the next save). Resume takes the file ``latest.json`` names if it
loads, else the newest ``step_*.pt`` that loads.

tests/training/test_resume.py proves this by SIGKILLing a trainer in the middle of a checkpoint write; its launcher
(tests/training/faults.py) wraps this module's ``atomic_file`` from outside, so this file carries no test branch.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..model.errors import DynamiCrafterInputError
from ..model.fileio import atomic_file
from ..model.log import logger

STATE_FORMAT = "dynamicrafter-train-state/1"
_STEP_RE = re.compile(r"step_(\d+)\.pt$")


# ================================================================================================================
# Atomic writes
# ================================================================================================================
def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file, fsync, rename over ``path``, fsync the folder."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step:08d}.pt")


def list_checkpoints(folder: str) -> List[Tuple[int, str]]:
    out = []
    for p in glob.glob(os.path.join(folder, "step_*.pt")):
        m = _STEP_RE.search(os.path.basename(p))
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(folder: str, step: int, state: Dict[str, Any], keep: int = 3) -> str:
    """Write ``state`` as the checkpoint of ``step`` atomically, point ``latest.json`` at it, prune old ones."""
    os.makedirs(folder, exist_ok=True)
    # left by a killed process (model/fileio.py names its temporary files ".<name>.tmp-<pid>-<n>")
    for stale in glob.glob(os.path.join(folder, "*.tmp-*")) + glob.glob(os.path.join(folder, ".*.tmp-*")):
        try:
            os.remove(stale)
        except OSError:
            pass
    path = checkpoint_path(folder, step)
    atomic_torch_save(dict(state, format=STATE_FORMAT), path)
    atomic_write_bytes(os.path.join(folder, "latest.json"),
                       json.dumps({"step": step, "file": os.path.basename(path)}).encode())
    if keep > 0:
        for s, p in list_checkpoints(folder)[:-keep]:
            try:
                os.remove(p)
            except OSError:
                pass
    return path


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a training checkpoint (``weights_only``: tensors, numbers, strings, lists, dicts only)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        # torch's own text suggests weights_only=False: never for a file of unknown origin, so it is not shown
        found = (f"{path}: holds more than plain tensors (Python objects that only a full unpickler loads, which "
                 "can run code)"
                 if "GLOBAL" in str(e) else
                 f"{path}: unreadable ({type(e).__name__}): damaged, truncated or not a torch file")
        raise DynamiCrafterInputError("checkpoint", "a training checkpoint of train.py (tensors, numbers, strings)",
                                      found, "give output_dir/checkpoints/step_*.pt of a training run") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DynamiCrafterInputError("checkpoint", "a DynamiCrafter training checkpoint", f"{path}: another file",
                                      "give output_dir/checkpoints/step_*.pt of a training run")
    return state


def _try_load(path: str) -> Optional[Dict[str, Any]]:
    try:
        return load_checkpoint(path)
    except Exception as e:  # damaged / foreign file: say so and keep looking
        # load_checkpoint's own words (torch's unpickling message advises loading unsafely; it is not repeated)
        why = (e.found[len(path) + 2:] if isinstance(e, DynamiCrafterInputError) and e.found.startswith(path + ": ")
               else (str(e).splitlines() or [""])[0][:160])
        logger.warning("checkpoint %s cannot be loaded (%s: %s); trying an older one", path, type(e).__name__, why)
        return None


def find_resume(folder: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, state) of the newest complete checkpoint in ``folder`` (``latest.json`` first), or None."""
    latest = os.path.join(folder, "latest.json")
    tried = set()
    if os.path.isfile(latest):
        try:
            with open(latest) as f:
                p = os.path.join(folder, json.load(f)["file"])
            tried.add(p)
            state = _try_load(p) if os.path.isfile(p) else None
            if state is not None:
                return p, state
        except (OSError, ValueError, KeyError):
            pass
    for _, p in reversed(list_checkpoints(folder)):
        if p not in tried:
            state = _try_load(p)
            if state is not None:
                return p, state
    return None


# ================================================================================================================
# RNG states
# ================================================================================================================
def rng_state() -> Dict[str, Any]:
    import random

    import numpy as np

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return _to_plain(st)


def set_rng_state(st: Dict[str, Any]) -> None:
    import random

    import numpy as np

    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), int(npst[2]), int(npst[3]), float(npst[4])))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _to_plain(obj):
    """RNG states as types ``torch.load(weights_only=True)`` accepts (lists, ints, tensors)."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj

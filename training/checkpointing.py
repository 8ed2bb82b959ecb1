"""The trainer's state: what a bit-identical resume needs (parameters, EMA, optimizer, scheduler, scaler, every
process's RNG, the skipped entries), written atomically by ``state.save_checkpoint`` and restored on resume, and the
checks that a resume continues the same run. A mixin of ``loop.Trainer`` (its attributes: cfg, model, optimizer, ...).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from ..model.errors import DynamiCrafterInputError
from ..model.fileio import file_sha256
from . import state as st
from .config import TrainConfig


class TrainerState:
    """Save / restore of a Trainer (collective under DDP/FSDP where it says so)."""

    def _resume_point(self):
        """(path, state) to resume from, or (None, None)."""
        r = self.cfg.resume
        if r in (None, "", "none"):
            return None, None
        if r == "auto":
            found = st.find_resume(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else None
            return found if found else (None, None)
        if not os.path.isfile(r):
            raise DynamiCrafterInputError("resume", "'auto', 'none' or a checkpoint file", repr(r), "fix the path")
        try:
            return r, st.load_checkpoint(r)
        except Exception as e:  # torch.load raises several types; its advice to unpickle unsafely is not repeated
            raise DynamiCrafterInputError(
                "resume", "a training checkpoint of this trainer (step_*.pt, read as plain tensors only)",
                f"{r!r}, which does not load as one ({type(e).__name__})",
                "pick a step_*.pt from output_dir/checkpoints, or resume: auto / none") from None

    def _check_identity(self, state: Dict[str, Any]) -> None:
        old = state.get("identity", {})
        new = self.cfg.identity()
        default = TrainConfig().identity()                 # settings added later: an older checkpoint had the default
        diff = sorted(k for k in new if json.dumps(old.get(k, default[k])) != json.dumps(new[k]))
        if diff:
            raise DynamiCrafterInputError(
                f"resume from {self.resume_path}", "the settings the checkpoint was trained with",
                f"other values for {diff}", "use the same settings, another output_dir, or resume: none")

    def _base_hash(self) -> str:
        if self.resume_state is not None and self.resume_state.get("base_sha256"):
            return self.resume_state["base_sha256"]
        if not self.cfg.init_checkpoint:
            return "none"
        box = [file_sha256(self.cfg.init_checkpoint) if self.is_main else None]   # read the file once, on rank 0
        if self.world > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def _full(self, t: torch.Tensor) -> torch.Tensor:
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        return t.detach().cpu().clone()

    def _optimizer_state(self) -> Dict[str, Any]:
        if self.strategy == "fsdp" and self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resume needs (collective under DDP/FSDP: every rank must call it)."""
        rng = st.rng_state()
        rngs = [None] * self.world
        skipped = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng)
            dist.all_gather_object(skipped, self.skipped)
        else:
            rngs, skipped = [rng], [self.skipped]
        merged = {}
        for s in skipped:
            merged.update(s)
        return {
            "step": self.step, "micro": self.micro, "world_size": self.world,
            "config": self.cfg.to_dict(), "identity": self.cfg.identity(), "groups": self.groups,
            "trainable": {n: self._full(p) for n, p in self._named_trainable()},
            "ema": ({n: self._full(t) for n, t in self.ema.items()} if self.ema is not None else None),
            "ema_updates": self.ema_updates,
            "optimizer": self._optimizer_state(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs, "skipped": merged, "skip_events": self.skip_events,
            "base_sha256": self.base_sha256, "variant": self.variant.name, "stage": self.stage.name,
            "lora_alpha": self.lora_alpha, "optimizer_name": self.cfg.optimizer,
        }

    def _restore(self, s: Dict[str, Any]) -> None:
        self.step, self.micro = int(s["step"]), int(s["micro"])
        self.ema_updates = int(s.get("ema_updates", 0))
        if self.ema is not None and s.get("ema") is not None:
            with torch.no_grad():
                for n, t in s["ema"].items():
                    cur = self.ema[n]
                    if hasattr(cur, "device_mesh"):
                        from torch.distributed.tensor import distribute_tensor

                        cur.copy_(distribute_tensor(t.to(cur.dtype), cur.device_mesh, cur.placements))
                    else:
                        cur.copy_(t)
        if self.strategy == "fsdp" and self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, s["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        self.skipped.update(s.get("skipped") or {})
        self.skip_events = int(s.get("skip_events", 0))
        old_world = int(s.get("world_size", 1))
        if old_world == self.world:
            st.set_rng_state(s["rng"][self.rank])
        else:  # keep the position in the global sample stream: micro-batches of B*W samples
            self.micro = self.micro * old_world // self.world
            self._log("resuming with %d processes, the checkpoint had %d: the sample order goes on from the same "
                      "position, the dropout RNG does not (not bit-identical to an uninterrupted run)", self.world,
                      old_world, level="warning")
        self.last_checkpoint = self.resume_path
        self._log("resumed from %s at step %d (micro-batch %d)", self.resume_path, self.step, self.micro)
        if self.is_main:
            self._truncate_metrics(self.step)

    def save(self) -> Optional[str]:
        state = self.state_dict()
        path = None
        if self.is_main:
            path = st.save_checkpoint(self.ckpt_dir, self.step, state, keep=self.cfg.keep_checkpoints)
            self._log("checkpoint %s", path)
        if self.world > 1:
            dist.barrier()
        self.last_checkpoint = path or st.checkpoint_path(self.ckpt_dir, self.step)
        return path

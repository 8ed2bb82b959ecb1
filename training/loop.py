"""The training loop: autocast, gradient checkpointing, AdamW + warmup, clipping, accumulation, EMA, DDP/FSDP through
torchrun, atomic checkpoints with every state a bit-identical resume needs, and a stop with a clear message on NaN.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` samples on each of the ``world_size`` processes.
The sample order is global (``data.GlobalBatchSampler``) and every random draw of a sample (clip, conditioning
frame, CFG dropout, timestep, noise, VAE posterior sample) comes from that sample's own seed, so the result depends
on the global batch, not on how it is split over processes, and a resumed run repeats the uninterrupted one. The
one remaining consumer of the global RNG is dropout inside the UNet; its state is saved per process.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..model.conditioning import concat_latent
from ..model.dtypes import DTYPES
from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.vae import sample_posterior
from . import state as st
from .buckets import BucketBatchSampler, Buckets
from .cache import CachedDataset
from .checkpointing import TrainerState
from .config import TrainConfig, dump_config
from .data import GlobalBatchSampler, collate
from .export import export_from_trainer, export_intermediate
from .objective import Objective
from .optim import build_optimizer, check_optimizer
from .plan import RunPlan, configure_threads, setup_processes
from .preflight import RunLock, preflight, resolution_multiple
from .room import disk_full_is_one_line
from .samples import Monitor
from .stages import build_model


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss); the message says where and which checkpoint is intact."""


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.max_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0
    return f


class Trainer(TrainerState):
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        procs = setup_processes(cfg)
        self.world, self.rank, self.local_rank, self.device = procs.world, procs.rank, procs.local_rank, procs.device
        self.is_main = procs.is_main
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed + self.rank)   # dropout's RNG (a resume restores the saved state instead)
        self.threads = configure_threads(cfg, self.device)
        self.plan = plan = RunPlan(cfg, self.device)
        # ---- every check that needs no model, then one live run per output folder -----------------------------------
        check_optimizer(cfg, self.device)
        self.summary = preflight(cfg, plan)
        self.stage, self.variant, self.groups = plan.stage, plan.variant, plan.groups
        self.frames, self.height, self.width = plan.frames, plan.height, plan.width
        self.interp, self.cond_frame = plan.interp, plan.cond_frame
        self.strategy = cfg.strategy
        if self.strategy == "auto":
            self.strategy = "fsdp" if (self.world > 1 and self.stage.name == "joint") else "ddp"
        if (cfg.sample_every or cfg.val_csv) and self.world > 1 and self.strategy == "fsdp":
            raise DynamiCrafterInputError("sample_every / val_csv", "strategy ddp (samples and the held-out loss run "
                                          "on the main process only)", "strategy fsdp with several processes",
                                          "set strategy: ddp, or sample_every: 0 and no val_csv")
        self.lock = RunLock(cfg.output_dir).acquire() if self.is_main else None
        self.monitor = None
        try:
            self._build()
        except BaseException:
            self.close()            # a run that fails while being built leaves no lock behind
            raise

    def _build(self) -> None:
        cfg, v = self.cfg, self.variant
        self.out_dir = cfg.output_dir
        self.ckpt_dir = os.path.join(cfg.output_dir, "checkpoints")
        if self.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)

        # ---- resume point (read before building anything that depends on it) ---------------------------------------
        self.resume_path, self.resume_state = self._resume_point()
        if self.resume_state is not None:
            self._check_identity(self.resume_state)

        # ---- model ---------------------------------------------------------------------------------------------------
        lora_alpha = float(cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank)
        self.model, self.trainable, self.init_report = build_model(
            v, self.stage, self.groups, cfg.seed, cfg.init_checkpoint, cfg.init_adapters, cfg.lora_targets,
            cfg.lora_rank, lora_alpha, cfg.init_strict, device="cpu")
        self.lora_alpha = lora_alpha
        self.model.unet.gradient_checkpointing = bool(cfg.gradient_checkpointing)
        if self.resume_state is not None:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, t in self.resume_state["trainable"].items():
                    params[n].copy_(t)
        self.model.to(self.device)
        self.model.train()
        self.base_sha256 = self._base_hash()
        n_train = sum(p.numel() for n, p in self.model.named_parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        self._log(f"stage {self.stage.name} ({self.stage.description}); variant {v.name}{' tiny' if cfg.tiny else ''}; "
                  f"groups {self.groups}; trainable {n_train:,} of {n_all:,} parameters; init {self.init_report}")

        # ---- encoders, data, objective ----------------------------------------------------------------------------
        self._build_data()
        self.objective = Objective(v.schedule, self.device)

        # ---- distributed wrapping, optimizer, schedule, EMA -----------------------------------------------------------
        self.ddp_model = self._wrap()
        self._log_processes()
        self.params = [p for n, p in self._named_trainable()]
        self.optimizer = build_optimizer(cfg, self.params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.amp_dtype = DTYPES[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.ema = ({n: p.detach().clone().float() for n, p in self._named_trainable()} if cfg.ema else None)
        self.ema_updates = 0

        self.step, self.micro = 0, 0
        self.skipped: Dict[str, str] = {}
        self.skip_events = 0
        self.last_checkpoint: Optional[str] = None
        if self.resume_state is not None:
            self._restore(self.resume_state)
        self.resume_state = None
        self.monitor = Monitor(self)

    # ================================================================================================================
    # setup helpers
    # ================================================================================================================
    def _log_processes(self) -> None:
        how = {"ddp": "DDP (every process holds the trained weights; gradients all-reduced)",
               "fsdp": "FSDP (trained weights, gradients and optimizer state sharded per UNet block)"}[self.strategy]
        why = "set by strategy" if self.cfg.strategy != "auto" else (
            "auto: FSDP for the joint stage with several processes, DDP otherwise")
        if self.world == 1:
            self._log("1 process on %s, %d CPU threads; no DDP/FSDP wrapping (%s would be %s)", self.device,
                      self.threads, "strategy", self.strategy.upper())
        else:
            self._log("%d processes (%s), %d CPU threads each; %s; %s", self.world, self.device.type, self.threads,
                      how, why)
        if self.summary is not None:
            self._log(self.summary.line(self.cfg.batch_size * self.cfg.grad_accum * self.world, self.cfg.data_csv))

    def _log(self, msg: str, *args, level: str = "info") -> None:
        if self.is_main:
            getattr(logger, level)(msg, *args)

    def _build_data(self) -> None:
        cfg = self.cfg
        dropout = self.plan.dropout()
        self.encoders = None
        settings = self.plan.cache_settings()
        if cfg.cache_dir:
            self.dataset = CachedDataset(cfg.cache_dir, settings, cfg.seed, dropout, self.cond_frame)
            self.null_text = self.dataset.null_text[None].to(self.device)
            self.null_image = self.dataset.null_image[None].to(self.device)
            for s in self.dataset.skipped:
                self.skipped[s["path"]] = s["reason"]
                self._log("skipped while pre-computing: %s (%s)", s["path"], s["reason"], level="warning")
        else:
            self.encoders = self.plan.build_encoders()
            self.dataset = self.plan.build_dataset(dropout)
            with torch.no_grad():
                self.null_text = self.encoders.text([""]).float()
                self.null_image = self.encoders.image(torch.zeros(1, 3, 224, 224, device=self.device)).float()
        self.buckets = None
        if cfg.buckets:
            self.buckets = Buckets(self.summary.clips, cfg.bucket_aspects, cfg.bucket_frames or [self.frames],
                                   self.height * self.width, resolution_multiple(cfg, self.variant))
            self.dataset.buckets = self.buckets
            micro = BucketBatchSampler(self.buckets, cfg.batch_size, 0, self.world).per_epoch
            self._log("%s; one epoch = %d micro-batches = %d optimizer steps (batches fill up within a bucket)",
                      self.buckets.line(), micro, math.ceil(micro / cfg.grad_accum))

    def _named_trainable(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _wrap(self):
        if self.world == 1:
            return self.model
        if self.strategy == "fsdp":
            import warnings

            from torch.distributed.fsdp import fully_shard

            # The UNet blocks return reshaped views; nothing here modifies a block output in place, which is what
            # this FSDP2 warning is about.
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

            unet = self.model.unet
            for blk in list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks):
                fully_shard(blk)
            fully_shard(self.model)
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                   broadcast_buffers=False)

    # ================================================================================================================
    # one micro-batch
    # ================================================================================================================
    def conditioning(self, batch: Dict[str, Any]):
        """(latent mean, std [B,4,T,h,w], text [B,77,D], image tokens [B,257,C]) with CFG dropout applied."""
        dev = self.device
        drop_t = batch["drop_text"].to(dev)
        drop_i = batch["drop_image"].to(dev)
        with torch.no_grad():
            if "mean" in batch:                                              # pre-computed cache
                mean, std = batch["mean"].to(dev), batch["std"].to(dev)
                text, tokens = batch["text"].to(dev), batch["image_tokens"].to(dev)
            else:
                video = batch["video"].to(dev)                               # [B, 3, T, H, W]
                mean, std = self.encoders.vae(video)
                text = self.encoders.text(batch["caption"]).float()
                ci = batch["cond_index"].to(dev)
                img = video[torch.arange(video.shape[0], device=dev), :, ci]   # [B, 3, H, W]
                img = torch.where(drop_i[:, None, None, None], torch.zeros_like(img), img)
                tokens = self.encoders.image(img).float()
                drop_i = torch.zeros_like(drop_i)                            # already the zero image's tokens
            text = torch.where(drop_t[:, None, None], self.null_text.to(text.dtype), text)
            tokens = torch.where(drop_i[:, None, None], self.null_image.to(tokens.dtype), tokens)
        return mean.float(), std.float(), text, tokens

    def micro_loss(self, batch: Dict[str, Any], net=None) -> torch.Tensor:
        """The loss of one micro-batch through ``net`` (default: the DDP/FSDP-wrapped model)."""
        dev = self.device
        mean, std, text, tokens = self.conditioning(batch)
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in batch["seed"]]
        t, post_noise, eps = self.objective.draw(gens, mean.shape[1:], dev)
        z0 = sample_posterior(mean, std, post_noise)                           # posterior sample, scaled latent
        concat = None
        if self.stage.concat:
            if self.interp:                                                  # start + end frame, zeros between
                concat = concat_latent(z0[:, :, 0], z0.shape[2], z0[:, :, -1])
            else:                                                            # conditioning frame over all frames
                ci = batch["cond_index"].to(dev)
                concat = concat_latent(z0[torch.arange(z0.shape[0], device=dev), :, ci], z0.shape[2])
        fs = batch["fs"].to(dev)
        net = net if net is not None else self.ddp_model

        def model_fn(x, tt):
            return net(x, tt, text, tokens, fs)

        with torch.autocast(device_type=dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
            return self.objective.loss(model_fn, z0, t, eps, concat)

    # ================================================================================================================
    # the loop
    # ================================================================================================================
    def _loader(self):
        from torch.utils.data import DataLoader

        cfg = self.cfg
        if self.buckets is not None:
            sampler = BucketBatchSampler(self.buckets, cfg.batch_size, self.rank, self.world, cfg.seed,
                                         start=self.micro)
        else:
            sampler = GlobalBatchSampler(len(self.dataset), cfg.batch_size, self.rank, self.world, cfg.seed,
                                         start=self.micro)
        kw = {}
        if cfg.num_workers > 0:
            kw = dict(num_workers=cfg.num_workers, persistent_workers=False, prefetch_factor=2)
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
                          **kw)

    def _no_sync(self, last: bool):
        if self.world == 1 or last:
            if self.strategy == "fsdp" and self.world > 1:
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.ddp_model.no_sync()

    def _note_skips(self, batch) -> None:
        for s in batch["skipped"]:
            self.skip_events += 1
            if s["path"] not in self.skipped:
                self.skipped[s["path"]] = s["reason"]
                logger.warning("skipped %s: %s", s["path"], s["reason"])

    def _ema_update(self) -> None:
        if self.ema is None:
            return
        self.ema_updates += 1
        decay = min(self.cfg.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        with torch.no_grad():
            for n, p in self._named_trainable():
                self.ema[n].lerp_(p.detach().float(), 1.0 - decay)

    def _metrics_path(self) -> str:
        return os.path.join(self.out_dir, "metrics.jsonl")

    def _truncate_metrics(self, step: int) -> None:
        path = self._metrics_path()
        if not os.path.isfile(path):
            return
        with open(path) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
        st.atomic_write_bytes(path, "".join(keep).encode())

    def run(self) -> Dict[str, Any]:
        """Optimizer steps to ``max_steps`` (metrics line, progress, checkpoints, intermediate adapters), then the
        adapter export; returns the run's summary."""
        cfg = self.cfg
        if self.is_main:
            dump_config(cfg, os.path.join(self.out_dir, "config.yaml"))
        it = iter(self._loader())
        bar = (tqdm(total=cfg.max_steps, initial=self.step, desc=f"train {self.stage.name}", unit="step",
                    dynamic_ncols=True) if self.is_main and cfg.progress else None)
        losses: List[float] = []
        clock = [time.perf_counter()]
        metrics = open(self._metrics_path(), "a") if self.is_main else None
        try:
            while self.step < cfg.max_steps:
                step = self.step + 1
                value, shape = self._accumulate(it)
                gnorm = self._optimizer_step(value, step)
                self.step = step
                losses.append(value)
                record = self._record(step, value, gnorm, shape, clock)
                self._report(record, metrics, bar)
                if step % cfg.save_every == 0 or step == cfg.max_steps:
                    self.save()
                if step % (cfg.adapter_every or cfg.save_every) == 0:
                    self._export_intermediate()
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        return self._finish(losses)

    def _accumulate(self, it):
        """``grad_accum`` micro-batches forward + backward -> (the step's mean loss over all processes, the last
        micro-batch's frames/height/width or None)."""
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        shape = None
        for a in range(cfg.grad_accum):
            batch = next(it)
            self.micro += 1
            shape = batch["video"].shape[2:] if "video" in batch else None
            self._note_skips(batch)
            with self._no_sync(a == cfg.grad_accum - 1):
                loss = self.micro_loss(batch)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
        return float(total), shape

    def _optimizer_step(self, value: float, step: int) -> float:
        """Stop on a non-finite loss (nothing saved for the step), else clip, step, schedule, EMA; the grad norm."""
        cfg = self.cfg
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            where = (f"the last good checkpoint is {self.last_checkpoint} (step "
                     f"{self._ckpt_step(self.last_checkpoint)}), left as it was"
                     if self.last_checkpoint else "no checkpoint had been written yet")
            raise TrainingStopped(f"training stopped: the loss is {value} at step {step} (not finite); "
                                  f"nothing was saved for this step; {where}. Lower lr, use bf16 instead of "
                                  f"fp16, or check the data, then resume.")
        self.scaler.unscale_(self.optimizer)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0
                                                     else float("inf")))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._ema_update()
        return gnorm

    def _record(self, step: int, value: float, gnorm: float, shape, clock: List[float]) -> Dict[str, Any]:
        """The step's metrics line (throughput since the last step; held-out loss and samples when due)."""
        now = time.perf_counter()
        sps = self.cfg.batch_size * self.cfg.grad_accum * self.world / max(1e-9, now - clock[0])
        clock[0] = now
        record = {"step": step, "loss": value, "lr": self.scheduler.get_last_lr()[0], "grad_norm": gnorm,
                  "samples_per_s": round(sps, 3), "skipped": len(self.skipped)}
        if self.buckets is not None and shape is not None:
            record["shape"] = list(shape)                   # frames, height, width of the last micro-batch
        record.update(self.monitor.evaluate(step))
        return record

    def _report(self, record: Dict[str, Any], metrics, bar) -> None:
        """The record to metrics.jsonl, the progress bar (or the log every ``log_every`` steps) and the monitor."""
        step, value, lr, sps = record["step"], record["loss"], record["lr"], record["samples_per_s"]
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{sps:.2f}", lr=f"{lr:.2e}", skipped=len(self.skipped))
        self.monitor.report(record)
        if step % self.cfg.log_every == 0 and bar is None:
            self._log("step %d/%d loss %.5f lr %.2e %.2f samples/s", step, self.cfg.max_steps, value, lr, sps)

    def _finish(self, losses: List[float]) -> Dict[str, Any]:
        """After the last step: the skipped entries reported, the adapter exported (rank 0); the run's summary."""
        self._report_skips()
        result = {"step": self.step, "losses": losses, "last_checkpoint": self.last_checkpoint,
                  "skipped": dict(self.skipped), "skip_events": self.skip_events}
        trained = {n: self._full(p) for n, p in self._named_trainable()}          # collective under FSDP
        ema = {n: self._full(t) for n, t in self.ema.items()} if self.ema is not None else None
        if self.is_main:
            result["adapter"] = export_from_trainer(self, trained, ema)
        if self.world > 1:
            dist.barrier()
        return result

    # ================================================================================================================
    # during training: held-out loss, sample videos, intermediate adapters, TensorBoard / wandb
    # ================================================================================================================
    def sampling_encoders(self):
        """The frozen encoders (built on first use when training reads a pre-computed cache)."""
        if self.encoders is None:
            self.encoders = self.plan.build_encoders()
        return self.encoders

    def _export_intermediate(self) -> None:
        trained = {n: self._full(p) for n, p in self._named_trainable()}          # collective under FSDP
        ema = {n: self._full(t) for n, t in self.ema.items()} if self.ema is not None else None
        if self.is_main:
            export_intermediate(self, trained, ema)

    @staticmethod
    def _ckpt_step(path: Optional[str]) -> str:
        m = st._STEP_RE.search(os.path.basename(path or ""))
        return str(int(m.group(1))) if m else "?"

    def _report_skips(self) -> None:
        if self.world > 1:
            allsk = [None] * self.world
            dist.all_gather_object(allsk, self.skipped)
            for s in allsk:
                self.skipped.update(s)
        if self.is_main:
            with open(os.path.join(self.out_dir, "skipped.json"), "w") as f:
                json.dump(self.skipped, f, indent=1)
            if self.skipped:
                logger.warning("skipped %d unusable dataset entries (%d times in all); list in %s",
                               len(self.skipped), self.skip_events, os.path.join(self.out_dir, "skipped.json"))

    def close(self) -> None:
        if getattr(self, "monitor", None) is not None:
            self.monitor.close()
            self.monitor = None
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Build a Trainer from ``cfg``, run it to ``max_steps``, export the adapter; return a summary."""
    trainer = None
    try:
        with disk_full_is_one_line(cfg.output_dir, lambda: getattr(trainer, "last_checkpoint", None)):
            trainer = Trainer(cfg)
            try:
                return trainer.run()
            finally:
                trainer.close()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Trainer", "TrainingStopped", "train"]

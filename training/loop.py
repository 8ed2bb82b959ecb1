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
import hashlib
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from ..model.conditioning import concat_latent
from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.variants import get_variant
from ..model.vae import sample_posterior
from . import state as st
from .config import TrainConfig
from .data import Dropout, GlobalBatchSampler, ImageTextDataset, VideoCsvDataset, collate
from .objective import Objective
from .stages import build_model, get_stage, stage_variant

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss); the message says where and which checkpoint is intact."""


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.max_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0
    return f


class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self._setup_distributed()
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed + self.rank)   # dropout's RNG (a resume restores the saved state instead)
        self.stage = get_stage(cfg.stage)
        base = get_variant(cfg.variant, tiny=cfg.tiny)
        self.variant = stage_variant(base, self.stage, cfg.unet_overrides, cfg.resampler_overrides,
                                     cfg.schedule_overrides, cfg.unet_dropout)
        v = self.variant
        self.frames = cfg.frames if self.stage.video else 1
        self.height, self.width = cfg.height or v.height, cfg.width or v.width
        self.groups = list(cfg.groups or self.stage.groups)
        self.interp = bool(v.interp) and self.stage.concat
        self.cond_frame = cfg.cond_frame or ("first_last" if self.interp else "random")
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
        self.strategy = cfg.strategy
        if self.strategy == "auto":
            self.strategy = "fsdp" if (self.world > 1 and self.stage.name == "joint") else "ddp"
        self.ddp_model = self._wrap()
        self.params = [p for n, p in self._named_trainable()]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.amp_dtype = _DTYPES[cfg.precision]
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
        self._tb = self._tensorboard()

    # ================================================================================================================
    # setup helpers
    # ================================================================================================================
    def _setup_distributed(self) -> None:
        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            if not torch.cuda.is_available():
                raise DynamiCrafterInputError("device", "a CUDA GPU", "none visible", "use device: cpu")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0

    def _log(self, msg: str, *args, level: str = "info") -> None:
        if self.is_main:
            getattr(logger, level)(msg, *args)

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
        return r, st.load_checkpoint(r)

    def _check_identity(self, state: Dict[str, Any]) -> None:
        old = state.get("identity", {})
        new = self.cfg.identity()
        diff = sorted(k for k in new if json.dumps(old.get(k)) != json.dumps(new[k]))
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

    def _build_data(self) -> None:
        cfg = self.cfg
        dropout = Dropout(cfg.p_drop_text, cfg.p_drop_image, cfg.p_drop_both)
        self.encoders = None
        settings = self.cache_settings()
        if cfg.cache_dir:
            from .cache import CachedDataset

            self.dataset = CachedDataset(cfg.cache_dir, settings, cfg.seed, dropout, self.cond_frame)
            self.null_text = self.dataset.null_text[None].to(self.device)
            self.null_image = self.dataset.null_image[None].to(self.device)
            for s in self.dataset.skipped:
                self.skipped[s["path"]] = s["reason"]
                self._log("skipped while pre-computing: %s (%s)", s["path"], s["reason"], level="warning")
        else:
            self.encoders = self.build_encoders()
            self.dataset = self.build_dataset(dropout)
            with torch.no_grad():
                self.null_text = self.encoders.text([""]).float()
                self.null_image = self.encoders.image(torch.zeros(1, 3, 224, 224, device=self.device)).float()
        self._check_resolution()

    def build_encoders(self):
        from .encoders import Encoders, EncoderSpec

        cfg, v = self.cfg, self.variant
        files = tuple(p for p in (cfg.clip_checkpoint, cfg.vae_checkpoint, cfg.init_checkpoint) if p)
        spec = EncoderSpec(tiny=cfg.tiny, text_width=v.unet.context_dim, image_width=v.resampler.embedding_dim,
                           weight_files=files, seed=cfg.seed)
        prec = cfg.encoder_precision or ("bf16" if self.device.type == "cuda" else "fp32")
        return Encoders(spec, dtype=_DTYPES[prec], device=self.device)

    def build_dataset(self, dropout: Dropout):
        cfg, v = self.cfg, self.variant
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

    def _check_resolution(self) -> None:
        f = self.encoders.vae.downscale if self.encoders is not None else None
        mult = 2 ** (len(self.variant.unet.channel_mult) - 1)
        for name, size in (("height", self.height), ("width", self.width)):
            if f is not None and size % (f * mult):
                raise DynamiCrafterInputError(name, f"a multiple of {f * mult} (VAE x{f}, UNet x{mult})", str(size),
                                              "pick another resolution")

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

    def _tensorboard(self):
        if not (self.cfg.tensorboard and self.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DynamiCrafterInputError("tensorboard", "the tensorboard package", "not installed",
                                          "pip install tensorboard, or set tensorboard: false") from None
        return SummaryWriter(os.path.join(self.out_dir, "tensorboard"))

    # ================================================================================================================
    # state: save / restore
    # ================================================================================================================
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
            "lora_alpha": self.lora_alpha,
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

    def micro_loss(self, batch: Dict[str, Any]) -> torch.Tensor:
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
        net = self.ddp_model

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
        cfg = self.cfg
        if self.is_main:
            from .config import dump_config

            dump_config(cfg, os.path.join(self.out_dir, "config.yaml"))
        it = iter(self._loader())
        per_step = cfg.batch_size * cfg.grad_accum * self.world
        bar = None
        if self.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"train {self.stage.name}", unit="step",
                       dynamic_ncols=True)
        nan_at = st.fault("nan_loss")
        losses: List[float] = []
        t_last = time.perf_counter()
        metrics = open(self._metrics_path(), "a") if self.is_main else None
        try:
            while self.step < cfg.max_steps:
                step = self.step + 1
                total = torch.zeros((), device=self.device)
                for a in range(cfg.grad_accum):
                    batch = next(it)
                    self.micro += 1
                    self._note_skips(batch)
                    with self._no_sync(a == cfg.grad_accum - 1):
                        loss = self.micro_loss(batch)
                        if nan_at == step:
                            loss = loss * float("nan")
                        self.scaler.scale(loss / cfg.grad_accum).backward()
                    total += loss.detach() / cfg.grad_accum
                if self.world > 1:
                    dist.all_reduce(total)
                    total /= self.world
                value = float(total)
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
                self.step = step
                losses.append(value)
                now = time.perf_counter()
                sps = per_step / max(1e-9, now - t_last)
                t_last = now
                lr = self.scheduler.get_last_lr()[0]
                if metrics is not None:
                    metrics.write(json.dumps({"step": step, "loss": value, "lr": lr, "grad_norm": gnorm,
                                              "samples_per_s": round(sps, 3), "skipped": len(self.skipped)}) + "\n")
                    metrics.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{sps:.2f}", lr=f"{lr:.2e}",
                                    skipped=len(self.skipped))
                if self._tb is not None:
                    self._tb.add_scalar("loss", value, step)
                    self._tb.add_scalar("lr", lr, step)
                    self._tb.add_scalar("grad_norm", gnorm, step)
                if step % cfg.log_every == 0 and bar is None:
                    self._log("step %d/%d loss %.5f lr %.2e %.2f samples/s", step, cfg.max_steps, value, lr, sps)
                if step % cfg.save_every == 0 or step == cfg.max_steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        self._report_skips()
        result = {"step": self.step, "losses": losses, "last_checkpoint": self.last_checkpoint,
                  "skipped": dict(self.skipped), "skip_events": self.skip_events}
        trained = {n: self._full(p) for n, p in self._named_trainable()}          # collective under FSDP
        ema = {n: self._full(t) for n, t in self.ema.items()} if self.ema is not None else None
        if self.is_main:
            from .export import export_from_trainer

            result["adapter"] = export_from_trainer(self, trained, ema)
        if self.world > 1:
            dist.barrier()
        return result

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
        if self._tb is not None:
            self._tb.close()


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Build a Trainer from ``cfg``, run it to ``max_steps``, export the adapter; return a summary."""
    try:
        trainer = Trainer(cfg)
        try:
            return trainer.run()
        finally:
            trainer.close()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Trainer", "TrainingStopped", "train", "file_sha256"]

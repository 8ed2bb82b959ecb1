"""Every setting of the trainer in one record: from a YAML/JSON file, then command-line flags on top.

``TrainConfig.to_dict()`` is what a run records in its output folder and in every checkpoint; ``train.py dump-config``
prints it, so a config file listing every setting is one command away.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ..model.config import SamplerDefaults
from ..model.errors import DynamiCrafterInputError

# Settings that change the numbers of a run: a resume refuses a checkpoint whose values differ.
OPTIMIZERS = ("adamw", "adafactor", "prodigy", "adamw8bit")
RUN_IDENTITY = ("optimizer", "buckets", "bucket_aspects", "bucket_frames", "stage", "variant", "tiny", "groups", "unet_overrides", "resampler_overrides", "schedule_overrides",
                "height", "width", "frames", "seed", "batch_size", "grad_accum", "lr", "weight_decay", "adam_betas",
                "adam_eps", "warmup_steps", "lr_schedule", "grad_clip", "precision", "ema_decay", "lora_rank",
                "lora_alpha", "lora_targets", "unet_dropout", "frame_stride_min", "frame_stride_max", "cond_frame",
                "p_drop_text", "p_drop_image", "p_drop_both", "init_checkpoint", "init_adapters")


@dataclass
class TrainConfig:
    # ---- what to train -------------------------------------------------------------------------------------------
    stage: str = "finetune"                 # t2i | t2v | joint | finetune
    variant: str = "512"                    # 256 | 512 | 1024 | 512-interp
    tiny: bool = False                      # tiny test configs (model and encoders) from the same registry
    groups: Optional[List[str]] = None      # trainable groups; None = the stage's declared default
    lora_rank: int = 16                     # LoRA rank
    lora_alpha: Optional[float] = None      # None = lora_rank (scale 1)
    # attention projections that get LoRA (also: "to_k_ip", "to_v_ip")
    lora_targets: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # LoRA targets
    unet_overrides: Dict[str, Any] = field(default_factory=dict)       # UNetConfig fields
    resampler_overrides: Dict[str, Any] = field(default_factory=dict)  # ResamplerConfig fields
    schedule_overrides: Dict[str, Any] = field(default_factory=dict)   # ScheduleConfig fields
    unet_dropout: Optional[float] = None    # None = the variant's (0.1)

    # ---- weights to start from -----------------------------------------------------------------------------------
    init_checkpoint: Optional[str] = None   # DynamiCrafter / text-to-video / SD2.1 checkpoint (UNet, P, maybe VAE+CLIP)
    init_adapters: List[str] = field(default_factory=list)  # adapters of earlier stages, applied in order
    init_strict: bool = True                # refuse extra UNet keys in init_checkpoint
    clip_checkpoint: Optional[str] = None   # open_clip ViT-H-14 weights if the init checkpoint has none
    vae_checkpoint: Optional[str] = None    # SD VAE weights if the init checkpoint has none

    # ---- data ----------------------------------------------------------------------------------------------------
    data_csv: Optional[str] = None          # CSV with header path,caption[,fps]
    data_root: Optional[str] = None         # folder the CSV paths are relative to (default: the CSV's folder)
    val_csv: Optional[str] = None           # held-out clips (same CSV format) for a validation loss
    buckets: bool = False                   # group clips by aspect ratio and frame count; each batch one shape
    bucket_aspects: List[float] = field(default_factory=lambda: [0.5625, 0.75, 1.0, 1.3333, 1.7778])  # width/height
    bucket_frames: List[int] = field(default_factory=list)  # clip lengths of the frame buckets (default: [frames])
    image_folder: Optional[str] = None      # t2i: images + same-stem .txt captions
    height: Optional[int] = None            # None = the variant's resolution
    width: Optional[int] = None
    frames: int = 16                        # frames per clip (1 for t2i)
    frame_stride_min: int = 1               # frame stride sampled per clip in [min, max]
    frame_stride_max: int = 6               # lowered per clip until the frames fit
    cond_frame: Optional[str] = None        # random | first | first_last (None: random, first_last for interp)
    p_drop_text: float = 0.05               # CFG dropout: text only
    p_drop_image: float = 0.05              # CFG dropout: image only (the all-zero image)
    p_drop_both: float = 0.05               # CFG dropout: both
    num_workers: int = 2                    # DataLoader worker processes (PyAV decoding)
    cache_dir: Optional[str] = None         # pre-computed latents/embeddings (train.py precompute)
    cache_views: int = 1                    # clips pre-computed per video
    cache_cond_frames: int = 4              # conditioning-frame candidates embedded per clip
    cache_dtype: str = "fp16"               # fp16 | bf16 | fp32

    # ---- optimisation --------------------------------------------------------------------------------------------
    seed: int = 0                           # seed of the sample order, every per-sample draw and the initialisation
    max_steps: int = 1000                   # optimizer steps
    batch_size: int = 2                     # per process
    grad_accum: int = 2
    optimizer: str = "adamw"                # adamw | adafactor | prodigy (pip install prodigyopt) | adamw8bit (bitsandbytes)
    lr: float = 1e-5                        # learning rate (official fine-tuning recipe: 1e-5; prodigy: 1.0)
    weight_decay: float = 1e-2              # AdamW weight decay
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999]) # AdamW betas
    adam_eps: float = 1e-8                  # AdamW eps
    warmup_steps: int = 0                   # linear warmup from lr/warmup_steps to lr
    lr_schedule: str = "constant"           # constant | cosine (after warmup)
    grad_clip: float = 0.5                  # 0 = off
    precision: str = "fp32"                 # fp32 | bf16 | fp16 (autocast)
    encoder_precision: Optional[str] = None  # None: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False    # recompute UNet blocks in backward (saves memory)
    ema: bool = True                        # keep an EMA of the trained weights (exported by default)
    ema_decay: float = 0.9999               # EMA decay, min(ema_decay, (1+n)/(10+n)) at update n

    # ---- run -----------------------------------------------------------------------------------------------------
    output_dir: str = "runs/dynamicrafter"  # checkpoints, metrics, adapter
    save_every: int = 500                   # checkpoint every N steps (and at the end)
    adapter_every: int = 0                  # adapter file every N steps in output_dir/adapters (0 = with each checkpoint)
    export_kohya: bool = True               # LoRA-only adapters also as *_kohya.safetensors (ComfyUI's LoRA loaders)
    sample_every: int = 0                   # sample videos every N steps into output_dir/samples (0 = off)
    samples: List[Dict[str, str]] = field(default_factory=list)  # [{image, prompt}]; empty = the first clips' frames
    sample_count: int = 2                   # sample videos per round when samples is empty
    sample_steps: int = 10                  # DDIM steps of the samples
    sample_cfg: float = SamplerDefaults().cfg_text  # text guidance of the samples (image guidance the same)
    val_every: int = 0                      # validation loss every N steps on val_csv (0 = with the samples)
    val_batches: int = 2                    # batches of the validation loss (fixed seeds: comparable across steps)
    keep_checkpoints: int = 3               # newest checkpoints kept (0 = all)
    resume: str = "auto"                    # auto | none | <checkpoint path>
    log_every: int = 10                     # log line every N steps when the progress bar is off
    progress: bool = True                   # tqdm progress bar with loss and speed
    tensorboard: bool = False               # TensorBoard logs in output_dir/tensorboard (pip install tensorboard)
    wandb: bool = False                     # Weights & Biases logging (pip install wandb; project: wandb_project)
    wandb_project: str = "dynamicrafter"    # wandb project name
    threads: int = 0                        # torch CPU threads per process (0: physical cores / processes per node)
    device: str = "auto"                    # auto | cpu | cuda
    strategy: str = "auto"                  # auto (FSDP for joint with >1 process, else DDP) | ddp | fsdp
    deterministic: bool = False             # torch deterministic algorithms (slower on GPU)
    export_ema: bool = True                 # export the EMA weights (else the raw ones)
    export_merged: bool = False             # also write output_dir/merged.safetensors (full checkpoint)
    export_dtype: str = "fp16"              # fp16 | bf16 | fp32

    # ------------------------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DynamiCrafterInputError("training config", "known setting names (train.py dump-config lists them)",
                                          f"unknown {unknown}", "fix the names")
        d = dict(d)
        for f in dataclasses.fields(cls):     # YAML reads 1e-4 (no dot) as a string: take it as the number it is
            if str(f.type) in ("float", "Optional[float]") and isinstance(d.get(f.name), str):
                try:
                    d[f.name] = float(d[f.name])
                except ValueError:
                    pass
        cfg = cls(**d)
        if isinstance(cfg.adam_betas, (list, tuple)) is False or len(cfg.adam_betas) != 2:
            raise DynamiCrafterInputError("adam_betas", "two numbers [b1, b2]", repr(cfg.adam_betas), "fix the list")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(what, expected, todo):
            raise DynamiCrafterInputError(what, expected, repr(getattr(self, what)), todo)

        if self.precision not in ("fp32", "bf16", "fp16"):
            bad("precision", "fp32, bf16 or fp16", "pick one")
        if self.lr_schedule not in ("constant", "cosine"):
            bad("lr_schedule", "constant or cosine", "pick one")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            bad("strategy", "auto, ddp or fsdp", "pick one")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", " | ".join(OPTIMIZERS), "pick one")
        for f in dataclasses.fields(self):                      # types first: a string lr is one line, not a crash
            v = getattr(self, f.name)
            want = str(f.type)
            if want == "bool" and not isinstance(v, bool):
                bad(f.name, "true or false", "fix the value")
            if want in ("int", "float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
                bad(f.name, f"a number ({want})", "fix the value")
            if want == "int" and isinstance(v, float) and not v.is_integer():
                bad(f.name, "a whole number", "fix the value")
            if want in ("int", "float") and not math.isfinite(float(v)):
                bad(f.name, "a finite number", "fix the value")
        for k in ("batch_size", "grad_accum", "max_steps", "frames", "save_every", "log_every", "sample_steps",
                  "val_batches", "lora_rank"):
            if int(getattr(self, k)) < 1:
                bad(k, "an integer >= 1", "raise it")
        for k in ("adapter_every", "sample_every", "val_every", "sample_count", "threads", "warmup_steps",
                  "keep_checkpoints", "num_workers"):
            if int(getattr(self, k)) < 0:
                bad(k, "an integer >= 0", "raise it")
        if not self.lr > 0:
            bad("lr", "a learning rate > 0", "set a positive lr (finetune: 1e-5)")
        for k in ("weight_decay", "grad_clip", "adam_eps", "p_drop_text", "p_drop_image", "p_drop_both"):
            if not getattr(self, k) >= 0:
                bad(k, "a number >= 0", "fix the value")
        if not 0 <= self.ema_decay <= 1:
            bad("ema_decay", "a number in 0..1", "fix the value")
        if not 0 <= self.p_drop_text + self.p_drop_image + self.p_drop_both <= 1:
            bad("p_drop_text", "dropout probabilities summing to at most 1", "lower them")
        if any(not isinstance(f, int) or f < 1 or f > self.frames for f in self.bucket_frames):
            bad("bucket_frames", f"whole numbers in 1..frames ({self.frames})", "fix the list")
        if any(not isinstance(a, (int, float)) or not a > 0 for a in self.bucket_aspects):
            bad("bucket_aspects", "width/height ratios > 0", "fix the list")
        for i, smp in enumerate(self.samples):
            if not isinstance(smp, dict) or not smp.get("image") or "prompt" not in smp:
                bad("samples", "a list of {image: path, prompt: text}", f"fix entry {i}")

    def identity(self) -> Dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in RUN_IDENTITY}


def load_config_file(path: str) -> Dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON file holding a mapping of settings (one line on any problem with the file)."""
    what = f"config file {path}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DynamiCrafterInputError(what, "an existing YAML or JSON file", "no such file", "fix the path") from None
    except UnicodeDecodeError as e:
        raise DynamiCrafterInputError(what, "UTF-8 text", f"a non-UTF-8 byte at offset {e.start}",
                                      "save it as UTF-8") from None
    except OSError as e:
        raise DynamiCrafterInputError(what, "a readable file", e.strerror or str(e), "fix the path") from None
    if os.path.splitext(path)[1].lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
            problem = getattr(e, "problem", None) or type(e).__name__
            raise DynamiCrafterInputError(what, "valid YAML", f"{problem} at {where}", "fix the syntax there") \
                from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise DynamiCrafterInputError(what, "valid JSON", f"{e.msg} at line {e.lineno}, column {e.colno}",
                                          "fix the syntax there (or use .yaml)") from None
    if not isinstance(data, dict):
        raise DynamiCrafterInputError(what, "a mapping of setting: value", type(data).__name__,
                                      "write one setting per line")
    return data


def dump_config(cfg: TrainConfig, path: Optional[str] = None, fmt: str = "yaml") -> str:
    d = cfg.to_dict()
    if fmt == "json":
        text = json.dumps(d, indent=2)
    else:
        import yaml

        text = yaml.safe_dump(d, sort_keys=False)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text

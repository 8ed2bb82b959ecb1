"""Every setting of the trainer in one record: from a YAML/JSON file, then command-line flags on top.

``TrainConfig.to_dict()`` is what a run records in its output folder and in every checkpoint; ``train.py dump-config``
prints it, so a config file listing every setting is one command away.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ..model.errors import DynamiCrafterInputError

# Settings that change the numbers of a run: a resume refuses a checkpoint whose values differ.
RUN_IDENTITY = ("stage", "variant", "tiny", "groups", "unet_overrides", "resampler_overrides", "schedule_overrides",
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
    lr: float = 1e-5                        # AdamW learning rate (official fine-tuning recipe: 1e-5)
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
    keep_checkpoints: int = 3               # newest checkpoints kept (0 = all)
    resume: str = "auto"                    # auto | none | <checkpoint path>
    log_every: int = 10                     # log line every N steps when the progress bar is off
    progress: bool = True                   # tqdm progress bar with loss and speed
    tensorboard: bool = False               # TensorBoard logs in output_dir/tensorboard (pip install tensorboard)
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
        cfg = cls(**dict(d))
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
        for k in ("batch_size", "grad_accum", "max_steps", "frames", "save_every", "log_every"):
            if int(getattr(self, k)) < 1:
                bad(k, "an integer >= 1", "raise it")
        if not 0 <= self.p_drop_text + self.p_drop_image + self.p_drop_both <= 1:
            bad("p_drop_text", "dropout probabilities summing to at most 1", "lower them")

    def identity(self) -> Dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in RUN_IDENTITY}


def load_config_file(path: str) -> Dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON file holding a mapping of settings."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if os.path.splitext(path)[1].lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise DynamiCrafterInputError(f"config file {path}", "a mapping of setting: value", type(data).__name__,
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

"""Configuration records for the three parts of DynamiCrafter: the 3D UNet, the image query transformer P, the schedule.

Field names follow the reference configs (`configs/inference_*_v1.0.yaml`) so a sidecar or YAML dict maps onto them
with ``from_dict``; unknown keys are refused so a typo never silently changes the architecture.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from .errors import DynamiCrafterInputError


def _from_dict(cls, d: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise DynamiCrafterInputError(
            f"{cls.__name__}", f"keys among {sorted(names)}", f"unknown keys {unknown}", "remove or rename them"
        )
    kw = {}
    for k, v in d.items():
        kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


@dataclass(frozen=True)
class UNetConfig:
    """VideoCrafter 3D UNet (`lvdm.modules.networks.openaimodel3d.UNetModel`) with DynamiCrafter's image injection."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: Tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    dropout: float = 0.1
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True
    use_checkpoint: bool = False
    temporal_conv: bool = True
    temporal_attention: bool = True
    temporal_selfatt_only: bool = True
    use_relative_position: bool = False
    use_causal_attention: bool = False
    temporal_length: int = 16
    addition_attention: bool = True
    image_cross_attention: bool = True
    image_cross_attention_scale_learnable: bool = False
    default_fs: int = 24
    fs_condition: bool = True
    # Not in the reference configs: fixed numbers the reference hard-codes, named here.
    text_context_len: int = 77
    image_tokens_per_frame: int = 16

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ResamplerConfig:
    """Query transformer P (`lvdm.modules.encoders.resampler.Resampler`), per-frame queries (video_length)."""

    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280
    output_dim: int = 1024
    ff_mult: int = 4
    video_length: int = 16

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ResamplerConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ScheduleConfig:
    """Diffusion schedule of `LatentVisualDiffusion.register_schedule` plus dynamic rescale."""

    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    beta_schedule: str = "linear"
    rescale_betas_zero_snr: bool = True
    parameterization: str = "v"
    use_dynamic_rescale: bool = True
    base_scale: float = 0.7
    turning_step: int = 400

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScheduleConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class SamplerDefaults:
    """The DDIM sampler's defaults (reference ``scripts/run.sh``): stated here once; the sampler nodes' widgets, the
    shipped workflows (scripts/build_workflows.py), generate.py and the trainer's samples read them."""

    steps: int = 50
    cfg_text: float = 7.5
    cfg_image: float = 7.5          # image guidance of dual CFG; "single" mode does not use it
    eta: float = 1.0
    mode: str = "multi"             # "multi": text + image CFG; "single": text guidance only (ToonCrafter)


@dataclass(frozen=True)
class ToonDecodeDefaults:
    """ToonCrafter's dual-reference decode (reference config and inference): model/tooncrafter.py and the decode
    node read it."""

    chunk_frames: int = 16          # frames per decode chunk (the reference UNet's temporal_length): numerics
    perframe_ae: bool = True        # the reference's flag: the encoder sees each frame alone (model/vae.py always does)
    splice_middle: bool = True      # the two middle frames from a second decode without frames 1 and T-2


@dataclass(frozen=True)
class Variant:
    """One named DynamiCrafter model: architecture, schedule and inference defaults."""

    name: str
    unet: UNetConfig
    resampler: ResamplerConfig
    schedule: ScheduleConfig
    height: int
    width: int
    motion_input: str  # "fps" or "frame_stride"
    default_motion: int
    motion_range: Tuple[int, int]
    frames: int = 16  # frames per clip at inference (the reference's video_length)
    timestep_spacing: str = "uniform_trailing"
    guidance_rescale: float = 0.7
    interp: bool = False
    description: str = ""
    sampling: SamplerDefaults = field(default_factory=SamplerDefaults)
    toon_decode: Optional[ToonDecodeDefaults] = None  # the dual-reference decode's defaults (first_stage "dualref")
    # {"config": name} on a small config (model/variants.py SMALL_CONFIGS); empty on a real variant
    extra: Mapping[str, Any] = field(default_factory=dict)
    # the key families (model/detect.py) whose files may hold this variant, its own first
    families: Tuple[str, ...] = ("512-family",)
    first_stage: str = "sd"                      # "sd", or "dualref": ToonCrafter's dual-reference VAE decoder
    tiny_size: Tuple[int, int] = (128, 80)       # width, height of generate.py --tiny runs
    # the official file: (name in the model folders, hub repo, file in the repo, size); None: no download
    download: Optional[Tuple[str, str, str, str]] = None

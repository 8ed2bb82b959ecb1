"""Registry of named DynamiCrafter variants (architecture, schedule, inference defaults) and of the small configs
built from them by the same code.

Real values come from the reference `configs/inference_{256,512,1024}_v1.0.yaml` and
`configs/training_512_v1.0/config_interp.yaml`; the inference defaults (size, frames, motion value and range,
timestep spacing, guidance rescale, the sampler's steps / cfg / eta: ``sampling``, model/config.py SamplerDefaults)
from the reference `scripts/run.sh`. Hosts and CLIs read their defaults here.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Union

from .config import ResamplerConfig, SamplerDefaults, ScheduleConfig, ToonDecodeDefaults, UNetConfig, Variant
from .errors import DynamiCrafterInputError

# ----------------------------------------------------------------------------------------------------------------
# Real variants
# ----------------------------------------------------------------------------------------------------------------
_UNET_512 = UNetConfig()
_P = ResamplerConfig()
_SCHED_V = ScheduleConfig()

VARIANTS: Dict[str, Variant] = {
    "256": Variant(
        name="256",
        unet=dataclasses.replace(_UNET_512, image_cross_attention_scale_learnable=True, default_fs=3),
        resampler=_P,
        schedule=dataclasses.replace(
            _SCHED_V, rescale_betas_zero_snr=False, parameterization="eps", use_dynamic_rescale=False
        ),
        height=256, width=256, motion_input="frame_stride", default_motion=3, motion_range=(1, 10),
        timestep_spacing="uniform", guidance_rescale=0.0,
        description="DynamiCrafter 256x256, eps-prediction, frame-stride input, learnable image-attention gate",
        families=("256",), tiny_size=(64, 64),
        download=("dynamicrafter_256.ckpt", "Doubiiu/DynamiCrafter", "model.ckpt", "about 10 GB"),
    ),
    "512": Variant(
        name="512", unet=_UNET_512, resampler=_P, schedule=_SCHED_V,
        height=320, width=512, motion_input="fps", default_motion=24, motion_range=(15, 30),
        description="DynamiCrafter 320x512, v-prediction, zero-SNR, dynamic rescale 0.7",
        download=("dynamicrafter_512.ckpt", "Doubiiu/DynamiCrafter_512", "model.ckpt", "about 10 GB"),
    ),
    "1024": Variant(
        name="1024",
        unet=dataclasses.replace(_UNET_512, default_fs=10),
        resampler=_P,
        schedule=dataclasses.replace(_SCHED_V, base_scale=0.3),
        height=576, width=1024, motion_input="fps", default_motion=10, motion_range=(5, 15),
        description="DynamiCrafter 576x1024, v-prediction, zero-SNR, dynamic rescale 0.3",
        tiny_size=(192, 112),
        download=("dynamicrafter_1024.ckpt", "Doubiiu/DynamiCrafter_1024", "model.ckpt", "about 10 GB"),
    ),
    "512-interp": Variant(
        name="512-interp", unet=_UNET_512, resampler=_P, schedule=_SCHED_V,
        height=320, width=512, motion_input="fps", default_motion=5, motion_range=(1, 30), interp=True,
        description="DynamiCrafter 320x512 interpolation/loop (start + end frame); run.sh passes 5, training used 10",
        download=("dynamicrafter_512_interp.ckpt", "Doubiiu/DynamiCrafter_512_Interp", "model.ckpt", "about 10 GB"),
    ),
    # ToonCrafter (reference scripts/run.sh): the 512-interp UNet trained on cartoons + the dual-reference VAE
    # (model/tooncrafter.py); frame stride 10, recommended 5-30 (smaller: more motion); guidance on text only
    # (mode single).
    "tooncrafter": Variant(
        name="tooncrafter", unet=_UNET_512, resampler=_P, schedule=_SCHED_V,
        height=320, width=512, motion_input="fps", default_motion=10, motion_range=(5, 30), interp=True,
        description="ToonCrafter 320x512 cartoon interpolation (start + end frame), dual-reference VAE decoder",
        sampling=SamplerDefaults(mode="single"), toon_decode=ToonDecodeDefaults(),
        # a pruned ToonCrafter file (no VAE keys) has the 512 layout: chosen there by metadata, argument or name
        families=("tooncrafter", "512-family"), first_stage="dualref",
        download=("tooncrafter_512_interp.ckpt", "Doubiiu/ToonCrafter", "model.ckpt", "about 10 GB"),
    ),
}

# ----------------------------------------------------------------------------------------------------------------
# Small configs: the same variants with small widths and depths; every flag, the schedule and the inference defaults
# stay those of the real variant, so they run the same code path. A file built with one names it in its metadata
# ('dynamicrafter.config', model/checkpoint.py META_CONFIG); the loader never guesses one from the shapes.
# Image tokens stay 16 per frame (the UNet hard-codes it).
# ----------------------------------------------------------------------------------------------------------------
_TINY_UNET = dict(
    model_channels=32, attention_resolutions=(1,), num_res_blocks=1, channel_mult=(1, 2),
    num_head_channels=8, context_dim=64, temporal_length=16,
)
_TINY_RESAMPLER = dict(dim=48, depth=2, dim_head=8, heads=4, output_dim=64, ff_mult=2)
SMALL_CONFIGS: Dict[str, Dict[str, dict]] = {
    # model/tiny.py's random-weight files (generate.py --tiny, the tests) and the trainer's `tiny: true`:
    # P reads the 64-wide tokens of the tiny image tower (model/tiny.py VISION_WIDTH).
    "tiny": dict(unet=_TINY_UNET, resampler=dict(_TINY_RESAMPLER, embedding_dim=64)),
    # the same with P reading 48-wide tokens: the tests' stand-in for a model paired with another image encoder
    "tiny-clip48": dict(unet=_TINY_UNET, resampler=dict(_TINY_RESAMPLER, embedding_dim=48)),
}


def variant_names() -> List[str]:
    return list(VARIANTS)


def get_variant(name: str, tiny: Union[bool, str] = False) -> Variant:
    """The registered variant ``name``; ``tiny``: True or a SMALL_CONFIGS name builds it in that small config."""
    if name not in VARIANTS:
        raise DynamiCrafterInputError(
            "variant", f"one of {variant_names()}", repr(name), "pick one of the listed variant names"
        )
    v = VARIANTS[name]
    if not tiny:
        return v
    config = "tiny" if tiny is True else str(tiny)
    if config not in SMALL_CONFIGS:
        raise DynamiCrafterInputError("config", f"one of {list(SMALL_CONFIGS)}", repr(config),
                                      "reconvert the file or pick one of the listed configs")
    small = SMALL_CONFIGS[config]
    return dataclasses.replace(
        v,
        unet=dataclasses.replace(v.unet, **small["unet"]),
        resampler=dataclasses.replace(v.resampler, **small["resampler"]),
        extra={"config": config},
    )


def families() -> List[str]:
    """Every key family a registered variant belongs to (model/detect.py), in registry order."""
    return list(dict.fromkeys(f for v in VARIANTS.values() for f in v.families))


def family_variants(family: str) -> List[str]:
    """The variants whose files may have the keys of ``family``; the first is the family's default."""
    own = [v.name for v in VARIANTS.values() if v.families[0] == family]
    return own + [v.name for v in VARIANTS.values() if family in v.families[1:]]

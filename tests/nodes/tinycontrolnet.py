"""A tiny random-weight ControlNet in the SD2.1 ControlNet layout (``control_model.*`` keys: ``input_hint_block``,
``input_blocks``, ``zero_convs``, ``middle_block``, ``middle_block_out``; linear transformer projections), sized for
the tiny DynamiCrafter UNet of model/variants.py, so the hosts' own ``ControlNetLoader`` loads it and its residuals
have the shapes of the tiny UNet's skips.

The module is the host's own ``comfy.cldm.cldm.ControlNet``, built with the config the host's detection
(``model_detection.detect_unet_config`` + ``supported_models_base.BASE``, ``num_head_channels`` 64) reads back from
these keys; its weights are re-drawn with model/tiny.py's seeded init, the zero convolutions included (a trained
ControlNet's are not zero either), so its residuals are not zero. Residual channels per input block follow the
tiny UNet (model_channels, channel_mult, num_res_blocks); the cross-attention width is the tiny text width. The
host gives every spatial transformer ``channels // 64`` heads, so transformers sit only where a level has 64 or more
channels (the DynamiCrafter UNet's own attention placement does not matter to the residual shapes).
"""
from __future__ import annotations

import os
from typing import Dict

import torch
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.tiny import init_tensor
from comfyui_dynamicrafter.model.variants import get_variant

HEAD_CHANNELS = 64  # what the hosts' BASE config sets for a detected UNet


def controlnet_config(variant: str = "512") -> dict:
    u = get_variant(variant, tiny=True).unet
    depth = []
    for mult in u.channel_mult:
        depth += [1 if u.model_channels * mult >= HEAD_CHANNELS else 0] * u.num_res_blocks
    mid_ch = u.model_channels * u.channel_mult[-1]
    if mid_ch < HEAD_CHANNELS:
        raise ValueError(f"the tiny UNet's middle has {mid_ch} channels; the host's ControlNet needs >= 64")
    return dict(image_size=32, in_channels=4, model_channels=u.model_channels, hint_channels=3,
                num_res_blocks=u.num_res_blocks, channel_mult=tuple(u.channel_mult), num_head_channels=HEAD_CHANNELS,
                use_spatial_transformer=True, transformer_depth=depth, transformer_depth_middle=1,
                context_dim=u.context_dim, use_linear_in_transformer=True, legacy=False, dtype=torch.float32)


def state_dict(variant: str = "512", seed: int = 77) -> Dict[str, torch.Tensor]:
    """``control_model.*`` tensors of the host's ControlNet module, every tensor drawn from ``seed``."""
    import comfy.cldm.cldm as cldm
    import comfy.ops

    with torch.device("meta"):
        net = cldm.ControlNet(operations=comfy.ops.disable_weight_init, device="meta", **controlnet_config(variant))
    gen = torch.Generator().manual_seed(seed)
    return {"control_model." + k: init_tensor(k, t.shape, gen).contiguous()
            for k, t in sorted(net.state_dict().items())}


def write(folder: str, name: str = "dc_tiny_controlnet.safetensors", variant: str = "512", seed: int = 77) -> str:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        save_file(state_dict(variant, seed), path)
    return path

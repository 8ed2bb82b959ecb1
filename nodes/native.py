"""DynamiCrafter as a native host model: a ``supported_models_base.BASE`` config, a ``model_base.BaseModel`` subclass and
the UNet wrapper that maps the host's frames-as-batch tensors onto model/'s [B, C, T, H, W] UNet (as the host does for SVD).

Conditioning reaches the UNet through ``extra_conds``: the concat latent as ``c_concat`` (``CONDNoiseShape``, after
``process_latent_in``), the text as ``c_crossattn`` (``CONDCrossAttn``), the image tokens as their own ``CONDRegular``
kwarg, fps/frame stride and the frame count as ``CONDConstant``.
"""
from __future__ import annotations

from typing import Optional

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.supported_models_base

from ..model.config import Variant
from ..model.errors import DynamiCrafterInputError
from ..model.guards import NonFiniteError, describe_nonfinite, is_finite_tensor
from ..model.log import logger
from ..model.unet import UNetModel
from ..model.variants import VARIANTS
from . import compat
from .model_sampling import make_model_sampling
from .windows import LAYOUT_KEY, FrameConcat, Layout, apply_window, install, layout_of

# Key of the pack's entry in a CONDITIONING dict (set by the conditioning node, read by extra_conds).
COND_KEY = "dcn_video"
TEXT_TOKENS = 77
# text widths of other encoders, named in error messages (the conditioning node uses it too)
KNOWN_TEXT_ENCODERS = {768: "an SD1.5 / CLIP-L text encoder", 1280: "an SDXL CLIP-G text encoder",
               2048: "SDXL's two text encoders", 4096: "a T5 text encoder"}


class DynamiCrafterUNet(UNetModel):
    """model/'s UNet taking the host's call: x [N=B*T, 8, h, w], float timesteps [N], context [N, 77, D] and the
    pack's kwargs; unfolds frames, keeps one context row and one integer timestep per video.

    ``dtype`` is the weight dtype the host chose; ``dc_compute_dtype`` the dtype the layers compute in (the host's
    manual-cast dtype for fp8/fp16 storage), which model/'s UNet uses for its activations.
    """

    def __init__(self, dc_unet_config=None, dtype=None, dc_compute_dtype=None, device=None, operations=None,
                 **_ignored):
        super().__init__(dc_unet_config, dtype=dtype, device=device, operations=compat.layer_namespace(operations),
                         attention=compat.host_attention, compute_dtype=dc_compute_dtype)
        self.weight_dtype = dtype or torch.float32

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        """The host's call, through the host's diffusion-model wrappers where it has them (EasyCache and other
        WrappersMP.DIFFUSION_MODEL patches run around the UNet as they do around the host's own UNets)."""
        wrappers = compat.diffusion_model_wrappers(transformer_options)
        if wrappers:
            compat.check_diffusion_wrappers(transformer_options, self.cfg.in_channels, self.cfg.out_channels)
            out = compat.run_wrapped(self._forward, self, wrappers, x, timesteps, context, control,
                                     transformer_options, **kwargs)
        else:
            out = self._forward(x, timesteps, context, control, transformer_options, **kwargs)
        sink = transformer_options.get("dcn_output_sink") if isinstance(transformer_options, dict) else None
        if sink is not None:
            sink.append(out)                                               # raw v/eps for the exact DDIM path
        elif not is_finite_tensor(out):  # a host sampler: stop at the first bad step (the exact one checks its latent)
            raise NonFiniteError(
                f"DynamiCrafter UNet output at timestep {int(timesteps.flatten()[0].round())}", "finite values",
                describe_nonfinite(out), "nothing was saved; a NaN/Inf came from the weights, a LoRA / patch, the "
                "guidance scale or the input image, or fp16 overflowed: check those or run in bf16/fp32")
        return out

    def _forward(self, x, timesteps, context=None, control=None, transformer_options={}, dcn_image_tokens=None,
                 dcn_fs=None, dcn_frames=None, dcn_layout=None, **kwargs):
        n, c, h, w = x.shape                                                # frames as batch: [(b t), 8, h, w]
        t = int(dcn_frames) if dcn_frames is not None else n
        if n % t:
            raise RuntimeError(f"DynamiCrafter: {n} latent frames in the batch is not a multiple of {t} frames/video")
        b = n // t
        x5 = x.reshape(b, t, c, h, w).transpose(1, 2)                      # [b, 8, t, h, w]
        ts = video_timesteps(timesteps, b, t)
        ctx = video_context(context, dcn_image_tokens, b, t)
        fs = None
        if dcn_fs is not None:
            fs = torch.full((b,), int(dcn_fs), dtype=torch.long, device=x.device)
        out = super().forward(x5, ts, ctx, fs, control=control)            # [b, 4, t, h, w]
        return out.transpose(1, 2).reshape(n, -1, h, w)                    # [(b t), 4, h, w]


def video_timesteps(timesteps: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """The host's per-row float timesteps [(b t)] -> one integer timestep per video [b]."""
    return timesteps.reshape(b, t)[:, 0].round().long()


def video_context(context: torch.Tensor, image_tokens: Optional[torch.Tensor], b: int, t: int) -> torch.Tensor:
    """The host's per-row text [(b t), 77+, D] and image tokens [(b t), L, D] -> each video's full context
    [b, 77 + L, D] (what the UNet and the sketch encoder attend to)."""
    text = context.reshape(b, t, *context.shape[1:])[:, 0, :TEXT_TOKENS]  # [b, 77, D]
    if image_tokens is None:
        return text
    img = image_tokens.reshape(b, t, *image_tokens.shape[1:])[:, 0]       # [b, L, D]
    return torch.cat([text, img.to(text.dtype)], dim=1)                   # [b, 77 + L, D]


def _motion(variant_name: str) -> str:
    v = VARIANTS.get(variant_name)
    return f"{v.motion_input.replace('_', ' ')} {v.default_motion}" if v is not None else "unknown motion input"


class DynamiCrafterConfig(comfy.supported_models_base.BASE):
    """Model config of one DynamiCrafter variant (built directly by the loader, never by the host's detection)."""

    unet_config = {}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15
    sampling_settings = {}
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 2.0

    def __init__(self, variant: Variant):
        super().__init__({"dc_unet_config": variant.unet})
        self.variant = variant
        s = variant.schedule
        self.sampling_settings = {"beta_schedule": s.beta_schedule, "linear_start": s.linear_start,
                                  "linear_end": s.linear_end, "timesteps": s.timesteps,
                                  "zsnr": bool(s.rescale_betas_zero_snr)}

    def model_type(self, state_dict=None, prefix=""):
        mt = comfy.model_base.ModelType
        return mt.V_PREDICTION if self.variant.schedule.parameterization == "v" else mt.EPS

    def get_model(self, state_dict=None, prefix="", device=None):
        return DynamiCrafterModel(self, model_type=self.model_type(), device=device)

    def set_compute_dtype(self, weight_dtype, manual_cast_dtype) -> None:
        self.set_inference_dtype(weight_dtype, manual_cast_dtype)
        self.unet_config["dc_compute_dtype"] = manual_cast_dtype or weight_dtype


class DynamiCrafterModel(comfy.model_base.BaseModel):
    """The host-side model: UNet wrapper + the pack's model_sampling (zero-SNR and dynamic rescale as sigmas)."""

    def __init__(self, model_config: DynamiCrafterConfig, model_type=None, device=None):
        super().__init__(model_config, model_type or model_config.model_type(), device=device,
                         unet_model=DynamiCrafterUNet)
        self.dc_variant: Variant = model_config.variant
        self.model_sampling = make_model_sampling(model_config.variant.schedule)

    def get_dtype(self):
        return self.diffusion_model.weight_dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """The host's apply_model; under the host's context windows, the window's concat rows and frame count."""
        c_concat, kwargs = apply_window(x, c_concat, transformer_options, kwargs)
        return super().apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def extra_conds(self, **kwargs):
        noise = kwargs.get("noise")
        info = kwargs.get(COND_KEY)
        cross_attn = kwargs.get("cross_attn")
        if info is None:
            raise DynamiCrafterInputError(
                "conditioning", "DynamiCrafter conditioning (image tokens, concat latent, fps)",
                "plain text conditioning", "connect the positive/negative outputs of the DynamiCrafter "
                "Conditioning node (DCN_Conditioning) to the sampler, not CLIPTextEncode directly",
            )
        built_for = info.get("variant")
        if built_for is not None and built_for != self.dc_variant.name:
            raise DynamiCrafterInputError(
                "conditioning", f"conditioning built for the {self.dc_variant.name} model being sampled",
                f"conditioning built for {built_for} (its image projector P, {_motion(built_for)})",
                "make the conditioning with the image_proj of the same DCN_Loader whose MODEL samples it")
        frames, h, w = noise.shape[0], noise.shape[-2], noise.shape[-1]
        concat = info["concat_latent"]
        if tuple(concat.shape[0:1]) + tuple(concat.shape[-2:]) != (frames, h, w):
            raise DynamiCrafterInputError(
                "latent", f"the video latent of the conditioning node ({concat.shape[0]} frames, "
                f"{concat.shape[-2] * 8}x{concat.shape[-1] * 8} px)",
                f"{frames} frame(s) of {h * 8}x{w * 8} px", "connect the LATENT output of DCN_Conditioning to the sampler",
            )
        ctx_dim = self.dc_variant.unet.context_dim
        if cross_attn is None or cross_attn.shape[-1] != ctx_dim:
            found = "none" if cross_attn is None else f"{cross_attn.shape[-1]}-dim tokens"
            if cross_attn is not None and cross_attn.shape[-1] in KNOWN_TEXT_ENCODERS:
                found += f" ({KNOWN_TEXT_ENCODERS[cross_attn.shape[-1]]})"
            raise DynamiCrafterInputError(
                "text conditioning", f"{ctx_dim}-dim tokens (the SD2.1 / OpenCLIP ViT-H text encoder)", found,
                "encode the prompts with the CLIP from the DynamiCrafter checkpoint or the SD2.1 text encoder",
            )
        if cross_attn.shape[1] > TEXT_TOKENS:
            logger.warning("DynamiCrafter reads the first 77 text tokens; the prompt's other %d tokens are ignored",
                           cross_attn.shape[1] - TEXT_TOKENS)
        out = {
            "c_concat": FrameConcat(self.process_latent_in(concat)),
            "c_crossattn": comfy.conds.CONDCrossAttn(cross_attn[:, :TEXT_TOKENS]),
            "dcn_image_tokens": comfy.conds.CONDRegular(info["image_tokens"]),
            "dcn_fs": comfy.conds.CONDConstant(int(info["fs"])),
            "dcn_frames": comfy.conds.CONDConstant(int(frames)),
            LAYOUT_KEY: Layout(layout_of(info, frames)),
        }
        return out


def build_model(variant: Variant, state_dict, weight_dtype: Optional[torch.dtype] = None,
                load_device=None, offload_device=None):
    """The host's model patcher (its preferred class where it names one, compat.model_patcher_class) over a
    DynamiCrafterModel with ``state_dict`` (UNet keys, no prefix) loaded strictly.

    ``weight_dtype`` None lets the host choose (``unet_dtype``); the host's manual cast covers storage dtypes the
    device cannot compute in (fp8, or fp16 on CPU).
    """
    mm = comfy.model_management
    load_device = load_device or mm.get_torch_device()
    offload_device = offload_device or mm.unet_offload_device()
    config = DynamiCrafterConfig(variant)
    params = sum(t.numel() for t in state_dict.values())
    if weight_dtype is None:
        weight_dtype = mm.unet_dtype(model_params=params, supported_dtypes=config.supported_inference_dtypes)
    manual_cast = mm.unet_manual_cast(weight_dtype, load_device, config.supported_inference_dtypes)
    config.set_compute_dtype(weight_dtype, manual_cast)
    model = config.get_model(device=offload_device)
    model.diffusion_model.load_state_dict(state_dict, strict=True)
    model.diffusion_model.eval().requires_grad_(False)
    for name, p in model.diffusion_model.named_parameters():
        if name.endswith(".alpha"):  # the 256 model's gates are used outside the host's layers: compute dtype
            p.data = p.data.to(manual_cast or weight_dtype)
    logger.info("DynamiCrafter %s: weights %s, compute %s, load device %s", variant.name, weight_dtype,
                manual_cast or weight_dtype, load_device)
    patcher = compat.model_patcher_class()(model, load_device=load_device, offload_device=offload_device)
    install(patcher)
    return patcher

"""Training stages (paper section 3: P on text-to-image, transfer to text-to-video, joint fine-tuning; plus the user's
fine-tuning case), their declared trainable parameter groups, LoRA on attention projections, and initial weights.

Every parameter not in a declared group is frozen (``requires_grad=False``); the tests check that frozen tensors are
bit-identical after training.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model import adapters as ad
from ..model.config import Variant
from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.resampler import Resampler
from ..model.unet import SpatialTransformer, TemporalConvBlock, TemporalTransformer, UNetModel
from ..model.checkpoint import open_checkpoint

GROUPS = {
    "P": "the query transformer P (image_proj_model.*)",
    "image_kv": "the image K/V projections of every cross-attention (to_k_ip, to_v_ip, and the 256 model's alpha)",
    "temporal": "temporal layers: temporal convs in the ResBlocks, temporal transformers, init_attn",
    "spatial_temporal_attention": "every spatial and temporal transformer (incl. init_attn and the image K/V)",
    "input_conv": "the UNet input conv (input_blocks.0.0), which the joint stage widens from 4 to 8 channels",
    "lora": "LoRA (rank lora_rank) on the attention projections named in lora_targets",
}


@dataclass(frozen=True)
class Stage:
    name: str
    groups: Tuple[str, ...]
    unet_flags: Mapping[str, object]
    video: bool          # clips (True) or single images (False)
    concat: bool         # image latent concatenated to the noisy latent (8 input channels)
    schedule: Mapping[str, object] = field(default_factory=dict)
    description: str = ""


STAGES: Dict[str, Stage] = {
    "t2i": Stage("t2i", ("P", "image_kv"),
                 dict(in_channels=4, temporal_conv=False, temporal_attention=False, addition_attention=False,
                      fs_condition=False),
                 video=False, concat=False,
                 schedule=dict(rescale_betas_zero_snr=False, use_dynamic_rescale=False, parameterization="v"),
                 description="P + image K/V on image-text pairs with the 2D SD2.1 UNet (temporal layers off)"),
    "t2v": Stage("t2v", ("P",), dict(in_channels=4), video=True, concat=False,
                 description="P transferred to the text-to-video UNet (4-channel input), UNet frozen"),
    "joint": Stage("joint", ("P", "spatial_temporal_attention", "input_conv"), {}, video=True, concat=True,
                   description="P + spatial/temporal transformers, image latent concatenated (input conv widened 4->8)"),
    "finetune": Stage("finetune", ("lora",), {}, video=True, concat=True,
                      description="a user's videos from a DynamiCrafter checkpoint (custom adapter)"),
}

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise DynamiCrafterInputError("stage", f"one of {list(STAGES)}", repr(name), "pick a stage")
    return STAGES[name]


def stage_variant(variant: Variant, stage: Stage, unet_overrides: Mapping = (), resampler_overrides: Mapping = (),
                  schedule_overrides: Mapping = (), dropout: Optional[float] = None) -> Variant:
    """The variant with the stage's UNet flags and schedule, then the user's overrides."""
    unet = dataclasses.replace(variant.unet, **dict(stage.unet_flags), **dict(unet_overrides or {}))
    if dropout is not None:
        unet = dataclasses.replace(unet, dropout=float(dropout))
    res = dataclasses.replace(variant.resampler, **dict(resampler_overrides or {}))
    sched = dataclasses.replace(variant.schedule, **dict(stage.schedule), **dict(schedule_overrides or {}))
    return dataclasses.replace(variant, unet=unet, resampler=res, schedule=sched)


# ================================================================================================================
# LoRA
# ================================================================================================================
class LoRA(nn.Module):
    """Low-rank update of a Linear: ``y += (alpha/rank) * x @ down^T @ up^T`` (Hu et al. 2021); up starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.rank, self.alpha = int(rank), float(alpha)
        self.down = nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32,
                                             device=base.weight.device))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=base.weight.device))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def hook(self, module, inputs, output):
        x = inputs[0]
        delta = F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype))
        return output + delta.to(output.dtype) * (self.alpha / self.rank)


# ================================================================================================================
# The trained model: UNet + P (+ LoRA)
# ================================================================================================================
class DiffusionModel(nn.Module):
    """UNet + P: the denoiser of one training step, context = cat(text [B,77,D], P(image tokens) [B,16L,D])."""

    def __init__(self, unet: UNetModel, image_proj: Resampler):
        super().__init__()
        self.unet = unet
        self.image_proj = image_proj
        self.lora = nn.ModuleDict()
        self._hooks = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image_tokens: torch.Tensor,
                fs: Optional[torch.Tensor]) -> torch.Tensor:
        ctx = torch.cat([text.to(self.unet.dtype), self.image_proj(image_tokens).to(self.unet.dtype)], dim=1)
        return self.unet(x, t, ctx, fs if self.unet.cfg.fs_condition else None)

    # -- LoRA ------------------------------------------------------------------------------------------------------
    def add_lora(self, targets: Sequence[str], rank: int, alpha: float) -> int:
        for name, mod in self.unet.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            parts = name.split(".")
            if ".".join(parts[-2:]) in targets or parts[-1] in targets:
                if "attn1" not in parts and "attn2" not in parts:
                    continue
                lora = LoRA(mod, rank, alpha)
                self.lora[name.replace(".", "-")] = lora
                self._hooks.append(mod.register_forward_hook(lora.hook))
        if not self.lora:
            raise DynamiCrafterInputError("lora_targets", "names of attention projections (to_q, to_k, to_v, "
                                          "to_out.0, to_k_ip, to_v_ip)", repr(list(targets)), "fix lora_targets")
        return len(self.lora)

    # -- names ---------------------------------------------------------------------------------------------------
    @staticmethod
    def full_key(name: str) -> str:
        """Parameter name in this module -> key in the adapter / full checkpoint."""
        if name.startswith("unet."):
            return ad.UNET_PREFIX + name[5:]
        if name.startswith("image_proj."):
            return ad.P_PREFIX + name[11:]
        if name.startswith("lora."):
            mod, which = name[5:].rsplit(".", 1)
            base = ad.UNET_PREFIX + mod.replace("-", ".")
            return base + (ad.LORA_DOWN if which == "down" else ad.LORA_UP)
        raise KeyError(name)


def classify_parameters(model: DiffusionModel) -> Dict[str, List[str]]:
    """Group name -> names (in ``model``) of its parameters. Groups may overlap (image_kv within the attention)."""
    groups: Dict[str, List[str]] = {g: [] for g in GROUPS}
    groups["P"] = [f"image_proj.{n}" for n, _ in model.image_proj.named_parameters()]
    groups["lora"] = [f"lora.{n}" for n, _ in model.lora.named_parameters()]
    unet = model.unet
    temporal_prefixes, attn_prefixes = [], []
    for name, mod in unet.named_modules():
        if isinstance(mod, (TemporalTransformer, TemporalConvBlock)):
            temporal_prefixes.append(name + ".")
        if isinstance(mod, (TemporalTransformer, SpatialTransformer)):
            attn_prefixes.append(name + ".")
    for n, _ in unet.named_parameters():
        full = f"unet.{n}"
        if ".to_k_ip." in n or ".to_v_ip." in n or n.endswith("attn2.alpha"):
            groups["image_kv"].append(full)
        if n.startswith("init_attn.") or any(n.startswith(p) for p in temporal_prefixes):
            groups["temporal"].append(full)
        if n.startswith("init_attn.") or any(n.startswith(p) for p in attn_prefixes):
            groups["spatial_temporal_attention"].append(full)
        if n.startswith("input_blocks.0.0."):
            groups["input_conv"].append(full)
    return groups


def set_trainable(model: DiffusionModel, groups: Sequence[str]) -> List[str]:
    """Freeze everything, then unfreeze the declared groups; returns the trainable parameter names (sorted)."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise DynamiCrafterInputError("groups", f"names among {list(GROUPS)}", repr(unknown), "fix the groups list")
    table = classify_parameters(model)
    empty = [g for g in groups if not table[g]]
    if empty:
        raise DynamiCrafterInputError("groups", "groups that exist in this model",
                                      f"{empty} with no parameters here", "drop them for this stage")
    names = sorted({n for g in groups for n in table[g]})
    model.requires_grad_(False)
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    return names


# ================================================================================================================
# Initial weights
# ================================================================================================================
def _fill_missing(model: DiffusionModel, sd: Dict[str, torch.Tensor], missing: List[str]) -> List[str]:
    """Initialise tensors the source lacks, when the architecture defines how; returns the keys still missing."""
    still, notes = [], {}
    for k in missing:
        m = re.match(r"(.*\.attn2)\.to_(k|v)_ip\.weight$", k)
        if m and f"{m.group(1)}.to_{m.group(2)}.weight" in sd:
            sd[k] = sd[f"{m.group(1)}.to_{m.group(2)}.weight"].clone()       # IP-Adapter: image K/V from text K/V
            notes["image K/V copied from text K/V"] = notes.get("image K/V copied from text K/V", 0) + 1
        elif k.endswith("attn2.alpha"):
            sd[k] = torch.zeros(())
            notes["alpha gate at 0"] = notes.get("alpha gate at 0", 0) + 1
        elif k.startswith("fps_embedding."):
            own = dict(model.unet.named_parameters())[k].detach().clone()
            sd[k] = torch.zeros_like(own) if k.startswith("fps_embedding.2.") else own
            notes["new fps embedding (last layer zero: no effect at start)"] = 1
        else:
            still.append(k)
    for what, n in notes.items():
        logger.info("init: %s (%d tensors)", what, n)
    return still


def load_initial_weights(model: DiffusionModel, path: str, trainable: Sequence[str], strict: bool = True) -> Dict[str, str]:
    """Load UNet (+ P when present) from a checkpoint: a DynamiCrafter file, a text-to-video (VideoCrafter, 4-channel)
    file, or SD2.1 for the 2D stage. Widens a 4-channel input conv to the model's 8 with zero new channels; fills
    image K/V from text K/V when the source has none. Returns a short report."""
    report: Dict[str, str] = {}
    with open_checkpoint(path) as ck:
        if not ck.parts["unet"]:
            raise DynamiCrafterInputError(f"init checkpoint '{ck.name}'", "UNet weights (model.diffusion_model.*)",
                                          "none", "point init_checkpoint at a DynamiCrafter / T2V / SD2.1 checkpoint")
        own = model.unet.state_dict()
        sd = {k: ck.tensor(full) for k, full in ck.parts["unet"].items()}
        extra = sorted(set(sd) - set(own))
        if extra and strict:
            raise DynamiCrafterInputError(
                f"init checkpoint '{ck.name}'", "UNet keys of this stage's architecture",
                f"{len(extra)} extra keys (e.g. {extra[:3]})",
                "check the stage (t2i wants a 2D SD2.1 UNet, t2v a text-to-video UNet) or set init_strict: false")
        key = "input_blocks.0.0.weight"
        if key in sd and key in own and sd[key].shape != own[key].shape:
            w = sd[key]
            if w.shape[1] == 4 and own[key].shape[1] == 8 and w.shape[0] == own[key].shape[0]:
                wide = torch.zeros(own[key].shape, dtype=w.dtype)
                wide[:, :4] = w                                              # noisy latent first, condition second
                sd[key] = wide
                report["input_conv"] = "widened 4 -> 8 channels, new channels zero"
                logger.info("init: input conv widened from 4 to 8 channels (new channels zero-initialised)")
        missing = _fill_missing(model, sd, [k for k in own if k not in sd])
        if missing:
            raise DynamiCrafterInputError(
                f"init checkpoint '{ck.name}'", "every UNet tensor of this stage", f"{len(missing)} missing "
                f"(e.g. {missing[:3]})", "use a checkpoint of this architecture (variant, stage)")
        bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
        if bad:
            raise DynamiCrafterInputError(
                f"init checkpoint '{ck.name}'", "UNet tensors of this variant's shapes",
                f"{len(bad)} of other shapes (e.g. {bad[0]}: {list(sd[bad[0]].shape)} vs {list(own[bad[0]].shape)})",
                "pick the matching variant")
        model.unet.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True)
        report["unet"] = f"{len(own)} tensors from {ck.name}"
        if ck.parts["image_proj"]:
            p = {k: ck.tensor(full) for k, full in ck.parts["image_proj"].items()}
            ownp = model.image_proj.state_dict()
            badp = [k for k in ownp if k not in p or tuple(p[k].shape) != tuple(ownp[k].shape)]
            if badp:
                raise DynamiCrafterInputError(
                    f"init checkpoint '{ck.name}'", "P (image_proj_model) of this variant's shape",
                    f"{len(badp)} tensors missing or of another shape (e.g. {badp[0]})", "pick the matching variant")
            model.image_proj.load_state_dict({k: p[k].to(ownp[k].dtype) for k in ownp}, strict=True)
            report["P"] = f"from {ck.name}"
        else:
            report["P"] = "random init (the checkpoint has none)"
            logger.info("init: the checkpoint has no P (image_proj_model): P starts from random init")
    return report


def apply_adapter_file(model: DiffusionModel, path: str, variant_name: str) -> ad.AdapterInfo:
    """Load a previous stage's adapter into the model (full tensors replaced, LoRA merged into the weights)."""
    tensors, meta = ad.read_adapter(path)
    shapes = ad.model_shapes(model.unet, model.image_proj)
    info = ad.validate_adapter(tensors, meta, variant_name, shapes, name=f"adapter '{path}'")
    state = {ad.UNET_PREFIX + k: v for k, v in model.unet.state_dict().items()}
    state.update({ad.P_PREFIX + k: v for k, v in model.image_proj.state_dict().items()})
    ad.merge_adapter(state, tensors)
    model.unet.load_state_dict({k[len(ad.UNET_PREFIX):]: v for k, v in state.items() if k.startswith(ad.UNET_PREFIX)})
    model.image_proj.load_state_dict({k[len(ad.P_PREFIX):]: v for k, v in state.items() if k.startswith(ad.P_PREFIX)})
    logger.info("init: adapter %s (stage %s, groups %s, step %d) applied", path, info.stage, info.groups, info.step)
    return info


def build_model(variant: Variant, stage: Stage, groups: Sequence[str], seed: int, init_checkpoint: Optional[str],
                init_adapters: Sequence[str], lora_targets: Sequence[str], lora_rank: int, lora_alpha: float,
                init_strict: bool = True, device="cpu") -> Tuple[DiffusionModel, List[str], Dict[str, str]]:
    """UNet + P for the stage, with initial weights and LoRA; returns (model, trainable names, init report)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetModel(variant.unet)
        proj = Resampler(variant.resampler)
        model = DiffusionModel(unet, proj)
        report: Dict[str, str] = {}
        if init_checkpoint:
            report.update(load_initial_weights(model, init_checkpoint, groups, strict=init_strict))
        else:
            report["unet"] = "random init (no init_checkpoint)"
        for path in init_adapters or ():
            info = apply_adapter_file(model, path, variant.name)
            report[f"adapter {path}"] = f"stage {info.stage}, step {info.step}"
        if "lora" in groups:
            n = model.add_lora(lora_targets, lora_rank, lora_alpha)
            report["lora"] = f"{n} projections, rank {lora_rank}, alpha {lora_alpha}"
    trainable = set_trainable(model, groups)
    model.to(device)
    return model, trainable, report


__all__ = ["STAGES", "GROUPS", "Stage", "get_stage", "stage_variant", "DiffusionModel", "LoRA", "classify_parameters",
           "set_trainable", "build_model", "load_initial_weights", "apply_adapter_file", "DEFAULT_LORA_TARGETS"]

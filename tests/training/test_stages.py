"""(1) Every stage runs a few steps, and exactly its declared groups train: frozen tensors are bit-identical after.

The four stages are chained as in the paper: t2i (2D UNet from a stand-in SD2.1 file, image K/V filled from the
text K/V) -> its adapter initialises t2v (a stand-in 4-channel text-to-video file) -> joint widens that file's input
conv from 4 to 8 channels (zero new channels) -> finetune (LoRA) from a stand-in DynamiCrafter checkpoint.
"""
import os
import re

import pytest
import torch

from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.loop import Trainer
from comfyui_dynamicrafter.training.stages import get_stage, stage_variant

from .conftest import save_unet_checkpoint, tiny_settings

TINY = dict(resampler_overrides={"video_length": 4}, unet_overrides={"temporal_length": 4})

# The declared groups, written independently of training/stages.py: name patterns of the trainer's parameters.
RULES = {
    "t2i": lambda n: n.startswith("image_proj.") or re.search(r"\.to_[kv]_ip\.", n) is not None,
    "t2v": lambda n: n.startswith("image_proj."),
    "joint": lambda n: (n.startswith(("image_proj.", "unet.input_blocks.0.0.", "unet.init_attn."))
                        or re.match(r"unet\.(input_blocks\.\d+|middle_block|output_blocks\.\d+)\.\d+\."
                                    r"(norm|proj_in|proj_out|transformer_blocks)\.", n) is not None),
    "finetune": lambda n: n.startswith("lora."),
}


def _variant(stage):
    base = get_variant("512", tiny=True)
    return stage_variant(base, get_stage(stage), TINY["unet_overrides"], TINY["resampler_overrides"])


def _run(settings):
    trainer = Trainer(TrainConfig.from_dict(settings))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.run()
    after = dict(trainer.model.named_parameters())
    return trainer, before, after, result


def _check_split(stage, trainer, before, after):
    names = set(before)
    declared = {n for n in names if RULES[stage](n)}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == declared, (sorted(trainable ^ declared)[:10])
    frozen = names - trainable
    changed_frozen = [n for n in frozen if not torch.equal(before[n], after[n].detach())]
    assert not changed_frozen, changed_frozen[:5]
    changed = [n for n in trainable if not torch.equal(before[n], after[n].detach())]
    assert len(changed) == len(trainable), sorted(trainable - set(changed))[:5]
    return len(trainable), len(frozen)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return {"dir": str(tmp_path_factory.mktemp("stages"))}


def test_t2i(chain, image_data):
    d = chain["dir"]
    torch.manual_seed(1)
    sd21 = save_unet_checkpoint(os.path.join(d, "sd21_tiny.safetensors"), UNetModel(_variant("t2i").unet))
    s = tiny_settings(os.path.join(d, "t2i"), stage="t2i", image_folder=image_data, init_checkpoint=sd21,
                      max_steps=2, export_dtype="fp32")
    trainer = Trainer(TrainConfig.from_dict(s))
    unet = trainer.model.unet
    assert unet.cfg.in_channels == 4 and not unet.cfg.temporal_attention and not hasattr(unet, "init_attn")
    attn = unet.input_blocks[1][1].transformer_blocks[0].attn2
    assert torch.equal(attn.to_k_ip.weight, attn.to_k.weight)          # image K/V start as the text K/V
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.run()
    n_train, n_frozen = _check_split("t2i", trainer, before, dict(trainer.model.named_parameters()))
    assert n_train > 0 and n_frozen > 0 and len(result["losses"]) == 2
    chain["t2i_adapter"] = result["adapter"]["adapter"]


def test_t2v(chain, video_data):
    d = chain["dir"]
    torch.manual_seed(2)
    t2v_file = save_unet_checkpoint(os.path.join(d, "t2v_tiny.safetensors"), UNetModel(_variant("t2v").unet))
    chain["t2v_file"] = t2v_file
    s = tiny_settings(os.path.join(d, "t2v"), video_data[0], stage="t2v", init_checkpoint=t2v_file,
                      init_adapters=[chain["t2i_adapter"]], max_steps=2, export_dtype="fp32")
    trainer = Trainer(TrainConfig.from_dict(s))
    from safetensors.torch import load_file

    ad = load_file(chain["t2i_adapter"])
    assert torch.equal(trainer.model.image_proj.latents.detach(), ad["image_proj_model.latents"])   # P transferred
    k = "input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"
    assert torch.equal(trainer.model.unet.state_dict()[k], ad["model.diffusion_model." + k])          # image K/V too
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.run()
    _check_split("t2v", trainer, before, dict(trainer.model.named_parameters()))
    chain["t2v_adapter"] = result["adapter"]["adapter"]


def test_joint_widens_input_conv(chain, video_data):
    d = chain["dir"]
    s = tiny_settings(os.path.join(d, "joint"), video_data[0], stage="joint", init_checkpoint=chain["t2v_file"],
                      init_adapters=[chain["t2v_adapter"]], max_steps=2)
    trainer = Trainer(TrainConfig.from_dict(s))
    from safetensors.torch import load_file

    w_file = load_file(chain["t2v_file"])["model.diffusion_model.input_blocks.0.0.weight"]
    w = trainer.model.unet.input_blocks[0][0].weight.detach()
    assert w_file.shape[1] == 4 and w.shape[1] == 8
    assert torch.equal(w[:, :4], w_file) and torch.count_nonzero(w[:, 4:]) == 0
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    _check_split("joint", trainer, before, dict(trainer.model.named_parameters()))
    assert torch.count_nonzero(trainer.model.unet.input_blocks[0][0].weight[:, 4:]) > 0   # new channels learn


def test_finetune_lora(chain, video_data):
    d = chain["dir"]
    torch.manual_seed(3)
    v = _variant("finetune")
    dc_file = save_unet_checkpoint(os.path.join(d, "dc_tiny.safetensors"), UNetModel(v.unet), Resampler(v.resampler),
                                   drop=())
    s = tiny_settings(os.path.join(d, "finetune"), video_data[0], stage="finetune", init_checkpoint=dc_file,
                      max_steps=2, lora_rank=4)
    trainer, before, after, result = _run(s)
    n_train, _ = _check_split("finetune", trainer, before, after)
    assert n_train == 2 * len(trainer.model.lora)
    assert all(torch.isfinite(torch.tensor(result["losses"])))

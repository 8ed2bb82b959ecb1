"""Adapter tensors: LoRA pairs vs full tensors, and merging (the 256 model's attn2.alpha gates are full tensors)."""
import torch

from comfyui_dynamicrafter.model import adapters as ad

GATE = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.alpha"
MOD = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"


def _adapter():
    return {
        GATE: torch.tensor(0.5),
        MOD + ".lora_down.weight": torch.ones(2, 4),
        MOD + ".lora_up.weight": torch.ones(3, 2),
        MOD + ".alpha": torch.tensor(4.0),
    }


def test_alpha_is_lora_only_beside_a_pair():
    t = _adapter()
    assert ad.is_lora_key(MOD + ".alpha", t)
    assert ad.is_lora_key(MOD + ".lora_down.weight", t)
    assert not ad.is_lora_key(GATE, t)


def test_merge_sets_gate_and_adds_lora_delta():
    state = {GATE: torch.tensor(0.0), MOD + ".weight": torch.zeros(3, 4)}
    ad.merge_adapter(state, _adapter())
    assert state[GATE].item() == 0.5
    # (alpha / rank) * up @ down = (4 / 2) * 2 = 4 everywhere
    torch.testing.assert_close(state[MOD + ".weight"], torch.full((3, 4), 4.0))

"""Random weights for the benches: one deterministic init shared by every bench script."""
from __future__ import annotations

import torch
from torch import nn


def init_random_(model, seed: int) -> None:
    """Deterministic random weights, the same values for every storage dtype: N(0, 1/fan_in) for matrices and
    convs, 1 for norm scales, 0 for biases (activations stay O(1) through the depth)."""
    norm_scales = {id(m.weight) for m in model.modules()
                   if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None}
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if p.dim() >= 2:
                g = torch.Generator(device="cpu").manual_seed(seed * 100003 + i)
                fan_in = p[0].numel()
                src = torch.randn(p.shape, generator=g, dtype=torch.float32) * fan_in ** -0.5
                p.copy_(src)
                del src
            elif id(p) in norm_scales:
                p.fill_(1.0)
            else:
                p.zero_()
        for b in model.buffers():
            b.zero_()

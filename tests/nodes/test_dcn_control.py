"""ControlNet on the DynamiCrafter UNet, against the host's own code: the tiny SD2.1-layout ControlNet
(tests/nodes/tinycontrolnet.py) loads through the host's ``load_controlnet`` (what ``ControlNetLoader`` calls), its
residuals (merged by the host's own ``control_merge``) fit the tiny UNet's skips, and model/control.py puts each
residual where the host's ``apply_control`` puts it in the host's own UNet."""
from __future__ import annotations

import copy

import pytest
import torch

from comfyui_dynamicrafter.model import control as C
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.tests.nodes import tinycontrolnet

FRAMES, LATENT = 4, 8


@pytest.fixture(scope="module")
def controlnet(host, tmp_path_factory):
    import comfy.controlnet

    path = tinycontrolnet.write(str(tmp_path_factory.mktemp("controlnet")))
    return comfy.controlnet.load_controlnet(path)


def _host_control(cn, rows: int, seed: int = 0):
    """The control dict the host hands a UNet: the ControlNet's outputs through the host's own control_merge."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, LATENT, LATENT, generator=g)
    hint = torch.rand(rows, 3, LATENT * 8, LATENT * 8, generator=g)
    ctx = torch.randn(rows, 77, get_variant("512", tiny=True).unet.context_dim, generator=g)
    with torch.no_grad():
        raw = cn.control_model(x, hint, torch.full((rows,), 500.0), ctx)
    if isinstance(raw, dict):                                  # hosts from 2024-07: {"middle": [...], "output": [...]}
        return cn.control_merge(raw, None, torch.float32)
    return cn.control_merge(None, raw, None, torch.float32)    # 2024-03: a list, middle last


def _unet_shapes(rows_frames: int):
    """Shapes of the tiny UNet's skips (input block outputs, block 0 after init_attn) and middle output."""
    unet = UNetModel(get_variant("512", tiny=True).unet).eval()
    skips, middle = [], []
    hooks = [b.register_forward_hook(lambda m, i, o: skips.append(tuple(o.shape))) for b in unet.input_blocks]
    hooks.append(unet.middle_block.register_forward_hook(lambda m, i, o: middle.append(tuple(o.shape))))
    cfg = unet.cfg
    x = torch.randn(1, cfg.in_channels, rows_frames, LATENT, LATENT)
    ctx = torch.randn(1, 77 + rows_frames * cfg.image_tokens_per_frame, cfg.context_dim)
    with torch.no_grad():
        unet(x, torch.tensor([500]), ctx)
    for h in hooks:
        h.remove()
    return skips, middle[0], len(unet.input_blocks)


def test_host_loads_tiny_controlnet_and_residuals_fit_our_skips(controlnet):
    import comfy.cldm.cldm as cldm

    assert isinstance(controlnet.control_model, cldm.ControlNet)
    control = _host_control(controlnet, FRAMES)
    skips, middle, n = _unet_shapes(FRAMES)
    res = C.from_host(control, n)
    assert res is not None and all(r is not None for r in res.output) and res.middle is not None
    C.check_shapes(res, skips, middle)                        # every residual has its skip's shape
    assert all(float(r.abs().mean()) > 0 for r in res.output)  # random zero convs: non-zero residuals


def test_mapping_matches_the_hosts_apply_control(controlnet):
    from comfy.ldm.modules.diffusionmodules.openaimodel import apply_control

    control = _host_control(controlnet, FRAMES, seed=1)
    skips, middle, n = _unet_shapes(FRAMES)
    g = torch.Generator().manual_seed(2)
    # an "input" list as T2I adapters give it (None gaps), to cover the third kind
    control["input"] = [torch.randn(FRAMES, *skips[i][1:], generator=g) if i in (0, 3) else None
                        for i in (3, 2, 1, 0)]
    states = [torch.randn(FRAMES, *s[1:], generator=g) for s in skips]
    mid = torch.randn(FRAMES, *middle[1:], generator=g)

    # the host's UNet loop (openaimodel.UNetModel.forward), with the host's apply_control
    host = copy.deepcopy(control)
    hs = []
    for i in range(n):
        h = apply_control(states[i].clone(), host, "input")
        hs.append(h)
    host_mid = apply_control(mid.clone(), host, "middle")
    host_skips = {}
    for k in range(n):
        hsp = hs.pop()
        host_skips[n - 1 - k] = apply_control(hsp, host, "output")

    res = C.from_host(control, n)
    ours = [C.add_residual(C.add_residual(states[i], res.input[i], f"input {i}"), res.output[i], f"output {i}")
            for i in range(n)]
    for i in range(n):
        assert torch.equal(ours[i], host_skips[i]), i
    assert torch.equal(C.add_residual(mid, res.middle, "middle"), host_mid)
    assert sum(r is not None for r in res.input) == 2

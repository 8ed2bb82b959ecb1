"""ControlNet residuals (model/control.py): the hosts' pop order mapped to block indices, per-frame addition, and
one-line refusals where the hosts would warn and drop a residual. (tests/nodes/test_dcn_control.py checks the
mapping against the host's own ``apply_control`` and runs a real ControlNet through the host's nodes.)"""
from __future__ import annotations

import pytest
import torch

from comfyui_dynamicrafter.model import control as C
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError


def _t(*shape, fill=None):
    return torch.full(shape, float(fill)) if fill is not None else torch.randn(*shape)


def test_full_controlnet_output_i_joins_skip_i_and_lists_are_not_modified():
    outs = [_t(2, 3, 4, 4, fill=i) for i in range(4)]
    mid = _t(2, 5, 2, 2, fill=9)
    control = {"input": [], "middle": [mid], "output": list(outs)}
    res = C.from_host(control, 4)
    assert [float(r[0, 0, 0, 0]) for r in res.output] == [0.0, 1.0, 2.0, 3.0]
    assert res.middle is mid and res.input == [None] * 4
    assert len(control["output"]) == 4 and len(control["middle"]) == 1  # the caller's lists are untouched


def test_short_lists_pop_from_the_end():
    # T2I-adapter style: "input" entries (with None gaps) are popped from the end, one per input block from block 0
    a, b = _t(1, 3, 4, 4, fill=1), _t(1, 3, 4, 4, fill=2)
    res = C.from_host({"input": [b, None, a]}, 5)
    assert res.input[0] is a and res.input[1] is None and res.input[2] is b and res.input[3:] == [None, None]
    # fewer "output" entries than blocks: the k-th output block's pop joins the skip of input block n-1-k
    o1, o2 = _t(1, 3, 4, 4, fill=1), _t(1, 3, 4, 4, fill=2)
    res = C.from_host({"output": [o1, o2]}, 5)
    assert res.output[:3] == [None] * 3 and res.output[3] is o1 and res.output[4] is o2
    assert C.from_host({}, 5) is None and C.from_host(None, 5) is None
    assert C.from_host({"input": [None], "middle": [], "output": [None, None]}, 5) is None


def test_per_frame_addition_and_row_repeat():
    h = torch.zeros(6, 3, 4, 4)                      # (b t) = 2 videos x 3 frames
    r = torch.arange(6.0).reshape(6, 1, 1, 1).expand(6, 3, 4, 4).to(torch.float16)
    out = C.add_residual(h, r, "output block 0")
    assert out.dtype == torch.float32 and torch.equal(out[:, 0, 0, 0], torch.arange(6.0))
    assert torch.equal(h, torch.zeros(6, 3, 4, 4))   # out of place
    r3 = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 3, 4, 4)
    out = C.add_residual(h, r3, "middle")            # 3 rows (one video) repeated batch-major
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([0.0, 1, 2, 0, 1, 2]))
    assert C.add_residual(h, None, "x") is h


@pytest.mark.parametrize("shape", [(6, 4, 4, 4), (6, 3, 8, 8), (4, 3, 4, 4), (6, 3, 4)])
def test_shape_mismatch_refused_in_one_line(shape):
    with pytest.raises(DynamiCrafterInputError) as e:
        C.add_residual(torch.zeros(6, 3, 4, 4), torch.zeros(shape), "output residual for block 2")
    msg = str(e.value)
    assert msg.startswith("control: expected ControlNet residuals for the DynamiCrafter UNet (SD2.1 layout), "
                          f"found output residual for block 2: residual {list(shape)}") and "\n" not in msg


def test_check_shapes_before_any_block_runs():
    skips = [(6, 32, 8, 8), (6, 32, 8, 8), (6, 32, 4, 4), (6, 64, 4, 4)]
    good = C.from_host({"output": [_t(6, *s[1:]) for s in skips], "middle": [_t(6, 64, 4, 4)]}, 4)
    C.check_shapes(good, skips, (6, 64, 4, 4))
    sdxl_like = C.from_host({"output": [_t(6, 320, 8, 8)] * 4, "middle": [_t(6, 1280, 4, 4)]}, 4)
    with pytest.raises(DynamiCrafterInputError, match=r"output residual for block 0: \[6, 320, 8, 8\], hidden state"):
        C.check_shapes(sdxl_like, skips, (6, 64, 4, 4))
    with pytest.raises(DynamiCrafterInputError, match="5 'output' residuals for 4 input blocks"):
        C.from_host({"output": [None] * 5}, 4)
    with pytest.raises(DynamiCrafterInputError, match=r"unknown control kinds \['extra'\]"):
        C.from_host({"extra": []}, 4)


def _tiny_unet():
    from comfyui_dynamicrafter.model.unet import UNetModel
    from comfyui_dynamicrafter.model.variants import get_variant

    torch.manual_seed(0)
    unet = UNetModel(get_variant("512", tiny=True).unet).eval()
    for p in unet.parameters():  # zero-init output layers would hide a residual: draw everything
        p.data = torch.randn_like(p) * 0.05
    return unet


def test_unet_forward_adds_residuals_per_frame():
    unet = _tiny_unet()
    cfg = unet.cfg
    b, t, s = 3, 2, 8                                    # three guidance branches of one step, two frames
    x = torch.randn(1, cfg.in_channels, t, s, s).repeat(b, 1, 1, 1, 1)
    ctx = torch.randn(b, 77 + t * cfg.image_tokens_per_frame, cfg.context_dim)
    ts = torch.full((b,), 500)
    shapes, hooks = [], []
    for blk in unet.input_blocks:
        hooks.append(blk.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))))
    with torch.no_grad():
        plain = unet(x, ts, ctx)
    for h in hooks:
        h.remove()
    rows = b * t
    zeros = {"output": [torch.zeros(rows, *sh[1:]) for sh in shapes], "middle": [], "input": []}
    with torch.no_grad():
        assert torch.allclose(unet(x, ts, ctx, control=zeros), plain, atol=1e-5)  # prefix sharing off: float noise
        # a residual on frame 1 of branch 2 only, at the deepest skip: that frame of that branch changes, no other
        r = torch.zeros(rows, *shapes[-1][1:])
        r[2 * t + 1] = 1.0
        one = {"output": [None] * (len(shapes) - 1) + [r]}
        out = unet(x, ts, ctx, control=one)
    changed = (out - plain).abs().amax(dim=(1, 3, 4))    # [b, t]
    assert changed[2, 1] > 1e-3 and float(changed[:2].max()) < 1e-4  # other branches untouched
    with pytest.raises(DynamiCrafterInputError, match="output residual for block 3"):
        bad = {"output": [None] * (len(shapes) - 1) + [torch.zeros(rows, 320, 4, 4)]}
        unet(x, ts, ctx, control=bad)

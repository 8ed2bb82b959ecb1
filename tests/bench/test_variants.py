"""bench/variants.py (the A/B baselines) and bench/ops.py (cast-on-use layers): each baseline patched onto a built
UNet computes what the product computes; putting the product back restores it exactly."""
import pytest
import torch

from comfyui_dynamicrafter.bench.ops import cast_operations, store_weights_
from comfyui_dynamicrafter.bench.variants import (PerFrameCrossAttention, PlainCastConv3d, PlainConv3d,
                                                  explicit_attention, set_attention, set_inplace,
                                                  set_reference_layout, set_temporal_conv)
from comfyui_dynamicrafter.model import attention, unet
from comfyui_dynamicrafter.model.attention import sdpa_attention
from comfyui_dynamicrafter.tests.model.test_unet_speed import TOL, _inputs, _model


def test_explicit_attention_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, n, 64, generator=g) for n in (33, 17, 17))
    torch.testing.assert_close(explicit_attention(q, k, v, 4), sdpa_attention(q, k, v, 4), **TOL)
    m = _model()
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        a = m(x, t, ctx, fs)
        set_attention(m, explicit_attention)
        assert all(c.attention is explicit_attention for c in m.modules() if isinstance(c, attention.CrossAttention))
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)


@pytest.mark.parametrize("per_frame", [True, False])
def test_reference_layout_equals_folded(per_frame):
    m = _model()
    x, t, ctx, fs = _inputs(per_frame=per_frame)
    with torch.no_grad():
        a = m(x, t, ctx, fs)
        set_reference_layout(m, True)
        assert not m.share_branch_prefix
        assert any(type(c) is PerFrameCrossAttention for c in m.modules())
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)
        set_reference_layout(m, False)
        assert m.share_branch_prefix and not any(type(c) is PerFrameCrossAttention for c in m.modules())
        assert torch.equal(m(x, t, ctx, fs), a)


def _temporal_convs(m):
    return [seq[-1] for b in m.modules() if isinstance(b, unet.TemporalConvBlock)
            for seq in (b.conv1, b.conv2, b.conv3, b.conv4)]


def test_temporal_conv3d_equals_conv2d():
    m = _model()
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        a = m(x, t, ctx, fs)
        set_temporal_conv(m, "conv3d")
        assert _temporal_convs(m) and all(type(c) is PlainConv3d for c in _temporal_convs(m))
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)
        m.set_channels_last(True)
        set_temporal_conv(m, "conv2d")
        assert all(type(c) is torch.nn.Conv3d for c in _temporal_convs(m))
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)


def test_inplace_off_is_bit_identical():
    m = _model()
    x, t, ctx, fs = _inputs()
    try:
        with torch.no_grad():
            a = m(x, t, ctx, fs)
            set_inplace(False)
            b = m(x, t, ctx, fs)
    finally:
        set_inplace(True)
    assert attention.inplace_ok(torch.zeros(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("storage", ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"])
def test_cast_on_use_storage(storage):
    storage = getattr(torch, storage, None)
    if storage is None:
        pytest.skip("dtype not in this torch")
    ref_m = _model()
    m = _model(operations=cast_operations, compute_dtype=torch.bfloat16)
    m.load_state_dict(ref_m.state_dict())
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        ref = ref_m(x, t, ctx, fs)
        store_weights_(m, storage, compute_dtype=torch.bfloat16)
        assert m.input_blocks[0][0].weight.dtype == storage
        y = m(x, t, ctx, fs)
    assert torch.isfinite(y).all()
    rel = (y - ref).abs().max() / ref.abs().max()
    assert rel < (0.5 if storage == torch.float8_e5m2 else 0.2), rel   # e5m2 keeps 2 mantissa bits
    assert set(m.state_dict()) == set(ref_m.state_dict())


def test_cast_ops_same_dtype_is_exact():
    """Same storage and compute dtype: the cast layers are the plain ones, temporal convs (Conv2d form) included;
    their plain-Conv3d baseline agrees too."""
    ref_m = _model()
    m = _model(operations=cast_operations)
    m.load_state_dict(ref_m.state_dict())
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        a = ref_m(x, t, ctx, fs)
        torch.testing.assert_close(m(x, t, ctx, fs), a, atol=0, rtol=0)
        set_temporal_conv(m, "conv3d")
        assert all(type(c) is PlainCastConv3d for c in _temporal_convs(m))
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)

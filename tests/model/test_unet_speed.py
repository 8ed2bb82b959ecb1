"""The UNet's speed/memory techniques are exact reorganisations: each one against the plain path. (The benchmark's
baselines, bench/variants.py, and its cast-on-use layers are checked in tests/bench/test_variants.py.)"""
import dataclasses

import pytest
import torch

from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant

TOL = dict(atol=2e-5, rtol=2e-5)
T = 4


def _model(seed=0, **kw):
    cfg = dataclasses.replace(get_variant("512", tiny=True).unet, dropout=0.0)
    torch.manual_seed(seed)
    m = UNetModel(cfg, **kw).eval()
    with torch.no_grad():                                           # random norms/biases so every path matters
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def _inputs(b=3, per_frame=True, same_x=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(1, 8, T, 8, 8, generator=g)
    x = x1.repeat(b, 1, 1, 1, 1) if same_x else torch.randn(b, 8, T, 8, 8, generator=g)
    ctx = torch.randn(b, 77 + (T * 16 if per_frame else 16), 64, generator=g)
    return x, torch.full((b,), 600), ctx, torch.full((b,), 24)


@pytest.mark.parametrize("per_frame", [True, False])
def test_shared_prefix_equals_plain_batch(per_frame):
    m = _model()
    x, t, ctx, fs = _inputs(per_frame=per_frame)
    with torch.no_grad():
        fast = m(x, t, ctx, fs)
        m.share_branch_prefix = False
        plain = m(x, t, ctx, fs)
        one = torch.cat([m(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], fs[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(fast, plain, **TOL)
    torch.testing.assert_close(fast, one, **TOL)


def test_shared_prefix_not_taken_when_rows_differ():
    m = _model()
    x, t, ctx, fs = _inputs(same_x=False)
    with torch.no_grad():
        fast = m(x, t, ctx, fs)
        one = torch.cat([m(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], fs[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(fast, one, **TOL)


@pytest.mark.parametrize("per_frame", [True, False])
def test_context_cache_exact_hits_and_invalidates(per_frame):
    m = _model()
    x, t, ctx, fs = _inputs(per_frame=per_frame)
    calls = {"n": 0}
    k = m.output_blocks[-1][1].transformer_blocks[0].attn2.to_k
    hook = k.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    with torch.no_grad():
        ref1 = m(x, t, ctx, fs)
        ref2 = m(x * 0.5, t - 100, ctx, fs)
        ctx2 = ctx + 1
        ref3 = m(x, t, ctx2, fs)
        calls["n"] = 0
        with m.context_cache():
            torch.testing.assert_close(m(x, t, ctx, fs), ref1, atol=0, rtol=0)
            torch.testing.assert_close(m(x * 0.5, t - 100, ctx, fs), ref2, atol=0, rtol=0)
            torch.testing.assert_close(m(x * 0.5, t - 100, ctx.clone(), fs), ref2, atol=0, rtol=0)  # equal copy
            assert calls["n"] == 1                                   # projected once for three calls
            torch.testing.assert_close(m(x, t, ctx2, fs), ref3, atol=0, rtol=0)  # new context: recomputed
            assert calls["n"] == 2
            ctx2.mul_(2)                                             # in-place change: version bump -> recompute
            torch.testing.assert_close(m(x, t, ctx2, fs), ref_after(m, x, t, ctx2, fs), atol=0, rtol=0)
            assert calls["n"] == 4                                   # recomputed, then once more uncached
        assert m._kv_entries is None                                 # freed at the end of the block
    hook.remove()


def test_context_cache_under_inference_mode():
    """The host samples under torch.inference_mode, where tensors carry no version counter: match by value."""
    m = _model()
    x, t, ctx, fs = _inputs()
    calls = {"n": 0}
    k = m.output_blocks[-1][1].transformer_blocks[0].attn2.to_k
    hook = k.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    with torch.inference_mode():
        ctx_i = ctx.clone()                                          # an inference tensor, like the host's conds
        ref1, ref2 = m(x, t, ctx_i, fs), m(x * 0.5, t - 100, ctx_i, fs)
        calls["n"] = 0
        with m.context_cache():
            torch.testing.assert_close(m(x, t, ctx_i, fs), ref1, atol=0, rtol=0)
            torch.testing.assert_close(m(x * 0.5, t - 100, ctx_i, fs), ref2, atol=0, rtol=0)
            assert calls["n"] == 1
            ctx_i.mul_(2)                                            # changed in place, no version bump to see
            changed = m(x, t, ctx_i, fs)
            assert calls["n"] == 2                                   # the value check caught it
        torch.testing.assert_close(changed, m(x, t, ctx_i, fs), atol=0, rtol=0)
    hook.remove()


def ref_after(m, x, t, ctx, fs):
    saved = m._kv_entries
    m._kv_entries = None
    try:
        return m(x, t, ctx, fs)
    finally:
        m._kv_entries = saved


def test_context_cache_off_under_grad():
    m = _model()
    x, t, ctx, fs = _inputs(b=1)
    m.enable_context_cache(True)
    m(x, t, ctx, fs).sum().backward()                                # no stale graph kept, nothing cached
    assert m.context_cache_size == 0
    m.enable_context_cache(False)


def test_context_cache_keeps_separate_branch_contexts():
    m = _model()
    x, t, ctx, fs = _inputs()
    calls = {"n": 0}
    k = m.middle_block[1].transformer_blocks[0].attn2.to_k
    hook = k.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    with torch.no_grad():
        refs = [m(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], fs[i:i + 1]) for i in range(3)]
        parts = [ctx[i:i + 1] for i in range(3)]
        calls["n"] = 0
        with m.context_cache():
            for step in range(3):                                    # three branches called apart, three steps
                for i in range(3):
                    torch.testing.assert_close(m(x[i:i + 1], t[i:i + 1], parts[i], fs[i:i + 1]), refs[i],
                                               atol=0, rtol=0)
            assert calls["n"] == 3 and m.context_cache_size == 3
    hook.remove()


def test_ff_chunking_equals_plain():
    m = _model()
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        a = m(x, t, ctx, fs)
        m.set_ff_chunking(4096)                                      # tiny cap: many chunks everywhere
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)
        m.set_ff_chunking(0)
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)


def test_channels_last_equals_default():
    m = _model()
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        a = m(x, t, ctx, fs)
        m.set_channels_last(True)
        assert m.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)
        m.set_channels_last(False)
        torch.testing.assert_close(m(x, t, ctx, fs), a, **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_compute_runs_close(dtype):
    m = _model()
    x, t, ctx, fs = _inputs()
    with torch.no_grad():
        ref = m(x, t, ctx, fs)
        m.to(dtype)
        m.dtype = dtype
        y = m(x, t, ctx, fs)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    rel = (y - ref).abs().max() / ref.abs().max()
    assert rel < 0.1, rel

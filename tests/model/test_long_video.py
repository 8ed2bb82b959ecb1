"""Windowed exact DDIM (model/sampler.py ``windows=``) on a tiny 512 UNet against a plain reimplementation written
here: per step, loop over the windows, one model call per (branch, window), fuse each branch with the raw host
weights divided by their per-frame sum, then the unwindowed sampler guides + rescales on the full-length outputs.
Cases: long image-to-video, a keyframe chain (each segment its own interpolation pair) and a closed loop; T <= W is
bit-identical to the unwindowed sampler."""
import pytest
import torch

from comfyui_dynamicrafter.model.sampler import ddim_sample
from comfyui_dynamicrafter.model.tiny import unet_and_p
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.model.windows import (
    WindowSpec, chain_frames, chain_spec, keyframe_concat, plan_windows, window_image_tokens,
)

W = 16
H = 8  # latent px (64 px video)
SAMPLE = dict(cfg_text=7.5, cfg_image=5.0, guidance_rescale=0.7, mode="multi", eta=0.0)
STEPS = 3


@pytest.fixture(scope="module")
def tiny():
    v = get_variant("512", tiny=True)
    unet = UNetModel(v.unet).eval()
    sd = unet_and_p("512", seed=3)
    unet.load_state_dict({k[len("model.diffusion_model."):]: t for k, t in sd.items()
                          if k.startswith("model.diffusion_model.")}, strict=True)
    g = torch.Generator().manual_seed(0)
    d = v.unet.context_dim
    text = {b: torch.randn(1, 77, d, generator=g) for b in ("pos", "neg")}
    img, img_uc = torch.randn(1, 256, d, generator=g), torch.randn(1, 256, d, generator=g)
    ctx = {"cond": torch.cat([text["pos"], window_image_tokens(img, W)], 1),
           "uc_img": torch.cat([text["neg"], img], 1),
           "uc": torch.cat([text["neg"], img_uc], 1)}                             # [1, 77+256, D] per branch
    return v, unet, ctx


def _fs(n):
    return torch.full((n,), 24, dtype=torch.long)


def windowed_denoiser(unet, ctx, concat, calls):
    """The window-aware denoiser ddim_sample calls: rows branch-major, then window; slices concat per window."""
    def denoise(x, t, branches, windows):
        calls.append(len(windows))
        c = torch.cat([ctx[b] for b in branches for _ in windows])                      # [K n, 333, D]
        cc = torch.cat([concat[:, :, list(w)] for _ in branches for w in windows])      # [K n, 4, W, h, w]
        return unet(torch.cat([x, cc], 1), t, context=c, fs=_fs(x.shape[0]))

    return denoise


def plain_denoiser(unet, ctx, concat, windows_at, fuse="pyramid", window_concat=None):
    """Plain reimplementation: every (branch, window) its own call; fuse with raw weights / per-frame sum."""
    state = {"step": -1}

    def raw(n):
        if fuse == "flat":
            return torch.ones(n)
        half = n // 2
        return torch.tensor(list(range(1, half + 1)) + list(range(half, 0, -1)), dtype=torch.float32)

    def denoise(x, t, branches):
        state["step"] += 1
        frames = x.shape[2]
        outs = []
        for b, xb in zip(branches, x.chunk(len(branches))):
            acc = torch.zeros_like(xb)
            cnt = torch.zeros(frames)
            for s, w in enumerate(windows_at(state["step"])):
                w = list(w)
                cc = window_concat(s) if window_concat is not None else concat[:, :, w]
                o = unet(torch.cat([xb[:, :, w], cc], 1), t[:1], context=ctx[b], fs=_fs(1))
                r = raw(len(w))
                acc[:, :, w] += o * r.view(1, 1, -1, 1, 1)
                cnt[w] += r
            outs.append(acc / cnt.view(1, 1, -1, 1, 1))
        return torch.cat(outs)

    return denoise


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _close(got, ref, what):
    """Max diff relative to the reference's max abs <= 1e-5 (printed with -s)."""
    rel = _rel(got, ref)
    print(f"{what}: windowed vs plain loop, max rel diff {rel:.2e}")
    assert torch.isfinite(got).all() and rel <= 1e-5, rel


def _x_T(frames, seed=1):
    return torch.randn(1, 4, frames, H, H, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("per_call", [1, 2, 0])
def test_image_to_video_windows_match_plain_loop(tiny, per_call):
    v, unet, ctx = tiny
    frames = 40
    image = torch.randn(1, 4, 1, H, H, generator=torch.Generator().manual_seed(5))
    concat = image.expand(1, 4, frames, H, H).contiguous()                             # image on every frame
    spec = WindowSpec(W, 4, "standard_static", "pyramid", max_windows_per_call=per_call)
    starts = [0, 12, 24]                                                               # 40 = 0-15, 12-27, 24-39
    calls = []
    with torch.no_grad():
        got = ddim_sample(windowed_denoiser(unet, ctx, concat, calls), _x_T(frames), v.schedule, STEPS,
                          windows=spec, **SAMPLE)
        ref = ddim_sample(plain_denoiser(unet, ctx, concat, lambda k: [range(s, s + W) for s in starts]),
                          _x_T(frames), v.schedule, STEPS, **SAMPLE)
    assert calls == {1: [1, 1, 1], 2: [2, 1], 0: [3]}[per_call] * STEPS                 # windows per call
    assert got.shape == (1, 4, frames, H, H) and torch.isfinite(got).all()
    _close(got, ref, f"image-to-video, {per_call} windows/call")


def test_uniform_schedule_windows_change_per_step(tiny):
    v, unet, ctx = tiny
    frames = 36
    concat = torch.randn(1, 4, 1, H, H).expand(1, 4, frames, H, H).contiguous()
    spec = WindowSpec(W, 4, "standard_uniform", "flat", max_windows_per_call=0)
    with torch.no_grad():
        got = ddim_sample(windowed_denoiser(unet, ctx, concat, []), _x_T(frames), v.schedule, STEPS,
                          windows=spec, **SAMPLE)
        ref = ddim_sample(plain_denoiser(unet, ctx, concat, lambda k: spec.plan(frames, k).windows, fuse="flat"),
                          _x_T(frames), v.schedule, STEPS, **SAMPLE)
    assert len({spec.plan(frames, k).windows for k in range(STEPS)}) > 1
    _close(got, ref, "uniform schedule")


def test_keyframe_chain_matches_segment_loop(tiny):
    """3 keyframes -> 2 segments of 16 frames sharing frame 15: 31 frames, each segment its own start/end pair."""
    v = get_variant("512-interp", tiny=True)
    _, unet, ctx = tiny
    kf = torch.randn(3, 4, H, H, generator=torch.Generator().manual_seed(9))
    frames = chain_frames(3, W)
    assert frames == 31
    concat = keyframe_concat(kf, W).transpose(0, 1).unsqueeze(0)                      # [1, 4, 31, h, w]

    def seg_concat(s):                                                                 # built here, not sliced
        c = torch.zeros(1, 4, W, H, H)
        c[0, :, 0], c[0, :, -1] = kf[s], kf[s + 1]
        return c

    with torch.no_grad():
        got = ddim_sample(windowed_denoiser(unet, ctx, concat, []), _x_T(frames), v.schedule, STEPS,
                          windows=chain_spec(W), **SAMPLE)
        ref = ddim_sample(plain_denoiser(unet, ctx, concat, lambda k: [range(0, 16), range(15, 31)],
                                         window_concat=seg_concat),
                          _x_T(frames), v.schedule, STEPS, **SAMPLE)
    _close(got, ref, "keyframe chain")


def test_closed_loop_wraps_and_matches(tiny):
    v, unet, ctx = tiny
    frames = 40
    concat = torch.randn(1, 4, 1, H, H).expand(1, 4, frames, H, H).contiguous()
    spec = WindowSpec(W, 4, "looped_static", "pyramid", max_windows_per_call=2)
    wins = [[(s + i) % frames for i in range(W)] for s in (0, 12, 24, 36)]             # the last wraps to 0-11
    with torch.no_grad():
        got = ddim_sample(windowed_denoiser(unet, ctx, concat, []), _x_T(frames), v.schedule, STEPS,
                          windows=spec, **SAMPLE)
        ref = ddim_sample(plain_denoiser(unet, ctx, concat, lambda k: wins), _x_T(frames), v.schedule, STEPS,
                          **SAMPLE)
    _close(got, ref, "closed loop")


@pytest.mark.parametrize("frames", [8, 16])
def test_short_video_is_bit_identical(tiny, frames):
    v, unet, ctx = tiny
    concat = torch.randn(1, 4, 1, H, H).expand(1, 4, frames, H, H).contiguous()

    def full(x, t, branches):
        c = torch.cat([ctx[b] for b in branches])
        return unet(torch.cat([x, concat.repeat(len(branches), 1, 1, 1, 1)], 1), t, context=c,
                    fs=_fs(x.shape[0]))

    with torch.no_grad():
        a = ddim_sample(full, _x_T(frames), v.schedule, STEPS, **SAMPLE)
        b = ddim_sample(full, _x_T(frames), v.schedule, STEPS, windows=WindowSpec(freenoise=True), **SAMPLE)
    assert torch.equal(a, b)


def test_freenoise_option_reschedules_x_T(tiny):
    v, unet, ctx = tiny
    frames = 40
    concat = torch.randn(1, 4, 1, H, H).expand(1, 4, frames, H, H).contiguous()
    spec = WindowSpec(W, 4, freenoise=True, max_windows_per_call=0)
    from comfyui_dynamicrafter.model.windows import freenoise_noise
    with torch.no_grad():
        a = ddim_sample(windowed_denoiser(unet, ctx, concat, []), _x_T(frames), v.schedule, 2, windows=spec,
                        freenoise_seed=4, **SAMPLE)
        b = ddim_sample(windowed_denoiser(unet, ctx, concat, []), freenoise_noise(_x_T(frames), W, 4, 4),
                        v.schedule, 2, windows=WindowSpec(W, 4, max_windows_per_call=0), **SAMPLE)
    assert torch.equal(a, b)
    assert plan_windows(frames, W, 4).windows[0] == tuple(range(W))

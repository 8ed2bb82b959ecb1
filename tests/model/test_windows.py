"""The context-window planner (model/windows.py) over a grid of (T, W, overlap, schedule, fuse, step), FreeNoise and
the keyframe-chain conditioning math."""
import itertools

import pytest
import torch

from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.windows import (
    FUSE_METHODS, SCHEDULES, WindowSpec, chain_frames, chain_spec, check_chain_windows, freenoise_noise,
    keyframe_concat, keyframe_positions, ordered_halving, plan_windows, window_slice,
)

FRAMES = [1, 2, 5, 15, 16, 17, 20, 28, 31, 32, 33, 40, 47, 48, 63, 64, 100, 129, 256]
LENGTHS = [2, 3, 8, 16]


def _overlaps(w):
    return sorted({0, 1, w // 4, w // 2, w - 1})


def _grid():
    for frames, length in itertools.product(FRAMES, LENGTHS):
        for overlap, schedule in itertools.product(_overlaps(length), SCHEDULES):
            yield frames, length, overlap, schedule


@pytest.mark.parametrize("fuse", FUSE_METHODS)
def test_grid_coverage_length_and_weights(fuse):
    checked = 0
    for frames, length, overlap, schedule in _grid():
        looped = schedule.startswith("looped")
        for step in (0, 1, 3):
            p = plan_windows(frames, length, overlap, schedule, fuse, step)
            case = (frames, length, overlap, schedule, fuse, step)
            if frames <= length:
                assert p.windows == (tuple(range(frames)),) and p.single, case
                assert torch.equal(p.weights, torch.ones(1, frames, dtype=torch.float64)), case
                continue
            assert not p.single, case
            assert p.weights.shape == (len(p.windows), length), case
            for idx in p.windows:
                assert len(idx) == length and len(set(idx)) == length, case          # W frames, never shortened
                assert all(0 <= f < frames for f in idx), case
                assert all((b - a) % frames == 1 for a, b in zip(idx, idx[1:])), case  # consecutive (wrapping)
                if not looped:
                    assert list(idx) == sorted(idx), case                          # no wrap in standard schedules
            covered = set().union(*map(set, p.windows))
            assert covered == set(range(frames)), case                              # tail included
            sums = p.frame_weight_sums()
            assert torch.allclose(sums, torch.ones(frames, dtype=torch.float64), atol=1e-12), case
            assert bool((p.weights >= 0).all()), case
            if overlap >= 1:  # every pair of neighbouring frames meets in some window (looped: T-1 -> 0 too)
                pairs = [(f, f + 1) for f in range(frames - 1)] + ([(frames - 1, 0)] if looped else [])
                for a, b in pairs:
                    assert any(a in w and b in w for w in p.windows), (case, a, b)
            if not looped:
                assert p.windows[-1][-1] == frames - 1 and p.windows[0][0] == 0, case
            if schedule.endswith("static"):
                assert p.windows == plan_windows(frames, length, overlap, schedule, fuse, 0).windows, case
            checked += 1
    assert checked > 1000


def test_static_windows_are_the_host_schedule():
    """standard_static: starts 0, W-o, 2(W-o), ... and the last shifted back to end on the last frame."""
    p = plan_windows(48, 16, 4, "standard_static")
    assert [(w[0], w[-1]) for w in p.windows] == [(0, 15), (12, 27), (24, 39), (32, 47)]
    p = plan_windows(40, 16, 4, "standard_static")
    assert [(w[0], w[-1]) for w in p.windows] == [(0, 15), (12, 27), (24, 39)]
    p = plan_windows(40, 16, 4, "looped_static")
    assert p.windows[-1] == tuple(range(36, 40)) + tuple(range(12))


def test_uniform_schedules_shift_per_step():
    assert [ordered_halving(s) for s in range(5)] == [0.0, 0.5, 0.25, 0.75, 0.125]
    starts = {plan_windows(64, 16, 4, "standard_uniform", step=s).windows[1][0] for s in range(4)}
    assert len(starts) > 1
    starts = {plan_windows(64, 16, 4, "looped_uniform", step=s).windows[0][0] for s in range(4)}
    assert starts == {0, 6, 3, 9}


def test_fusion_weights_named_as_the_host():
    flat = plan_windows(6, 4, 2, "standard_static", "flat")
    assert flat.windows == ((0, 1, 2, 3), (2, 3, 4, 5))
    assert flat.weights.tolist() == [[1, 1, 0.5, 0.5], [0.5, 0.5, 1, 1]]
    pyr = plan_windows(6, 4, 2, "standard_static", "pyramid")  # raw 1 2 2 1 per window
    assert pyr.weights.tolist() == [[1, 1, 2 / 3, 1 / 3], [1 / 3, 2 / 3, 1, 1]]
    odd = plan_windows(8, 5, 2, "standard_static", "pyramid")  # raw 1 2 3 2 1
    assert odd.windows[0] == (0, 1, 2, 3, 4)
    lin = plan_windows(8, 5, 2, "standard_static", "overlap-linear")  # ramps only where a neighbour overlaps
    assert lin.weights[0, :3].tolist() == [1, 1, 1] and lin.weights[-1, -3:].tolist() == [1, 1, 1]
    assert lin.weights[0, -1].item() == pytest.approx(0.0, abs=1e-30)


@pytest.mark.parametrize("kwargs, word", [
    (dict(frames=40, length=1), "window length"),
    (dict(frames=40, length=16, overlap=16), "overlap"),
    (dict(frames=40, length=16, overlap=-1), "overlap"),
    (dict(frames=257), "frames"),
    (dict(frames=0), "frames"),
    (dict(frames=40, schedule="batched"), "schedule"),
    (dict(frames=40, fuse="relative"), "fuse"),
])
def test_bad_settings_are_one_line(kwargs, word):
    with pytest.raises(DynamiCrafterInputError) as e:
        plan_windows(**kwargs)
    msg = str(e.value)
    assert word in msg and "\n" not in msg and "expected" in msg


def test_window_spec_check():
    WindowSpec().check(64, trained_length=16)
    with pytest.raises(DynamiCrafterInputError, match="max_windows_per_call"):
        WindowSpec(max_windows_per_call=-1).check(64)


# ---------------------------------------------------------------------------------------------------------------
# FreeNoise
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [16, 17, 31, 48, 50])
def test_freenoise_reuses_shuffled_first_window_noise(frames):
    noise = torch.randn(1, 4, frames, 3, 3, generator=torch.Generator().manual_seed(frames))
    out = freenoise_noise(noise, 16, 4, seed=7)
    assert torch.equal(out[:, :, :16], noise[:, :, :16]) and not torch.equal(out, noise) or frames <= 16
    first = {tuple(noise[0, :, f].flatten().tolist()) for f in range(16)}
    for f in range(frames):
        assert tuple(out[0, :, f].flatten().tolist()) in first        # every frame is one of the first window's
    for start in range(0, frames - 16, 12):                           # each stride block is a permutation
        place = start + 16
        n = min(12, frames - place)
        src = sorted(tuple(out[0, :, f].flatten().tolist()) for f in range(start, start + n))
        dst = sorted(tuple(out[0, :, f].flatten().tolist()) for f in range(place, place + n))
        assert src == dst
    assert torch.equal(out, freenoise_noise(noise, 16, 4, seed=7))
    assert frames <= 28 or not torch.equal(out, freenoise_noise(noise, 16, 4, seed=8))


# ---------------------------------------------------------------------------------------------------------------
# keyframe chains
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, loop", [(2, False), (3, False), (5, False), (2, True), (3, True)])
def test_keyframe_chain_windows_are_the_segments(n, loop):
    frames = chain_frames(n, 16, loop)
    assert frames == (n * 15 if loop else (n - 1) * 15 + 1)
    plan = chain_spec(16, loop).plan(frames)
    check_chain_windows(plan, n, loop)
    segs = n if loop else n - 1
    assert len(plan.windows) == segs or frames <= 16
    lat = torch.randn(n, 4, 2, 3)
    full = keyframe_concat(lat, 16, loop)
    assert full.shape[0] == frames
    for s, w in enumerate(plan.windows):
        part = window_slice(full, w, 0)
        assert torch.equal(part[0], lat[s]) and torch.equal(part[-1], lat[(s + 1) % n])
        assert not part[1:-1].any()                                     # an interpolation pair, zeros between
    assert keyframe_positions(n, 16, loop) == [15 * k for k in range(n)]


def test_keyframe_chain_refuses_other_windows():
    with pytest.raises(DynamiCrafterInputError, match="keyframe chain windows"):
        check_chain_windows(plan_windows(31, 16, 4), 3)
    for bad in (0, 1):
        with pytest.raises(DynamiCrafterInputError, match="at least 2"):
            chain_frames(bad)


def test_window_conditioning_check():
    from comfyui_dynamicrafter.model.windows import check_window_conditioning as check
    check("image", 40, range(12, 28))
    check("pair", 16, range(16))
    with pytest.raises(DynamiCrafterInputError, match="neither image"):
        check("pair", 40, range(12, 28))
    for w in chain_spec(16).plan(31).windows:
        check("chain", 31, w, keyframes=3)
    for w in chain_spec(16, loop=True).plan(45).windows:
        check("chain", 45, w, keyframes=3, loop=True)
    for bad in (range(12, 28), range(1, 17)):
        with pytest.raises(DynamiCrafterInputError, match="keyframe"):
            check("chain", 31, bad, keyframes=3)
    with pytest.raises(DynamiCrafterInputError, match="keyframe"):
        check("chain", 31, range(15, 31), keyframes=4)            # frames do not match the chain
    with pytest.raises(DynamiCrafterInputError, match="keyframe"):
        check("chain", 31, [30] + list(range(15)), keyframes=3)   # wraps, but the chain is open

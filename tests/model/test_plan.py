"""model/plan.py: the one decision of what a video is (kind, frames, keyframes, loop, windows)."""
from __future__ import annotations

import pytest

from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.plan import VideoPlan, for_frames, plan_video
from comfyui_dynamicrafter.model.windows import WindowSpec


@pytest.mark.parametrize("kw,kind,frames,loop_windows", [
    (dict(frames=16), "image", 16, False),
    (dict(frames=64), "image", 64, False),
    (dict(frames=16, end_image=True), "pair", 16, False),
    (dict(frames=16, loop=True), "pair", 16, False),
    (dict(frames=16, end_image=True, loop=True), "pair", 16, False),
    (dict(frames=64, loop=True, interp=False, name="512"), "image", 64, True),
    (dict(frames=16, keyframes=3), "chain", 31, False),
    (dict(frames=16, keyframes=3, loop=True), "chain", 45, True),
])
def test_plan_kinds(kw, kind, frames, loop_windows):
    plan, notes = plan_video(window=16, **kw)
    assert (plan.kind, plan.frames, plan.loop_windows) == (kind, frames, loop_windows)
    assert plan.has_end == (kind == "pair")
    assert all("\n" not in n for n in notes)


def test_notes_say_what_was_ignored():
    _, notes = plan_video(16, 16, end_image=True, loop=True)
    assert any("end image is ignored" in n for n in notes)
    _, notes = plan_video(40, 16, end_image=True, keyframes=2)
    assert any("keyframes are connected" in n for n in notes) and any("frames widget's 40" in n for n in notes)
    _, notes = plan_video(16, 16, end_image=True, interp=False, name="512")
    assert any("trained for image-to-video" in n for n in notes)


@pytest.mark.parametrize("kw,needle", [
    (dict(frames=1), "frames"),
    (dict(frames=300), "frames"),
    (dict(frames=64, loop=True), "loop"),                       # the interp model's start/end loop is one window
    (dict(frames=16, keyframes=19), "keyframes"),                # 18 * 15 + 1 = 271 frames > 256
])
def test_impossible_requests_are_one_line(kw, needle):
    with pytest.raises(DynamiCrafterInputError, match=needle) as e:
        plan_video(window=16, **kw)
    assert "\n" not in str(e.value)


def test_windows_follow_the_plan():
    chain, _ = plan_video(16, 16, keyframes=3)
    spec = chain.windows(WindowSpec(16, 4))
    assert (spec.length, spec.overlap, spec.schedule) == (16, 1, "standard_static")
    loop, _ = plan_video(64, 16, loop=True, interp=False, name="512")
    assert loop.windows(None).schedule == "looped_static"
    assert plan_video(16, 16)[0].windows(None) is None
    with pytest.raises(DynamiCrafterInputError, match="interpolation"):
        VideoPlan("pair", 40).windows(None)
    chain.check_window(range(15, 31))
    with pytest.raises(DynamiCrafterInputError):
        chain.check_window(range(8, 24))
    assert for_frames(None, 20) == VideoPlan("image", 20) and for_frames(chain, 31) is chain

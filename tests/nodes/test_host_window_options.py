"""The host's ContextWindowsManual options of ComfyUI v0.33 on our MODEL: each one either works, shown equal to the
pack's own windows with the same meaning (cond_retain_index_list "0", the batched schedule on whole windows,
causal_window_fix off), or is refused in one line before the first window runs (latent_retain_index_list,
context_stride, split_conds_to_windows, causal_window_fix on, a batched schedule with a short last window). Each test
fails if its option is silently ignored. Hosts whose ContextWindowsManual lacks an option skip its test, naming it."""
from __future__ import annotations

import importlib

import pytest
import torch

from comfyui_dynamicrafter.model.plan import VideoPlan
from comfyui_dynamicrafter.model.windows import WindowSpec
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt
from comfyui_dynamicrafter.tests.nodes.test_dcn_long import (
    HOST_ATOL, REF, WindowedReference, _host_window_graph,
)


def _options(spec) -> list:
    """A combo input's choices: (list, {...}) from V1 nodes, ("COMBO", {"options": list}) from the host's V3 nodes."""
    return list(spec[0]) if isinstance(spec[0], (list, tuple)) else list(spec[1].get("options", []))


def _declared(host, *names):
    cls = host.node_class_mappings.get("ContextWindowsManual")
    if cls is None or not host.features.get("cfg_guider"):
        pytest.skip(f"this host has no ContextWindowsManual (ComfyUI 2025-08 and later): {host.info.describe()}")
    types = cls.INPUT_TYPES()
    declared = {**types.get("required", {}), **types.get("optional", {})}
    missing = [n for n in names if n not in declared]
    if missing:
        pytest.skip(f"this host's ContextWindowsManual has no {missing} (ComfyUI v0.33 and later): "
                    f"{host.info.describe()}")
    return declared


def _run(host, frames, steps=4, seed=2, **options):
    g = _host_window_graph(frames, seed, steps)
    g["40"]["inputs"].update(options)
    host.reset_cache()
    return g, host.run_prompt(g, check=False)


def _equal_to_pack_windows(host, res, spec, frames, seed=2, steps=4):
    """The host run's last x0 estimate against model/'s windowed DDIM (eta 0) with the pack's windows ``spec``."""
    res.raise_for_status()
    got = host.node_output("7")[0][0]["samples"].float() * S.LATENT_SCALE
    ref = WindowedReference(tinyckpt.checkpoints()["full"], host.node_output("6"))
    _, traj = ref.sample(seed, steps, eta=0.0, windows=spec, return_trajectory=True, **REF)
    s, _ = ref.scales()
    want = (traj[-1]["pred_x0"][0] / s[traj[-1]["t"]].float()).transpose(0, 1)
    assert got.shape == want.shape == (frames, 4, S.SIZE // 8, S.SIZE // 8)
    return (got - want).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# refused: one line from the sampler node, before any step
# ---------------------------------------------------------------------------------------------------------------------
REFUSED = {
    "latent_retain_index_list": ({"latent_retain_index_list": "0"}, 40, ["latent_retain_index_list", "concat"]),
    "context_stride": ({"context_stride": 2, "context_schedule": "standard_uniform"}, 40, ["context_stride", "1"]),
    "split_conds_to_windows": ({"split_conds_to_windows": True}, 40, ["split_conds_to_windows", "off"]),
    "causal_window_fix": ({"causal_window_fix": True}, 40, ["causal_window_fix", "17-frame", "false"]),
    "batched_short_last_window": ({"context_schedule": "batched"}, 40, ["batched", "last window of 8", "48"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_host_window_option_refused_in_one_line(host, dc, case):
    options, frames, needles = REFUSED[case]
    declared = _declared(host, *options)
    if "context_schedule" in options and options["context_schedule"] not in _options(declared["context_schedule"]):
        pytest.skip(f"this host has no {options['context_schedule']} schedule: {host.info.describe()}")
    _, res = _run(host, frames, steps=1, **options)
    assert not res.success and res.error is not None, f"{case} was not refused"
    assert str(res.error["node_id"]) == "7"
    msg = res.error["exception_message"].strip()
    print(f"{case}: {msg}")
    assert "\n" not in msg and "expected" in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert not [e for e in res.events if e[0] == "progress" and str(e[1].get("node")) == "7"], "a step ran"


def test_host_window_options_off_when_no_windows(host, dc):
    """A video no longer than the window: the host does not window (for any model), so no option is refused."""
    _declared(host, "causal_window_fix", "latent_retain_index_list")
    _, res = _run(host, 16, steps=1, causal_window_fix=True, latent_retain_index_list="0")
    res.raise_for_status()


# ---------------------------------------------------------------------------------------------------------------------
# working: equal to the pack's own windows
# ---------------------------------------------------------------------------------------------------------------------
def test_cond_retain_start_image_equals_pack_windows(host, dc, monkeypatch, record_property):
    """cond_retain_index_list "0" (keep the start image's concat rows in every window): every window's concat rows
    are the start image's, which for image-to-video are the rows the pack's own windows give, so the run equals the
    pack's windowed DDIM; the handler's list reaches our per-window conditioning (spied)."""
    _declared(host, "cond_retain_index_list", "causal_window_fix")
    windows_mod = S.pack_module(host, "nodes.windows")
    seen = []
    original = windows_mod.retained_rows

    def spy(index_list, retain, layout):
        out = original(index_list, retain, layout)
        seen.append((list(index_list), list(retain), out))
        return out

    monkeypatch.setattr(windows_mod, "retained_rows", spy)
    frames = 48
    _, res = _run(host, frames, cond_retain_index_list="0")
    diff = _equal_to_pack_windows(host, res, WindowSpec(16, 4, "standard_static", "pyramid"), frames)
    record_property("max_abs_diff", diff)
    print(f"cond_retain_index_list 0, 48 frames 16/4: max abs diff {diff:.3g} vs the pack's windowed DDIM")
    assert diff < HOST_ATOL
    late = [s for s in seen if s[0][0] > 0]
    assert late and all(r == [0] and out[0] == 0 and out[1:] == idx[1:] for idx, r, out in late)


def test_cond_retain_moves_concat_rows_and_refuses_keyframe_chains(host):
    """The handler's own get_resized_cond with cond_retain_index_list "0": window position 0 takes frame 0's concat
    rows (distinct rows here, so an ignored list fails); on a keyframe chain the list is refused in one line."""
    _declared(host, "cond_retain_index_list")
    cw = importlib.import_module("comfy.context_windows")
    import comfy.conds

    windows_mod = S.pack_module(host, "nodes.windows")
    h = cw.IndexListContextHandler(cw.get_matching_context_schedule("standard_static"),
                                   cw.get_matching_fuse_method("pyramid"), 16, 4, dim=0,
                                   cond_retain_index_list="0", causal_window_fix=False)
    h._model = None                     # what execute() sets before windows are resized: no model-level resize here

    class Patcher:
        model_options = {"context_handler": h}

    windows_mod._on_pre_run(Patcher())

    def cond(layout):
        frames = layout.frames
        concat = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1, 1).expand(frames, 4, 2, 2).contiguous()
        return [{"model_conds": {
            "c_concat": windows_mod.FrameConcat(concat), "dcn_frames": comfy.conds.CONDConstant(frames),
            windows_mod.LAYOUT_KEY: windows_mod.Layout(layout)}}]

    win = cw.IndexListContextWindow(list(range(32, 48)), dim=0, total_frames=48)
    mc = h.get_resized_cond(cond(VideoPlan("image", 48)), torch.zeros(48, 4, 2, 2), win)[0]["model_conds"]
    assert mc["c_concat"].cond[:, 0, 0, 0].tolist() == [0.0] + [float(i) for i in range(33, 48)]
    chain = cw.IndexListContextWindow(list(range(15, 31)), dim=0, total_frames=31)   # a right chain window
    with pytest.raises(Exception, match="cond_retain_index_list") as e:
        h.get_resized_cond(cond(VideoPlan("chain", 31, keyframes=3)), torch.zeros(31, 4, 2, 2), chain)
    assert "\n" not in str(e.value)


def test_batched_whole_windows_equal_pack_static_windows_without_overlap(host, dc, record_property):
    """The batched schedule on a multiple of the window (48 = 3 x 16): windows 0-15, 16-31, 32-47, which are the
    pack's standard_static windows with overlap 0 (each frame in one window, whatever context_overlap says)."""
    declared = _declared(host, "causal_window_fix")
    if "batched" not in _options(declared["context_schedule"]):
        pytest.skip(f"this host has no batched schedule: {host.info.describe()}")
    frames = 48
    _, res = _run(host, frames, context_schedule="batched")
    diff = _equal_to_pack_windows(host, res, WindowSpec(16, 0, "standard_static", "pyramid"), frames)
    overlapped = _equal_to_pack_windows(host, res, WindowSpec(16, 4, "standard_static", "pyramid"), frames)
    record_property("max_abs_diff", diff)
    print(f"batched 48 frames: max abs diff {diff:.3g} vs the pack's 16/0 static windows ({overlapped:.3g} vs 16/4)")
    assert diff < HOST_ATOL < overlapped

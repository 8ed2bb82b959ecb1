"""Long videos in the host: DCN_Sampler's context windows (image-to-video, keyframe chain, long loop) against
model/'s windowed ddim_sample over the graph's own conditioning; the host's ContextWindowsManual on our MODEL
(current hosts) against the same; every window's conditioning recorded and checked; bad settings refused."""
from __future__ import annotations

import pytest
import torch

from comfyui_dynamicrafter.model.plan import VideoPlan
from comfyui_dynamicrafter.model.windows import WindowSpec, chain_spec
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

EXACT_ATOL, EXACT_RTOL = 1e-5, 4e-6   # as the exact sampler test (float32, batched vs host kernels)
HOST_ATOL = 5e-3                      # as the guider / KSampler tests (the host's finite sigma_max, Euler in float32)


class WindowedReference(S.Reference):
    """S.Reference with a window-aware denoiser: rows branch-major, then window; concat sliced per window."""

    @torch.no_grad()
    def denoise(self, x, t, branches, windows=None):
        if windows is None:
            return super().denoise(x, t, branches)
        ctx = torch.cat([self.contexts[b] for b in branches for _ in windows])
        cc = torch.cat([self.concat[:, :, list(w)] for _ in branches for w in windows]).to(x.dtype)
        fs = torch.full((x.shape[0],), self.fs, dtype=torch.long)
        return self.unet(torch.cat([x, cc], 1), t, ctx, fs)


def _windows_node(g, length=16, overlap=4, schedule="standard_static", fuse="pyramid", freenoise=False, per_call=1):
    g["30"] = {"class_type": "DCN_Windows", "inputs": {
        "context_length": length, "context_overlap": overlap, "context_schedule": schedule, "fuse_method": fuse,
        "freenoise": freenoise, "max_windows_per_call": per_call}}
    g["7"]["inputs"]["windows"] = ["30", 0]
    return g


def _keyframes(g):
    """Keyframes after the start image: [end, start] (an IMAGE batch through the host's ImageBatch)."""
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": S.END}}
    g["12"] = {"class_type": "ImageBatch", "inputs": {"image1": ["11", 0], "image2": ["2", 0]}}
    g["6"]["inputs"]["keyframes"] = ["12", 0]
    return g


def _exact(host, g, seed, steps, eta, ref_kw, spec, ckpt="full", variant="512"):
    host.run_prompt(g)
    got = host.node_output("7")[0][0]["samples"]
    ref = WindowedReference(tinyckpt.checkpoints()[ckpt], host.node_output("6"), variant)
    sampling = S.pack_module(host, "nodes.sampling")
    want = ref.sample(seed, steps, step_noise_seed=sampling.step_noise_seed(seed), eta=eta, windows=spec,
                      freenoise_seed=seed, **ref_kw)
    want = want[0].transpose(0, 1) / S.LATENT_SCALE
    diff = (got.float() - want).abs().max().item()
    return got, want, diff, ref


REF = dict(spacing="uniform_trailing", cfg_text=7.5, cfg_image=4.5, guidance_rescale=0.7, mode="multi")


@pytest.mark.parametrize("per_call,freenoise", [(1, False), (0, True)])
def test_long_image_to_video_windows_equal_model_windowed_ddim(host, dc, per_call, freenoise, record_property):
    seed, steps, frames = 3, 3, 40
    g = S.add_exact_sampler(S.conditioning_graph(frames=frames), seed=seed, steps=steps, eta=1.0, decode=False)
    _windows_node(g, freenoise=freenoise, per_call=per_call)
    spec = WindowSpec(16, 4, "standard_static", "pyramid", per_call, freenoise)
    got, want, diff, _ = _exact(host, g, seed, steps, 1.0, REF, spec)
    record_property("max_abs_diff", diff)
    print(f"DCN_Sampler 40 frames, windows 16/4 static pyramid, {per_call} per call, freenoise {freenoise}: max abs "
          f"diff {diff:.3g} vs model/ windowed ddim_sample (host {host.info.describe()})")
    assert got.shape == (frames, 4, S.SIZE // 8, S.SIZE // 8)
    assert diff <= EXACT_ATOL + EXACT_RTOL * want.abs().max().item()


def test_short_video_with_windows_is_bit_identical(host, dc):
    """Frames <= the window: DCN_Windows changes nothing (same sampler path, same numbers)."""
    g = S.add_exact_sampler(S.conditioning_graph(), seed=5, steps=2, eta=1.0, decode=False)
    host.run_prompt(g)
    plain = host.node_output("7")[0][0]["samples"].clone()
    _windows_node(g, freenoise=True)
    host.run_prompt(g)
    assert torch.equal(host.node_output("7")[0][0]["samples"], plain)


def test_keyframe_chain_each_window_sees_its_own_pair(host, dc, monkeypatch, record_property):
    """start, end, start -> 2 segments of 16 frames sharing frame 15: 31 frames; each window's concat is its pair."""
    seed, steps = 4, 3
    g = S.add_exact_sampler(S.conditioning_graph(model_ckpt=dc["interp"], frames=16), seed=seed, steps=steps,
                            eta=1.0, decode=False)
    _keyframes(g)
    sampling = S.pack_module(host, "nodes.sampling")
    seen = []
    original = sampling._window_conds

    def spy(conds, index_list, frames):
        out = original(conds, index_list, frames)
        seen.append((tuple(index_list), out["c_concat"].cond.clone(), out["dcn_frames"].cond))
        return out

    monkeypatch.setattr(sampling, "_window_conds", spy)
    got, want, diff, ref = _exact(host, g, seed, steps, 1.0, REF, chain_spec(16), ckpt="interp",
                                  variant="512-interp")
    info = host.node_output("6")[0][0][0][1]["dcn_video"]
    concat = info["concat_latent"]
    plan = info["plan"]
    assert plan.frames == 31 and plan.kind == "chain" and plan.keyframes == 3
    assert concat.shape[0] == 31 and torch.equal(concat[0], concat[30]) and not torch.equal(concat[0], concat[15])
    assert not concat[1:15].any() and not concat[16:30].any()
    windows = {w for w, _, _ in seen}
    assert windows == {tuple(range(16)), tuple(range(15, 31))}
    base = host.node_output("1")[0][0].model if "10" not in g else host.node_output("10")[0][0].model
    full = base.process_latent_in(concat.float())
    for w, c, n in seen:
        assert n == 16 and torch.equal(c.cpu(), full[list(w)])          # first = its start key, last = its end key
    record_property("max_abs_diff", diff)
    print(f"keyframe chain (3 images, 31 frames): max abs diff {diff:.3g} vs model/ windowed ddim_sample")
    assert diff <= EXACT_ATOL + EXACT_RTOL * want.abs().max().item()


def test_long_loop_windows_wrap_around(host, dc, record_property):
    seed, steps, frames = 6, 3, 40
    g = S.add_exact_sampler(S.conditioning_graph(frames=frames, loop=True), seed=seed, steps=steps, eta=0.0,
                            decode=False)
    spec = WindowSpec(16, 4, "looped_static", "pyramid")
    got, want, diff, _ = _exact(host, g, seed, steps, 0.0, REF, spec)
    info = host.node_output("6")[0][0][0][1]["dcn_video"]
    assert info["plan"].kind == "image" and info["plan"].loop_windows
    record_property("max_abs_diff", diff)
    print(f"long loop 40 frames (looped_static windows): max abs diff {diff:.3g}")
    assert diff <= EXACT_ATOL + EXACT_RTOL * want.abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# the host's own context windows on our MODEL
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def host_windows(host):
    if "ContextWindowsManual" not in host.node_class_mappings or not host.features.get("cfg_guider"):
        pytest.skip(f"this host has no ContextWindowsManual (ComfyUI 2025-08 and later): {host.info.describe()}")
    return host


# ContextWindowsManual inputs of later hosts (freenoise: 2026-01; the rest: v0.33), each at the value that leaves the
# pack's own windows; a host that does not declare an input does not read it (test_host_window_options.py tests them)
HOST_WINDOW_OFF = {"cond_retain_index_list": "", "split_conds_to_windows": False, "latent_retain_index_list": "",
                   "causal_window_fix": False}


def _host_window_graph(frames, seed, steps, model_ckpt=None, keyframes=False, overlap=4):
    g = S.conditioning_graph(frames=frames, model_ckpt=model_ckpt)
    if keyframes:
        _keyframes(g)
    g["40"] = {"class_type": "ContextWindowsManual", "inputs": {
        "model": S.model_ref(g), "context_length": 16, "context_overlap": overlap,
        "context_schedule": "standard_static", "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid",
        "dim": 0, "freenoise": False, **HOST_WINDOW_OFF}}
    g["20"] = {"class_type": "DCN_Guider", "inputs": {
        "model": ["40", 0], "positive": ["6", 0], "image_only": ["6", 1], "negative": ["6", 2],
        "cfg_text": 7.5, "cfg_image": 4.5, "guidance_rescale": 0.7, "mode": "multi"}}
    g["21"] = {"class_type": "DCN_Sigmas", "inputs": {"model": S.model_ref(g), "steps": steps, "spacing": "auto"}}
    g["22"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["7"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["22", 0], "guider": ["20", 0], "sampler": ["23", 0], "sigmas": ["21", 0],
        "latent_image": ["6", 3]}}
    S.add_sink(g, ["7", 0], "dcn_host_windows")
    return g


def test_host_context_windows_equal_pack_windowed_ddim(host_windows, dc, monkeypatch, record_property):
    host = host_windows
    seed, steps, frames = 2, 4, 48
    native = S.pack_module(host, "nodes.native")
    windows_mod = S.pack_module(host, "nodes.windows")
    calls, resized = [], []
    original = native.apply_window

    def spy(x, c_concat, topts, kwargs):
        c2, kw2 = original(x, c_concat, topts, kwargs)
        win = topts.get("context_window")
        calls.append((None if win is None else tuple(win.index_list), x.shape[0], c2.detach().cpu().clone(),
                      kw2.get("dcn_frames"), kw2["dcn_image_tokens"].detach().cpu().clone()))
        return c2, kw2

    orig_resize = windows_mod.resize_cond_item

    def spy_resize(*a, **kw):
        out = orig_resize(*a, **kw)
        if out is not None:
            resized.append(a[0])
        return out

    monkeypatch.setattr(native, "apply_window", spy)
    monkeypatch.setattr(windows_mod, "resize_cond_item", spy_resize)
    g = _host_window_graph(frames, seed, steps)
    host.reset_cache()
    host.run_prompt(g)
    got = host.node_output("7")[0][0]["samples"].float() * S.LATENT_SCALE   # x0 estimate at the last step
    ref = WindowedReference(tinyckpt.checkpoints()["full"], host.node_output("6"))
    spec = WindowSpec(16, 4, "standard_static", "pyramid")
    _, traj = ref.sample(seed, steps, eta=0.0, windows=spec, return_trajectory=True, **REF)
    s, _ = ref.scales()
    want = (traj[-1]["pred_x0"][0] / s[traj[-1]["t"]].float()).transpose(0, 1)
    diff = (got - want).abs().max().item()
    # every window call saw its own concat rows, 16 frames, the 256 image tokens (one per frame row)
    info = host.node_output("6")[0][0][0][1]["dcn_video"]
    full = host.node_output("1")[0][0].model.process_latent_in(info["concat_latent"].float())
    neg_info = host.node_output("6")[2][0][0][1]["dcn_video"]
    own_tokens = [info["image_tokens"][0].float(), neg_info["image_tokens"][0].float()]   # image / grey image
    assert own_tokens[0].shape[-2] == 256                                # 16 frames x 16 tokens, unchanged
    plan = spec.plan(frames)
    assert {c[0] for c in calls} == set(plan.windows) and len(calls) >= steps * len(plan.windows)
    for idx, rows, cc, n, tok in calls:
        k = rows // 16
        assert n == 16 and rows % 16 == 0 and cc.shape[0] == rows
        assert torch.equal(cc, full[list(idx)].repeat(k, 1, 1, 1).to(cc.dtype))
        assert tok.shape[0] == rows
        for row in tok.float():
            assert any(torch.equal(row, t) for t in own_tokens)
    hook = "RESIZE_COND_ITEM" if resized else "apply_model"
    record_property("max_abs_diff", diff)
    print(f"host ContextWindowsManual (48 frames, 16/4 static pyramid, per-window conds via {hook}) + DCN_Guider + "
          f"euler + DCN_Sigmas vs pack windowed DDIM eta 0: max abs diff {diff:.3g} (x0 max {want.abs().max():.3g}; "
          f"host {host.info.describe()})")
    assert diff < HOST_ATOL


def test_dcn_sampler_refuses_host_context_windows(host_windows, dc):
    g = _host_window_graph(40, 1, 1)
    g["7"] = {"class_type": "DCN_Sampler", "inputs": {
        "model": ["40", 0], "positive": ["6", 0], "image_only": ["6", 1], "negative": ["6", 2], "latent": ["6", 3],
        "seed": 1, "steps": 1, "cfg_text": 7.5, "cfg_image": 4.5, "eta": 0.0, "guidance_rescale": 0.7,
        "spacing": "auto", "mode": "multi"}}
    res = host_windows.run_prompt(g, check=False)
    assert not res.success and str(res.error["node_id"]) == "7"
    msg = res.error["exception_message"].strip()
    assert "ContextWindowsManual" in msg and "DCN_Windows" in msg and "\n" not in msg


def test_host_context_windows_refuse_wrong_chain_windows(host_windows, dc):
    """A keyframe chain under host windows that do not follow its segments: one line, nothing sampled wrongly."""
    g = _host_window_graph(31, 1, 1, model_ckpt=dc["interp"], keyframes=True, overlap=4)
    res = host_windows.run_prompt(g, check=False)
    assert not res.success and res.error is not None
    msg = res.error["exception_message"].strip()
    print(msg)
    assert "context window" in msg and "keyframe" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------
def _bad(kind, dc):
    if kind == "overlap_not_below_window":
        g = S.add_exact_sampler(S.conditioning_graph(frames=40), steps=1, decode=False)
        return _windows_node(g, overlap=16), "30", ["overlap", "less than"]
    if kind == "window_of_one":
        g = S.add_exact_sampler(S.conditioning_graph(frames=40), steps=1, decode=False)
        return _windows_node(g, length=1, overlap=0), "30", ["length", "2"]
    if kind == "long_interpolation_pair":
        g = S.add_exact_sampler(S.conditioning_graph(frames=40, end=S.END, model_ckpt=dc["interp"]), steps=1,
                                decode=False)
        return g, "7", ["at most 16 frames", "keyframes"]
    if kind == "long_interp_loop":
        g = S.add_exact_sampler(S.conditioning_graph(frames=40, loop=True, model_ckpt=dc["interp"]), steps=1,
                                decode=False)
        return g, "6", ["loop", "keyframes"]
    if kind == "frames_beyond_limit":
        g = S.add_exact_sampler(S.conditioning_graph(frames=257), steps=1, decode=False)
        return g, "6", ["frames", "256"]
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["overlap_not_below_window", "window_of_one", "long_interpolation_pair",
                                  "long_interp_loop", "frames_beyond_limit"])
def test_bad_long_video_settings_get_one_line(host, dc, kind):
    g, node, needles = _bad(kind, dc)
    res = host.run_prompt(g, check=False)
    assert not res.success
    if res.validation_error is not None:
        errs = res.validation_error.get("node_errors") or {}
        assert node in errs, errs
        text = " ".join(f"{e.get('message')}: {e.get('details')}" for ne in errs.values() for e in ne["errors"])
    else:
        assert str(res.error["node_id"]) == node
        text = res.error["exception_message"].strip()
        assert "\n" not in text and "Traceback" not in text
    print(f"{kind}: {text}")
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"


def test_host_resize_cond_item_slices_our_conds(host):
    """Hosts with IndexListCallbacks.RESIZE_COND_ITEM (2026-01 and later): the handler's own get_resized_cond, with
    the callback the pack registers when sampling starts, gives each window its concat rows and frame count, and
    refuses a keyframe-chain window off the segments (no prompt is run: the handler is called directly)."""
    import importlib

    try:
        cw = importlib.import_module("comfy.context_windows")
    except ImportError:
        cw = None
    if cw is None or not hasattr(cw.IndexListCallbacks, "RESIZE_COND_ITEM"):
        pytest.skip(f"this host has no RESIZE_COND_ITEM context-window callback: {host.info.describe()}")
    import comfy.conds

    windows_mod = S.pack_module(host, "nodes.windows")

    def handler_for(length, overlap):
        h = cw.IndexListContextHandler(cw.get_matching_context_schedule("standard_static"),
                                       cw.get_matching_fuse_method("pyramid"), length, overlap, dim=0)
        h._model = None                 # what execute() sets before windows are resized (v0.33 reads it): no model

        class Patcher:
            model_options = {"context_handler": h}

        windows_mod._on_pre_run(Patcher())                                 # registers the callback
        return h

    frames = 48
    concat = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1, 1).expand(frames, 4, 2, 2).contiguous()
    cond = [{"model_conds": {
        "c_concat": windows_mod.FrameConcat(concat), "dcn_frames": comfy.conds.CONDConstant(frames),
        windows_mod.LAYOUT_KEY: windows_mod.Layout(VideoPlan("image", frames)),
        "dcn_image_tokens": comfy.conds.CONDRegular(torch.ones(1, 256, 8))}}]
    h = handler_for(16, 4)
    x = torch.zeros(frames, 4, 2, 2)
    for idx in ([0] + list(range(1, 16)), list(range(32, 48))):
        win = cw.IndexListContextWindow(idx, dim=0, total_frames=frames)
        mc = h.get_resized_cond(cond, x, win)[0]["model_conds"]
        assert torch.equal(mc["c_concat"].cond[:, 0, 0, 0], torch.tensor(idx, dtype=torch.float32))
        assert mc["dcn_frames"].cond == 16 and mc["dcn_image_tokens"].cond.shape == (1, 256, 8)
    chain = [{"model_conds": dict(cond[0]["model_conds"], **{
        windows_mod.LAYOUT_KEY: windows_mod.Layout(VideoPlan("chain", 31, keyframes=3))})}]
    with pytest.raises(Exception, match="keyframe"):
        h.get_resized_cond(chain, torch.zeros(31, 4, 2, 2), cw.IndexListContextWindow(list(range(12, 28)), dim=0,
                                                                                   total_frames=31))


def test_host_context_windows_with_ksampler(host_windows, dc, record_property):
    """The host's KSampler (single CFG, euler / simple) under ContextWindowsManual == windowed DDIM eta 0."""
    host = host_windows
    seed, steps, frames = 5, 10, 40                                    # 1000/10: "simple" = uniform_trailing
    g = _host_window_graph(frames, seed, steps)
    for k in ("20", "21", "22", "23"):
        g.pop(k)
    g["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["40", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["6", 0], "negative": ["6", 2], "latent_image": ["6", 3],
        "denoise": 1.0}}
    host.reset_cache()
    host.run_prompt(g)
    got = host.node_output("7")[0][0]["samples"].float() * S.LATENT_SCALE
    ref = WindowedReference(tinyckpt.checkpoints()["full"], host.node_output("6"))
    _, traj = ref.sample(seed, steps, eta=0.0, spacing="uniform_trailing", cfg_text=6.0, mode="single",
                         windows=WindowSpec(16, 4, "standard_static", "pyramid"), return_trajectory=True)
    s, _ = ref.scales()
    want = (traj[-1]["pred_x0"][0] / s[traj[-1]["t"]].float()).transpose(0, 1)
    diff = (got - want).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"host ContextWindowsManual + KSampler euler/simple (40 frames) vs windowed DDIM eta 0 single CFG: max abs "
          f"diff {diff:.3g} (host {host.info.describe()})")
    assert diff < HOST_ATOL

"""Issue 21, finding 6 (and crf NaN of finding 7): every node of the pack checks its own widgets when it executes, so
a host that does not validate a node (the 2024-03 host skips nodes reached only through an optional input, such as
DCN_Windows on DCN_Sampler's windows) still gets the pack's one-line errors naming the right input; through the
host's real executor."""
from __future__ import annotations

import inspect

import pytest

from comfyui_dynamicrafter.tests.nodes import dcn_support as S


def test_every_registered_node_checks_its_widgets_when_it_executes(host):
    registry = S.pack_module(host, "nodes").NODE_CLASS_MAPPINGS
    assert registry
    for node_id, cls in registry.items():
        assert getattr(getattr(cls, cls.FUNCTION), "_dcn_checks_widgets", False), node_id


def _windows_graph(**widgets) -> dict:
    g = S.add_exact_sampler(S.conditioning_graph(frames=20), steps=1, decode=False)
    g["30"] = {"class_type": "DCN_Windows", "inputs": dict({
        "context_length": 16, "context_overlap": 4, "context_schedule": "standard_static", "fuse_method": "pyramid",
        "freenoise": False, "max_windows_per_call": 1}, **widgets)}
    g["7"]["inputs"]["windows"] = ["30", 0]
    return g


@pytest.mark.parametrize("widget,value,words", [
    ("context_length", 300, ["context_length", "2 to 256", "300"]),       # was "frames: expected 1 to 256, found 301"
    ("context_length", float("nan"), ["context_length", "nan"]),          # was a raw ValueError
    ("context_length", "sixteen", ["context_length", "a number", "sixteen"]),
    ("max_windows_per_call", 1_000_000, ["max_windows_per_call", "0 to 64"]),  # was accepted
    ("context_overlap", 16, ["context_overlap", "less than context_length"]),  # the node's own VALIDATE_INPUTS
    ("fuse_method", "sum", ["fuse_method", "pyramid"]),
], ids=["length_300", "length_nan", "length_text", "per_call_1e6", "overlap_16", "fuse_sum"])
def test_windows_widgets_refused_in_one_line_when_the_host_did_not_validate(host, dc, widget, value, words):
    res = host.run_prompt(_windows_graph(**{widget: value}), check=False)
    assert not res.success
    if res.validation_error is not None:
        # a host that validates DCN_Windows (2025 on): its own errors and our VALIDATE_INPUTS line, filed by the
        # host under each input that function names; each names the widget, and each of ours is one line
        errors = [e for ne in res.validation_error["node_errors"].values() for e in ne["errors"]]
        assert any(e["extra_info"].get("input_name") == widget for e in errors), errors
        ours = [e["details"].partition(" - ")[2] for e in errors if e["type"] == "custom_validation_failed"]
        for msg in ours:
            assert "\n" not in msg and msg.startswith(widget + ":"), msg
            assert all(w in msg for w in words), (words, msg)
        return
    msg = res.error_text().strip()   # the 2024-03 host skips DCN_Windows (reached through an optional input)
    assert "\n" not in msg and msg.startswith(widget + ":"), msg
    assert all(w in msg for w in words), (words, msg)
    assert res.error["node_type"] == "DCN_Windows" and res.error["exception_type"].endswith(
        ("DynamiCrafterInputError", "NonFiniteError")), res.error
    assert "7" not in res.executed_nodes()   # refused when DCN_Windows ran, before the sampler started


def _host_casts_booleans() -> bool:
    """Whether the host casts a BOOLEAN widget's value with ``bool()`` while validating (v0.33 does, for every node's
    BOOLEAN: the text "yes" arrives as True), read from its own validator."""
    import execution  # the host's module: the host fixture has it imported
    return "bool(val)" in inspect.getsource(execution.validate_inputs)


def test_a_boolean_given_as_text_is_refused_or_cast_by_the_host_never_half_read(host, dc):
    res = host.run_prompt(_windows_graph(freenoise="yes"), check=False)
    if _host_casts_booleans():   # the host's own rule, before any node runs: the node sees True and runs FreeNoise
        assert res.success, res.error_text()
        return
    assert not res.success
    msg = res.error_text().strip()
    assert "\n" not in msg and msg.startswith("freenoise:") and "true or false" in msg, msg


@pytest.mark.parametrize("crf", [float("nan"), "nan"])
def test_save_video_crf_nan_is_refused_not_a_dropped_video_reported_as_success(host, crf):
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0}},
         "2": {"class_type": "DCN_SaveVideo", "inputs": {"images": ["1", 0], "filename_prefix": "dcn_exec_checks",
                                                         "format": "mp4", "fps": 8.0, "crf": crf}}}
    res = host.run_prompt(g, check=False)
    assert not res.success, res.outputs
    msg = res.error_text()
    assert "crf" in msg, msg

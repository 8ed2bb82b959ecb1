"""Widget values outside their declared range or choices are refused by the host's own validation, before anything
runs, on every host. A host skips its min / max (newer hosts) and choices (all hosts) checks for the inputs a node's
VALIDATE_INPUTS names, so these graphs go through the real executor's validate_prompt of the host under test:

    .venv/bin/python -m pytest tests/nodes/test_dcn_validation.py                                 # 2024-03 host
    COMFYUI_PATH=<a current ComfyUI checkout> <its python> -m pytest tests/nodes/test_dcn_validation.py
"""
from __future__ import annotations

import inspect

import pytest

from comfyui_dynamicrafter.tests.nodes import dcn_support as S


def _save_video_graph(**widgets) -> dict:
    inputs = {"images": ["1", 0], "filename_prefix": "dcn_validation", "format": "webp", "fps": 8.0, "crf": 19}
    inputs.update(widgets)
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0}},
            "2": {"class_type": "DCN_SaveVideo", "inputs": inputs}}


def _sampler_graph(**widgets) -> dict:
    g = S.add_exact_sampler(S.conditioning_graph(), steps=1, decode=False)
    g["7"]["inputs"].update(widgets)
    return g


def _conditioning_graph(**widgets) -> dict:
    g = S.add_exact_sampler(S.conditioning_graph(), steps=1, decode=False)
    g["6"]["inputs"].update(widgets)
    return g


def _sigmas_graph(**widgets) -> dict:
    g = S.conditioning_graph()
    g["7"] = {"class_type": "DCN_Sigmas", "inputs": dict({"model": ["1", 0], "steps": 5, "spacing": "auto"},
                                                         **widgets)}
    g["8"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["12"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": True, "noise_seed": 0, "cfg": 1.0, "positive": ["6", 0],
        "negative": ["6", 2], "sampler": ["8", 0], "sigmas": ["7", 0], "latent_image": ["6", 3]}}
    return S.add_sink(g, ["12", 0], "dcn_validation")


def _loader_graph(**widgets) -> dict:
    g = S.add_exact_sampler(S.conditioning_graph(), steps=1, decode=False)
    g["1"]["inputs"].update(widgets)
    return g


# (graph builder, node id, widget, bad value, words the host's report must hold)
CASES = {
    "fps_500": (_save_video_graph, "2", "fps", 500.0, ["fps", "120"]),
    "fps_half": (_save_video_graph, "2", "fps", 0.5, ["fps", "1.0"]),
    "crf_52": (_save_video_graph, "2", "crf", 52, ["crf", "51"]),
    "format_mkv": (_save_video_graph, "2", "format", "mkv", ["format", "mkv"]),
    "steps_1001": (_sampler_graph, "7", "steps", 1001, ["steps", "1000"]),
    "steps_0": (_sampler_graph, "7", "steps", 0, ["steps", "1"]),
    "mode_unknown": (_sampler_graph, "7", "mode", "triple", ["mode", "triple"]),
    "spacing_unknown": (_sampler_graph, "7", "spacing", "karras", ["spacing", "karras"]),
    "frames_257": (_conditioning_graph, "6", "frames", 257, ["frames", "256"]),
    "frames_1": (_conditioning_graph, "6", "frames", 1, ["frames", "2"]),
    "width_8200": (_conditioning_graph, "6", "width", 8200, ["width", "8192"]),
    "height_8200": (_conditioning_graph, "6", "height", 8200, ["height", "8192"]),
    "height_40": (_conditioning_graph, "6", "height", 40, ["height", "40"]),
    "motion_61": (_conditioning_graph, "6", "motion", 61, ["motion", "60"]),
    "sigmas_steps_1001": (_sigmas_graph, "7", "steps", 1001, ["steps", "1000"]),
    "variant_unknown": (_loader_graph, "1", "variant", "2048", ["variant", "2048"]),
    "weight_dtype_unknown": (_loader_graph, "1", "weight_dtype", "int4", ["weight_dtype", "int4"]),
}


def _report(res) -> str:
    errs = res.validation_error.get("node_errors") or {}
    parts = [str(res.validation_error.get("error"))]
    for nid, ne in errs.items():
        parts += [f"#{nid} {e.get('message')}: {e.get('details')}" for e in ne.get("errors", [])]
    return "\n".join(parts)


@pytest.mark.parametrize("case", list(CASES))
def test_out_of_range_widget_is_refused_before_execution(host, dc, case):
    build, node, widget, value, needles = CASES[case]
    g = build(**{widget: value})
    res = host.run_prompt(g, check=False)
    assert res.validation_error is not None, (
        f"{widget}={value!r} on node {node} passed the host's validation "
        f"({host.info.describe()}); success={res.success}, error={(res.error or {}).get('exception_message')}")
    assert not res.events, "the executor started although validation failed"
    text = _report(res)
    print(f"{case}: {text}")
    node_errors = res.validation_error.get("node_errors") or {}
    assert node in node_errors, f"no error on node {node}: {text}"
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"


def test_values_at_the_widget_bounds_pass(host, dc):
    """The bounds themselves are accepted (and the file is written): the checks above refuse only what is outside."""
    for fps, crf in ((120.0, 0), (1.0, 51)):
        res = host.run_prompt(_save_video_graph(fps=fps, crf=crf), check=False)
        assert res.validation_error is None, _report(res)
        assert res.success, res.error
        assert res.outputs["2"]["gifs"][0]["frame_rate"] == fps


def test_cross_input_check_still_refuses(host, dc):
    """VALIDATE_INPUTS keeps the checks that span inputs: uniform spacing has at most 500 distinct DDIM steps."""
    res = host.run_prompt(_sampler_graph(steps=600, spacing="uniform"), check=False)
    assert res.validation_error is not None
    text = _report(res)
    assert "steps" in text and "500" in text and "uniform" in text, text


def _bound_probes(cls):
    """(input, bad value) for every widget that the node's VALIDATE_INPUTS takes as a parameter."""
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return []
    spec = cls.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    probes = []
    for name in inspect.signature(fn).parameters:
        if name not in declared:
            continue
        kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if isinstance(kind, (list, tuple)):
            probes.append((name, "not-one-of-the-choices"))
        elif kind in ("INT", "FLOAT"):
            step = 1 if kind == "INT" else 0.5
            if "max" in opts:
                probes.append((name, opts["max"] + step))
            if "min" in opts:
                probes.append((name, opts["min"] - step))
    return probes


def test_every_input_validate_inputs_names_is_checked_against_its_widget(host):
    """Where a node's VALIDATE_INPUTS names an input (and so turns the host's own check off), it refuses the
    values outside the widget's declared range or choices itself."""
    mappings = host.pack_module.NODE_CLASS_MAPPINGS
    checked = []
    for node_id, cls in sorted(mappings.items()):
        for name, value in _bound_probes(cls):
            verdict = cls.VALIDATE_INPUTS(**{name: value})
            assert verdict is not True, f"{node_id}.VALIDATE_INPUTS({name}={value!r}) accepted a value outside the widget"
            assert isinstance(verdict, str) and name in verdict and "\n" not in verdict, verdict
            checked.append(f"{node_id}.{name}")
    print("checked:", checked)

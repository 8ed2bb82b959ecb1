"""Every sampler default is stated once: model/config.py SamplerDefaults, a variant's ``sampling`` (and ToonCrafter's
``toon_decode``). The nodes' widget defaults, generate.py, the trainer's samples and the shipped workflows carry the
registry's values, so a default restated differently anywhere fails here."""
from __future__ import annotations

import dataclasses
import sys

import pytest

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.cli import weights
from comfyui_dynamicrafter.model import tooncrafter, variants
from comfyui_dynamicrafter.model.config import SamplerDefaults, ToonDecodeDefaults
from comfyui_dynamicrafter.scripts import build_workflows
from comfyui_dynamicrafter.tests.workflows import wfcheck
from comfyui_dynamicrafter.training.config import TrainConfig

D = SamplerDefaults()


def test_the_registry_holds_the_reference_values():
    # the reference scripts/run.sh: a change here is a change of the pack's defaults, not a refactor
    assert (D.steps, D.cfg_text, D.cfg_image, D.eta, D.mode) == (50, 7.5, 7.5, 1.0, "multi")
    for name, v in variants.VARIANTS.items():
        assert v.sampling == (dataclasses.replace(D, mode="single") if name == "tooncrafter" else D), name
        assert (v.toon_decode is not None) == (v.first_stage == "dualref"), name
        assert variants.get_variant(name, tiny=True).sampling == v.sampling    # the small configs keep them
    toon = variants.VARIANTS["tooncrafter"].toon_decode
    assert toon == ToonDecodeDefaults() and toon.perframe_ae and toon.splice_middle
    assert tooncrafter.TEMPORAL_LENGTH == toon.chunk_frames == 16
    assert not any(v.extra for v in variants.VARIANTS.values())              # extra: only a small config's name


def test_generate_and_the_trainer_read_the_registry():
    c = generate.COMMON_DEFAULTS
    assert (c["steps"], c["cfg"], c["cfg_image"], c["eta"]) == (D.steps, D.cfg_text, D.cfg_image, D.eta)
    assert TrainConfig().sample_cfg == D.cfg_text


def _expected(v) -> dict:
    """Node type -> the widget values the registry gives it in a workflow of variant ``v``."""
    s = v.sampling
    out = {"DCN_Sampler": dict(steps=s.steps, cfg_text=s.cfg_text, cfg_image=s.cfg_image, eta=s.eta, mode=s.mode,
                               guidance_rescale=v.guidance_rescale),
           "DCN_Guider": dict(cfg_text=s.cfg_text, cfg_image=s.cfg_image, mode=s.mode,
                              guidance_rescale=v.guidance_rescale),
           "DCN_Sigmas": dict(steps=s.steps),
           "DCN_Conditioning": dict(width=v.width, height=v.height, motion=v.default_motion)}
    if v.toon_decode is not None:
        out["DCN_ToonDecode"] = dict(splice_middle=v.toon_decode.splice_middle)
    return out


@pytest.mark.parametrize("path", wfcheck.ui_files(), ids=wfcheck.name_of)
def test_shipped_workflows_carry_the_registry_defaults(path):
    ui, api = wfcheck.load(path), wfcheck.load(wfcheck.api_twin_path(path))
    by_file = {m.filename: name for name, m in weights.MODEL_FILES.items()}
    loader = next(n for n in api.values() if n["class_type"] == "DCN_Loader")
    expected = _expected(variants.get_variant(by_file[loader["inputs"]["ckpt_name"]]))
    seen = set()
    for node in ui["nodes"]:
        want = expected.get(node["type"])
        if want is None:
            continue
        seen.add(node["type"])
        widgets = dict(zip(build_workflows.SPECS[node["type"]][2], node["widgets_values"]))
        inputs = api[str(node["id"])]["inputs"]
        for key, value in want.items():
            assert widgets[key] == value and inputs[key] == value, (node["type"], key, widgets[key], inputs[key])
    assert seen & {"DCN_Sampler", "DCN_Guider"}, "no sampler node checked"


def test_node_widgets_default_to_the_registry(wf_host):
    pack = wf_host.pack_module_name                                        # the pack as the host imported it
    nodes = {name: getattr(sys.modules[f"{pack}.nodes.{part}"], name) for part, name in (
        ("sampler_nodes", "DCN_Sampler"), ("sampler_nodes", "DCN_Guider"), ("sampler_nodes", "DCN_Sigmas"),
        ("toon", "DCN_ToonDecode"))}                                       # the guider's class even where unregistered
    expected = _expected(variants.get_variant("512"))                     # the widgets' defaults: a 512 run's
    expected["DCN_ToonDecode"] = dict(splice_middle=ToonDecodeDefaults().splice_middle)
    for name, cls in nodes.items():
        spec = cls.INPUT_TYPES()["required"]
        assert {k: spec[k][1]["default"] for k in expected[name]} == expected[name], name

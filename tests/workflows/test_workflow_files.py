"""The shipped workflow files against a real host's node definitions: every node exists, every link joins
compatible types, every widget value fits its INPUT_TYPES (count, type, range, choices), every API twin is the same
graph, each UI graph is shipped once (example_workflows/), and the files are what scripts/build_workflows.py
writes."""
from __future__ import annotations

import glob
import os

import pytest

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.scripts import build_workflows
from comfyui_dynamicrafter.tests.workflows import wfcheck

UI_FILES = wfcheck.ui_files()
IDS = [wfcheck.name_of(p) for p in UI_FILES]


def allowed_files() -> dict:
    """Combo values a user supplies as files: the official model file names (listed by the loader once the file
    is in a model folder), the example images (listed by LoadImage once copied into ComfyUI/input) and the
    trainer's adapter file name (listed by DCN_ApplyAdapter once in models/dynamicrafter_adapters)."""
    models = {m.filename for m in generate.MODEL_FILES.values()}
    images = set(os.listdir(wfcheck.INPUT_DIR))
    return {"ckpt_name": models, "image": images, "adapter_name": {build_workflows.ADAPTER_FILE},
            "sketch_encoder_name": {build_workflows.SKETCH_ENCODER}}


def test_the_ten_workflows_are_there():
    assert IDS == ["dynamicrafter_512_adapter", "dynamicrafter_512_advanced_guider", "dynamicrafter_512_image_to_video",
                   "dynamicrafter_512_interpolation", "dynamicrafter_512_keyframes", "dynamicrafter_512_long_loop",
                   "dynamicrafter_512_long_video", "dynamicrafter_512_loop", "tooncrafter_interpolation",
                   "tooncrafter_sketch_interpolation"]
    for p in UI_FILES:
        assert os.path.isfile(wfcheck.api_twin_path(p)), f"no API twin for {p}"
    assert sorted(os.listdir(wfcheck.API_DIR)) == sorted(os.path.basename(p) for p in UI_FILES)
    assert sorted(os.listdir(wfcheck.UI_DIR)) == sorted(os.path.basename(p) for p in UI_FILES)


# The folders a newer host's template browser lists, <pack>/<folder>/*.json (ComfyUI app/custom_node_manager.py).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def test_templates_are_listed_once():
    """What GET /workflow_templates of a newer host lists for the pack: each workflow once, nothing else."""
    listed = [wfcheck.name_of(p) for folder in TEMPLATE_FOLDERS
              for p in glob.glob(os.path.join(wfcheck.REPO, folder, "*.json"))]
    assert sorted(listed) == IDS, listed


def test_each_ui_graph_is_shipped_once():
    """No JSON file outside example_workflows/ holds a copy of a shipped UI graph."""
    ui_graphs = [wfcheck.load(p) for p in UI_FILES]
    for dirpath, dirnames, filenames in os.walk(wfcheck.REPO):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("node_modules", "__pycache__")]
        if os.path.abspath(dirpath) == os.path.abspath(wfcheck.UI_DIR):
            continue
        for f in filenames:
            if not f.endswith(".json"):
                continue
            try:
                data = wfcheck.load(os.path.join(dirpath, f))
            except ValueError:
                continue
            assert data not in ui_graphs, f"a second UI copy of a shipped workflow: {os.path.join(dirpath, f)}"


def test_files_are_what_the_builder_writes():
    assert build_workflows.main(["--check"]) == 0, "run: .venv/bin/python scripts/build_workflows.py"


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_model_pickers_have_a_note(path):
    ui = wfcheck.load(path)
    notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note"]
    loaders = [n for n in ui["nodes"] if n["type"] == "DCN_Loader"]
    assert loaders and notes, "a Note must tell where the model file goes"
    for ld in loaders:
        ckpt = ld["widgets_values"][0]
        assert any(ckpt in t and "models/dynamicrafter" in t for t in notes), (ckpt, notes)


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_ui_workflow_fits_the_host(path, wf_host):
    ui = wfcheck.load(path)
    mappings = wf_host.node_class_mappings
    missing = wfcheck.missing_types(ui, mappings)
    if missing and set(missing) <= set(wfcheck.ADVANCED_HOST_NODES + ("DCN_Guider",)) and \
            not wf_host.features.get("sampler_custom_advanced"):
        pytest.skip(f"{wfcheck.name_of(path)} needs {missing}, which this host ({wf_host.info.describe()}) lacks: "
                    "SamplerCustomAdvanced and guiders came in 2024-04; check it with COMFYUI_PATH=<current ComfyUI>")
    assert not missing, f"node types neither in the host nor in the pack: {missing}"
    problems = wfcheck.check_ui(ui, mappings, allowed_files())
    assert not problems, "\n".join(problems)
    # the pack's node types come from the pack as the host imported it
    for t in wfcheck.node_types(ui):
        if t.startswith("DCN_"):
            assert mappings[t].__module__.startswith(wf_host.pack_module_name), (t, mappings[t].__module__)


@pytest.mark.parametrize("path", UI_FILES, ids=IDS)
def test_api_twin_is_the_same_graph(path, wf_host):
    ui = wfcheck.load(path)
    mappings = wf_host.node_class_mappings
    missing = wfcheck.missing_types(ui, mappings)
    if missing:
        pytest.skip(f"needs {missing}, not in this host ({wf_host.info.describe()})")
    api = wfcheck.strip_meta(wfcheck.load(wfcheck.api_twin_path(path)))
    assert wfcheck.ui_to_api(ui, mappings) == api


def test_checker_catches_broken_workflows(wf_host):
    """The checks above would fail on the usual mistakes (so a pass means something)."""
    import copy
    mappings = wf_host.node_class_mappings
    ui = wfcheck.load(os.path.join(wfcheck.UI_DIR, "dynamicrafter_512_image_to_video.json"))
    assert not wfcheck.check_ui(ui, mappings, allowed_files())

    def broken(edit):
        u = copy.deepcopy(ui)
        edit(u)
        return wfcheck.check_ui(u, mappings, allowed_files())

    def node(u, t):
        return next(n for n in u["nodes"] if n["type"] == t)

    assert broken(lambda u: node(u, "DCN_Sampler")["widgets_values"].pop())            # count
    assert broken(lambda u: node(u, "DCN_Sampler")["widgets_values"].__setitem__(2, "50"))  # type
    assert broken(lambda u: node(u, "DCN_Sampler")["widgets_values"].__setitem__(5, 1.5))   # eta above max
    assert broken(lambda u: node(u, "DCN_Conditioning")["widgets_values"].__setitem__(0, 500))  # width off step
    assert broken(lambda u: node(u, "DCN_Sampler")["widgets_values"].__setitem__(7, "karras"))  # choices
    assert broken(lambda u: node(u, "DCN_Loader")["widgets_values"].__setitem__(0, "other.ckpt"))
    assert broken(lambda u: u["links"][0].__setitem__(5, "LATENT"))                     # link type
    assert broken(lambda u: node(u, "VAEDecode").__setitem__("type", "DCN_NoSuchNode"))
    wrong = copy.deepcopy(ui)
    for l in wrong["links"]:  # CLIP into the image encoder's clip_vision slot
        if l[5] == "CLIP_VISION":
            l[2], l[5] = 2, "CLIP"
            node(wrong, "DCN_Loader")["outputs"][2]["links"].append(l[0])
    assert any("CLIP output into a CLIP_VISION input" in p for p in wfcheck.check_ui(wrong, mappings, allowed_files()))

"""The ``models`` entries of the shipped workflows, as the front end's Missing Models panel reads them (frontend 1.49,
v0.33): for each loader widget naming a model file, ``properties.models`` of that node holds an entry with the same
``name``, a ``url`` it offers for download (``https://huggingface.co/`` or civitai, a name ending in .safetensors /
.sft / .ckpt / .pth / .pt) and a ``directory`` that is a model folder of the host; and a file in that folder (or in
the pack's old ``models/dynamicrafter``) is what DCN_Loader lists under that name."""
from __future__ import annotations

import os

import pytest

from comfyui_dynamicrafter.cli import weights
from comfyui_dynamicrafter.tests.workflows import wfcheck

UI_FILES = wfcheck.ui_files()
# What the front end's isModelDownloadable accepts (missingModelMetadata-*.js of frontend 1.49.6).
URL_PREFIXES = ("https://civitai.com/", "https://civitai.red/", "https://huggingface.co/")
NAME_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pth", ".pt")
# Model-file widgets of the pack's nodes whose file has a public download (the adapter is the user's own training).
DOWNLOADABLE_WIDGETS = {"DCN_Loader": "ckpt_name"}


def _loaders(ui):
    return [n for n in ui["nodes"] if n["type"] in DOWNLOADABLE_WIDGETS]


@pytest.mark.parametrize("path", UI_FILES, ids=[wfcheck.name_of(p) for p in UI_FILES])
def test_missing_model_entries_of_each_workflow(path):
    ui = wfcheck.load(path)
    loaders = _loaders(ui)
    assert loaders, "every shipped workflow loads a DynamiCrafter checkpoint"
    official = {m.filename: m for m in weights.MODEL_FILES.values()}
    for node in loaders:
        name = node["widgets_values"][0]                                    # ckpt_name, the first widget
        entries = node["properties"].get("models") or []
        mine = [e for e in entries if e.get("name") == name]
        assert len(mine) == 1, f"node {node['id']}: no single models entry for {name!r}: {entries}"
        e = mine[0]
        assert set(e) == {"name", "url", "directory"}, e
        assert e["url"].startswith(URL_PREFIXES) and e["name"].endswith(NAME_SUFFIXES), e
        assert e["url"] == official[name].download_url and "/resolve/main/" in e["url"]
        assert e["directory"] == weights.WORKFLOW_FOLDER == "checkpoints"
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert f"models/{weights.WORKFLOW_FOLDER}/" in note and "convert.py convert" in note
    for node in ui["nodes"]:   # the sketch encoder: the released file, in the host's controlnet folder
        if node["type"] == "DCN_SketchEncoderLoader":
            (e,) = node["properties"]["models"]
            assert e == {"name": node["widgets_values"][0], "directory": "controlnet",
                         "url": "https://huggingface.co/Doubiiu/ToonCrafter/resolve/main/sketch_encoder.ckpt"}
    # the adapter has no public file: no entry pretends it has one
    for node in ui["nodes"]:
        if node["type"] == "DCN_ApplyAdapter":
            assert not node["properties"].get("models")


def test_missing_model_folder_is_a_host_folder_and_the_old_one_keeps_working(wf_host, tmp_path):
    """``checkpoints`` is one of the host's own model folders (GET /models lists it; the front end and the Desktop app
    download into it); the loader lists a file there and one in models/dynamicrafter alike."""
    fp = wf_host.folder_paths
    assert weights.WORKFLOW_FOLDER in fp.folder_names_and_paths
    compat = __import__(f"{wf_host.pack_module_name}.nodes.compat", fromlist=["x"])
    names = {}
    for folder in (weights.WORKFLOW_FOLDER, "dynamicrafter"):
        path = os.path.join(wf_host.model_dirs[folder], f"dcn_listed_in_{folder}.safetensors")
        with open(path, "wb") as f:
            f.write(b"\0" * 16)
        names[folder] = os.path.basename(path)
    try:
        wf_host.refresh_models()
        listed = compat.list_checkpoints()
        for folder, name in names.items():
            assert name in listed, (folder, listed)
            assert os.path.dirname(compat.checkpoint_path(name)) == wf_host.model_dirs[folder]
    finally:
        for folder, name in names.items():
            os.remove(os.path.join(wf_host.model_dirs[folder], name))
        wf_host.refresh_models()

"""A new variant is one registry entry (model/variants.py): a copy of 512 under another name is detected, listed,
downloadable (its official-file entry) and runs generate.py --tiny, with no other edit. In-process for the registry
readers; end to end in a scratch copy of the pack whose variants.py got exactly one more entry."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.cli import weights
from comfyui_dynamicrafter.model import detect, tiny, variants
from comfyui_dynamicrafter.tests.readme_blocks import REPO

NEW = "512-copy"
DOWNLOAD = ("dynamicrafter_512_copy.ckpt", "Example/DynamiCrafter_512_copy", "model.ckpt", "about 10 GB")
ENTRY = (f"\nVARIANTS[{NEW!r}] = dataclasses.replace(VARIANTS['512'], name={NEW!r}, download={DOWNLOAD!r})\n")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(variants.VARIANTS, NEW, dataclasses.replace(variants.VARIANTS["512"], name=NEW,
                                                                    download=DOWNLOAD))
    return NEW


def test_a_registered_variant_is_listed_detected_and_downloadable(registered):
    assert NEW in variants.variant_names() and NEW in variants.family_variants("512-family")
    keys = tiny.unet_and_p(NEW, seed=1)
    det = detect.detect_variant({k: tuple(v.shape) for k, v in keys.items()}, tiny.variant_metadata(NEW))
    assert det.variant == NEW and det.decided_by == "metadata", det.reason
    mf = weights.MODEL_FILES[NEW]
    assert (mf.filename, mf.repo, mf.repo_file) == DOWNLOAD[:3] and NEW in list(weights.MODEL_FILES)
    choices = next(a.choices for a in generate.build_parser()._actions if "--variant" in a.option_strings)
    assert NEW in choices
    assert generate.planned_size(generate.build_parser().parse_args([]), NEW, tiny=True)[:2] == (128, 80)


def test_one_registry_entry_runs_generate_tiny(tmp_path):
    root = tmp_path / "pack"
    shutil.copytree(REPO, root, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "runs", "__pycache__", "test-artifacts", "*.mp4"))
    with open(root / "model" / "variants.py", "a", encoding="utf-8") as f:
        f.write(ENTRY)                                                     # the one edit
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, str(root / "generate.py"), "--tiny", "--variant", NEW, "--image",
                        generate.EXAMPLE_START, "--prompt", "a boat", "--out", str(tmp_path / "v.mp4"), "--frames",
                        "4", "--width", "64", "--height", "64", "--steps", "2"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert f"variant {NEW}" in out and f"variant '{NEW}' from the file's metadata" in out, out[-3000:]
    assert generate.probe_video(str(tmp_path / "v.tiny-random-weights.mp4"))[0] == 4

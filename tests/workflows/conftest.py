"""Fixtures of the workflow tests: the host (see tests/hosting.py), the tiny checkpoints under the names the
workflows' model pickers get in these tests, and the example input images in the host's input folder."""
import os
import shutil

import pytest

from comfyui_dynamicrafter import generate, weights
from comfyui_dynamicrafter.tests import hosting
from comfyui_dynamicrafter.tests.workflows import wfcheck

# Tiny random-weight stand-ins for the real files the workflows name (what a user picks in ckpt_name).
TINY_FOR = {"dynamicrafter_512.ckpt": "512", "dynamicrafter_512_interp.ckpt": "512-interp",
            "tooncrafter_512_interp.ckpt": "tooncrafter"}


def tiny_files() -> dict:
    """real file name -> path of its tiny stand-in (written once into the repo's .cache, git-ignored)."""
    folder = os.path.join(generate.DEFAULT_CACHE, "tiny-weights")
    return {real: weights.tiny_checkpoint(folder, v) for real, v in TINY_FOR.items()}


def install_inputs(model_dir: str, input_dir: str) -> dict:
    """Link the tiny files into a host's dynamicrafter folder, copy the example images; real name -> tiny name."""
    names = {}
    for real, path in tiny_files().items():
        dst = os.path.join(model_dir, os.path.basename(path))
        if not os.path.lexists(dst):
            os.symlink(path, dst)
        names[real] = os.path.basename(path)
    for f in os.listdir(wfcheck.INPUT_DIR):
        shutil.copyfile(os.path.join(wfcheck.INPUT_DIR, f), os.path.join(input_dir, f))
    return names


@pytest.fixture(scope="session")
def wf_host_info():
    try:
        return hosting.find_host()
    except hosting.HostNotFound as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def wf_host(wf_host_info, tmp_path_factory):
    return hosting.get_host(str(tmp_path_factory.mktemp("host")), wf_host_info)


@pytest.fixture(scope="session")
def wf_tiny(wf_host):
    names = install_inputs(wf_host.model_dirs["dynamicrafter"], wf_host.dirs["input"])
    wf_host.refresh_models()
    return names

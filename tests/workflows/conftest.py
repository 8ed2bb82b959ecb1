"""Fixtures of the workflow tests: the host (see tests/hosting.py), the tiny checkpoints under the names the
workflows' model pickers get in these tests, and the example input images in the host's input folder."""
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

import pytest

from comfyui_dynamicrafter import generate
from comfyui_dynamicrafter.cli import weights
from comfyui_dynamicrafter.scripts import build_workflows
from comfyui_dynamicrafter.tests import hosting
from comfyui_dynamicrafter.tests.workflows import wfcheck

# Tiny random-weight stand-ins for the real files the workflows name (what a user picks in ckpt_name).
TINY_FOR = {"dynamicrafter_512.ckpt": "512", "dynamicrafter_512_interp.ckpt": "512-interp",
            "tooncrafter_512_interp.ckpt": "tooncrafter"}


def run_generate(*args, timeout=600) -> subprocess.CompletedProcess:
    """generate.py as a user runs it (offline, no stdin); ``.seconds`` is its wall time."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, generate.__file__, *args], capture_output=True, text=True, env=env,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    p.seconds = time.monotonic() - t0
    return p


def tiny_files() -> dict:
    """real file name -> path of its tiny stand-in (written once into the repo's .cache, git-ignored)."""
    return {real: weights.tiny_checkpoint(generate.DEFAULT_CACHE, v) for real, v in TINY_FOR.items()}


def tiny_lora_adapter(path: str) -> str:
    """A LoRA adapter (model/adapters.py format, nonzero rank-2 pairs on every to_v projection) that fits the tiny 512
    checkpoint generate.py --tiny writes: what the trainer exports, without a training run."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from comfyui_dynamicrafter.model import adapters as ad
    from comfyui_dynamicrafter.model.checkpoint import META_VARIANT

    ckpt = weights.tiny_checkpoint(generate.DEFAULT_CACHE, "512")
    g = torch.Generator().manual_seed(7)
    tensors = {}
    with safe_open(ckpt, framework="pt") as f:
        for key in f.keys():
            if key.startswith(ad.UNET_PREFIX) and key.endswith("to_v.weight"):
                out_f, in_f = f.get_slice(key).get_shape()
                mod = key[:-len(".weight")]
                tensors[mod + ad.LORA_DOWN] = torch.randn(2, in_f, generator=g) * 0.5
                tensors[mod + ad.LORA_UP] = torch.randn(out_f, 2, generator=g) * 0.5
                tensors[mod + ad.LORA_ALPHA] = torch.tensor(2.0)
    assert tensors
    save_file(tensors, path, metadata={ad.META_FORMAT: ad.FORMAT, META_VARIANT: "512", ad.META_STAGE: "test",
                                       ad.META_GROUPS: '["lora"]', ad.META_STEP: "0"})
    return path


def install_inputs(model_dir: str, input_dir: str, adapter_dir: Optional[str] = None,
                   controlnet_dir: Optional[str] = None) -> dict:
    """Link the tiny files into a host's dynamicrafter folder (the tiny sketch encoder into ``controlnet_dir``), copy
    the example images, and write a tiny adapter under the name the adapter workflow picks into ``adapter_dir``; real
    name -> tiny name."""
    if adapter_dir and not os.path.isfile(os.path.join(adapter_dir, build_workflows.ADAPTER_FILE)):
        tiny_lora_adapter(os.path.join(adapter_dir, build_workflows.ADAPTER_FILE))
    names = {}
    for real, path in tiny_files().items():
        dst = os.path.join(model_dir, os.path.basename(path))
        if not os.path.lexists(dst):
            os.symlink(path, dst)
        names[real] = os.path.basename(path)
    sketch = weights.tiny_sketch_encoder(generate.DEFAULT_CACHE)          # the sketch workflow's encoder
    names[build_workflows.SKETCH_ENCODER] = os.path.basename(sketch)
    if controlnet_dir and not os.path.lexists(os.path.join(controlnet_dir, os.path.basename(sketch))):
        os.symlink(sketch, os.path.join(controlnet_dir, os.path.basename(sketch)))
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
    import folder_paths

    names = install_inputs(wf_host.model_dirs["dynamicrafter"], wf_host.dirs["input"],
                           wf_host.model_dirs["dynamicrafter_adapters"])
    folder_paths.add_model_folder_path("controlnet", os.path.dirname(weights.tiny_sketch_encoder(generate.DEFAULT_CACHE)))
    wf_host.refresh_models()
    return names

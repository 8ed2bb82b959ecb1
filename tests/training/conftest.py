"""Shared fixtures of the trainer tests: the synthetic datasets, tiny settings, a CLI runner, tiny checkpoints.

Tiny run: the tiny 512 variant (same flags and schedule as the real one), tiny OpenCLIP towers and tiny VAE (random
weights, same classes), 4 frames of 16x24 pixels, P with 4 frames of queries.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from comfyui_dynamicrafter.training import demo as synth

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


def tiny_settings(out_dir: str, csv: str = None, **over) -> dict:
    s = dict(stage="finetune", variant="512", tiny=True, data_csv=csv, height=16, width=24, frames=4,
             resampler_overrides={"video_length": 4}, unet_overrides={"temporal_length": 4}, batch_size=2,
             grad_accum=1, num_workers=0, max_steps=3, save_every=100, lr=1e-3, progress=False, output_dir=out_dir,
             frame_stride_max=2, ema_decay=0.99, threads=1)
    s.update(over)
    return s


def write_config(path: str, settings: dict) -> str:
    with open(path, "w") as f:
        json.dump(settings, f)
    return path


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(args, env=None, timeout=300, cmd=None) -> subprocess.CompletedProcess:
    cmd = cmd or [PY, os.path.join(REPO, "train.py")]
    return subprocess.run(cmd + list(args), cwd=REPO, env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout)


def fault_cmd(spec: str) -> list:
    """The command that runs train.py with the faults of ``spec`` (``kind:step[,...]``) injected by faults.py."""
    return [PY, os.path.join(REPO, "tests", "training", "faults.py"), spec]


def read_metrics(out_dir: str) -> dict:
    out = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[d["step"]] = d["loss"]
    return out


@pytest.fixture(scope="session")
def video_data(tmp_path_factory):
    """4 good clips (12 frames, 16x24, 8 fps) + nothing broken: (csv path, rows)."""
    root = str(tmp_path_factory.mktemp("videos"))
    return synth.make_video_dataset(root, n_clips=4, n_frames=12, height=16, width=24)


@pytest.fixture(scope="session")
def broken_video_data(tmp_path_factory):
    """3 good clips + 1 corrupt file + 1 clip too short for 4 frames."""
    root = str(tmp_path_factory.mktemp("videos_broken"))
    return synth.make_video_dataset(root, n_clips=3, n_frames=12, height=16, width=24, corrupt=1, too_short=1)


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    return synth.make_image_dataset(str(tmp_path_factory.mktemp("images")), n_images=4, height=16, width=24)


def save_unet_checkpoint(path: str, unet: torch.nn.Module, image_proj: torch.nn.Module = None,
                         drop=("to_k_ip", "to_v_ip")) -> str:
    """A tiny stand-in for SD2.1 / a text-to-video checkpoint / a DynamiCrafter checkpoint (official prefixes)."""
    from safetensors.torch import save_file

    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()
          if not any(d in k for d in drop)}
    if image_proj is not None:
        sd.update({f"image_proj_model.{k}": v.contiguous() for k, v in image_proj.state_dict().items()})
    save_file(sd, path)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process training on one intra-op thread, like the subprocesses (OMP_NUM_THREADS=1): on a shared 2-core
    runner, two spinning threads per process cost more than they give."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

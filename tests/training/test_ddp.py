"""(4) Two processes on CPU (torchrun, gloo) with batch 1 each give the result of one process with batch 2.

Every random draw belongs to a sample (data.py), so only the reduction order differs: DDP averages two per-process
gradient means, one process takes the mean over both samples. Dropout is off here (its masks come from each
process's own RNG), and Adam's eps is 1e-6: a few gradients are exactly zero in exact arithmetic (the per-channel
biases feeding a GroupNorm with one channel per group, e.g. the last transformer's proj_out.bias before the output
head) and hold only rounding noise (~1e-9); with eps 1e-8 Adam would turn that noise into +-lr steps whose signs
differ between the two reduction orders. Tolerance: per-step losses within 1e-5 relative, final trained weights within 1e-4 absolute (a tenth of one Adam step at lr 1e-3)
(measured: see the printed figures).
"""
import os
import shutil
import sys

import pytest

from comfyui_dynamicrafter.training import state as st

from .conftest import REPO, child_env, read_metrics, run_cli, tiny_settings, write_config

STEPS = 3
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4  # a tenth of one step (lr 1e-3); measured 2.1e-5

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def _run(out, csv, nproc, batch, **over):
    s = tiny_settings(out, csv, stage="joint", max_steps=STEPS, save_every=STEPS, batch_size=batch, grad_accum=2,
                      unet_dropout=0.0, adam_eps=1e-6, **over)
    cfg = write_config(os.path.join(out, "run.json"), s)
    if nproc == 1:
        r = run_cli(["--config", cfg])
    else:
        r = run_cli(["--standalone", f"--nproc_per_node={nproc}", os.path.join(REPO, "train.py"), "--config", cfg],
                    cmd=[TORCHRUN], env=child_env(), timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    assert os.path.isfile(os.path.join(out, "adapter.safetensors"))
    if nproc > 1:                                                   # the choice and its reason are in the log
        want = {"ddp": "DDP (every process holds", "fsdp": "FSDP (trained weights"}[over["strategy"]]
        assert f"{nproc} processes (cpu), 1 CPU threads each; {want}" in r.stderr, r.stderr[-3000:]
    return read_metrics(out), st.load_checkpoint(st.checkpoint_path(os.path.join(out, "checkpoints"), STEPS))


def _compare(single, double):
    (l1, s1), (l2, s2) = single, double
    assert sorted(l1) == sorted(l2) == list(range(1, STEPS + 1))
    rel = max(abs(l1[k] - l2[k]) / abs(l1[k]) for k in l1)
    diff = max(float((s1["trainable"][n] - s2["trainable"][n]).abs().max()) for n in s1["trainable"])
    ema = max(float((s1["ema"][n] - s2["ema"][n]).abs().max()) for n in s1["ema"])
    assert rel <= LOSS_RTOL, rel
    assert diff <= WEIGHT_ATOL and ema <= WEIGHT_ATOL, (diff, ema)
    return rel, diff, ema


@pytest.fixture(scope="module")
def single(tmp_path_factory, video_data):
    return _run(str(tmp_path_factory.mktemp("single")), video_data[0], 1, 2)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_double_batch(tmp_path, video_data, single, strategy):
    double = _run(str(tmp_path), video_data[0], 2, 1, strategy=strategy)
    rel, diff, ema = _compare(single, double)
    print(f"{strategy} 2x1 vs 1x2: loss max rel diff {rel:.2e}, weights max abs diff {diff:.2e}, EMA {ema:.2e}")

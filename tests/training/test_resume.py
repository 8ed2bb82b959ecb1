"""(3) ``kill -9`` mid-run + resume repeats the uninterrupted run exactly; a kill while a checkpoint is being written
never replaces the previous good checkpoint. (6b) A NaN loss stops the run, names the step and leaves the last good
checkpoint intact.

Tolerance: none. Losses (float32 values written to metrics.jsonl) and the final trained weights, EMA weights and
optimizer state must be bit-identical (CPU, same seed, same thread count). UNet dropout is on (0.1), so this also
checks that the saved RNG state is restored.
"""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from comfyui_dynamicrafter.training import state as st

from .conftest import PY, REPO, child_env, fault_cmd, read_metrics, run_cli, tiny_settings, write_config

STEPS = 8


def _settings(out, csv, **over):
    s = dict(max_steps=STEPS, save_every=2, keep_checkpoints=10, num_workers=1)
    s.update(over)
    return tiny_settings(out, csv, **s)


def _final(out):
    return st.load_checkpoint(st.checkpoint_path(os.path.join(out, "checkpoints"), STEPS))


def _assert_same_state(a, b):
    for key in ("trainable", "ema"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), (key, n, (a[key][n] - b[key][n]).abs().max())
    for pid, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, video_data):
    """The uninterrupted run."""
    out = str(tmp_path_factory.mktemp("resume_ref"))
    cfg = write_config(os.path.join(out, "run.json"), _settings(out, video_data[0]))
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    return out, read_metrics(out), _final(out)


def test_kill9_then_resume_is_bit_identical(tmp_path, video_data, reference_run):
    ref_out, ref_losses, ref_state = reference_run
    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), _settings(out, video_data[0]))
    proc = subprocess.Popen([PY, os.path.join(REPO, "train.py"), "--config", cfg], cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 240
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(metrics):
            with open(metrics) as f:
                done = [json.loads(x)["step"] for x in f if x.strip()]
            if done and max(done) >= 5:
                os.kill(proc.pid, signal.SIGKILL)                               # kill -9, mid-run
                killed_after = max(done)
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_after is not None and killed_after < STEPS, "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    r = run_cli(["--config", cfg])                                              # resume: auto
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    losses = read_metrics(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == ref_losses                                                 # exact float equality
    _assert_same_state(_final(out), ref_state)
    print(f"killed after step {killed_after}; resumed; losses and final weights bit-identical (max diff 0)")


def test_kill_while_writing_checkpoint_keeps_previous(tmp_path, video_data, reference_run):
    ref_out, ref_losses, ref_state = reference_run
    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), _settings(out, video_data[0]))
    r = run_cli(["--config", cfg], cmd=fault_cmd("kill_during_save:4"))
    assert r.returncode == -signal.SIGKILL, ("the injected kill did not fire inside the step-4 save (does "
                                             "state.save_checkpoint still write through state.atomic_file?)\n"
                                             + r.stderr[-3000:])             # died inside the step-4 save
    ck = os.path.join(out, "checkpoints")
    names = sorted(os.listdir(ck))
    assert "step_00000002.pt" in names and "step_00000004.pt" not in names
    assert any(".tmp-" in n for n in names)                                     # the half-written file
    with open(os.path.join(ck, "latest.json")) as f:
        assert json.load(f)["step"] == 2
    good = st.load_checkpoint(os.path.join(ck, "step_00000002.pt"))
    assert good["step"] == 2
    assert st.find_resume(ck)[0].endswith("step_00000002.pt")
    r = run_cli(["--config", cfg])                                              # resume from step 2
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_metrics(out) == ref_losses
    _assert_same_state(_final(out), ref_state)
    assert not any(".tmp-" in n for n in os.listdir(ck))                        # the stray temp file is gone


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, video_data):
    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), _settings(out, video_data[0], num_workers=0))
    r = run_cli(["--config", cfg], cmd=fault_cmd("nan_loss:5"))
    assert r.returncode == 3, r.stderr[-3000:]
    msg = [ln for ln in r.stderr.splitlines() if "training stopped" in ln]
    assert msg, r.stderr[-3000:]
    assert "at step 5" in msg[0] and "step_00000004.pt" in msg[0] and "(step 4)" in msg[0]
    ck = os.path.join(out, "checkpoints")
    assert sorted(n for n in os.listdir(ck) if n.endswith(".pt")) == ["step_00000002.pt", "step_00000004.pt"]
    s = st.load_checkpoint(os.path.join(ck, "step_00000004.pt"))
    assert s["step"] == 4 and all(torch.isfinite(t).all() for t in s["trainable"].values())
    assert max(read_metrics(out)) == 4
    print(msg[0])


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    d = str(tmp_path)
    for step in (1, 2):
        st.save_checkpoint(d, step, {"step": step, "w": torch.full((64,), float(step))}, keep=0)
    newest = st.checkpoint_path(d, 2)
    with open(newest, "r+b") as f:                                              # damaged after the fact
        f.truncate(os.path.getsize(newest) // 2)
    path, state = st.find_resume(d)
    assert path == st.checkpoint_path(d, 1) and state["step"] == 1

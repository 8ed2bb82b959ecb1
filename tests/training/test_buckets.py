"""Buckets: clips of two aspect ratios and two lengths train together, every batch of one shape (a mixed batch could
not even be stacked), every bucket visited, resolution per bucket at the run's pixel area; a kill -9 mid-run and a
resume repeat the uninterrupted run bit for bit (losses, weights, EMA, optimizer state)."""
import csv
import json
import os
import signal
import subprocess
import time

import pytest

from comfyui_dynamicrafter.training import demo as synth
from comfyui_dynamicrafter.training import state as st
from comfyui_dynamicrafter.training.buckets import BucketBatchSampler, Buckets, bucket_resolution

from .conftest import PY, REPO, child_env, read_metrics, run_cli, tiny_settings, write_config
from .test_resume import _assert_same_state

STEPS = 8


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Landscape 16x24 and portrait 24x16 clips, each of 12 and of 3 frames: (csv, rows)."""
    root = str(tmp_path_factory.mktemp("mixed"))
    rows = []
    for name, (h, w) in {"land": (16, 24), "port": (24, 16)}.items():
        for n_frames in (12, 3):
            sub = os.path.join(root, f"{name}{n_frames}")
            c, r = synth.make_video_dataset(sub, n_clips=2, n_frames=n_frames, height=h, width=w, seed=n_frames + h)
            rows += [dict(x, path=os.path.join(os.path.basename(sub), x["path"])) for x in r]
    path = os.path.join(root, "clips.csv")
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["path", "caption", "fps"])
        wr.writeheader()
        wr.writerows(rows)
    return path, rows


def _settings(out, csv_path, **over):
    s = dict(max_steps=STEPS, save_every=2, keep_checkpoints=10, num_workers=1, buckets=True,
             bucket_aspects=[0.6667, 1.5], bucket_frames=[2, 4], batch_size=2)
    s.update(over)
    return tiny_settings(out, csv_path, **s)


def test_bucket_assignment_and_order():
    clips = [dict(index=i, frames=f, height=h, width=w) for i, (f, h, w) in
             enumerate([(12, 16, 24), (12, 16, 24), (3, 16, 24), (12, 24, 16), (3, 24, 16), (3, 24, 16)])]
    b = Buckets(clips, [0.6667, 1.5], [2, 4], 16 * 24, 4)
    assert b.shapes == [(2, 16, 24), (2, 24, 16), (4, 16, 24), (4, 24, 16)]
    assert b.members == [[2], [4, 5], [0, 1], [3]]
    assert bucket_resolution(16 / 9, 320 * 512, 64) == (320, 512) and bucket_resolution(1.0, 320 * 512, 64) == (384, 384)
    one = BucketBatchSampler(b, 2, 0, 1, seed=1)
    two = [BucketBatchSampler(b, 1, r, 2, seed=1) for r in range(2)]
    for m in range(3 * one.per_epoch):
        keys = one.batch(m)
        assert len({k[2] for k in keys}) == 1                                   # one bucket per batch
        assert keys == two[0].batch(m) + two[1].batch(m)                        # the global batch splits over ranks
    seen = {k[2] for m in range(one.per_epoch) for k in one.batch(m)}
    assert seen == set(range(4))                                                # every bucket once per epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mixed_data):
    out = str(tmp_path_factory.mktemp("bucket_ref"))
    cfg = write_config(os.path.join(out, "run.json"), _settings(out, mixed_data[0]))
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("buckets (frames x height x width: clips): 2x16x24: 2, 2x24x16: 2, 4x16x24: 2, 4x24x16: 2; one epoch = 4 "
            "micro-batches = 4 optimizer steps") in r.stderr
    return out, read_metrics(out), st.load_checkpoint(st.checkpoint_path(os.path.join(out, "checkpoints"), STEPS))


def test_bucketed_training_one_shape_per_batch(reference):
    out, losses, _ = reference
    with open(os.path.join(out, "metrics.jsonl")) as f:
        shapes = [tuple(json.loads(x)["shape"]) for x in f if x.strip()]
    assert len(shapes) == STEPS and set(shapes) == {(2, 16, 24), (2, 24, 16), (4, 16, 24), (4, 24, 16)}
    print(f"batch shapes (frames, h, w) per step: {shapes}")


def test_bucketed_resume_after_kill_9_is_bit_identical(tmp_path, mixed_data, reference):
    ref_out, ref_losses, ref_state = reference
    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), _settings(out, mixed_data[0]))
    proc = subprocess.Popen([PY, os.path.join(REPO, "train.py"), "--config", cfg], cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = os.path.join(out, "metrics.jsonl")
    killed_after, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(metrics):
            with open(metrics) as f:
                done = [json.loads(x)["step"] for x in f if x.strip()]
            if done and max(done) >= 5:
                os.kill(proc.pid, signal.SIGKILL)
                killed_after = max(done)
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_after is not None and killed_after < STEPS, "the run ended before it could be killed"
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    assert read_metrics(out) == ref_losses
    _assert_same_state(st.load_checkpoint(st.checkpoint_path(os.path.join(out, "checkpoints"), STEPS)), ref_state)
    print(f"buckets: killed after step {killed_after}; resumed; losses and final state bit-identical")


def test_bucketed_two_processes_equal_one_with_double_batch(tmp_path, mixed_data):
    """A bucketed global batch splits over processes as without buckets (dropout off: see test_ddp)."""
    from .test_ddp import LOSS_RTOL, TORCHRUN, WEIGHT_ATOL

    runs = {}
    for nproc, batch in ((1, 2), (2, 1)):
        out = str(tmp_path / f"p{nproc}")
        os.makedirs(out)
        cfg = write_config(os.path.join(out, "run.json"),
                           _settings(out, mixed_data[0], max_steps=4, save_every=4, batch_size=batch, num_workers=0,
                                     unet_dropout=0.0, adam_eps=1e-6))
        if nproc == 1:
            r = run_cli(["--config", cfg])
        else:
            r = run_cli(["--standalone", "--nproc_per_node=2", os.path.join(REPO, "train.py"), "--config", cfg],
                        cmd=[TORCHRUN], timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[nproc] = (read_metrics(out), st.load_checkpoint(st.checkpoint_path(os.path.join(out, "checkpoints"), 4)))
    (l1, s1), (l2, s2) = runs[1], runs[2]
    rel = max(abs(l1[k] - l2[k]) / abs(l1[k]) for k in l1)
    diff = max(float((s1["trainable"][n] - s2["trainable"][n]).abs().max()) for n in s1["trainable"])
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    assert rel <= LOSS_RTOL and diff <= WEIGHT_ATOL, (rel, diff)
    print(f"buckets 2x1 vs 1x2: loss max rel diff {rel:.2e}, weights max abs diff {diff:.2e}")

"""Fail fast: every bad input ends the run with exit status 2 and one line before any model is built (each case is
timed), the dataset summary at start, one live run per output folder (a lock left by kill -9 is taken over), and
torchrun's workers ending with their launcher."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.plan import configure_threads, physical_cores

from .conftest import PY, REPO, child_env, run_cli, tiny_settings, write_config

FAST_S = 20.0   # python + torch import (alone 1.5-9 s on the shared 2-core runner, by load) + the checks; printed
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
MODEL_BUILT = "trainable"   # the log line written right after the model is built


def _bad_csv_utf8(d):
    p = os.path.join(d, "latin1.csv")
    with open(p, "wb") as f:
        f.write("path,caption\nclip.mp4,caf\xe9 au lait\n".encode("latin-1"))
    return p


def _csv_missing_files(d):
    p = os.path.join(d, "missing.csv")
    with open(p, "w") as f:
        f.write("path,caption\nnope/a.mp4,one\nnope/b.mp4,two\n")
    return p


def _pickle_with_code(d):
    p = os.path.join(d, "evil.pt")
    torch.save({"format": "x", "obj": TrainConfig()}, p)         # a pickled class: refused by weights_only
    return p


CASES = {
    # name: (settings overrides or a callable(dir) -> overrides, words the one line must contain)
    "data_csv missing": (lambda d: {"data_csv": os.path.join(d, "no.csv")}, "data_csv: expected a CSV file"),
    "CSV not UTF-8": (lambda d: {"data_csv": _bad_csv_utf8(d)}, "expected UTF-8 text"),
    "no usable clip": (lambda d: {"data_csv": _csv_missing_files(d)}, "none of 2 usable"),
    "negative lr": ({"lr": -1e-4}, "lr: expected a learning rate > 0"),
    "NaN lr": ({"lr": float("nan")}, "lr: expected a finite number"),
    "string lr": ({"lr": "fast"}, "lr: expected a number"),
    "resume unreadable": (lambda d: {"resume": _pickle_with_code(d)}, "resume: expected a training checkpoint"),
    "resume missing": (lambda d: {"resume": os.path.join(d, "nope.pt")}, "resume: expected"),
    "output_dir is a file": (lambda d: {"output_dir": _pickle_with_code(d)}, "output_dir: expected a folder"),
    "init_checkpoint missing": (lambda d: {"init_checkpoint": os.path.join(d, "x.safetensors")},
                                "init_checkpoint: expected a checkpoint file"),
    "tensorboard missing": ({"tensorboard": True}, "pip install tensorboard"),
    "wandb missing": ({"wandb": True}, "pip install wandb"),
    "prodigy missing": ({"optimizer": "prodigy"}, "pip install prodigyopt"),
    "adamw8bit on CPU": ({"optimizer": "adamw8bit", "device": "cpu"}, "optimizer: expected"),
    "real size without weights": ({"tiny": False, "height": None, "width": None},
                                  "init_checkpoint: expected the checkpoint the finetune stage starts from"),
    "resolution": ({"height": 18}, "height: expected a multiple of"),
}


def _one_line_exit_2(r, words):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and words in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and MODEL_BUILT not in r.stderr and "encoders:" not in r.stderr
    assert "weights_only=False" not in r.stderr and "weights_only set to False" not in r.stderr
    return errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_before_the_model(tmp_path, video_data, case):
    over, words = CASES[case]
    d = str(tmp_path)
    over = over(d) if callable(over) else over
    if case in ("tensorboard missing", "wandb missing", "prodigy missing"):
        mod = {"tensorboard missing": "tensorboard", "wandb missing": "wandb", "prodigy missing": "prodigyopt"}[case]
        import importlib.util

        if importlib.util.find_spec(mod) is not None:
            pytest.skip(f"{mod} is installed here; the missing-package case needs an environment without it")
    s = tiny_settings(os.path.join(d, "out"), video_data[0], **over)
    s = {k: v for k, v in s.items() if v is not None}
    cfg = os.path.join(d, "run.yaml")
    import yaml

    with open(cfg, "w") as f:
        yaml.safe_dump(s, f)
    t0 = time.perf_counter()
    r = run_cli(["--config", cfg])
    wall = time.perf_counter() - t0
    line = _one_line_exit_2(r, words)
    assert wall < FAST_S, wall
    print(f"{case}: exit 2 in {wall:.1f} s: {line.split(' ERROR ', 1)[1]}")


@pytest.mark.parametrize("text,words", [("lr: [1, 2\nstage: finetune\n", "expected valid YAML"),
                                        ("- just\n- a list\n", "expected a mapping")])
def test_malformed_config_file(tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    t0 = time.perf_counter()
    r = run_cli(["--config", str(p)])
    line = _one_line_exit_2(r, words)
    assert time.perf_counter() - t0 < FAST_S
    print(line)


def test_missing_config_file(tmp_path):
    r = run_cli(["--config", str(tmp_path / "nope.yaml")])
    _one_line_exit_2(r, "no such file")


def test_dataset_summary_at_start(tmp_path, broken_video_data):
    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), tiny_settings(out, broken_video_data[0], max_steps=1,
                                                                    batch_size=2))
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stderr.splitlines() if "dataset " in ln and "usable" in ln]
    assert line and "5 entries, 3 usable, 2 to be skipped (1 cannot open, 1 too short)" in line[0], r.stderr[-3000:]
    assert "one epoch = 2 optimizer steps (2 samples per step)" in line[0]
    assert r.stderr.index(line[0]) < r.stderr.index("step 1/") if "step 1/" in r.stderr else True
    print(line[0])


# ================================================================================================================
# one live run per output folder
# ================================================================================================================
def _wait_for_step(path, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return True
        time.sleep(0.1)
    return False


def test_lock_refuses_a_second_run_and_is_taken_over_after_kill_9(tmp_path, video_data):
    out = str(tmp_path / "out")
    cfg = write_config(str(tmp_path / "run.json"), tiny_settings(out, video_data[0], max_steps=100000))
    first = subprocess.Popen([PY, os.path.join(REPO, "train.py"), "--config", cfg], cwd=REPO, env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for_step(os.path.join(out, "metrics.jsonl"), first), "the first run did not start"
        with open(os.path.join(out, "train.lock")) as f:
            assert json.load(f)["pid"] == first.pid
        t0 = time.perf_counter()
        second = run_cli(["--config", cfg])
        wall = time.perf_counter() - t0
        line = _one_line_exit_2(second, f"a run of pid {first.pid}")
        assert wall < FAST_S and first.poll() is None                          # the first one runs on
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    third = run_cli(["--config", cfg, "--max-steps", "1"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of an earlier run (pid {first.pid}" in third.stderr
    with open(os.path.join(out, "train.lock")) as f:
        assert f.read() == ""                                                  # released at the end
    print(f"second run refused in {wall:.1f} s: {line.split(' ERROR ', 1)[1]}")


def test_killing_the_launcher_ends_the_workers(tmp_path, video_data):
    out = str(tmp_path / "out")
    cfg = write_config(str(tmp_path / "run.json"), tiny_settings(out, video_data[0], max_steps=100000,
                                                                 batch_size=1))
    launcher = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node=2", os.path.join(REPO, "train.py"),
                                 "--config", cfg], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _wait_for_step(os.path.join(out, "metrics.jsonl"), launcher), "the workers did not start"
        workers = [c for c in psutil.Process(launcher.pid).children() if "train.py" in " ".join(c.cmdline())]
        assert len(workers) == 2
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.pid for p in alive]
        print(f"launcher killed; both workers ended ({[p.returncode for p in gone]})")
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ================================================================================================================
# threads
# ================================================================================================================
def test_threads_one_process(monkeypatch):
    n0 = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert configure_threads(TrainConfig(), torch.device("cpu")) == physical_cores()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert configure_threads(TrainConfig(), torch.device("cpu")) == max(1, physical_cores() // 2)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_threads(TrainConfig(), torch.device("cpu")) == 1
        assert configure_threads(TrainConfig(threads=3), torch.device("cpu")) == 3
    finally:
        torch.set_num_threads(n0)


# ================================================================================================================
# presets
# ================================================================================================================
PRESETS = os.path.join(REPO, "training", "presets")


@pytest.mark.parametrize("name", ["finetune_512_24gb.yaml", "finetune_512_12gb.yaml"])
def test_real_size_presets_fail_fast_without_their_paths(tmp_path, name):
    """The presets are valid configs; run as shipped (no checkpoint, no data) they stop in one line before the 1.4 B
    UNet is built."""
    path = os.path.join(PRESETS, name)
    r = run_cli(["dump-config", "--config", path])
    assert r.returncode == 0, r.stderr[-2000:]
    t0 = time.perf_counter()
    r = run_cli(["--config", path, "--output-dir", str(tmp_path / "out")])
    wall = time.perf_counter() - t0
    _one_line_exit_2(r, "init_checkpoint: expected the checkpoint the finetune stage starts from")
    assert wall < FAST_S
    print(f"{name}: exit 2 in {wall:.1f} s")


def test_precompute_fails_fast_too(tmp_path, video_data):
    s = tiny_settings(str(tmp_path / "out"), os.path.join(str(tmp_path), "nope.csv"), cache_dir=str(tmp_path / "c"))
    cfg = write_config(str(tmp_path / "run.json"), s)
    r = run_cli(["precompute", "--config", cfg])
    _one_line_exit_2(r, "data_csv: expected a CSV file")


def test_damaged_checkpoint_warning_does_not_advise_unsafe_loading(tmp_path, video_data):
    """resume: auto skips a checkpoint that holds pickled objects, says so in one line, and starts from scratch."""
    from comfyui_dynamicrafter.training import state as st

    out = str(tmp_path / "out")
    os.makedirs(os.path.join(out, "checkpoints"))
    torch.save({"format": st.STATE_FORMAT, "obj": TrainConfig()}, st.checkpoint_path(os.path.join(out, "checkpoints"), 1))
    cfg = write_config(str(tmp_path / "run.json"), tiny_settings(out, video_data[0], max_steps=1))
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-2000:]
    warn = [ln for ln in r.stderr.splitlines() if "cannot be loaded" in ln]
    assert warn and "holds more than plain tensors" in warn[0] and "weights_only" not in r.stderr

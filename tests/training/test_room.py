"""Issue 21, findings 1 and 5, on real small file systems (tmpfs, mounted as root): the trainer's output_dir without
room is refused in one line before any model is built; a disk that fills during the run ends in exit 2 and one line
naming the folder and the last good checkpoint; export and demo-data go through the same output preflight, and a
damaged or code-running checkpoint is one line, never torch's advice to load it with weights_only=False."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest
import torch

from .conftest import PY, REPO, child_env, run_cli, tiny_settings, write_config


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size: str):
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           timeout=20)
        if r.returncode != 0:
            pytest.skip("needs root to mount a small tmpfs (a real full file system)")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=20)


def _one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and " ERROR " in lines[0] and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


def test_output_dir_on_a_64k_tmpfs_refused_in_seconds_before_any_model(tmp_path, tmpfs, video_data):
    """Finding 1: the model was built and trained, then torch's 'unexpected pos 64 vs 0' traceback, exit 1."""
    disk = tmpfs("64k")
    cfg = write_config(str(tmp_path / "run.json"), tiny_settings(str(disk / "run"), video_data[0]))
    t0 = time.monotonic()
    r = run_cli(["--config", cfg])
    seconds = time.monotonic() - t0
    line = _one_error_line(r)
    assert "output_dir" in line and str(disk) in line and "2 checkpoints" in line and "KiB free" in line, line
    assert seconds < 20, seconds
    assert not os.path.exists(disk / "run" / "checkpoints")


def test_room_for_two_checkpoints_samples_and_adapter_said_in_numbers(tmp_path, tmpfs, video_data):
    """Above the floor but below what the run writes: the exact need, counted on the meta device, before the model."""
    disk = tmpfs("256k")
    settings = tiny_settings(str(disk / "run"), video_data[0], groups=["P", "temporal"], sample_every=2,
                             sample_count=1, max_steps=4)
    r = run_cli(["--config", write_config(str(tmp_path / "run.json"), settings)])
    line = _one_error_line(r)
    for words in ("2 checkpoints", "2 sample videos", "the adapter", "free in", str(disk / "run")):
        assert words in line, (words, line)
    assert not os.path.exists(disk / "run" / "checkpoints")  # made by the trainer's build, which never started


def _fill(path) -> None:
    """Write zeros into ``path`` until the file system says it is full (the run writes beside it meanwhile)."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


def test_disk_full_during_the_run_is_one_line_naming_the_last_good_checkpoint(tmp_path, tmpfs, video_data):
    disk = tmpfs("64m")
    out = disk / "run"
    settings = tiny_settings(str(out), video_data[0], max_steps=30, save_every=3, keep_checkpoints=0)
    cfg = write_config(str(tmp_path / "run.json"), settings)
    first = out / "checkpoints" / "step_00000003.pt"
    proc = subprocess.Popen([PY, os.path.join(REPO, "train.py"), "--config", cfg], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.exists(), proc.communicate()[1][-3000:]
        _fill(disk / "filler")                                                # the disk is full from here on
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert str(out) in errors[0] and str(first) in errors[0] and "resumes" in errors[0], errors[0]
    assert first.exists()


def test_export_of_a_damaged_or_code_running_file_is_one_line(tmp_path):
    class Runs:
        def __reduce__(self):
            return (os.system, ("echo ran",))

    torch.save({"x": Runs()}, tmp_path / "pickle.pt")
    (tmp_path / "damaged.pt").write_bytes(b"PK\x03\x04 not really a zip")
    for name, words in (("pickle.pt", "can run code"), ("damaged.pt", "damaged")):
        r = run_cli(["export", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / "a.safetensors")])
        line = _one_error_line(r)
        assert words in line and name in line and "weights_only" not in r.stderr, line
        assert "ran" not in r.stdout
    assert not (tmp_path / "a.safetensors").exists()


def test_export_and_demo_data_refuse_an_output_that_cannot_be_written(tmp_path, tmpfs):
    (tmp_path / "a_file").write_text("x")
    r = run_cli(["demo-data", "--out", str(tmp_path / "a_file")])
    assert "--out" in _one_error_line(r) and "a folder" in r.stderr
    disk = tmpfs("64k")
    r = run_cli(["demo-data", "--out", str(disk / "data"), "--clips", "8"])
    line = _one_error_line(r)
    assert "--out" in line and "KiB free" in line, line
    assert not os.listdir(disk / "data")
    big = tmp_path / "ckpt.pt"
    big.write_bytes(b"\0" * (8 << 20))
    r = run_cli(["export", "--checkpoint", str(big), "--out", str(disk / "adapter.safetensors")])
    line = _one_error_line(r)
    assert "--out" in line and "free" in line, line


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

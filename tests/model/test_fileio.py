"""Atomic outputs and the bounded folder walk (model/fileio.py), on a real small tmpfs (1 MiB) when the tests run
as root and may mount one, else on the temporary folder with a real write failure (RLIMIT_FSIZE: the kernel
refuses the write with EFBIG); symlink loops in a real temporary tree."""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess

import pytest

from comfyui_dynamicrafter.model import fileio


def _mount_tmpfs(path, size: str, ro: bool = False) -> bool:
    os.makedirs(path, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, timeout=20)


@pytest.fixture
def small_disk(tmp_path):
    """(folder, how): a 1 MiB tmpfs when mountable, else a temporary folder plus a 1 MiB file-size limit."""
    folder = tmp_path / "disk"
    if _mount_tmpfs(folder, "1m"):
        yield folder, contextlib.nullcontext
        _umount(folder)
        return
    folder.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def limited():
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, handler)

    yield folder, limited


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    dst = tmp_path / "video.mp4"
    dst.write_bytes(b"old")
    os.chmod(dst, 0o640)
    with fileio.atomic_file(str(dst)) as f:
        f.write(b"new content")
    assert dst.read_bytes() == b"new content"
    assert oct(os.stat(dst).st_mode & 0o777) == oct(0o640)
    assert os.listdir(tmp_path) == ["video.mp4"]
    tmp = fileio.temp_path_beside(str(dst), ".mp4")
    assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".mp4")


def test_full_disk_leaves_existing_file_and_no_partial_file(small_disk):
    folder, limited = small_disk
    dst = folder / "out.mp4"
    dst.write_bytes(b"the user's video" * 1000)
    before = dst.read_bytes()
    with limited(), pytest.raises(OSError) as e:
        with fileio.atomic_file(str(dst)) as f:
            for _ in range(3):
                f.write(os.urandom(1 << 20))
    assert e.value.errno in (errno.ENOSPC, errno.EFBIG)
    assert dst.read_bytes() == before
    assert os.listdir(folder) == ["out.mp4"]


def test_free_space_checked_up_front(small_disk):
    folder, limited = small_disk
    dst = folder / "out.safetensors"
    dst.write_bytes(b"keep me")
    need = fileio.free_bytes(str(folder)) + 1
    called = []
    with pytest.raises(fileio.OutputWriteError) as e:
        with fileio.atomic_path(str(dst), expected_bytes=need):
            called.append(1)
    assert not called and dst.read_bytes() == b"keep me" and os.listdir(folder) == ["out.safetensors"]
    assert str(e.value).startswith("out.safetensors: expected about ") and "\n" not in str(e.value)


def test_place_file_across_file_systems_never_copies_into_the_existing_file(tmp_path):
    """Finding 1: a finished video moved onto an existing --out on another, nearly full file system."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("needs root to mount a tmpfs (another file system than the temporary folder)")
    try:
        dst = disk / "beach.mp4"
        dst.write_bytes(b"precious" * 1000)
        before = dst.read_bytes()
        src = tmp_path / "produced.mp4"
        src.write_bytes(os.urandom(2 << 20))  # more than the 1 MiB disk holds
        with pytest.raises(fileio.OutputWriteError) as e:
            fileio.place_file(str(src), str(dst), "--out")
        msg = str(e.value)
        assert msg.startswith("--out: expected about") and "free some space" in msg and "\n" not in msg
        assert dst.read_bytes() == before and os.listdir(disk) == ["beach.mp4"] and src.exists()
        # one that fits lands whole, keeps the old file's mode, and the source is gone
        os.chmod(dst, 0o600)
        src.write_bytes(b"x" * 300_000)
        fileio.place_file(str(src), str(dst), "--out")
        assert dst.read_bytes() == b"x" * 300_000 and not src.exists()
        assert os.stat(dst).st_mode & 0o777 == 0o600 and os.listdir(disk) == ["beach.mp4"]
        # a read-only file system: one line, file unchanged
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=20)
        src.write_bytes(b"y" * 1000)
        with pytest.raises(fileio.OutputWriteError) as e:
            fileio.place_file(str(src), str(dst), "--out")
        assert "read-only" in str(e.value) and "(the existing file is unchanged)" in str(e.value)
        assert dst.read_bytes() == b"x" * 300_000
    finally:
        _umount(disk)


def test_place_file_same_file_system_is_a_rename(tmp_path):
    src, dst = tmp_path / "a.mp4", tmp_path / "b.mp4"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    ino = os.stat(src).st_ino
    fileio.place_file(str(src), str(dst))
    assert dst.read_bytes() == b"new" and os.stat(dst).st_ino == ino and not src.exists()


def _loop_tree(root):
    (root / "sd" / "deep").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"1")
    (root / "sd" / "other.ckpt").write_bytes(b"2")
    (root / "sd" / "deep" / "notes.txt").write_bytes(b"3")
    os.symlink(".", root / "loop_a")
    os.symlink(".", root / "loop_b")
    os.symlink("..", root / "sd" / "up")
    store = root.parent / "store"
    store.mkdir()
    (store / "linked.safetensors").write_bytes(b"4")
    os.symlink(store, root / "store_link")
    os.symlink(store, root / "store_again")
    os.symlink(root / "missing", root / "dangling")


def test_symlink_loops_walked_once(tmp_path):
    """Finding 2: two links to '.' make os.walk(followlinks=True) endless; the bounded walk lists each file once."""
    root = tmp_path / "models"
    root.mkdir()
    _loop_tree(root)
    dirs = 0
    for _ in os.walk(root, followlinks=True):  # the hosts' listing, stopped by hand
        dirs += 1
        if dirs > 5000:
            break
    assert dirs > 5000
    out = fileio.walk_files(str(root), (".safetensors", ".ckpt"))
    assert out.files == ["model.safetensors", "sd/other.ckpt", "store_again/linked.safetensors"]
    assert sorted(out.loops) == ["loop_a", "loop_b", "sd/up"]
    assert out.duplicates == ["store_link"] and out.truncated is None
    assert sorted(fileio.symlink_loops(str(root))) == ["loop_a", "loop_b", "sd/up"]
    assert fileio.walk_files(str(tmp_path / "nope")).files == []


def test_walk_limits(tmp_path):
    deep = tmp_path / "r"
    p = deep
    for i in range(6):
        p = p / f"d{i}"
    p.mkdir(parents=True)
    (p / "m.ckpt").write_bytes(b"")
    assert fileio.walk_files(str(deep)).files == ["d0/d1/d2/d3/d4/d5/m.ckpt"]
    out = fileio.walk_files(str(deep), max_depth=3)
    assert out.files == [] and out.truncated == "folders deeper than 3 levels"
    many = tmp_path / "many"
    many.mkdir()
    for i in range(30):
        (many / f"{i:02d}.ckpt").write_bytes(b"")
    out = fileio.walk_files(str(many), max_entries=10)
    assert len(out.files) == 10 and out.truncated == "more than 10 entries"

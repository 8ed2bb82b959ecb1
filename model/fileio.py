"""Atomic file writes: the one place that writes a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the folder, so a reader (or a process killed mid-write) never sees a half-written file under the
final name. Used by the converter, the trainer's checkpoints, the video writer and the CLIs."""
from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (a no-op where the platform cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, for writers that pick the format from the name);
    on success it is fsync'ed and renamed over ``path``, on any error removed."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator[IO]:
    """``open(path, mode)`` that lands atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


def file_sha256(path: str, chunk: int = 1 << 24, on_chunk=None) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces (FIPS 180-4 via hashlib); ``on_chunk(n_bytes)`` after
    each piece (a progress bar)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            if on_chunk is not None:
                on_chunk(len(b))
    return h.hexdigest()

"""Safe file output and bounded folder listing.

Writes: every output lands atomically. The bytes go to a temporary file in the destination's own folder (so the
final step is a rename on one file system, never a copy into an existing file), are fsync'ed, then renamed over the
target, and the folder is fsync'ed. A failure at any point (no space, read-only file system, permission) removes
the temporary file and leaves the user's existing file as it was. Where the size is known or can be estimated, the
free space is checked before the work starts. Used by the converter, the trainer's checkpoints, the video writer and
the CLIs.

Listing: ``walk_files`` lists a model folder with symlinks followed (users link their model stores in) but every
directory visited once by (device, inode), with depth and entry limits, so two links to ``.`` cannot make it walk
forever (the hosts' ``os.walk(followlinks=True)`` does).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import shutil
import stat
from typing import IO, Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import DynamiCrafterInputError

_counter = itertools.count()
SPACE_MARGIN = 64 << 10  # bytes kept free beyond an estimate (metadata, file-system blocks)


class OutputWriteError(DynamiCrafterInputError):
    """An output could not be written (full disk, read-only, permission); the existing file is unchanged."""


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


def temp_path_beside(path: str, suffix: str = "") -> str:
    """A fresh temporary name in ``path``'s own folder (same file system, so the final rename is atomic)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{next(_counter)}{suffix}")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def free_bytes(folder: str) -> int:
    """Bytes an unprivileged writer may still use in ``folder``'s file system."""
    return shutil.disk_usage(folder).free


def check_free_space(folder: str, need: int, what: str, todo: str = "free some space or choose another folder"
                     ) -> None:
    """Refuse up front when ``folder`` has less than ``need`` bytes (+ a small margin) free."""
    have = free_bytes(folder)
    if need + SPACE_MARGIN > have:
        raise OutputWriteError(what, f"about {human_size(need + SPACE_MARGIN)} free in {folder}",
                               f"{human_size(have)} free", todo)


def human_size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", expected_bytes: Optional[int] = None) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, for writers that pick the format from the name);
    on success it is fsync'ed and renamed over ``path``, on any error removed (``path`` untouched). With
    ``expected_bytes`` the free space is checked first (OutputWriteError)."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if expected_bytes is not None:
        check_free_space(folder, expected_bytes, os.path.basename(path))
    tmp = temp_path_beside(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(folder)


def _keep_mode(existing: str, new: str) -> None:
    """The replacement keeps the permission bits of the file it replaces."""
    try:
        mode = stat.S_IMODE(os.stat(existing).st_mode)
    except FileNotFoundError:
        return
    os.chmod(new, mode)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb", expected_bytes: Optional[int] = None) -> Iterator[IO]:
    """``open(path, mode)`` that lands atomically (see ``atomic_path``)."""
    with atomic_path(path, expected_bytes=expected_bytes) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


def place_file(src: str, dst: str, what: str = "output") -> str:
    """Move a finished file ``src`` onto ``dst`` atomically, across file systems too.

    Same file system: one rename. Another file system: the free space for the whole file is checked, the bytes are
    copied to a temporary file in ``dst``'s folder, fsync'ed and renamed over ``dst``; ``src`` is removed only
    then. Any failure raises OutputWriteError (one line) with ``dst`` as it was and no partial file left.
    """
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    folder = os.path.dirname(dst)
    try:
        same_fs = os.stat(src).st_dev == os.stat(folder).st_dev
        if same_fs:
            _keep_mode(dst, src)
            os.replace(src, dst)
            fsync_dir(folder)
            return dst
        size = os.path.getsize(src)
        with write_errors(dst, what):
            check_free_space(folder, size, what)
            with atomic_path(dst) as tmp, open(src, "rb") as fin:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                with os.fdopen(fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        _remove_quietly(src)
        return dst
    except OSError as e:
        raise write_error(dst, what, e) from None


_WRITE_TODO = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some of your quota or choose another folder",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.EACCES: "you may not write there: choose another folder or fix its permissions",
    errno.EPERM: "you may not write there: choose another folder or fix its permissions",
}


def write_error(path: str, what: str, err: OSError) -> OutputWriteError:
    """The one-line error for a failed write of ``path`` (its previous content is unchanged: writes are atomic)."""
    kept = " (the existing file is unchanged)" if os.path.exists(path) else ""
    todo = _WRITE_TODO.get(err.errno, "check the folder and try again") + kept
    return OutputWriteError(what, f"to write {path}", err.strerror or str(err), todo)


@contextlib.contextmanager
def write_errors(path: str, what: str) -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into ``write_error``'s one line, naming the output ``what``."""
    try:
        yield
    except OutputWriteError as e:  # a free-space refusal from inside: named as the caller names the output
        raise OutputWriteError(what, e.expected, e.found, e.todo) from None
    except OSError as e:
        raise write_error(path, what, e) from None


# ----------------------------------------------------------------------------------------------------------------
# bounded folder listing
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Listing:
    """Files found under a root (relative paths joined with os.sep, like the hosts' lists; sorted) and what the walk
    skipped."""

    files: List[str]
    loops: List[str]          # links back to a folder above them: what makes os.walk(followlinks=True) endless
    duplicates: List[str]     # other folders reached a second time through a link (listed once)
    truncated: Optional[str]  # why the walk stopped early, or None


MAX_DEPTH = 16
MAX_ENTRIES = 50_000


def walk_files(root: str, extensions: Optional[Iterable[str]] = None, max_depth: int = MAX_DEPTH,
               max_entries: int = MAX_ENTRIES, excluded: Sequence[str] = (".git",)) -> Listing:
    """Files under ``root`` (symlinks followed, each real directory once, depth and entry limits), optionally only
    those whose lower-case extension is in ``extensions``; a missing root lists nothing."""
    exts = None if extensions is None else tuple(e.lower() for e in extensions)
    out = Listing([], [], [], None)
    try:
        st = os.stat(root)
    except OSError:
        return out
    if not stat.S_ISDIR(st.st_mode):
        return out
    top = (st.st_dev, st.st_ino)
    seen = {top}
    entries = 0
    stack: List[Tuple[str, str, Tuple[Tuple[int, int], ...]]] = [(root, "", (top,))]
    while stack:
        folder, rel, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished: list the rest
        subdirs = []
        for entry in children:
            entries += 1
            if entries > max_entries:
                out.truncated = f"more than {max_entries} entries"
                stack.clear()
                break
            relpath = rel + entry.name
            try:
                est = entry.stat()  # follows symlinks
            except OSError:
                continue  # a dangling link
            if stat.S_ISDIR(est.st_mode):
                key = (est.st_dev, est.st_ino)
                if entry.name in excluded:
                    continue
                if key in above:
                    out.loops.append(relpath)
                elif key in seen:
                    out.duplicates.append(relpath)
                elif len(above) > max_depth:
                    out.truncated = out.truncated or f"folders deeper than {max_depth} levels"
                else:
                    seen.add(key)
                    subdirs.append((entry.path, relpath + os.sep, above + (key,)))
            elif exts is None or os.path.splitext(entry.name)[1].lower() in exts:
                out.files.append(relpath)
        stack.extend(reversed(subdirs))
    out.files.sort()
    return out


def symlink_loops(root: str, max_depth: int = MAX_DEPTH) -> List[str]:
    """Folders under ``root`` linking back to a folder above them (what makes ``os.walk(followlinks=True)``, the
    hosts' model listing, endless); empty when there are none."""
    return walk_files(root, extensions=(), max_depth=max_depth).loops


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

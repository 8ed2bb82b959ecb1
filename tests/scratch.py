"""Temporary folders that outlive a test but not the process: removed at interpreter exit.

For what a process builds once and shares between tests (the tiny checkpoints, the in-process host's folders), where
pytest's per-test ``tmp_path`` would be too short-lived. Nothing the tests write is left in the system's temp folder.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile


def scratch_dir(prefix: str) -> str:
    """A new folder under the system's temp folder; it and everything in it go when this process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path

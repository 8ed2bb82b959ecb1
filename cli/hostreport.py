"""What the host says, made readable: its log records collected while it imports nodes or runs (``capture_logs``),
its refusal of a graph (``format_validation_error``), its built-in node files that failed to import
(``import_failures_line``) and a one-line step counter for its progress events (``progress_printer``).

Standard library only.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable, Dict, List, Optional


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@contextlib.contextmanager
def capture_logs(level: Optional[int] = None):
    """Collect the root logger's records meanwhile (``level``: let records down to it through for the time)."""
    cap = _LogCapture()
    root = logging.getLogger()
    old = root.level
    if level is not None and (old == logging.NOTSET or old > level):
        root.setLevel(level)
    root.addHandler(cap)
    try:
        yield cap
    finally:
        root.removeHandler(cap)
        root.setLevel(old)


def format_validation_error(valid: tuple) -> List[str]:
    """The host's refusal of a graph as readable lines (its message, then one line per node error)."""
    error, node_errors = valid[1] or {}, valid[3] or {}
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, ne in sorted(node_errors.items()):
        for e in ne.get("errors", []):
            lines.append(f"node {node_id} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return lines


IMPORT_FAILURES_PREFIX = "ComfyUI's own nodes that failed to import: "


def import_failures_line(failures: Dict[str, str]) -> str:
    """One line naming the host's built-in node files that did not import and why (first line of each reason)."""
    parts = [f"{f} ({(why.strip().splitlines() or ['?'])[0]})" for f, why in sorted(failures.items())]
    return IMPORT_FAILURES_PREFIX + ("; ".join(parts) if parts else "none")


def progress_printer(stream=None, every: float = 0.5) -> Callable[[dict], None]:
    """A callback for "progress" events that writes ``step i/n`` on one line of ``stream`` (stderr)."""
    state = {"t": 0.0}

    def show(data: dict):
        out = stream or sys.stderr
        value, total = data.get("value", 0), data.get("max", 0)
        now = time.monotonic()
        if value >= total or now - state["t"] > every:
            state["t"] = now
            out.write(f"\r  step {value}/{total}" + ("\n" if value >= total else ""))
            out.flush()

    return show

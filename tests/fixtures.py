"""Parity fixture sets: discovery, loading, and a visible report of which sets a test run checked.

A fixture set is a folder of ``<name>.safetensors`` + ``<name>.json`` files (layout: shared/fixtures/README.md).
Sets live under ``$PARITY_FIXTURES`` or, by default, ``<repo>/../shared/fixtures/parity`` (CI clones the repo beside
a copy of shared/). The fixtures are part of the project's contract: when no set is found, ``fixture_sets()``
returns one placeholder path named ``MISSING-parity-fixtures`` so every parametrized parity test FAILS (loading it
raises) instead of being skipped as an empty parametrization.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
MISSING = "MISSING-parity-fixtures"
_PLUGIN_NAME = "dynamicrafter-parity-report"


def fixtures_root() -> Path:
    """Folder holding the fixture sets: ``$PARITY_FIXTURES`` or ``<repo>/../shared/fixtures/parity``."""
    env = os.environ.get("PARITY_FIXTURES")
    return Path(env) if env else (REPO / ".." / "shared" / "fixtures" / "parity").resolve()


def fixture_sets(root: "Path | None" = None) -> List[Path]:
    """Every subfolder of ``root`` (default: the parity fixtures root) that contains fixture files, sorted by name
    (placeholder if none)."""
    root = fixtures_root() if root is None else Path(root)
    sets = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.safetensors"))) if root.is_dir() else []
    return sets or [root / MISSING]


def set_ids(sets: List[Path]) -> List[str]:
    """Test ids for ``pytest.mark.parametrize``: the set folder names."""
    return [p.name for p in sets]


def load_set(path: Path, name: str) -> Tuple[Dict[str, "object"], dict]:
    """Load ``<path>/<name>.safetensors`` (tensors dict) and its ``<name>.json`` sidecar."""
    from safetensors.torch import load_file

    path = Path(path)
    name = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    tensors, sidecar = path / f"{name}.safetensors", path / f"{name}.json"
    if path.name == MISSING or not tensors.is_file() or not sidecar.is_file():
        raise FileNotFoundError(
            f"parity fixture {name!r} not found in {path} (fixtures root {fixtures_root()}); the fixtures are part of "
            "the project's contract: put the sets beside the repo (../shared/fixtures/parity) or set PARITY_FIXTURES"
        )
    with open(sidecar, encoding="utf-8") as f:
        meta = json.load(f)
    return load_file(str(tensors)), meta


class _Report:
    """pytest plugin object: prints which fixture sets (and files) were checked, in the terminal summary."""

    def __init__(self):
        self.checked: Dict[str, set] = {}

    def pytest_terminal_summary(self, terminalreporter):
        if not self.checked:
            return
        terminalreporter.write_sep("-", "parity fixture sets checked")
        for name in sorted(self.checked):
            terminalreporter.write_line(f"{name}: {', '.join(sorted(self.checked[name]))}")


def report_checked(request, path: Path, what: str) -> None:
    """Record that this test checked ``what`` in fixture set ``path``; listed at the end of the pytest run."""
    pm = request.config.pluginmanager
    plugin = pm.get_plugin(_PLUGIN_NAME)
    if plugin is None:
        plugin = _Report()
        pm.register(plugin, _PLUGIN_NAME)
    plugin.checked.setdefault(Path(path).name, set()).add(what)

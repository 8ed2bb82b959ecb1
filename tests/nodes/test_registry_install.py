"""Installing as the registry and the Manager do: the repository cloned into a folder of their naming under
custom_nodes (the registry's lower-case id with dashes, and a name with dots), its requirements installed with the
host's own pip (offline: ``--no-index``, every requirement must already be satisfied), the host's real server
started on it, every node of the pack listed by /object_info; and ``[tool.comfy]`` of pyproject.toml complete."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from comfyui_dynamicrafter.tests import hosting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGISTRY_ID = "comfyui-dynamicrafter-native"
# The oldest host with a version number the node and workflow tests pass on (README, "ComfyUI versions"); the
# 2024-03 host they also pass on predates ComfyUI's version numbers, so the registry cannot compare against it.
OLDEST_TESTED = "0.3.64"


def _pyproject() -> dict:
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_registry_install_pyproject_tool_comfy_complete():
    data = _pyproject()
    comfy = data["tool"]["comfy"]
    assert data["project"]["name"] == REGISTRY_ID
    assert comfy["PublisherId"] and comfy["DisplayName"]
    icon = comfy["Icon"]
    assert icon, "[tool.comfy] Icon is empty"
    prefix = "https://raw.githubusercontent.com/"
    rel = icon.split("/main/", 1)[1] if icon.startswith(prefix) and "/main/" in icon else icon
    path = os.path.join(ROOT, rel)
    assert os.path.isfile(path), f"the icon {icon} names {rel}, not a file in the repository"
    with open(path, "rb") as f:
        head = f.read(8)
    assert head.startswith(b"\x89PNG") or head.startswith(b"<svg") or head.startswith(b"<?xml"), head
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files", "--error-unmatch", rel], capture_output=True)
    assert tracked.returncode == 0, f"{rel} is not committed: the registry would publish no icon"
    assert comfy["requires-comfyui"] == f">={OLDEST_TESTED}"
    assert isinstance(comfy["includes"], list)
    reqs = [ln.split("#")[0].strip() for ln in open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8")]
    reqs = [r for r in reqs if r]
    assert sorted(reqs) == sorted(data["project"]["dependencies"])
    assert not any(re.match(r"(torch|torchvision|torchaudio)\b", r) for r in reqs)


def _clone(dest: str) -> str:
    """``git clone`` of this repository's committed HEAD (what the registry publishes) into ``dest``."""
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", ROOT, dest], check=True, capture_output=True)
    subprocess.run(["git", "-C", dest, "checkout", "-q", head.stdout.strip()], check=True, capture_output=True)
    return dest


@pytest.mark.parametrize("folder", [REGISTRY_ID, "ComfyUI-DynamiCrafter.native.v0.1"])
def test_registry_install_into_its_own_folder_name(folder, host, host_info, host_server, tmp_path):
    expected = sorted(_pack_nodes(host))
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    pack = _clone(str(custom_nodes / folder))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                          "-r", os.path.join(pack, "requirements.txt")], capture_output=True, text=True)
    assert pip.returncode == 0, f"the host's pip could not resolve requirements.txt offline:\n{pip.stdout}{pip.stderr}"
    satisfied = re.findall(r"Requirement already satisfied: (\S+)", pip.stdout)
    assert len(satisfied) >= 6 and "Successfully installed" not in pip.stdout, pip.stdout
    srv = host_server()
    srv._custom_nodes_dir = str(custom_nodes)           # the clone, not the harness's link to this checkout
    srv.start()
    info = srv.get("/object_info")
    listed = sorted(k for k in info if k.startswith("DCN_"))
    assert listed == expected, srv.log_tail()
    log = open(srv.log_path, encoding="utf-8", errors="replace").read()
    # the pack's own import lines only (a host may fail on its own extras, e.g. nodes_audio.py without torchaudio)
    failed = [ln for ln in log.splitlines() if ("IMPORT FAILED" in ln or "Cannot import" in ln) and folder in ln]
    assert not failed and pack in log, (failed, log[-3000:])
    modules = {info[k].get("python_module") for k in listed if info[k].get("python_module")}
    assert modules <= {f"custom_nodes.{folder}"}, modules
    print(f"{folder}: {len(listed)} nodes listed by {host_info.describe()}")


def _pack_nodes(host) -> list:
    """The node ids the pack registers on this host (DCN_Guider only where the host has guiders)."""
    return list(host.pack_module.NODE_CLASS_MAPPINGS)

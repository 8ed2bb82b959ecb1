"""Fixtures for tests that run the pack inside a real ComfyUI host (see tests/hosting.py).

- ``host_info``: which host this run uses (session); skips when there is none.
- ``host``: the in-process host (session; one per pytest process), started on first use.
- ``model_dirs``: kind -> temporary model folder the host searches ("dynamicrafter", "checkpoints",
  "diffusion_models"/"unet", "text_encoders"/"clip", "clip_vision", "vae"); call ``host.refresh_models()`` after
  writing files there.
- ``host_server``: factory for the real server as a subprocess (``with host_server() as srv: srv.run_prompt(g)``).
"""
import os

import pytest

from comfyui_dynamicrafter.tests import hosting


def _info_or_reason():
    try:
        return hosting.find_host(), None
    except hosting.HostNotFound as e:
        return None, str(e)


def _host_line():
    info, reason = _info_or_reason()
    return f"host: none ({reason})" if info is None else f"host: {info.describe()}"


def pytest_report_header(config):
    # pytest asks only the conftests it loads at startup (``pytest tests/nodes``); for a plain ``pytest`` run the
    # same line is written after collection (below).
    config._dc_host_line_done = True
    return [_host_line()]


@pytest.fixture(scope="session")
def host_info():
    info, reason = _info_or_reason()
    if info is None:
        pytest.skip(reason)
    return info


@pytest.fixture(scope="session")
def host(host_info, tmp_path_factory):
    h = hosting.get_host(str(tmp_path_factory.mktemp("host")), host_info)
    return h


@pytest.fixture(scope="session")
def model_dirs(host):
    return host.model_dirs


@pytest.fixture(scope="module")
def dc(host):
    """The tiny checkpoints linked into the host's model folder and the test images in its input folder."""
    from comfyui_dynamicrafter.tests.nodes import dcn_support
    return dcn_support.install(host.model_dirs, host.dirs["input"], host.refresh_models)


@pytest.fixture(scope="module")
def dc_guider(host, dc):
    """``dc`` on a host with comfy.samplers.CFGGuider and SamplerCustomAdvanced (the guider path); a skip that names
    the host elsewhere (2024-03 ComfyUI)."""
    if not host.features.get("cfg_guider"):
        pytest.skip(f"this host has no comfy.samplers.CFGGuider / SamplerCustomAdvanced (2024-03 ComfyUI); the "
                    f"guider path needs a current host (COMFYUI_PATH): {host.info.describe()}")
    return dc


@pytest.fixture
def host_server(host_info, tmp_path_factory):
    servers = []

    def make(extra_args=(), **kw):
        srv = hosting.HostServer(host_info, str(tmp_path_factory.mktemp("server")), extra_args=extra_args, **kw)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()
        if s.proc is not None and s.proc.returncode not in (0, None, -15):
            print(f"server log ({s.log_path}):\n{s.log_tail()}")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.host)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and not getattr(config, "_dc_host_line_done", False):
        config._dc_host_line_done = True
        tr.write_line(_host_line())

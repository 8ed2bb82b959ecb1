"""Pre-computed latents and embeddings: run the frozen encoders once over a dataset, then train from the cache.

Per video, ``cache_views`` clips are drawn (stride, start: fixed per view) and stored as one safetensors file:
VAE posterior ``mean``/``std`` [4, T, h, w] (the posterior sample is still drawn at every step), the caption's text
embedding [77, D], OpenCLIP tokens of ``cache_cond_frames`` candidate conditioning frames [K, 257, C] with their
frame indices, and the motion input ``fs``. ``null.safetensors`` holds the empty-text embedding and the tokens of
the all-zero (mid-grey) image for CFG dropout. ``index.json`` lists the items, the skipped videos and a fingerprint
of everything the cache depends on (encoders, resolution, frames, strides); training refuses a cache whose
fingerprint differs from its own settings.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

import numpy as np
import torch
from torch.utils.data import Dataset

from ..model.errors import DynamiCrafterInputError
from ..model.dtypes import DTYPES
from ..model.log import logger
from .data import Dropout, SkipSample, sample_rng, sample_seed
from .state import atomic_write_bytes

def cache_fingerprint(settings: Dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def precompute(dataset, encoders, cache_dir: str, settings: Dict, views: int = 1, cond_frames: int = 4,
               dtype: str = "fp16", device="cpu", progress: bool = True) -> Dict:
    """Encode every row of ``dataset`` (a VideoCsvDataset / ImageTextDataset) ``views`` times into ``cache_dir``."""
    from safetensors.torch import save_file

    os.makedirs(cache_dir, exist_ok=True)
    dt = DTYPES[dtype]
    null = {"text": encoders.text([""])[0].float().cpu().contiguous(),
            "image": encoders.image(torch.zeros(1, 3, 224, 224, device=device))[0].float().cpu().contiguous()}
    save_file(null, os.path.join(cache_dir, "null.safetensors"))
    items, skipped = [], []
    rows = range(len(dataset.rows))
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="precompute", unit="video")
    for i in rows:
        row = dataset.rows[i]
        for v in range(views):
            rng = sample_rng(dataset.seed, v, i, stream=2)
            try:
                item = dataset._load(row, rng)
            except SkipSample as e:
                skipped.append({"path": row["path"], "reason": str(e)})
                logger.warning("precompute: skipped %s (%s)", row["path"], e)
                break
            video = item["video"][None].to(device)                                   # [1, 3, T, H, W]
            t = video.shape[2]
            mean, std = encoders.vae(video)
            k = min(cond_frames, t)
            if getattr(dataset, "cond_frame", "random") != "random":
                cands = np.zeros(1, dtype=np.int64)                                  # the first frame only
            else:
                cands = np.sort(rng.choice(t, size=k, replace=False)) if k < t else np.arange(t)
            frames = video[0, :, torch.as_tensor(cands, device=device)].transpose(0, 1)  # [K, 3, H, W]
            tokens = encoders.image(frames)
            out = {"mean": mean[0].to(dt).cpu().contiguous(), "std": std[0].to(dt).cpu().contiguous(),
                   "text": encoders.text([row["caption"]])[0].to(dt).cpu().contiguous(),
                   "tokens": tokens.to(dt).cpu().contiguous(),
                   "cond_frames": torch.as_tensor(cands, dtype=torch.long),
                   "fs": torch.tensor(int(item["fs"]), dtype=torch.long)}
            name = f"item_{i:07d}_{v:02d}.safetensors"
            save_file(out, os.path.join(cache_dir, name))
            items.append({"file": name, "caption": row["caption"], "path": row["path"]})
    index = {"fingerprint": cache_fingerprint(settings), "settings": settings, "items": items, "skipped": skipped,
             "dtype": dtype}
    atomic_write_bytes(os.path.join(cache_dir, "index.json"), json.dumps(index, indent=1).encode())
    logger.info("precompute: %d items in %s, %d videos skipped", len(items), cache_dir, len(skipped))
    return index


class CachedDataset(Dataset):
    """Items of a pre-computed cache, with the same per-sample randomness as the pixel datasets (conditioning frame
    among the stored candidates, CFG dropout, the sample's generator seed)."""

    def __init__(self, cache_dir: str, settings: Dict, seed: int = 0, dropout: Dropout = Dropout(),
                 cond_frame: str = "random"):
        path = os.path.join(cache_dir, "index.json")
        if not os.path.isfile(path):
            raise DynamiCrafterInputError("cache_dir", "a folder written by `train.py precompute`", repr(cache_dir),
                                          "run train.py precompute with the same config first")
        with open(path) as f:
            self.index = json.load(f)
        want = cache_fingerprint(settings)
        if self.index["fingerprint"] != want:
            diff = sorted(k for k in set(settings) | set(self.index["settings"])
                          if settings.get(k) != self.index["settings"].get(k))
            raise DynamiCrafterInputError("cache_dir", "a cache made with this run's encoders and data settings",
                                          f"one made with other {diff}", "run train.py precompute again")
        if not self.index["items"]:
            raise DynamiCrafterInputError("cache_dir", "at least one item", "none", "check the dataset")
        self.dir, self.seed, self.dropout, self.cond_frame = cache_dir, int(seed), dropout, cond_frame
        self.rows = self.index["items"]
        self.skipped = self.index["skipped"]
        from safetensors.torch import load_file

        null = load_file(os.path.join(cache_dir, "null.safetensors"))
        self.null_text, self.null_image = null["text"], null["image"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> dict:
        from safetensors.torch import load_file

        epoch, i = key if isinstance(key, tuple) else (0, int(key))
        row = self.rows[i]
        t = load_file(os.path.join(self.dir, row["file"]))
        rng = sample_rng(self.seed, epoch, i)
        k = int(rng.integers(0, t["tokens"].shape[0])) if self.cond_frame == "random" else 0
        drop_text, drop_image = self.dropout.draw(sample_rng(self.seed, epoch, i, stream=1))
        return {"mean": t["mean"].float(), "std": t["std"].float(), "text": t["text"].float(),
                "image_tokens": t["tokens"][k].float(), "fs": int(t["fs"]), "cond_index": int(t["cond_frames"][k]),
                "caption": row["caption"], "drop_text": drop_text, "drop_image": drop_image,
                "seed": sample_seed(self.seed, epoch, i), "key": (int(epoch), int(i)), "skipped": []}


__all__ = ["precompute", "CachedDataset", "cache_fingerprint"]

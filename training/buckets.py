"""Aspect-ratio and frame-count buckets: clips of different shapes in one run, every batch of one shape.

Each usable clip (the start-up scan's frame count and size) goes to the aspect bucket nearest to its width/height
(on a log scale, among ``bucket_aspects``) and to the longest frame bucket it fills (among ``bucket_frames``, default
the run's ``frames``). An aspect bucket's resolution keeps the run's pixel area (height x width) at that aspect,
rounded to the multiple the VAE and UNet need; clips are resized to cover it and centre-cropped, as without buckets.

Order (``BucketBatchSampler``): per epoch, every bucket's clips are shuffled (seeded by run seed, epoch, bucket) and
cut into global batches of ``batch_size x processes`` (the last one filled up from the start of the same bucket),
and the list of global batches is shuffled (seeded by run seed and epoch). Micro-batch m is a pure function of m,
so a resume continues exactly, and a global batch splits over processes as without buckets (rank r takes the r-th
slice), so 2 processes x batch 1 still see what 1 process x batch 2 sees.

Clips shorter than the P query length (``video_length``) share all image tokens over their frames (the UNet's rule
for other lengths, as at inference).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .data import EndlessBatchSampler

Shape = Tuple[int, int, int]   # frames, height, width


def bucket_resolution(aspect: float, area: int, multiple: int) -> Tuple[int, int]:
    """(height, width) of about ``area`` pixels at width/height ``aspect``, both multiples of ``multiple``."""
    w = max(multiple, int(round(math.sqrt(area * aspect) / multiple)) * multiple)
    h = max(multiple, int(round(math.sqrt(area / aspect) / multiple)) * multiple)
    return h, w


class Buckets:
    """Shapes and members (dataset row indices, ascending) of the non-empty buckets."""

    def __init__(self, clips: Sequence[dict], aspects: Sequence[float], frame_counts: Sequence[int], area: int,
                 multiple: int):
        aspects = sorted(float(a) for a in aspects)
        frame_counts = sorted(int(f) for f in frame_counts)
        groups: Dict[Shape, List[int]] = {}
        for c in clips:
            ar = c["width"] / max(1, c["height"])
            a = min(aspects, key=lambda x: abs(math.log(x / ar)))
            fitting = [f for f in frame_counts if f <= c["frames"]]
            if not fitting:
                continue
            h, w = bucket_resolution(a, area, multiple)
            groups.setdefault((fitting[-1], h, w), []).append(int(c["index"]))
        self.shapes: List[Shape] = sorted(groups)
        self.members: List[List[int]] = [sorted(groups[s]) for s in self.shapes]

    def __len__(self) -> int:
        return len(self.shapes)

    def line(self) -> str:
        return "buckets (frames x height x width: clips): " + ", ".join(
            f"{f}x{h}x{w}: {len(m)}" for (f, h, w), m in zip(self.shapes, self.members))


class BucketBatchSampler(EndlessBatchSampler):
    """This rank's keys ``(epoch, index, bucket)`` for micro-batch ``start``, ``start+1``, ... (endless)."""

    def __init__(self, buckets: Buckets, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start: int = 0):
        self.buckets, self.b, self.rank, self.world, self.seed, self.start = (buckets, batch_size, rank, world_size,
                                                                              seed, start)
        g = batch_size * world_size
        self.per_epoch = sum(math.ceil(len(m) / g) for m in buckets.members)
        self._epoch, self._plan = -1, None

    def _epoch_plan(self, e: int) -> List[Tuple[int, List[int]]]:
        if e != self._epoch:
            g = self.b * self.world
            plan = []
            for k, members in enumerate(self.buckets.members):
                perm = [members[i] for i in np.random.default_rng([self.seed, e, k, 97]).permutation(len(members))]
                n = math.ceil(len(perm) / g) * g
                filled = [perm[i % len(perm)] for i in range(n)]
                plan += [(k, filled[j:j + g]) for j in range(0, n, g)]
            order = np.random.default_rng([self.seed, e, 98]).permutation(len(plan))
            self._epoch, self._plan = e, [plan[i] for i in order]
        return self._plan

    def batch(self, m: int) -> List[Tuple[int, int, int]]:
        e, j = divmod(m, self.per_epoch)
        k, idx = self._epoch_plan(e)[j]
        return [(e, i, k) for i in idx[self.rank * self.b:(self.rank + 1) * self.b]]


__all__ = ["Buckets", "BucketBatchSampler", "bucket_resolution"]

"""Writing frames to an mp4 (H.264, yuv420p, through PyAV): the one writer of the save node and of the trainer's
sample videos. No host imports."""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import numpy as np

from .fileio import atomic_path
from .log import logger


def even_frames(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row / column where one is odd."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        logger.info("video %dx%d padded to %dx%d (H.264 needs even sides)", w, h, frames.shape[2], frames.shape[1])
    return frames


def write_mp4(path: str, frames: np.ndarray, fps: float, crf: int, metadata: Optional[dict] = None) -> None:
    """uint8 RGB frames [T, H, W, 3] -> ``path`` (atomically: a reader never sees a half-written file)."""
    import av

    rate = Fraction(fps).limit_denominator(10000)
    frames = even_frames(frames)
    with atomic_path(path) as tmp:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "use_metadata_tags+faststart"}) as out:
            for k, v in (metadata or {}).items():
                out.metadata[k] = v
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(int(crf))}
            for i, f in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(f, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


__all__ = ["write_mp4", "even_frames"]

"""Synthetic clips for the tiny recipe (``train.py demo-data``) and the tests: moving coloured shapes, mp4 via PyAV.

Every clip shows one shape of one colour moving in one direction over a grey background; its caption names the
three ("a red square moving left"). Written with a fixed seed, so the files are the same every run. They check the
plumbing (data, training, export, the adapter in a workflow), not what a model learns.
"""
from __future__ import annotations

import csv
import os
from typing import List, Tuple

import av
import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def draw_frame(shape: str, colour, cx: float, cy: float, size: int, height: int, width: int) -> np.ndarray:
    img = np.full((height, width, 3), 128, dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    if shape == "square":
        mask = (np.abs(xx - cx) <= size / 2) & (np.abs(yy - cy) <= size / 2)
    else:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (size / 2) ** 2
    img[mask] = colour
    return img


def clip_frames(shape, colour_name, direction, n_frames, height, width, speed=2.0) -> List[np.ndarray]:
    dx, dy = DIRECTIONS[direction]
    size = max(6, min(height, width) // 3)
    cx0 = width / 2 - dx * speed * n_frames / 2
    cy0 = height / 2 - dy * speed * n_frames / 2
    return [draw_frame(shape, COLOURS[colour_name], cx0 + dx * speed * i, cy0 + dy * speed * i, size, height, width)
            for i in range(n_frames)]


def write_mp4(path: str, frames: List[np.ndarray], fps: int = 8) -> None:
    with av.open(path, mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)


def make_video_dataset(root: str, n_clips: int = 4, n_frames: int = 12, height: int = 40, width: int = 56,
                       fps: int = 8, seed: int = 0, corrupt: int = 0, too_short: int = 0,
                       fps_column: bool = True) -> Tuple[str, List[dict]]:
    """Write ``n_clips`` good clips (+ corrupt / too-short ones) under ``root``; return (csv path, rows)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    rows = []
    combos = [(s, c, d) for s in SHAPES for c in COLOURS for d in DIRECTIONS]
    order = rng.permutation(len(combos))
    for i in range(n_clips):
        shape, colour, direction = combos[order[i % len(combos)]]
        rel = f"videos/clip_{i:03d}.mp4"
        write_mp4(os.path.join(root, rel), clip_frames(shape, colour, direction, n_frames, height, width), fps)
        rows.append({"path": rel, "caption": f"a {colour} {shape} moving {direction}", "fps": fps})
    for j in range(corrupt):
        rel = f"videos/corrupt_{j:03d}.mp4"
        with open(os.path.join(root, rel), "wb") as f:
            f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
        rows.append({"path": rel, "caption": "a broken file", "fps": fps})
    for j in range(too_short):
        rel = f"videos/short_{j:03d}.mp4"
        write_mp4(os.path.join(root, rel), clip_frames("circle", "red", "left", 2, height, width), fps)
        rows.append({"path": rel, "caption": "a red circle moving left", "fps": fps})
    csv_path = os.path.join(root, "clips.csv")
    with open(csv_path, "w", newline="") as f:
        fields = ["path", "caption", "fps"] if fps_column else ["path", "caption"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return csv_path, rows


def make_image_dataset(root: str, n_images: int = 4, height: int = 40, width: int = 56, seed: int = 0) -> str:
    """Image-text folder: ``img_i.png`` + ``img_i.txt`` (caption) pairs."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    combos = [(s, c) for s in SHAPES for c in COLOURS]
    for i in range(n_images):
        shape, colour = combos[rng.integers(len(combos))]
        img = draw_frame(shape, COLOURS[colour], width / 2 + rng.integers(-8, 8), height / 2, height // 3, height, width)
        Image.fromarray(img).save(os.path.join(root, f"img_{i:03d}.png"))
        with open(os.path.join(root, f"img_{i:03d}.txt"), "w") as f:
            f.write(f"a {colour} {shape}")
    return root

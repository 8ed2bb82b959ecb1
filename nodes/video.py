"""Save node: an IMAGE batch (the frames from VAEDecode) -> an mp4 (H.264 through PyAV), animated WebP or GIF
(Pillow) in the host's output folder, with an animated preview on the node. mp4 and WebP carry the graph (prompt and
workflow) like the host's own savers, so a saved video can be dropped back on the canvas.

The ui result follows the host's conventions: ``images`` + ``animated`` (what the host's own animated-WebP node
returns, so old and new front ends draw it) and ``gifs`` (the saved file itself with its format, frame rate and
frame count, the convention of video packs). An mp4 cannot be drawn as an image by older front ends, so for mp4 the
preview is a small animated WebP in the host's temp folder.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

import folder_paths

from ..model.errors import DynamiCrafterInputError
from ..model.fileio import atomic_path, check_free_space, write_errors
from ..model.guards import check_image_finite
from ..model.log import logger
from ..model.videoio import write_mp4

FORMATS = ["mp4", "webp", "gif"]
MIME = {"mp4": "video/h264-mp4", "webp": "image/webp", "gif": "image/gif"}
PREVIEW_MAX_SIDE = 512


def frames_uint8(images) -> np.ndarray:
    """IMAGE [T, H, W, C] in [0, 1] -> uint8 RGB [T, H, W, 3] (alpha dropped, grayscale repeated)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1:
        raise DynamiCrafterInputError("images", "an IMAGE batch [frames, height, width, channels] (VAEDecode's output)",
                                      repr(getattr(images, "shape", type(images).__name__)),
                                      "connect the IMAGE output of VAEDecode")
    c = images.shape[-1]
    if c == 4:
        images = images[..., :3]
    elif c == 1:
        images = images.repeat(1, 1, 1, 3)
    elif c != 3:
        raise DynamiCrafterInputError("images", "RGB frames (3 channels)", f"{c} channels", "decode with VAEDecode")
    return (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def _pil_frames(frames: np.ndarray, max_side: Optional[int] = None) -> List["object"]:
    from PIL import Image

    out = [Image.fromarray(f) for f in frames]
    if max_side and max(out[0].size) > max_side:
        s = max_side / max(out[0].size)
        size = (max(1, round(out[0].width * s)), max(1, round(out[0].height * s)))
        out = [im.resize(size, Image.BICUBIC) for im in out]
    return out


# EXIF tags the host's animated-WebP writer uses for the graph ("prompt:{json}" in 0x0110, each extra_pnginfo entry
# "key:{json}" from 0x010F downwards); the front end reads them back when the file is dropped on the canvas.
EXIF_PROMPT_TAG, EXIF_FIRST_EXTRA_TAG = 0x0110, 0x010F


def webp_exif(metadata: Optional[dict]):
    from PIL import Image

    exif = Image.Exif()
    tag = EXIF_FIRST_EXTRA_TAG
    for k, v in (metadata or {}).items():
        if k == "prompt":
            exif[EXIF_PROMPT_TAG] = f"prompt:{v}"
        else:
            exif[tag] = f"{k}:{v}"
            tag -= 1
    return exif


def write_webp(path: str, frames: np.ndarray, fps: float, quality: int, max_side: Optional[int] = None,
               metadata: Optional[dict] = None) -> None:
    ims = _pil_frames(frames, max_side)
    extra = {"exif": webp_exif(metadata)} if metadata else {}
    with atomic_path(path) as tmp:
        ims[0].save(tmp, format="WEBP", save_all=True, append_images=ims[1:], duration=round(1000.0 / fps), loop=0,
                    quality=int(quality), method=4, lossless=False, **extra)


def write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    ims = _pil_frames(frames)
    with atomic_path(path) as tmp:
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=round(1000.0 / fps), loop=0,
                    disposal=2, optimize=False)


def _metadata(prompt, extra_pnginfo) -> dict:
    try:
        from comfy.cli_args import args
        if getattr(args, "disable_metadata", False):
            return {}
    except ImportError:  # pragma: no cover - always there inside a host
        pass
    meta = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    for k, v in (extra_pnginfo or {}).items():
        meta[k] = json.dumps(v)
    return meta


def save_video(images, filename_prefix: str, fmt: str, fps: float, crf: int, prompt=None,
               extra_pnginfo=None) -> Tuple[dict, str]:
    """Write the file; returns (ui dict, full path)."""
    if fmt not in FORMATS:
        raise DynamiCrafterInputError("format", f"one of {FORMATS}", repr(fmt), "pick mp4, webp or gif")
    if not fps > 0:
        raise DynamiCrafterInputError("fps", "a frame rate above 0", repr(fps), "use 8 (the reference's) or more")
    frames = frames_uint8(images)
    t, h, w, _ = frames.shape
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory(), w, h)
    file = f"{name}_{counter:05}_.{fmt}"
    path = os.path.join(folder, file)
    meta = _metadata(prompt, extra_pnginfo)                                # the graph, unless --disable-metadata
    with write_errors(path, "DynamiCrafter Save Video"):  # a full / read-only output folder: one line, no partial file
        check_free_space(folder, t * h * w // 200 + 1024, "DynamiCrafter Save Video")  # far below the real size
        if fmt == "mp4":
            write_mp4(path, frames, fps, crf, meta)
        elif fmt == "webp":
            write_webp(path, frames, fps, quality=max(1, 100 - int(crf)), metadata=meta)
        else:
            write_gif(path, frames, fps)
    saved = {"filename": file, "subfolder": subfolder, "type": "output"}
    ui = {"gifs": [dict(saved, format=MIME[fmt], frame_rate=float(fps), frame_count=int(t),
                        fullpath=path)]}
    if fmt == "mp4":
        temp = folder_paths.get_temp_directory()
        pfolder, pname, pcounter, psub, _ = folder_paths.get_save_image_path(filename_prefix, temp, w, h)
        pfile = f"{pname}_{pcounter:05}_preview.webp"
        write_webp(os.path.join(pfolder, pfile), frames, fps, quality=80, max_side=PREVIEW_MAX_SIDE)
        ui["images"] = [{"filename": pfile, "subfolder": psub, "type": "temp"}]
    else:
        ui["images"] = [saved]
    ui["animated"] = (True,)
    logger.info("saved %d frames at %g fps, %dx%d: %s", t, fps, w, h, path)
    return ui, path


class DCN_SaveVideo:
    """Save the frames as mp4 (H.264), animated WebP or GIF, with a preview on the node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames: VAEDecode's IMAGE batch (frames as batch)."}),
                "filename_prefix": ("STRING", {"default": "DynamiCrafter",
                                               "tooltip": "File name prefix in the output folder; may contain "
                                                          "subfolders (e.g. videos/dc)."}),
                "format": (FORMATS, {"default": "mp4", "tooltip": "mp4: H.264 (yuv420p) through PyAV; webp: animated "
                                                                  "WebP; gif: animated GIF (256 colours)."}),
                "fps": ("FLOAT", {"default": 8.0, "min": 1.0, "max": 120.0, "step": 1.0,
                                  "tooltip": "Playback frame rate of the file (the reference saves 8 fps). Not the "
                                             "model's motion input, which is on DynamiCrafter Conditioning."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 51, "step": 1,
                                "tooltip": "Quality: H.264 constant rate factor for mp4 (0 lossless, 17-23 "
                                           "typical, higher = smaller); webp uses quality 100 - crf; gif ignores "
                                           "it."}),
            },
            # the graph (API prompt) and the UI workflow, embedded in mp4 / WebP files (GIF has no place for them)
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "DynamiCrafter/video"
    DISPLAY_NAME = "DynamiCrafter Save Video"
    DESCRIPTION = "Saves the video frames as mp4 (H.264), animated WebP or GIF in the output folder."

    def save(self, images, filename_prefix, format, fps, crf, prompt=None, extra_pnginfo=None):
        check_image_finite(images, "images")  # a NaN video is refused, never saved as black frames
        ui, _ = save_video(images, filename_prefix, format, fps, crf, prompt, extra_pnginfo)
        return {"ui": ui}


NODES = (DCN_SaveVideo,)   # what this file adds to the registry (nodes/__init__.py)

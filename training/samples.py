"""Sample videos and a held-out loss during training.

Every ``sample_every`` steps the main process renders a few (image, prompt) pairs with the pack's own DDIM
(``model.sampler.ddim_sample``: text + image CFG, the variant's guidance rescale) on the model being trained, decodes
them with the VAE and writes ``output_dir/samples/step_<N>_<i>.mp4`` with the pack's writer (``model.videoio``).
The pairs are ``samples`` from the config, or the first frame and caption of the first ``sample_count`` usable clips.
Each pair keeps its own noise seed, so the videos of successive steps differ only by the training.

Sampling runs in eval mode (no dropout), under ``no_grad``, with its own generators: it draws nothing from the
global RNG, so a run with samples repeats the same training numbers as one without (and resumes bit-exactly).

The validation loss is the training loss on ``val_csv`` in eval mode over fixed samples (the same clips, frames,
timesteps and noise at every evaluation), so its values are comparable across steps.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional

import numpy as np
import torch

from ..model.errors import DynamiCrafterInputError
from ..model.log import logger
from ..model.sampler import ddim_sample
from ..model.vae import SCALE_FACTOR, decode_latent
from ..model.videoio import write_mp4
from .data import SkipSample, collate, decode_frames, resize_center_crop
from .data import VideoCsvDataset

SAMPLE_FPS = 8
SAMPLE_CRF = 18


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """An image file -> float [3, H, W] in [-1, 1] (shorter side covers, centre crop: as the training clips)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DynamiCrafterInputError("samples", "readable image files", f"{path!r} ({type(e).__name__})",
                                      "fix the image path") from None
    return resize_center_crop(torch.from_numpy(arr[None].copy()), height, width)[:, 0]


class SampleRenderer:
    """The (image, prompt) pairs of a run and the renderer of their videos."""

    def __init__(self, trainer, clips: Optional[List[dict]] = None):
        self.t = trainer
        cfg = trainer.cfg
        self.dir = os.path.join(cfg.output_dir, "samples")
        self.pairs: List[Dict] = []
        if cfg.samples:
            for smp in cfg.samples:
                self.pairs.append({"image": load_image(smp["image"], trainer.height, trainer.width),
                                   "prompt": str(smp["prompt"]), "source": smp["image"]})
        else:
            rows = trainer.dataset.rows
            for clip in clips or []:
                if len(self.pairs) >= cfg.sample_count:
                    break
                row = rows[clip["index"]]
                try:
                    frame = decode_frames(row["path"], [0])
                except SkipSample:
                    continue
                img = resize_center_crop(torch.from_numpy(frame), trainer.height, trainer.width)[:, 0]
                self.pairs.append({"image": img, "prompt": row["caption"], "source": row["path"]})
        if not self.pairs:
            raise DynamiCrafterInputError("samples", "(image, prompt) pairs or usable clips to take them from",
                                          "none", "set samples: [{image: ..., prompt: ...}] or sample_every: 0")

    @torch.no_grad()
    def render(self, step: int) -> List[str]:
        t = self.t
        enc = t.sampling_encoders()
        model, v, dev = t.model, t.variant, t.device
        was_training = model.training
        model.eval()
        paths = []
        try:
            for i, pair in enumerate(self.pairs):
                img = pair["image"][None].to(dev)                                           # [1, 3, H, W]
                text = enc.text([pair["prompt"]]).float()                                   # [1, 77, D]
                null_text = enc.text([""]).float()
                tokens = enc.image(img).float()                                             # [1, 257, C]
                null_tokens = enc.image(torch.zeros_like(img)).float()
                mean, _ = enc.vae(img[:, :, None])                                          # [1, 4, 1, h, w]
                z_img = mean * SCALE_FACTOR
                T = t.frames
                if t.stage.concat:
                    if t.interp:                                                            # start + end frame
                        concat = torch.zeros(z_img.shape[:2] + (T,) + z_img.shape[3:], device=dev)
                        concat[:, :, 0], concat[:, :, -1] = z_img[:, :, 0], z_img[:, :, 0]
                    else:
                        concat = z_img.expand(-1, -1, T, -1, -1)
                else:
                    concat = None
                fs = torch.tensor([int(v.default_motion)], device=dev)
                conds = {"cond": (text, tokens), "uc": (null_text, null_tokens), "uc_img": (null_text, tokens)}

                def denoise(x, ts, branches):
                    k = len(branches)
                    txt = torch.cat([conds[b][0] for b in branches])
                    tok = torch.cat([conds[b][1] for b in branches])
                    inp = x if concat is None else torch.cat([x, concat.repeat(k, 1, 1, 1, 1).to(x.dtype)], dim=1)
                    with torch.autocast(device_type=dev.type, dtype=t.amp_dtype,
                                        enabled=t.amp_dtype != torch.float32):
                        return model(inp, ts, txt, tok, fs.repeat(k)).float()

                gen = torch.Generator(device=dev).manual_seed(t.cfg.seed * 1000 + i)
                shape = (1, 4, T) + tuple(z_img.shape[3:])
                x_T = torch.randn(shape, generator=gen, device=dev)
                z = ddim_sample(denoise, x_T, v.schedule, t.cfg.sample_steps, cfg_text=t.cfg.sample_cfg,
                                cfg_image=t.cfg.sample_cfg, guidance_rescale=float(v.guidance_rescale),
                                generator=gen)
                video = decode_latent(enc.vae.vae, z.to(enc.vae.vae.dtype)).float()         # [1, 3, T, H, W]
                frames = ((video[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                os.makedirs(self.dir, exist_ok=True)
                path = os.path.join(self.dir, f"step_{step:08d}_{i}.mp4")
                write_mp4(path, frames.cpu().numpy(), SAMPLE_FPS, SAMPLE_CRF,
                          {"comment": f"step {step}; prompt: {pair['prompt']}; image: {pair['source']}"})
                paths.append(path)
        finally:
            model.train(was_training)
        logger.info("samples of step %d: %s", step, ", ".join(os.path.basename(p) for p in paths))
        return paths


def strip(video_path: str) -> np.ndarray:
    """The frames of a sample side by side, uint8 [3, H, T*W] (TensorBoard's image panel needs no extra package)."""
    import av

    with av.open(video_path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.concatenate(frames, axis=1).transpose(2, 0, 1)


class Validation:
    """Held-out loss over fixed samples of ``val_csv``."""

    def __init__(self, trainer):
        cfg = trainer.cfg
        plan = trainer.plan
        self.t = trainer
        v = trainer.variant
        self.dataset = VideoCsvDataset(cfg.val_csv, None, plan.frames, plan.height, plan.width,
                                       cfg.frame_stride_min, cfg.frame_stride_max, v.motion_input, plan.cond_frame,
                                       cfg.seed + 1, plan.dropout(), default_fps=float(v.default_motion
                                                                                       if v.motion_input == "fps"
                                                                                       else 24))
        n = min(len(self.dataset), cfg.val_batches * cfg.batch_size)
        self.batches = [[(0, i) for i in range(a, min(n, a + cfg.batch_size))] for a in range(0, n, cfg.batch_size)]

    @torch.no_grad()
    def loss(self) -> float:
        t = self.t
        if t.encoders is None:
            t.encoders = t.sampling_encoders()
        model = t.model
        was_training = model.training
        model.eval()
        try:
            losses = [float(t.micro_loss(collate([self.dataset[k] for k in keys]), net=model))
                      for keys in self.batches]
        finally:
            model.train(was_training)
        return float(np.mean(losses))


class Monitor:
    """What a run shows while it trains: the held-out loss and sample videos when due (main process), and the
    scalars and samples in TensorBoard / wandb when enabled."""

    def __init__(self, trainer):
        cfg = trainer.cfg
        self.cfg, self.renderer, self.validation, self.tb, self.wandb = cfg, None, None, None, None
        if not trainer.is_main:
            return
        if cfg.sample_every:
            self.renderer = SampleRenderer(trainer, trainer.summary.clips if trainer.summary is not None else None)
        if cfg.val_csv:
            self.validation = Validation(trainer)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DynamiCrafterInputError("tensorboard", "the tensorboard package", "not installed",
                                              "pip install tensorboard, or set tensorboard: false") from None
            self.tb = SummaryWriter(os.path.join(cfg.output_dir, "tensorboard"))
        if cfg.wandb:
            import wandb

            run_id = "dc-" + hashlib.sha256(os.path.abspath(cfg.output_dir).encode()).hexdigest()[:12]
            self.wandb = wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), dir=cfg.output_dir, id=run_id,
                                    resume="allow")

    def evaluate(self, step: int) -> Dict:
        """Held-out loss and sample videos of this step, when due (main process; no training RNG drawn)."""
        cfg, out = self.cfg, {}
        if self.validation is not None and step % (cfg.val_every or cfg.sample_every or cfg.save_every) == 0:
            out["val_loss"] = self.validation.loss()
            logger.info("step %d: held-out loss %.5f", step, out["val_loss"])
        if self.renderer is not None and step % cfg.sample_every == 0:
            out["samples"] = self.renderer.render(step)
        return out

    def report(self, record: Dict) -> None:
        step = record["step"]
        scalars = {k: record[k] for k in ("loss", "lr", "grad_norm", "val_loss") if k in record}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            for i, path in enumerate(record.get("samples") or ()):
                self.tb.add_image(f"sample_{i}", strip(path), step)
        if self.wandb is not None:
            import wandb

            for i, path in enumerate(record.get("samples") or ()):
                scalars[f"sample_{i}"] = wandb.Video(path, format="mp4")
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


__all__ = ["Monitor", "SampleRenderer", "Validation", "load_image", "strip"]

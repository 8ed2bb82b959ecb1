"""(2) On an overfit set of two clips the loss falls measurably.

Measured on a fixed evaluation set (the two clips x 8 fixed (timestep, noise) draws, dropout off), before and
after 30 steps of the joint stage (lr 1e-3), so the figure does not depend on which timesteps a step happened to
draw; the training loss (mean of the first vs the last 10 steps) is reported too.
"""
import numpy as np
import torch

from comfyui_dynamicrafter.training import demo as synth
from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.data import collate
from comfyui_dynamicrafter.training.loop import Trainer

from .conftest import tiny_settings

STEPS = 30


def _eval_loss(trainer, items):
    trainer.model.eval()
    losses = []
    with torch.no_grad():
        for k in range(8):
            batch = collate([dict(it, seed=1000 * k + j, drop_text=False, drop_image=False)
                             for j, it in enumerate(items)])
            losses.append(float(trainer.micro_loss(batch)))
    trainer.model.train()
    return float(np.mean(losses))


def test_loss_falls_on_an_overfit_set(tmp_path):
    csv, _ = synth.make_video_dataset(str(tmp_path / "data"), n_clips=2, n_frames=8, height=16, width=24)
    s = tiny_settings(str(tmp_path / "run"), csv, stage="joint", max_steps=STEPS, save_every=STEPS, lr=1e-3,
                      frame_stride_max=1, ema=False)
    trainer = Trainer(TrainConfig.from_dict(s))
    items = [trainer.dataset[(0, i)] for i in range(2)]
    before = _eval_loss(trainer, items)
    result = trainer.run()
    after = _eval_loss(trainer, items)
    tr = result["losses"]
    first, last = float(np.mean(tr[:10])), float(np.mean(tr[-10:]))
    print(f"overfit, 2 clips, {STEPS} steps: eval loss {before:.4f} -> {after:.4f} ({100 * (1 - after / before):.0f}% "
          f"lower); training loss first 10 {first:.4f}, last 10 {last:.4f}")
    assert after < 0.7 * before
    assert last < first

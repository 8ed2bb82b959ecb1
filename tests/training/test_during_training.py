"""During training: sample videos rendered with the pack's DDIM every N steps (decodable mp4s of the clip's shape),
the held-out loss, adapter files every N steps beside the checkpoints (with the kohya-key copy of a LoRA-only
adapter), and none of it changes the training numbers (it draws nothing from the training RNG)."""
import json
import os

import av
import torch
from safetensors import safe_open

from comfyui_dynamicrafter.model import adapters as ad
from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.loop import train

from .conftest import read_metrics, tiny_settings


def _frames(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_samples_validation_and_intermediate_adapters(tmp_path, video_data):
    csv = video_data[0]
    plain_dir, eval_dir = str(tmp_path / "plain"), str(tmp_path / "eval")
    train(TrainConfig.from_dict(tiny_settings(plain_dir, csv, max_steps=4)))
    s = tiny_settings(eval_dir, csv, max_steps=4, sample_every=2, sample_count=2, sample_steps=3, val_csv=csv,
                      val_batches=1, adapter_every=2)
    result = train(TrainConfig.from_dict(s))
    # the same training numbers, bit for bit
    assert read_metrics(eval_dir) == read_metrics(plain_dir)
    # sample videos at steps 2 and 4: decodable, 4 frames of 16x24
    names = sorted(os.listdir(os.path.join(eval_dir, "samples")))
    assert names == ["step_00000002_0.mp4", "step_00000002_1.mp4", "step_00000004_0.mp4", "step_00000004_1.mp4"]
    for n in names:
        fr = _frames(os.path.join(eval_dir, "samples", n))
        assert len(fr) == 4 and fr[0].shape == (16, 24, 3)
    a, b = (torch.from_numpy(__import__("numpy").stack(_frames(os.path.join(eval_dir, "samples", n)))).float()
            for n in ("step_00000002_0.mp4", "step_00000004_0.mp4"))
    assert (a - b).abs().max() > 0                                              # the training shows in the samples
    with open(os.path.join(eval_dir, "metrics.jsonl")) as f:
        recs = {r["step"]: r for r in map(json.loads, f)}
    assert "val_loss" in recs[2] and "val_loss" in recs[4] and "val_loss" not in recs[1]
    assert recs[2]["val_loss"] != recs[4]["val_loss"] and all(recs[k]["val_loss"] > 0 for k in (2, 4))
    # intermediate adapters beside the checkpoints, LoRA-only: with kohya copies
    adapters = sorted(os.listdir(os.path.join(eval_dir, "adapters")))
    assert adapters == ["adapter_step_00000002.safetensors", "adapter_step_00000002_kohya.safetensors",
                        "adapter_step_00000004.safetensors", "adapter_step_00000004_kohya.safetensors"]
    final, _ = ad.read_adapter(result["adapter"]["adapter"])
    last, _ = ad.read_adapter(os.path.join(eval_dir, "adapters", "adapter_step_00000004.safetensors"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    with safe_open(result["adapter"]["kohya"], "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    back, meta = ad.read_adapter(result["adapter"]["kohya"])                    # the pack reads its kohya copy back
    assert back.keys() == final.keys() and all(torch.equal(back[k], final[k]) for k in final)
    print(f"samples {names}; val loss {recs[2]['val_loss']:.5f} -> {recs[4]['val_loss']:.5f}; adapters {adapters}")

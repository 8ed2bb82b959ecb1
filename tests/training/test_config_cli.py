"""The command line / config file, and the engineering switches: every setting in one file, flags over the file,
bf16 autocast, gradient checkpointing (same gradients), the other variants' objectives (256: eps + frame stride;
512-interp: start + end frame), and the optional TensorBoard."""
import importlib.util
import json
import os

import pytest
import torch
import yaml

from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.training.cli import main
from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.data import collate
from comfyui_dynamicrafter.training.loop import Trainer, train

from .conftest import run_cli, tiny_settings, write_config


@pytest.fixture(autouse=True)
def _keep_logger():
    """main() configures the pack's logger as a CLI does; put it back for the other tests."""
    from comfyui_dynamicrafter.model.log import logger

    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def test_dump_config_lists_every_setting_and_round_trips(tmp_path, capsys):
    cfg_in = write_config(str(tmp_path / "in.json"), {"lr": 3e-5, "stage": "joint"})
    assert main(["dump-config", "--config", cfg_in, "--max-steps", "7", "--groups", "P,lora",
                 "--no-ema", "--unet-overrides", '{"dropout": 0.0}']) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert set(data) == {f for f in TrainConfig.__dataclass_fields__}
    assert data["lr"] == 3e-5 and data["stage"] == "joint" and data["max_steps"] == 7
    assert data["groups"] == ["P", "lora"] and data["ema"] is False and data["unet_overrides"] == {"dropout": 0.0}
    (tmp_path / "all.yaml").write_text(text)
    assert main(["dump-config", "--config", str(tmp_path / "all.yaml"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == data


def test_bad_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(DynamiCrafterInputError, match="unknown"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    cfg = write_config(str(tmp_path / "c.json"), {"precision": "fp8"})
    r = run_cli(["--config", cfg])
    assert r.returncode == 2 and "precision: expected fp32, bf16 or fp16" in r.stderr


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, video_data):
    s = tiny_settings(str(tmp_path), video_data[0], stage="joint", unet_dropout=0.0)
    trainer = Trainer(TrainConfig.from_dict(s))
    batch = collate([trainer.dataset[(0, 0)], trainer.dataset[(0, 1)]])
    grads = []
    for ckpt in (False, True):
        trainer.model.unet.gradient_checkpointing = ckpt
        trainer.optimizer.zero_grad()
        trainer.micro_loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in trainer._named_trainable()})
    worst = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0])
    assert worst < 1e-6, worst


def test_bf16_autocast_runs(tmp_path, video_data):
    s = tiny_settings(str(tmp_path), video_data[0], precision="bf16", encoder_precision="bf16",
                      gradient_checkpointing=True, max_steps=2)
    result = train(TrainConfig.from_dict(s))
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))


@pytest.mark.parametrize("variant", ["256", "512-interp"])
def test_other_variants(tmp_path, video_data, variant):
    s = tiny_settings(str(tmp_path), video_data[0], variant=variant, max_steps=1)
    trainer = Trainer(TrainConfig.from_dict(s))
    assert trainer.objective.parameterization == ("eps" if variant == "256" else "v")
    assert (trainer.objective.scale is None) == (variant == "256")              # dynamic rescale only for v models
    if variant == "512-interp":
        assert trainer.interp and trainer.cond_frame == "first_last"
    else:
        assert trainer.dataset.motion_input == "frame_stride"
    result = trainer.run()
    assert torch.isfinite(torch.tensor(result["losses"])).all()


def test_tensorboard_is_optional(tmp_path, video_data):
    """Without the package: one line before the model. With it: loss, lr, grad norm, the held-out loss and the
    sample videos (frames side by side) in the event files."""
    s = tiny_settings(str(tmp_path), video_data[0], tensorboard=True, max_steps=2, sample_every=2, sample_count=1,
                      sample_steps=2, val_csv=video_data[0], val_batches=1)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(DynamiCrafterInputError, match="pip install tensorboard"):
            Trainer(TrainConfig.from_dict(s))
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TrainConfig.from_dict(s))
    ea = EventAccumulator(os.path.join(str(tmp_path), "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"loss", "lr", "grad_norm", "val_loss"} <= set(tags["scalars"]) and "sample_0" in tags["images"]
    assert [e.step for e in ea.Scalars("loss")] == [1, 2] and [e.step for e in ea.Scalars("val_loss")] == [2]
    img = ea.Images("sample_0")[0]
    assert (img.height, img.width) == (16, 4 * 24)                         # 4 frames of 16x24 side by side


def test_optimizer_choice_is_recorded_and_part_of_the_run_identity(tmp_path, video_data):
    from comfyui_dynamicrafter.training import state as st

    out = str(tmp_path)
    result = train(TrainConfig.from_dict(tiny_settings(out, video_data[0], optimizer="adafactor", max_steps=2,
                                                       save_every=2)))
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    ck = st.load_checkpoint(result["last_checkpoint"])
    assert ck["optimizer_name"] == "adafactor" and ck["identity"]["optimizer"] == "adafactor"
    assert any("row_var" in s or "col_var" in s or "variance" in s for s in
               (k for v in ck["optimizer"]["state"].values() for k in v))        # Adafactor's own state
    with pytest.raises(DynamiCrafterInputError, match="optimizer"):            # resuming with another optimizer
        Trainer(TrainConfig.from_dict(tiny_settings(out, video_data[0], optimizer="adamw", max_steps=4)))


def test_wandb_is_optional(tmp_path, video_data, monkeypatch):
    """Without the package: exit 2 before the model (test_preflight). With it (offline mode, no network): the run
    logs the scalars and the sample video."""
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed here (the missing-package case is test_preflight's)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    s = tiny_settings(str(tmp_path), video_data[0], wandb=True, max_steps=2, sample_every=2, sample_count=1,
                      sample_steps=2)
    train(TrainConfig.from_dict(s))
    runs = os.listdir(os.path.join(str(tmp_path), "wandb"))
    run = [r for r in runs if r.startswith("offline-run-")][0]
    media = os.path.join(str(tmp_path), "wandb", run, "files", "media", "videos")
    assert any(n.startswith("sample_0_") and n.endswith(".mp4") for n in os.listdir(media))

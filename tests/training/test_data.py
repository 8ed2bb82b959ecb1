"""Data: (6a) corrupt / too-short videos are skipped, counted and reported; clip selection, fps from the stride,
resize + centre crop, CFG dropout rates, the global sample order under DDP, and the pre-compute cache."""
import json
import os

import numpy as np
import pytest
import torch

from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.training.config import TrainConfig
from comfyui_dynamicrafter.training.data import (Dropout, GlobalBatchSampler, ImageTextDataset, SkipSample,
                                                  VideoCsvDataset, choose_clip, read_csv, resize_center_crop)
from comfyui_dynamicrafter.training.loop import train

from .conftest import run_cli, tiny_settings, write_config


def test_corrupt_and_short_videos_are_skipped_counted_and_reported(tmp_path, broken_video_data):
    csv, rows = broken_video_data
    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), tiny_settings(out, csv, max_steps=3, batch_size=3))
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    bad = {row["path"] for row in rows if "corrupt" in row["path"] or "short" in row["path"]}
    with open(os.path.join(out, "skipped.json")) as f:
        skipped = json.load(f)
    assert set(skipped) == {os.path.join(os.path.dirname(csv), p) for p in bad}
    reasons = " ".join(skipped.values())
    assert "cannot open" in reasons and "too short: 2 frames, the clip needs 4" in reasons
    assert "skipped 2 unusable dataset entries" in r.stderr                     # the summary line
    for p in skipped:
        assert f"skipped {p}" in r.stderr                                      # each reported once, when first met
    print([ln for ln in r.stderr.splitlines() if "skipped" in ln][-1])


def test_skip_keeps_the_batch_full_and_is_reported_with_the_sample(broken_video_data):
    csv, rows = broken_video_data
    ds = VideoCsvDataset(csv, None, 4, 16, 24)
    bad = [i for i, r in enumerate(rows) if "corrupt" in r["path"]][0]
    item = ds[(0, bad)]
    assert item["video"].shape == (3, 4, 16, 24)
    assert [s["path"] for s in item["skipped"]][0].endswith(rows[bad]["path"])


def test_clip_choice_stride_and_fps(video_data):
    rng = np.random.default_rng(0)
    for _ in range(200):
        start, stride = choose_clip(12, 4, 1, 6, rng)
        assert 1 <= stride <= 3 and start + 3 * stride <= 11                     # lowered until 4 frames fit in 12
    with pytest.raises(SkipSample, match="too short"):
        choose_clip(3, 4, 1, 1, rng)
    csv, rows = video_data
    ds = VideoCsvDataset(csv, None, 4, 16, 24, stride_min=2, stride_max=2, motion_input="fps")
    assert ds[(0, 0)]["fs"] == 4                                                 # 8 fps source, every 2nd frame
    ds = VideoCsvDataset(csv, None, 4, 16, 24, stride_min=3, stride_max=3, motion_input="frame_stride")
    assert ds[(0, 0)]["fs"] == 3                                                 # the 256 model takes the stride


def test_resize_center_crop():
    img = torch.zeros(1, 20, 60, 3, dtype=torch.uint8)
    img[:, :, 20:40] = 255                                                       # a white middle third
    out = resize_center_crop(img, 10, 10)                                        # 20x60 -> 10x30 -> crop 10x10
    assert out.shape == (3, 1, 10, 10) and float(out[..., 1:-1].min()) > 0.99 and float(out.min()) > 0.5


def test_dropout_rates():
    d, rng = Dropout(), np.random.default_rng(0)
    draws = [d.draw(rng) for _ in range(40000)]
    frac = {k: sum(1 for x in draws if x == k) / len(draws) for k in [(True, False), (True, True), (False, True)]}
    for v in frac.values():
        assert abs(v - 0.05) < 0.006, frac


def test_ranks_split_the_global_batch():
    one = GlobalBatchSampler(10, 4, 0, 1, seed=3)
    two = [GlobalBatchSampler(10, 2, r, 2, seed=3) for r in range(2)]
    for m in range(7):                                                           # crosses epochs
        assert one.batch(m) == two[0].batch(m) + two[1].batch(m)
    seen = [k for m in range(5) for k in one.batch(m)]                           # 20 positions = 2 epochs
    assert sorted(i for e, i in seen if e == 0) == list(range(10))


def test_csv_needs_a_header(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a.mp4,some caption\n")
    with pytest.raises(DynamiCrafterInputError, match="header"):
        read_csv(str(p))


def test_image_folder(image_data):
    ds = ImageTextDataset(image_data, None, 16, 24)
    it = ds[(0, 0)]
    assert it["video"].shape == (3, 1, 16, 24) and it["caption"].startswith("a ")


def test_precompute_then_train_from_cache(tmp_path, video_data):
    out = str(tmp_path / "run")
    s = tiny_settings(out, video_data[0], cache_dir=str(tmp_path / "cache"), cache_views=2, cache_cond_frames=2,
                      cache_dtype="fp32", max_steps=2)
    cfg = write_config(str(tmp_path / "run.json"), s)
    r = run_cli(["precompute", "--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "cache" / "index.json") as f:
        index = json.load(f)
    assert len(index["items"]) == 2 * len(video_data[1])
    result = train(TrainConfig.from_dict(s))
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    s2 = dict(s, height=32)                                                      # other settings: refused
    with pytest.raises(DynamiCrafterInputError, match="precompute"):
        train(TrainConfig.from_dict(dict(s2, output_dir=str(tmp_path / "run2"))))


def test_log_lines_do_not_overwrite_the_progress_bar(tmp_path, broken_video_data):
    """With the bar on, a log line written mid-run (a skipped clip) lands on a line of its own: what a terminal shows
    after the last carriage return starts with the log line's timestamp, not with a piece of the bar."""
    import re

    out = str(tmp_path)
    cfg = write_config(os.path.join(out, "run.json"), tiny_settings(out, broken_video_data[0], max_steps=3,
                                                                    batch_size=3, progress=True))
    r = run_cli(["--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train finetune" in r.stderr                                          # the bar was drawn
    logged = [ln for ln in r.stderr.split("\n") if "WARNING skipped" in ln]
    assert logged
    for ln in logged:
        shown = ln.split("\r")[-1]
        assert re.match(r"\d\d:\d\d:\d\d WARNING skipped", shown), repr(ln[-200:])

"""Smoke run of bench/sketch.py (tiny configs, 64x64 px, 4 frames, one run per side): the command works, the JSON
has its fields, and the sketch side really measured residuals that reached the UNet (non-zero residuals, a changed
guided output), so the bench cannot silently time nothing. Never a timing assertion (bench/README.md)."""
import json
import os
import subprocess
import sys

from comfyui_dynamicrafter.model.sketch import TINY_SKETCH, SketchEncoder, residual_count

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "sketch.py")
TINY = ["--config", "tiny", "--height", "64", "--width", "64", "--frames", "4", "--repeats", "1", "--warmup", "0",
        "--threads", "1"]


def test_sketch_bench_tiny_measures_real_residuals(tmp_path):
    out = tmp_path / "sketch.json"
    proc = subprocess.run([sys.executable, SCRIPT, *TINY, "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1                                                 # one JSON line
    r = json.loads(lines[0])
    assert json.loads(out.read_text()) == r
    assert r["command"].startswith("python bench/sketch.py --config tiny")
    assert r["latent_hw"] == [8, 8] and r["sketches"] == 4 and r["dtype"] == "fp32"
    for key in ("cpu_model", "logical_cpus", "torch", "torch_threads"):
        assert key in r["machine"], key
    a, b = r["sides"]["plain"], r["sides"]["sketch"]
    for side in (a, b):
        assert len(side["runs"]) == 1 and side["min_s"] > 0 and side["runs"][0]["threads"] == 1
        assert side["peak_rss_mb"] >= side["rss_before_mb"] > 0 and side["activation_peak_mb"] >= 0
    enc_params = sum(p.numel() for p in SketchEncoder(TINY_SKETCH).parameters())
    assert b["runs"][0]["params"] == a["runs"][0]["params"] + enc_params   # B holds the encoder, A does not
    assert a["runs"][0]["residuals"] == 0 and a["runs"][0]["residual_absmax_min"] is None
    assert b["runs"][0]["residuals"] == residual_count(TINY_SKETCH)
    assert b["runs"][0]["residual_absmax_min"] > 0                         # every residual non-zero
    change = r["output_change_b_vs_a"]
    assert change["max_abs"] > 1e-3 * change["max_abs_a"] and change["rel_l2"] > 1e-3   # they reached the output
    ratios = r["ratio_b_over_a"]
    assert ratios["time_min"] == b["min_s"] / a["min_s"]
    assert ratios["peak_rss"] == b["peak_rss_mb"] / a["peak_rss_mb"]


def test_sketch_bench_refuses_a_size_in_one_line():
    proc = subprocess.run([sys.executable, SCRIPT, *TINY, "--height", "100"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert "--height must be a positive multiple of 64" in last and "got 100" in last


"""CI smoke run of the benchmark (mid config, tiny sizes): the commands work and the JSON has its fields.

Never a timing assertion: times on a shared CI runner mean nothing. The figures come from bench/README.md's protocol.
"""
import json
import os
import subprocess
import sys

import pytest

from comfyui_dynamicrafter.tests.fixtures import fixture_sets, fixtures_root, set_ids

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench", "bench.py")
SMALL = ["--config", "mid", "--height", "64", "--width", "64", "--frames", "2", "--warmup", "0", "--repeats", "1",
         "--threads", "1", "--quiet"]


def _bench(tmp_path, *args):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, BENCH, *args, *SMALL, "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result                         # stdout carries the same JSON
    for key in ("bench_version", "command", "machine", "load_avg_before", "load_avg_after", "case", "wall_s"):
        assert key in result, key
    for key in ("cpu_model", "logical_cpus", "torch"):
        assert key in result["machine"], key
    return result


def _check_side(side):
    assert side["time_s"]["n"] == 1 and {"min", "median", "max"} <= set(side["time_s"])
    assert side["times_s"] and all(t > 0 for t in side["times_s"])
    mem = side["memory"]
    for key in ("peak_rss_run_mb", "rss_after_build_mb", "peak_rss_process_mb"):
        assert key in mem, key
    assert side["params"] > 0 and "settings" in side


def test_guided_ab_batched_vs_separate(tmp_path):
    r = _bench(tmp_path, "ab", "guided", "--ab-mode", "inprocess", "--a", "--guidance separate",
               "--b", "--guidance batched --kv-cache on")
    assert r["case"] == "ab" and r["ab_case"] == "guided"
    _check_side(r["a"])
    _check_side(r["b"])
    assert r["a"]["settings"]["guidance"] == "separate" and r["b"]["settings"]["guidance"] == "batched"
    assert {"min", "median", "max"} <= set(r["ratio_b_over_a"])
    diff = r["output_diff_b_vs_a"]
    assert "max_abs" in diff and diff["max_rel_to_absmax"] < 1e-4   # same math, float noise only


def test_ab_processes_with_worker_environment(tmp_path):
    """Sides that differ in a model setting run in two worker processes; --onednn-cache reaches B's environment."""
    r = _bench(tmp_path, "ab", "guided", "--a", "--dtype fp32", "--b", "--dtype bf16 --onednn-cache 0")
    assert r["ab_mode"] == "processes" and r["peak_rss_ratio_b_over_a"] > 0
    var = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
    assert r["a"]["worker_env"].get(var) == os.environ.get(var)        # A inherits the caller's environment
    assert r["b"]["worker_env"][var] == "0"
    assert r["b"]["settings"]["dtype"] == "bf16" and r["output_diff_b_vs_a"]["max_rel_to_absmax"] < 0.2


def test_sample_case(tmp_path):
    r = _bench(tmp_path, "sample", "--steps", "2", "--kv-cache", "on")
    _check_side(r)
    assert r["settings"]["steps"] == 2


def test_vae_case_chunked(tmp_path):
    r = _bench(tmp_path, "vae", "--vae-chunk", "1")
    _check_side(r)
    assert r["vae_chunk_frames"] == 1 and "activation_peak_mb" in r["memory"]


def _unet_sets():
    """Fixture sets (tests/fixtures.py: $PARITY_FIXTURES or ../shared/fixtures/parity) with a UNet forward record."""
    return [p for p in fixture_sets() if (p / "unet_forward.json").is_file()]


@pytest.mark.parametrize("fixture_set", _unet_sets() or [None], ids=set_ids(_unet_sets()) or ["none"])
def test_parity_case_if_fixtures(tmp_path, fixture_set):
    if fixture_set is None:
        pytest.skip(f"no parity fixture set with unet_forward.json under {fixtures_root()}")
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, BENCH, "parity", "--dtype", "bf16", "--fixtures", str(fixture_set),
                           "--quiet", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["fixtures"] == os.path.abspath(fixture_set)
    assert r["calls"] and 0 <= r["max_rel_to_absmax"] < 0.25


def test_parity_default_set_is_found():
    """Without --fixtures the bench takes the first set under the fixtures root, whatever its name."""
    sets = _unet_sets()
    if not sets:
        pytest.skip(f"no parity fixture set with unet_forward.json under {fixtures_root()}")
    from comfyui_dynamicrafter.bench import bench

    assert bench.default_fixture_set(str(fixtures_root())) == str(sets[0])


def _script(tmp_path, name, *args):
    out = tmp_path / (name + ".json")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", name + ".py"), *args, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"cpu_model", "logical_cpus", "torch"} <= set(result["machine"])
    return result


def test_toon_decode_bench_compares_equal_outputs(tmp_path):
    """The real decoder architecture at 32x48 px, 4 frames: both sides run, ours equals the reference structure
    (the time_stack is live: mix factors 0.5, norm scales 1), and the ratios are reported."""
    r = _script(tmp_path, "toon_decode", "--frames", "4", "--height", "32", "--width", "48", "--repeats", "1")
    assert set(r["sides"]) == {"reference", "ours"}
    for side in r["sides"].values():
        assert side["min_seconds"] > 0 and side["peak_rss_mb"] > side["runs"][0]["rss_before_mb"] > 0
    assert {"time", "peak_rss", "activation_peak"} <= set(r["ours_over_reference"])
    diff = r["output_diff"]
    assert 0 < diff["max_abs"] and diff["max_abs_relative"] < 1e-5, diff       # float noise, not an identity


def test_long_video_bench_reports_ratios(tmp_path):
    r = _script(tmp_path, "long_video", "--config", "tiny", "--frames", "16", "20", "--steps", "1",
                "--height", "32", "--width", "32")
    rows = {row["frames"]: row for row in r["rows"]}
    assert rows[16]["windows"] == 1 and rows[20]["windows"] == 2
    assert rows[16]["time_ratio"] == 1.0 and rows[20]["rss_ratio"] > 0

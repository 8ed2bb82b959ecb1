"""bench/gpu_check.py's dry plan (what CI can run: no CUDA): the plan names the two dynamic-VRAM settings and the CPU
float32 reference step, and the same pipeline (DCN_Conditioning + DCN_Sampler inside the host) runs on the tiny
config. Never a timing assertion. The full run needs a CUDA machine and ComfyUI v0.33 (see the script's doc)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.py")


def test_gpu_check_dry_plan_runs_the_tiny_pipeline():
    p = subprocess.run([sys.executable, SCRIPT, "--dry"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, p.stdout
    r = json.loads(lines[0])
    print(lines[0])
    assert r["dry"] is True and r["why_dry"] == "--dry"
    commands = [" ".join(run["command"]) for run in r["plan"]]
    assert len(commands) == 3
    assert "--vram on" in commands[0] and "--vram off" in commands[1] and "--cpu" in commands[2]
    assert all("--steps 50" in c for c in commands[:2])
    t = r["tiny"]
    assert t["shape"] == [4, 4, 8, 8] and t["finite"] and t["steps"] == 2
    assert t["s_per_step"] > 0 and t["total_s"] > 0
    assert t["single_vs_full_max_diff"] > 0                   # one step is not two: the comparison sees a difference

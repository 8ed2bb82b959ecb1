#!/usr/bin/env python
"""ToonCrafter sketch guidance benchmark: one guided DDIM step's model work with dense sketches (B) vs without (A).

    python bench/sketch.py [--config 512 --height 160 --width 256 --frames 16 --repeats 2 --warmup 1]
                           [--json bench/results/sketch_step.json]

A guided step = the CFG branches (``--mode multi``: cond, uc, uc_img, model/sampler.py) of one latent batched into
one UNet call, then the CFG combination (7.5 / 5.0) and rescale 0.7, as the pack's sampler runs it. Side B adds the
sketch encoder's residuals for every frame (``--frames`` dense sketches, strength 1) to every branch (the reference
rule) through model/sketch.py ``sketch_residuals`` and the UNet's ``control`` path (model/control.py); A has no
encoder in memory. ``--config 512``: the ToonCrafter (512-interp) UNet and the released sketch encoder
(``SketchConfig()``), random weights (bench/weights.py), fp32; ``tiny``: the tests' configs.

Every timed run is its own fresh worker process (build, ``--warmup`` untimed steps, one timed step), run A, B, A,
B, ..., so each peak RSS is that side's alone (``/proc/self/clear_refs`` = 5 before the timed step, then ``VmHWM``)
and only one model is in memory at a time. Prints one JSON line: per side the times, peak RSS, RSS before the step
and the activation peak (peak - before); the B/A ratios; how much the residuals changed the guided output (B vs A,
same seeds: zero would mean the residuals never reached the UNet); the machine record (bench/machine.py).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("plain", "sketch")                                                # A, B


def build(args, side):
    """The UNet (and on the sketch side the encoder), random weights, built on the meta device then filled."""
    import torch
    from comfyui_dynamicrafter.bench.weights import init_random_  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.model.sketch import SketchEncoder, sketch_config  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.model.unet import UNetModel  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.model.variants import get_variant  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    tiny = args.config == "tiny"
    models = []
    with torch.device("meta"):
        models.append(UNetModel(get_variant("tooncrafter", tiny=tiny).unet))
        if side == "sketch":
            models.append(SketchEncoder(sketch_config("tiny" if tiny else None)))
    for i, m in enumerate(models):
        m.to_empty(device="cpu").eval()
        init_random_(m, args.seed + i)                                     # N(0, 1/fan_in): zero convs non-zero
    return models[0], (models[1] if side == "sketch" else None)


def step_inputs(unet, args):
    """Seeded latent, concat latent, per-branch contexts (77 text + 16 image tokens per frame), fs, sketches."""
    import torch
    from comfyui_dynamicrafter.model.sampler import guidance_branches  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    g = torch.Generator().manual_seed(args.seed + 7)
    cfg, t, h, w = unet.cfg, args.frames, args.height // 8, args.width // 8
    branches = guidance_branches(args.mode, 7.5)
    tokens = cfg.text_context_len + t * cfg.image_tokens_per_frame
    x = torch.randn(1, 4, t, h, w, generator=g)
    k = len(branches)
    return dict(branches=branches, x=x.repeat(k, 1, 1, 1, 1), t=torch.full((k,), 500),
                concat=torch.randn(1, 4, t, h, w, generator=g).repeat(k, 1, 1, 1, 1),
                context=torch.randn(k, tokens, cfg.context_dim, generator=g), fs=torch.full((k,), 10),
                hints=torch.rand(t, 1, 8 * h, 8 * w, generator=g), mask=torch.ones(t))


def guided_step(unet, encoder, inp, strength):
    """One step's model work -> (guided output, the residuals' smallest max-abs or None, number of residuals)."""
    import torch
    from comfyui_dynamicrafter.model.sampler import combine_guidance, rescale_guidance  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.model.sketch import sketch_residuals  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    control, smallest = None, None
    if encoder is not None:
        control = sketch_residuals(encoder, inp["x"], inp["t"], inp["context"], inp["hints"], inp["mask"], strength)
        smallest = min(float(r.abs().max()) for r in control["output"] + control["middle"])
    y = unet(torch.cat([inp["x"], inp["concat"]], dim=1), inp["t"], inp["context"], inp["fs"], control=control)
    parts = dict(zip(inp["branches"], y.float().chunk(len(inp["branches"]))))
    guided = rescale_guidance(combine_guidance(parts, 7.5, 5.0 if "uc_img" in parts else None), parts["cond"], 0.7)
    return guided, smallest, (len(control["output"]) + len(control["middle"]) if control else 0)


def worker(args) -> None:
    runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]()
    import torch
    from comfyui_dynamicrafter.bench.machine import _status_kb, mib, reset_peak_rss  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    unet, encoder = build(args, args.worker)
    build_s = time.perf_counter() - t0
    inp = step_inputs(unet, args)
    for _ in range(args.warmup):
        guided_step(unet, encoder, inp, args.strength)
    rss0 = mib(_status_kb("VmRSS"))
    reset_peak_rss()
    t0 = time.perf_counter()
    out, smallest, count = guided_step(unet, encoder, inp, args.strength)
    dt = time.perf_counter() - t0
    peak = mib(_status_kb("VmHWM"))
    torch.save(out, args.out)
    print(json.dumps(dict(seconds=dt, peak_rss_mb=peak, rss_before_mb=rss0, activation_peak_mb=peak - rss0,
                          build_s=round(build_s, 1), threads=torch.get_num_threads(), residuals=count,
                          residual_absmax_min=smallest,
                          params=sum(p.numel() for m in (unet, encoder) if m is not None for p in m.parameters()))))


def summarize(runs):
    times = [r["seconds"] for r in runs]
    return dict(runs=runs, times_s=times, min_s=min(times), median_s=statistics.median(times),
                peak_rss_mb=max(r["peak_rss_mb"] for r in runs), rss_before_mb=max(r["rss_before_mb"] for r in runs),
                activation_peak_mb=max(r["activation_peak_mb"] for r in runs))


def run_sides(args, argv, tmp):
    """A, B, A, B, ...: one fresh worker per timed run; the last outputs of both sides are kept for the diff."""
    import torch

    runs = {s: [] for s in SIDES}
    outs = {}
    for _ in range(args.repeats):
        for side in SIDES:
            out = os.path.join(tmp, side + ".pt")
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", side, "--out", out]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"bench/sketch.py: the {side} worker failed (exit {proc.returncode}):\n"
                                 + proc.stderr[-3000:])
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            outs[side] = torch.load(out, weights_only=True)
    a, b = outs["plain"], outs["sketch"]
    change = dict(max_abs=float((b - a).abs().max()), max_abs_a=float(a.abs().max()),
                  rel_l2=float((b - a).norm() / a.norm()))
    return {s: summarize(r) for s, r in runs.items()}, change


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="512", choices=["512", "tiny"],
                   help="512: ToonCrafter UNet + released sketch encoder (random weights); tiny: the tests' configs")
    p.add_argument("--height", type=int, default=160, help="pixels (latent = /8)")
    p.add_argument("--width", type=int, default=256, help="pixels (latent = /8)")
    p.add_argument("--frames", type=int, default=16, help="frames, each with a sketch on side B")
    p.add_argument("--mode", default="multi", choices=["multi", "single"],
                   help="guidance branches: multi = cond, uc, uc_img; single = cond, uc (ToonCrafter's cfg_image None)")
    p.add_argument("--strength", type=float, default=1.0, help="sketch strength (the reference's control_scale)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side, each in a fresh worker")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps in each worker before the timed one")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--worker", default=None, choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    for name in ("height", "width"):
        if getattr(args, name) <= 0 or getattr(args, name) % 64:
            p.error(f"--{name} must be a positive multiple of 64 (the UNet's 3 downsamplings of the /8 latent); "
                    f"got {getattr(args, name)}")
    if args.frames < 1 or args.repeats < 1 or args.warmup < 0:
        p.error(f"--frames and --repeats must be >= 1 and --warmup >= 0; got {args.frames}, {args.repeats}, "
                f"{args.warmup}")
    runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]()
    from comfyui_dynamicrafter.bench.machine import machine_info, write_json  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sides, change = run_sides(args, argv, tmp)     # a worker writes no --json
    a, b = sides["plain"], sides["sketch"]
    result = dict(case="tooncrafter sketch guided step", command="python bench/sketch.py " + shlex.join(argv),
                  settings={k: v for k, v in vars(args).items() if k not in ("worker", "out", "json")},
                  latent_hw=[args.height // 8, args.width // 8], sketches=args.frames, dtype="fp32",
                  a="plain", b="sketch", sides=sides,
                  ratio_b_over_a=dict(time_min=b["min_s"] / a["min_s"], time_median=b["median_s"] / a["median_s"],
                                      peak_rss=b["peak_rss_mb"] / a["peak_rss_mb"],
                                      activation_peak=b["activation_peak_mb"] / a["activation_peak_mb"]),
                  output_change_b_vs_a=change, machine=machine_info(), load_avg_before=load0,
                  load_avg_after=os.getloadavg()[0], wall_s=round(time.perf_counter() - t0, 1))
    text = json.dumps(result)
    print(text)
    write_json(args.json, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

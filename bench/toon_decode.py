#!/usr/bin/env python
"""ToonCrafter decode benchmark: our low-memory stream vs the reference structure, real decoder, random weights.

    python bench/toon_decode.py [--frames 16 --height 320 --width 512 --dtype fp32 --frames-per-pass 1
                                 --keep-h1 below-top --repeats 2 --warmup 0] [--json bench/results/toon_decode.json]

Sides (each in a fresh worker process, run one after the other, so each peak RSS is its own):

* ``reference``: the reference structure, ``VideoDecoder.forward``: the whole 16-frame chunk through every layer
  at once (as the official ``decode_first_stage`` with ``perframe_ae``), attention through PyTorch SDPA (the same
  memory-efficient kernel as ours; the official exact-softmax stand-in would need ~100 GB at 80x128 fusion).
  It uses model/vae.py's blocks, whose activations are in place at inference, so it needs less memory than the
  official code: the ratio below is conservative.
* ``ours``: ``VideoDecoder.stream`` (``DualRefAutoencoderKL.decode`` default), exact.

Both decode one chunk of ``--frames`` latent frames with the same first/last references (random hidden states of
the right shapes). Reported per side: wall time per run, peak RSS of the run (``/proc/self/clear_refs`` = 5, then
``VmHWM``) and RSS before it (the built model); then ours/reference ratios and the output difference.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]()
    import torch
    from comfyui_dynamicrafter.bench.machine import _status_kb, mib, reset_peak_rss  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.bench.weights import init_random_  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.model.dtypes import dtype_from_name  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)
    from comfyui_dynamicrafter.model.tooncrafter import DualRefAutoencoderKL, DualRefVAEConfig  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    dtype = dtype_from_name(args.dtype)
    with torch.device("meta"):
        vae = DualRefAutoencoderKL(DualRefVAEConfig(), dtype=dtype)
    del vae.encoder                                                        # decode only
    vae.to_empty(device="cpu").eval()
    init_random_(vae, args.seed)                                           # N(0, 1/fan_in); norm scales 1; biases 0
    with torch.no_grad():                                                  # mix factors: time_stack weight != 1/2
        for m in vae.modules():
            if hasattr(m, "mix_factor"):
                m.mix_factor.fill_(0.5)
    g = torch.Generator().manual_seed(args.seed)
    cfg, f = vae.cfg, vae.downscale
    h, w = args.height // f, args.width // f
    z = torch.randn(1, cfg.embed_dim, args.frames, h, w, generator=g)
    hs = [torch.randn(1, cfg.ch * m, 2, args.height // 2 ** i, args.width // 2 ** i, generator=g)
          for i, m in enumerate(cfg.ch_mult)] + [torch.randn(1, cfg.ch, 2, args.height, args.width, generator=g)]
    kw = dict(temporal_length=args.frames)
    if args.worker == "reference":
        kw.update(structure="forward")
    else:
        kw.update(structure="stream", frames_per_pass=args.frames_per_pass, keep_h1=args.keep_h1)
    runs = []
    for i in range(args.warmup + args.repeats):
        rss0 = mib(_status_kb("VmRSS"))
        reset_peak_rss()
        t0 = time.perf_counter()
        with torch.no_grad():
            y = vae.decode(z, hs, **kw)
        dt = time.perf_counter() - t0
        runs.append(dict(warmup=i < args.warmup, seconds=dt, rss_before_mb=rss0, peak_rss_run_mb=mib(_status_kb("VmHWM"))))
        if i < args.warmup + args.repeats - 1:
            del y
    torch.save(y.float(), args.out)
    print(json.dumps(dict(runs=runs, threads=torch.get_num_threads(), torch=torch.__version__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16, help="latent frames = one decode chunk (reference: 16)")
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--frames-per-pass", type=int, default=1, help="ours: frames per spatial pass")
    p.add_argument("--keep-h1", default="below-top", choices=["all", "none", "below-top"], help="ours: h1 policy")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="reference,ours")
    p.add_argument("--json", default=None, help="write the result here (default: print only)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]()
    import torch
    from comfyui_dynamicrafter.bench.machine import machine_info, write_json  # lazy: the worker process imports the pack once it has registered it (cli/bootstrap.py)

    result = dict(case="tooncrafter decode", command="python " + " ".join(shlex.quote(a) for a in sys.argv),
                  machine=machine_info(), settings={k: v for k, v in vars(args).items() if k not in ("worker", "out")},
                  sides={})
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides.split(","):
            out = os.path.join(tmp, side + ".pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--out", out] + [
                a for a in (argv if argv is not None else sys.argv[1:])]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            timed = [x for x in r["runs"] if not x["warmup"]]
            r.update(min_seconds=min(x["seconds"] for x in timed),
                     peak_rss_mb=max(x["peak_rss_run_mb"] for x in timed),
                     activation_peak_mb=max(x["peak_rss_run_mb"] - x["rss_before_mb"] for x in timed))
            result["sides"][side] = r
            outs[side] = torch.load(out, weights_only=True)
    if {"reference", "ours"} <= set(outs):
        ref, ours = outs["reference"], outs["ours"]
        a, b = result["sides"]["reference"], result["sides"]["ours"]
        result["ours_over_reference"] = dict(
            time=b["min_seconds"] / a["min_seconds"], peak_rss=b["peak_rss_mb"] / a["peak_rss_mb"],
            activation_peak=b["activation_peak_mb"] / a["activation_peak_mb"])
        result["output_diff"] = dict(
            max_abs=(ours - ref).abs().max().item(), max_abs_ref=ref.abs().max().item(),
            max_abs_relative=((ours - ref).abs().max() / ref.abs().max()).item(),
            rel_l2=((ours - ref).norm() / ref.norm()).item())
    text = json.dumps(result, indent=1)
    print(text)
    write_json(args.json, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

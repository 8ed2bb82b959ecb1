#!/usr/bin/env python
"""GPU check: DCN_Sampler on the real-size 512 UNet (random weights) inside a ComfyUI host, with the host's dynamic
VRAM on and off, ready for the first CUDA machine at hand. One JSON line on stdout.

    .venv/bin/python bench/gpu_check.py [--comfyui PATH] [--steps 50] [--dry]

On a CUDA machine with a host that has dynamic VRAM (ComfyUI v0.33: ``--enable-dynamic-vram`` /
``--disable-dynamic-vram``; found in its cli_args, never by version): one worker process per setting starts the
host on the GPU, builds the 512 UNet (random weights, the host's weight dtype) as the loader does
(nodes/native.build_model), a random-weight VAE, random text and image tokens, runs DCN_Conditioning at
320x512x16 and DCN_Sampler for ``--steps`` steps (dual CFG 7.5/7.5, eta 1, rescale 0.7) and one single step; a
last worker runs that single step on the CPU in float32. Reported: s/step, total s per setting, peak VRAM (torch
allocated and reserved), the max difference between the two settings' latents, and each setting's single step
against the CPU float32 one. Budget: 8 minutes on an H100 including set-up (``--budget-s``: a worker that would
start past it is skipped, and said so).

Without CUDA, or with ``--dry``: the plan (what would run) and the same pipeline in this process on the tiny config
at 64x64x4, 2 steps, on the CPU, in seconds once the host is up (tests/bench/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = dict(config=None, width=512, height=320, frames=16)
DRY = dict(config="tiny", width=64, height=64, frames=4, steps=2)
SAMPLER = dict(cfg_text=7.5, cfg_image=7.5, eta=1.0, guidance_rescale=0.7, spacing="auto", mode="multi")
FLAGS = {"on": "--enable-dynamic-vram", "off": "--disable-dynamic-vram"}


def _pack(host, name):
    return sys.modules[f"{host.pack_module_name}.{name}"]


def build_inputs(host, config, width, height, frames, seed=0):
    """(MODEL, the conditioning node's four outputs) of the 512 variant in ``config`` (None: real size)."""
    import torch

    import comfy.sd

    tiny = _pack(host, "model.tiny")                       # the pack as the host imported it (its own classes)
    variant = _pack(host, "model.variants").get_variant("512", tiny=config or False)
    sd = tiny.unet_and_p("512", seed, config=config) if config else _real_unet(host, variant, seed)
    unet = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    model = _pack(host, "nodes.native").build_model(variant, unet)
    del sd, unet
    vae_sd = tiny.random_tensors(tiny.vae_shapes(), seed=seed + 3)
    vae = comfy.sd.VAE(sd={k[len("first_stage_model."):]: v for k, v in vae_sd.items()})
    gen = torch.Generator().manual_seed(seed)
    d = variant.resampler.output_dim
    tokens = variant.resampler.num_queries * variant.resampler.video_length          # P: 16 per frame x 16 frames
    embeds = {"cond": torch.randn(1, tokens, d, generator=gen), "uncond": torch.randn(1, tokens, d, generator=gen),
              "variant": variant}
    text = [[torch.randn(1, 77, variant.unet.context_dim, generator=gen), {}]]
    empty = [[torch.randn(1, 77, variant.unet.context_dim, generator=gen), {}]]
    image = torch.rand(1, height, width, 3, generator=gen)
    cond = _pack(host, "nodes.conditioning").DCN_Conditioning().condition(
        text, empty, embeds, vae, image, width, height, frames, 24, False)
    cond = cond["result"] if isinstance(cond, dict) else cond
    return model, cond


def _real_unet(host, variant, seed):
    """Real-size random UNet weights (N(0, 1/fan_in), the tiny files' rule), on the GPU when there is one (fast)."""
    import torch

    UNetModel = _pack(host, "model.unet").UNetModel
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device("meta"):
        net = UNetModel(variant.unet)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for k, t in net.state_dict().items():
        fan_in = max(1, t[0].numel()) if t.dim() > 1 else 0
        v = (torch.randn(t.shape, generator=gen, device=device) / fan_in ** 0.5) if fan_in \
            else (torch.ones(t.shape, device=device) if k.endswith("weight") else torch.zeros(t.shape, device=device))
        out["model.diffusion_model." + k] = v.cpu()
    return out


def run_case(host, config, width, height, frames, steps, seed=7) -> dict:
    """DCN_Sampler ``steps`` steps and one single step inside a started host; timings, peak VRAM, latents."""
    import torch

    cuda = torch.cuda.is_available() and not host.cpu
    t0 = time.perf_counter()
    model, (pos, img, neg, latent) = build_inputs(host, config, width, height, frames)
    setup = time.perf_counter() - t0
    sampler = _pack(host, "nodes.sampler_nodes").DCN_Sampler()

    def sample(n):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = sampler.sample(model, pos, img, neg, latent, seed, n, **SAMPLER)
        out = out["result"] if isinstance(out, dict) else out
        if cuda:
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20) if cuda \
            else (None, None)
        return out[0]["samples"].float().cpu(), time.perf_counter() - t, peak

    one, t_one, _ = sample(1)
    full, total, (alloc, reserved) = sample(steps)
    return {"setup_s": round(setup, 2), "steps": steps, "total_s": round(total, 3),
            "s_per_step": round(total / steps, 4), "single_step_s": round(t_one, 3),
            "peak_vram_allocated_mib": alloc and round(alloc), "peak_vram_reserved_mib": reserved and round(reserved),
            "patcher": type(model).__name__, "latents": full, "single": one}


def start_host(comfyui, cpu, extra_args=()):
    runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]()
    from comfyui_dynamicrafter.cli import headless  # lazy: the pack is registered (cli/bootstrap.py) only when a GPU run starts a host

    info = headless.find_host(comfyui)
    host = headless.Host(info, tempfile.mkdtemp(prefix="dc-gpu-check-"), cpu=cpu, extra_args=list(extra_args))
    return host.start()


def worker(args) -> None:
    """One setting in this process: start the host (GPU, or CPU float32 for the reference step), run, save."""
    import torch

    extra = [FLAGS[args.vram]] if args.vram else []
    if args.cpu:
        extra += ["--force-fp32"]
    host = start_host(args.comfyui, cpu=args.cpu, extra_args=extra)
    res = run_case(host, None, FULL["width"], FULL["height"], FULL["frames"], 1 if args.cpu else args.steps)
    torch.save({"latents": res.pop("latents"), "single": res.pop("single")}, args.out)
    print(json.dumps(res), flush=True)


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def dry(args) -> dict:
    host = start_host(args.comfyui, cpu=True)
    t = time.perf_counter()
    res = run_case(host, DRY["config"], DRY["width"], DRY["height"], DRY["frames"], DRY["steps"])
    lat, one = res.pop("latents"), res.pop("single")
    return {"dry": True, "plan": plan(args, host), "tiny": dict(res, seconds=round(time.perf_counter() - t, 2),
                                                              shape=list(lat.shape), finite=bool(lat.isfinite().all()),
                                                              single_vs_full_max_diff=max_diff(one, lat))}


def plan(args, host=None) -> list:
    base = [sys.executable, os.path.abspath(__file__), "--worker"] + (["--comfyui", args.comfyui] if args.comfyui else [])
    size = f"{FULL['height']}x{FULL['width']}x{FULL['frames']}"
    runs = [{"what": f"dynamic VRAM {v}: 512 UNet {size}, {args.steps} DCN_Sampler steps + 1 single step",
             "command": base + ["--vram", v, "--steps", str(args.steps)]} for v in FLAGS]
    runs.append({"what": f"CPU float32 single step {size}", "command": base + ["--cpu"]})
    return runs


def full(args) -> dict:
    import torch

    t_start = time.perf_counter()
    out, results, skipped = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="dc-gpu-check-") as tmp:
        for i, run in enumerate(plan(args)):
            name = run["command"][run["command"].index("--vram") + 1] if "--vram" in run["command"] else "cpu_fp32"
            if time.perf_counter() - t_start > args.budget_s:
                skipped.append(name)
                continue
            path = os.path.join(tmp, f"{name}.pt")
            p = subprocess.run(run["command"] + ["--out", path], capture_output=True, text=True,
                               timeout=max(60, args.budget_s - (time.perf_counter() - t_start)) + 60)
            if p.returncode != 0:
                results[name] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
                continue
            results[name] = json.loads(p.stdout.strip().splitlines()[-1])
            out[name] = torch.load(path, weights_only=True)
    diffs = {}
    if "on" in out and "off" in out:
        diffs["on_vs_off_latents"] = max_diff(out["on"]["latents"], out["off"]["latents"])
    for v in FLAGS:
        if v in out and "cpu_fp32" in out:
            diffs[f"{v}_single_step_vs_cpu_fp32"] = max_diff(out[v]["single"], out["cpu_fp32"]["single"])
    return {"dry": False, "device": torch.cuda.get_device_name(0), "runs": results, "max_abs_diff": diffs,
            "skipped_over_budget": skipped, "wall_s": round(time.perf_counter() - t_start, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", default=None, help="the ComfyUI folder (default: as generate.py finds one)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dry", action="store_true", help="the plan and the tiny-config pipeline on the CPU")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no worker after this many seconds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vram", choices=list(FLAGS), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import torch

    has_flags = False
    if torch.cuda.is_available() and not args.dry:
        runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]()
        from comfyui_dynamicrafter.cli import headless  # lazy: the pack is registered (cli/bootstrap.py) only when a GPU run starts a host

        has_flags = set(FLAGS.values()) <= headless.find_host(args.comfyui).cli_flags()
    if not has_flags:
        result = dry(args)
        result["why_dry"] = ("--dry" if args.dry else "no CUDA device" if not torch.cuda.is_available()
                             else "this host has no dynamic-VRAM flags (ComfyUI v0.33 has them)")
    else:
        result = full(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""DynamiCrafter speed/memory benchmark: one command per case, every setting a flag, JSON out.

    python bench/bench.py CASE [flags]              # CASE: forward | guided | sample | vae | parity
    python bench/bench.py ab CASE --a "FLAGS" --b "FLAGS" [common flags]   # alternate two settings, report B/A
    (or ``python -m bench.bench ...`` from the repository root)

Each case runs in a fresh worker process (so peak RSS belongs to that case only); the driver sends it one
"run" per repeat and collects the wall time and the peak memory of every run. ``ab`` keeps two workers alive and
alternates A, B, A, B, ... so load drift on a shared machine hits both sides alike. Protocol: bench/README.md.
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
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, "", "bench"):
    # Run as a script or as ``-m bench.bench``: import the pack under its fixed name (as train.py and the tests do),
    # so the relative imports below reach model/ like every other module of the pack.
    __package__ = runpy.run_path(os.path.join(ROOT, "cli", "bootstrap.py"))["register"]() + ".bench"

import torch  # noqa: E402

from ..model import config, unet  # noqa: E402
from . import ops  # noqa: E402
from .machine import machine_info  # noqa: E402
from .variants import ATTENTION_FUNCTIONS  # noqa: E402
from .worker import DTYPES, MODEL_KEYS, WEIGHT_DTYPES, Worker  # noqa: E402

BENCH_VERSION = 1
CASES = ("forward", "guided", "sample", "vae", "parity")


# =================================================================================================================
# Flags
# =================================================================================================================
def add_setting_flags(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--config", default=d("mid"), choices=["tiny", "mid", "512", "1024"],
                   help="UNet/VAE architecture: real 512/1024 (random weights), mid, or tiny (tests)")
    p.add_argument("--height", type=int, default=d(None), help="pixels (default 128 for UNet cases, 320 for vae)")
    p.add_argument("--width", type=int, default=d(None), help="pixels (default 128 for UNet cases, 512 for vae)")
    p.add_argument("--frames", type=int, default=d(16))
    p.add_argument("--batch", type=int, default=d(1), help="samples per conditioning")
    p.add_argument("--dtype", default=d("fp32"), choices=list(DTYPES), help="compute dtype")
    p.add_argument("--weights", default=d(None), choices=list(WEIGHT_DTYPES),
                   help="weight storage dtype (default: = --dtype); differs -> cast-on-use layers")
    p.add_argument("--attention", default=d("sdpa"), choices=["sdpa", "explicit"])
    p.add_argument("--guidance", default=d("batched"), choices=["batched", "separate"],
                   help="3 guidance branches as one batched UNet call or three calls")
    p.add_argument("--prefix", default=d("on"), choices=["on", "off"],
                   help="run layers before the first cross-attention once for identical branches")
    p.add_argument("--kv-cache", default=d("off"), choices=["on", "off"],
                   help="cache the constant context's K/V across calls (steps)")
    p.add_argument("--reference-layout", default=d("off"), choices=["on", "off"],
                   help="reference structure: text/image K/V projected per frame, no shared prefix")
    p.add_argument("--channels-last", default=d("off"), choices=["on", "off"])
    p.add_argument("--inplace", default=d("on"), choices=["on", "off"],
                   help="inference: residual sums / activations written into fresh results")
    p.add_argument("--ff-chunk-mb", type=float, default=d(16),
                   help="transformer feed-forward in row chunks under this many MiB (0: off)")
    p.add_argument("--temporal-conv", default=d("conv2d"), choices=["conv2d", "conv3d"],
                   help="temporal (3,1,1) convs as Conv2d over (t, h*w) or plain Conv3d")
    p.add_argument("--compile", default=d("off"), choices=["off", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--steps", type=int, default=d(10), help="sampling steps (case sample)")
    p.add_argument("--vae-chunk", type=int, default=d(None), help="frames per VAE decode chunk (0: all at once)")
    p.add_argument("--vae-cap-mb", type=float, default=d(None),
                   help="VAE decode activation cap in MiB -> chunk size (when --vae-chunk is not given)")
    p.add_argument("--repeats", type=int, default=d(3))
    p.add_argument("--warmup", type=int, default=d(1))
    p.add_argument("--threads", type=int, default=d(None), help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=d("cpu"))
    p.add_argument("--malloc", default=d("default"), choices=["default", "thp"],
                   help="thp: worker runs with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for "
                        "large tensors: fewer page faults; Linux/glibc >= 2.35 only)")
    p.add_argument("--onednn-cache", type=int, default=d(None),
                   help="worker runs with ONEDNN_PRIMITIVE_CACHE_CAPACITY=N (0: oneDNN keeps no primitives, and so "
                        "none of the blocked bf16 weight copies they hold, between layer calls on a CPU)")
    p.add_argument("--seed", type=int, default=d(0))
    p.add_argument("--fixtures", default=d(None), help="parity fixture set folder (case parity)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=CASES + ("ab",))
    p.add_argument("ab_case", nargs="?", choices=CASES, help="with 'ab': the case to compare")
    add_setting_flags(p)
    p.add_argument("--a", default="", help="ab: flags of side A (override the common flags)")
    p.add_argument("--b", default="", help="ab: flags of side B")
    p.add_argument("--ab-mode", default="processes", choices=["processes", "inprocess", "auto"],
                   help="ab: one worker per side (separate peaks) or one shared worker")
    p.add_argument("--json", default=None, help="write the result JSON here")
    p.add_argument("--quiet", action="store_true")
    return p


def side_settings(base: argparse.Namespace, extra: str) -> Dict[str, Any]:
    """The common settings with one side's flags applied on top."""
    p = argparse.ArgumentParser(prog="side flags")
    add_setting_flags(p, defaults=False)
    over = vars(p.parse_args(shlex.split(extra)))
    s = {k: v for k, v in vars(base).items() if k not in ("a", "b", "ab_mode", "json", "quiet", "ab_case")}
    s.update(over)
    return s


def normalize(s: Dict[str, Any]) -> Dict[str, Any]:
    s = dict(s)
    vae = s["case"] == "vae"
    s["height"] = s["height"] or (320 if vae else 128)
    s["width"] = s["width"] or (512 if vae else 128)
    s["weights"] = s["weights"] or s["dtype"]
    return s


# =================================================================================================================
# Worker: builds the model(s) once, then runs the case on request
# =================================================================================================================


def worker_main() -> None:
    """Line protocol on stdin/stdout: {"cmd": "run", "settings": {...}} -> record; "save" -> output file; "stop"."""
    out = sys.stdout
    sys.stdout = sys.stderr                                                   # stray prints go to stderr
    first = json.loads(sys.stdin.readline())
    try:
        w = Worker(first["settings"])
        out.write(json.dumps({"ok": True, **w.summary()}) + "\n")
    except Exception as e:  # noqa: BLE001
        out.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        raise
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "stop":
            out.write(json.dumps(w.summary()) + "\n")
            out.flush()
            return
        try:
            if msg["cmd"] == "run":
                rec = w.run_once(msg["settings"])
            elif msg["cmd"] == "save":
                w.torch.save(w.last_out.detach().float().cpu(), msg["path"])
                rec = {"saved": msg["path"]}
            else:
                rec = {"error": "unknown command"}
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            rec = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(rec) + "\n")
        out.flush()


class WorkerProc:
    def __init__(self, settings: Dict[str, Any]):
        env = dict(os.environ)
        if settings.get("onednn_cache") is not None:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(int(settings["onednn_cache"]))
        if settings.get("malloc") == "thp":
            env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.info = self.ask({"settings": settings})
        if not self.info.get("ok"):
            raise RuntimeError(f"worker failed to build: {self.info.get('error')}")

    def ask(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        self.p.stdin.write(json.dumps(msg) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited (rc {self.p.wait()})")
        return json.loads(line)

    def run(self, settings):
        rec = self.ask({"cmd": "run", "settings": settings})
        if "error" in rec:
            raise RuntimeError(rec["error"])
        return rec

    def stop(self) -> Dict[str, Any]:
        try:
            info = self.ask({"cmd": "stop"})
        finally:
            self.p.stdin.close()
            self.p.wait(timeout=120)
        return info


# =================================================================================================================
# Driver
# =================================================================================================================
def stats(xs: List[float]) -> Dict[str, Any]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {}
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4), "max": round(max(xs), 4),
            "n": len(xs)}


def side_result(settings, records, info_start, info_end) -> Dict[str, Any]:
    res = {"settings": settings, "time_s": stats([r["time_s"] for r in records]),
           "times_s": [round(r["time_s"], 4) for r in records],
           "memory": {"peak_rss_run_mb": max((r["peak_rss_mb"] or 0) for r in records) if records else None,
                      "rss_after_build_mb": info_start.get("rss_after_build_mb"),
                      "rss_anon_after_runs_mb": records[-1].get("rss_anon_mb") if records else None,
                      "rss_file_after_runs_mb": records[-1].get("rss_file_mb") if records else None,
                      "peak_rss_process_mb": info_end.get("peak_rss_process_mb")},
           "params": info_start.get("params"), "param_mb": info_start.get("param_mb"),
           "build_s": info_start.get("build_s"), "worker_env": info_start.get("worker_env", {})}
    if records and "cuda_peak_allocated_mb" in records[0]:
        res["memory"]["cuda_peak_allocated_mb"] = max(r["cuda_peak_allocated_mb"] for r in records)
        res["memory"]["cuda_peak_reserved_mb"] = max(r["cuda_peak_reserved_mb"] for r in records)
    if records and "vae_chunk_frames" in records[0]:
        res["vae_chunk_frames"] = records[0]["vae_chunk_frames"]
        res["memory"]["activation_peak_mb"] = round(res["memory"]["peak_rss_run_mb"]
                                                    - (res["memory"]["rss_after_build_mb"] or 0), 1)
        res["memory"]["cap_mb"] = settings.get("vae_cap_mb")
    return res


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_single(s: Dict[str, Any], quiet: bool) -> Dict[str, Any]:
    w = WorkerProc(s)
    log(f"[{s['case']}] built in {w.info['build_s']} s, {w.info['params']/1e6:.1f} M params, "
        f"RSS {w.info['rss_after_build_mb']} MiB", quiet)
    recs = []
    for i in range(s["warmup"] + s["repeats"]):
        r = w.run(s)
        log(f"  run {i} ({'warmup' if i < s['warmup'] else 'timed'}): {r['time_s']:.3f} s, "
            f"peak RSS {r['peak_rss_mb']} MiB", quiet)
        if i >= s["warmup"]:
            recs.append(r)
    end = w.stop()
    return side_result(s, recs, w.info, end)


def run_ab(sa: Dict[str, Any], sb: Dict[str, Any], mode: str, quiet: bool) -> Dict[str, Any]:
    same_model = all(sa[k] == sb[k] for k in MODEL_KEYS) and sa["case"] == sb["case"]
    if mode == "auto":
        mode = "inprocess" if same_model else "processes"
    if mode == "inprocess" and not same_model:
        raise SystemExit(f"--ab-mode inprocess needs the same {MODEL_KEYS} on both sides")
    wa = WorkerProc(sa)
    wb = wa if mode == "inprocess" else WorkerProc(sb)
    log(f"[ab {sa['case']}] mode {mode}; A built {wa.info['build_s']} s, B built {wb.info['build_s']} s", quiet)
    ra, rb = [], []
    n = max(sa["warmup"], sb["warmup"]) + max(sa["repeats"], sb["repeats"])
    warm = max(sa["warmup"], sb["warmup"])
    for i in range(n):
        for side, w, s, recs in (("A", wa, sa, ra), ("B", wb, sb, rb)):
            r = w.run(s)
            log(f"  {side} run {i} ({'warmup' if i < warm else 'timed'}): {r['time_s']:.3f} s, "
                f"peak RSS {r['peak_rss_mb']} MiB", quiet)
            if i >= warm:
                recs.append(r)
    diff = None
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = os.path.join(tmp, "a.pt"), os.path.join(tmp, "b.pt")
        try:
            wa.run(sa)
            wa.ask({"cmd": "save", "path": pa})
            wb.run(sb)
            wb.ask({"cmd": "save", "path": pb})
            ya, yb = torch.load(pa, weights_only=True), torch.load(pb, weights_only=True)
            d = (ya - yb).abs()
            diff = {"max_abs": float(d.max()), "max_rel_to_absmax": float(d.max() / ya.abs().max().clamp(min=1e-12))}
        except Exception as e:  # noqa: BLE001
            diff = {"error": str(e)}
    ea = wa.stop()
    eb = ea if wb is wa else wb.stop()
    A, B = side_result(sa, ra, wa.info, ea), side_result(sb, rb, wb.info, eb)
    if mode == "inprocess":
        for side in (A, B):
            side["memory"]["note"] = "shared worker: peaks are not separable, run the sides alone for memory"
    ratio = {k: round(B["time_s"][k] / A["time_s"][k], 4) for k in ("min", "median", "max")}
    pa_, pb_ = A["memory"]["peak_rss_run_mb"], B["memory"]["peak_rss_run_mb"]
    return {"ab_mode": mode, "a": A, "b": B, "ratio_b_over_a": ratio,
            "peak_rss_ratio_b_over_a": round(pb_ / pa_, 4) if (pa_ and pb_ and mode == "processes") else None,
            "output_diff_b_vs_a": diff}


# =================================================================================================================
# Parity case: low-precision UNet vs the float32 fixtures (no timing)
# =================================================================================================================
def default_fixture_set(root: str) -> str:
    """The first set (by name) under a fixtures root that has a UNet forward record (``unet_forward.json``)."""
    names = sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "unet_forward.json"))) \
        if os.path.isdir(root) else []
    if not names:
        raise SystemExit(f"no parity fixture set with unet_forward.json under {root}: pass --fixtures DIR")
    return os.path.join(root, names[0])


def run_parity(s: Dict[str, Any]) -> Dict[str, Any]:
    from safetensors.torch import load_file

    folder = s["fixtures"] or os.environ.get("PARITY_FIXTURES_SET") or default_fixture_set(
        os.environ.get("PARITY_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures", "parity")))
    meta = json.load(open(os.path.join(folder, "unet_forward.json")))
    sd = {}
    for f in meta["weights_files"]:
        sd.update(load_file(os.path.join(folder, f)))
    sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    fx = load_file(os.path.join(folder, "unet_forward.safetensors"))
    cfg = config.UNetConfig.from_dict(meta["unet_config"])
    compute = DTYPES[s["dtype"]]
    storage = WEIGHT_DTYPES[s["weights"]]
    fp8 = storage in ops.FP8_DTYPES
    cast = storage != compute

    def make(dtype, store, cast_ops):
        m = unet.UNetModel(cfg, operations=ops.cast_operations if cast_ops else None,
                           attention=ATTENTION_FUNCTIONS[s["attention"]]).eval()
        m.load_state_dict(sd, strict=True)
        if store in ops.FP8_DTYPES:
            m.to(dtype)
            ops.store_weights_(m, store, dtype)
        else:
            m.to(store)
        m.dtype = dtype
        m.set_channels_last(s["channels_last"] == "on")
        return m

    ref_model = make(torch.float32, torch.float32, False)
    low = make(compute, storage, cast or fp8)
    calls = {}
    worst = 0.0
    with torch.no_grad():
        for name, spec in meta["calls"].items():
            if "alpha_keys" in spec:
                continue
            x = fx[f"{name}_x"] if f"{name}_x" in fx else fx[f"{name}_x1"].repeat(spec["B"], 1, 1, 1, 1)
            fs = fx.get(f"{name}_fs")
            args = (x, fx[f"{name}_timesteps"].long(), fx[f"{name}_context"], None if fs is None else fs.long())
            y_ref, y32, ylo = fx[f"{name}_y"], ref_model(*args), low(*args)
            amax = float(y_ref.abs().max())
            d = (ylo - y_ref).abs()
            calls[name] = {"fp32_max_abs_vs_fixture": float((y32 - y_ref).abs().max()),
                           "max_abs_vs_fixture": float(d.max()), "ref_absmax": amax,
                           "max_rel_to_absmax": float(d.max()) / amax,
                           "p999_rel_to_absmax": float(torch.quantile(d.flatten(), 0.999)) / amax,
                           "mean_abs": float(d.mean())}
            worst = max(worst, calls[name]["max_rel_to_absmax"])
    return {"fixtures": os.path.abspath(folder), "calls": calls, "max_rel_to_absmax": worst,
            "definition": "max |y_low - y_fixture| / max |y_fixture| per call (fixture: reference float32)"}


# =================================================================================================================
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        worker_main()
        return {}
    args = build_parser().parse_args(argv)
    t0 = time.time()
    load_before = list(os.getloadavg())
    result: Dict[str, Any] = {"bench_version": BENCH_VERSION, "command": "python bench/bench.py " + shlex.join(argv),
                              "machine": machine_info(), "load_avg_before": load_before,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.case == "ab":
        if not args.ab_case:
            raise SystemExit("ab needs a case: bench.py ab guided --a '...' --b '...'")
        sa = normalize(dict(side_settings(args, args.a), case=args.ab_case))
        sb = normalize(dict(side_settings(args, args.b), case=args.ab_case))
        result.update(case="ab", ab_case=args.ab_case, a_flags=args.a, b_flags=args.b)
        result.update(run_ab(sa, sb, args.ab_mode, args.quiet))
    else:
        s = normalize(dict(side_settings(args, ""), case=args.case))
        result["case"] = args.case
        if args.case == "parity":
            result["settings"] = s
            result.update(run_parity(s))
        else:
            result.update(run_single(s, args.quiet))
    result["load_avg_after"] = list(os.getloadavg())
    result["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if not args.quiet:
        print(summary_line(result), file=sys.stderr)
    print(text)
    return result


def summary_line(r: Dict[str, Any]) -> str:
    m = r["machine"]
    head = f"{m.get('cpu_model')} x{m.get('logical_cpus')} torch {m.get('torch')} load {r['load_avg_before'][0]:.2f}"
    if r["case"] == "ab":
        return (f"{head} | ab {r['ab_case']}: A {r['a']['time_s']} | B {r['b']['time_s']} | B/A {r['ratio_b_over_a']}"
                f" | peak RSS B/A {r['peak_rss_ratio_b_over_a']} | out diff {r['output_diff_b_vs_a']}")
    if r["case"] == "parity":
        return f"{head} | parity {r['settings']['dtype']}/{r['settings']['weights']}: max rel {r['max_rel_to_absmax']:.3g}"
    return f"{head} | {r['case']}: {r['time_s']} | memory {r['memory']}"


if __name__ == "__main__":
    main()

"""The benchmark's worker side: the configs of each case and ``Worker``, which builds one setting's model in its own
process (bench/bench.py starts it with ``_worker``) and times the runs the driver asks for."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict

import torch

from ..model import sampler, unet, vae, variants
from ..model.dtypes import DTYPES as _DTYPES, FP8_DTYPES as _FP8_DTYPES
from . import ops
from .machine import _status_kb, mib, reset_peak_rss
from .variants import (ATTENTION_FUNCTIONS, set_attention, set_inplace, set_reference_layout, set_temporal_conv)
from .weights import init_random_

DTYPES = _DTYPES                                                              # compute: fp32, fp16, bf16
WEIGHT_DTYPES = {**_DTYPES, **_FP8_DTYPES}                                    # storage: also fp8 where torch has it
# Settings that change the model in memory; A/B sides that agree on these may share one worker (--ab-mode auto).
WORKER_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "GLIBC_TUNABLES", "OMP_NUM_THREADS")   # recorded per side
MODEL_KEYS = ("config", "dtype", "weights", "device", "compile", "threads", "seed", "malloc", "onednn_cache")


def unet_config(name: str):
    if name == "tiny":
        return variants.get_variant("512", tiny=True).unet
    if name == "mid":
        # The 512 UNet's structure (levels, blocks, heads of 32 channels, 77 text + 16/frame image tokens of
        # width 1024) at a fifth of its width: about 60 M parameters.
        return dataclasses.replace(variants.get_variant("512").unet, model_channels=64, num_head_channels=32)
    return variants.get_variant(name).unet


def vae_config(name: str):
    if name == "tiny":
        return vae.TINY_VAE
    if name == "mid":
        return dataclasses.replace(vae.VAEConfig(), ch=64)
    return vae.VAEConfig()


class Worker:
    def __init__(self, s: Dict[str, Any]):
        self.torch = torch
        if s.get("threads"):
            torch.set_num_threads(int(s["threads"]))
        torch.set_grad_enabled(False)
        self.s = s
        self.dev = torch.device(s["device"])
        self.cuda = self.dev.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        t0 = time.perf_counter()
        self.model = self.build()
        self.build_s = time.perf_counter() - t0
        self.rss_after_build_kb = _status_kb("VmRSS")
        self.params = sum(p.numel() for p in self.model.parameters())
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.state = None

    # ---- model -----------------------------------------------------------------------------------------------
    def build(self):
        s = self.s
        compute = DTYPES[s["dtype"]]
        storage = WEIGHT_DTYPES[s["weights"]]
        fp8 = storage in ops.FP8_DTYPES
        cast = storage != compute
        if s["case"] == "vae":
            with torch.device("meta"):
                m = vae.AutoencoderKL(vae_config(s["config"]), dtype=compute if fp8 else storage,
                                      operations=ops.cast_operations if cast else None)
            m = m.to_empty(device=self.dev)
            init_random_(m, s["seed"])
            m.dtype = compute
            if fp8:
                ops.store_weights_(m, storage, compute)
            m.set_channels_last(s["channels_last"] == "on")
            return m.eval()
        if s["case"] == "parity":
            return None
        cfg = unet_config(s["config"])
        with torch.device("meta"):
            m = unet.UNetModel(cfg, dtype=compute if fp8 else storage, compute_dtype=compute,
                               operations=ops.cast_operations if cast else None,
                               attention=ATTENTION_FUNCTIONS[s["attention"]])
        m = m.to_empty(device=self.dev)
        init_random_(m, s["seed"])
        if fp8:
            ops.store_weights_(m, storage, compute)
        m.eval()
        self.unet_module = m
        self.apply_switches(s)
        if s["compile"] != "off":
            return torch.compile(m, mode=s["compile"], dynamic=False)
        return m

    def apply_switches(self, s: Dict[str, Any]) -> None:
        """Runtime switches (no rebuild): attention kernel, layouts, prefix sharing, channels-last (bench/variants.py)."""
        m = self.unet_module
        set_attention(m, ATTENTION_FUNCTIONS[s["attention"]])
        set_reference_layout(m, s["reference_layout"] == "on")
        set_temporal_conv(m, s["temporal_conv"])
        set_inplace(s["inplace"] == "on")
        m.set_ff_chunking(int(s["ff_chunk_mb"] * 2 ** 20))
        if s["reference_layout"] != "on":
            m.share_branch_prefix = s["prefix"] == "on"
        if m.channels_last != (s["channels_last"] == "on"):
            m.set_channels_last(s["channels_last"] == "on")

    # ---- inputs ----------------------------------------------------------------------------------------------
    def inputs(self, s):
        torch = self.torch
        g = torch.Generator(device="cpu").manual_seed(s["seed"] + 1)
        B, T = s["batch"], s["frames"]
        h, w = s["height"] // 8, s["width"] // 8
        if s["case"] == "vae":
            zc = vae_config(s["config"]).embed_dim
            return {"z": torch.randn(B, zc, T, h, w, generator=g).to(self.dev)}
        cfg = self.unet_module.cfg
        D = cfg.context_dim
        lt, lf = cfg.text_context_len, cfg.image_tokens_per_frame

        def r(*shape):
            return torch.randn(*shape, generator=g).to(self.dev)

        text, empty = r(B, lt, D), r(B, lt, D)
        img, zero_img = r(B, T * lf, D), r(B, T * lf, D)
        ctx = {"cond": torch.cat([text, img], 1), "uc": torch.cat([empty, zero_img], 1),
               "uc_img": torch.cat([empty, img], 1)}
        return {"x": r(B, 4, T, h, w), "concat": r(B, 4, 1, h, w).expand(B, 4, T, h, w).contiguous(),
                "ctx": ctx, "fs": torch.full((B,), 24, dtype=torch.long, device=self.dev)}

    def denoiser(self, s, inp):
        """denoise(x, t, branches) as model/sampler.py calls it: one batched call or one call per branch."""
        torch = self.torch
        model, ctx, concat, fs = self.model, inp["ctx"], inp["concat"], inp["fs"]
        stacked: Dict[tuple, torch.Tensor] = {}                                # same tensor every step

        def denoise(x, t, branches):
            K = len(branches)
            B = x.shape[0] // K
            xin = torch.cat([x.to(concat.dtype), concat.repeat(K, 1, 1, 1, 1)], dim=1)   # [K*B, 8, T, h, w]
            if s["guidance"] == "batched" or K == 1:
                c = stacked.get(branches)
                if c is None:
                    c = stacked[branches] = torch.cat([ctx[b] for b in branches])
                return model(xin, t, c, fs.repeat(K))
            return torch.cat([model(xin[i * B:(i + 1) * B], t[i * B:(i + 1) * B], ctx[b], fs)
                              for i, b in enumerate(branches)])

        return denoise

    # ---- one timed run ---------------------------------------------------------------------------------------
    def prepare(self, s):
        s = dict(self.s, **{k: v for k, v in s.items() if k not in MODEL_KEYS})
        if s["case"] == "vae" and self.model.channels_last != (s["channels_last"] == "on"):
            self.model.set_channels_last(s["channels_last"] == "on")
        if s["case"] in ("forward", "guided", "sample"):
            self.apply_switches(s)
            m = self.unet_module
            if s["kv_cache"] == "on":
                if m._kv_entries is None:
                    m.enable_context_cache(True)
            else:
                m.enable_context_cache(False)
        self.state = (s, self.inputs(s))
        return s

    def run_once(self, s_side: Dict[str, Any]):
        torch = self.torch
        if self.state is None or self.state[0] != dict(self.s, **{k: v for k, v in s_side.items()
                                                                    if k not in MODEL_KEYS}):
            self.prepare(s_side)
        s, inp = self.state
        reset_peak_rss()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if s["case"] == "forward":
            out = self.model(torch.cat([inp["x"], inp["concat"]], 1), torch.full((s["batch"],), 500, device=self.dev),
                             inp["ctx"]["cond"], inp["fs"])
        elif s["case"] == "guided":
            denoise = self.denoiser(s, inp)
            branches = sampler.BRANCHES
            K = len(branches)
            raw = denoise(inp["x"].repeat(K, 1, 1, 1, 1), torch.full((K * s["batch"],), 500, device=self.dev),
                          branches)
            parts = dict(zip(branches, raw.float().chunk(K)))
            out = sampler.rescale_guidance(sampler.combine_guidance(parts, 7.5, 5.0), parts["cond"], 0.7)
        elif s["case"] == "sample":
            sched = variants.get_variant("512").schedule
            gen = torch.Generator(device=self.dev).manual_seed(s["seed"] + 2)
            out = sampler.ddim_sample(self.denoiser(s, inp), inp["x"].float(), sched, s["steps"], eta=1.0,
                                      cfg_text=7.5, cfg_image=5.0, guidance_rescale=0.7, mode="multi",
                                      generator=gen)
            if s["kv_cache"] == "on":
                self.unet_module.clear_context_cache()                       # the caller clears after sampling
        elif s["case"] == "vae":
            chunk = s["vae_chunk"]
            if chunk is None and s["vae_cap_mb"]:
                chunk = self.model.frames_for_memory_cap(int(s["vae_cap_mb"] * 2 ** 20), *inp["z"].shape[-2:])
            self.vae_chunk_used = chunk or 0
            out = vae.decode_latent(self.model, inp["z"], chunk_frames=chunk)
        else:
            raise ValueError(s["case"])
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rec = {"time_s": dt, "peak_rss_mb": mib(_status_kb("VmHWM")), "rss_mb": mib(_status_kb("VmRSS")),
               "rss_anon_mb": mib(_status_kb("RssAnon")), "rss_file_mb": mib(_status_kb("RssFile"))}
        if self.cuda:
            rec["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            rec["cuda_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
        if s["case"] == "vae":
            rec["vae_chunk_frames"] = self.vae_chunk_used
        self.last_out = out
        return rec

    def summary(self) -> Dict[str, Any]:
        import resource

        return {"build_s": round(self.build_s, 2), "params": self.params, "param_mb": round(self.param_bytes / 2 ** 20, 1),
                "rss_after_build_mb": mib(self.rss_after_build_kb),
                "peak_rss_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "worker_env": {k: os.environ[k] for k in WORKER_ENV if k in os.environ}}

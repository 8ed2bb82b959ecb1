"""Shared pieces of the node tests: installing the tiny checkpoints into a host's folders, API-format graphs of the
pack's nodes, and the reference computation (model/'s UNet loaded from the same file, model/'s ddim_sample)."""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import torch

from comfyui_dynamicrafter.model.sampler import ddim_sample
from comfyui_dynamicrafter.model.schedule import ddim_timesteps, model_buffers, scale_arr
from comfyui_dynamicrafter.model.variants import get_variant
from comfyui_dynamicrafter.tests.model.loading import load_dynamicrafter
from comfyui_dynamicrafter.tests.nodes import tinyckpt

SIZE = 64          # px; the tiny UNet (2 levels) needs multiples of 16, the real one 64
FRAMES = 4
LATENT_SCALE = 0.18215
START, END = "dcn_start.png", "dcn_end.png"
# The three full-graph kinds: conditioning_graph() arguments.
GRAPHS = {
    "image_to_video": dict(),
    "interpolation": dict(end=END, model_ckpt="dc_tiny_interp.safetensors"),
    "loop": dict(loop=True, model_ckpt="dc_tiny_interp.safetensors"),
}


def install(model_dirs: Dict[str, str], input_dir: str, refresh=None) -> Dict[str, str]:
    """Link the tiny checkpoints into the host's dynamicrafter folder and write the two test images."""
    ck = tinyckpt.checkpoints()
    for path in ck.values():
        dst = os.path.join(model_dirs["dynamicrafter"], os.path.basename(path))
        if not os.path.lexists(dst):
            os.symlink(path, dst)
    tinyckpt.write_image(os.path.join(input_dir, START), SIZE, SIZE, seed=1)
    tinyckpt.write_image(os.path.join(input_dir, END), SIZE, SIZE, seed=2)
    if refresh is not None:
        refresh()
    return {k: os.path.basename(v) for k, v in ck.items()}


def pack_module(host, name: str):
    """A submodule of the pack as the host imported it (e.g. "nodes.sampling")."""
    return sys.modules[f"{host.pack_module_name}.{name}"]


# ---------------------------------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------------------------------
def conditioning_graph(ckpt: str = "dc_tiny_full.safetensors", frames: int = FRAMES, size: int = SIZE,
                       end: Optional[str] = None, loop: bool = False, model_ckpt: Optional[str] = None,
                       prompt: str = "a red ball rolling", motion: int = 0) -> dict:
    """Loader(s) -> text/image encode -> DCN_Conditioning (node "6"). ``model_ckpt``: a second loader ("10") for the
    UNet + P (the interpolation file holds only those) while encoders and VAE come from ``ckpt``."""
    proj = ["1", 1] if model_ckpt is None else ["10", 1]
    g = {
        "1": {"class_type": "DCN_Loader", "inputs": {"ckpt_name": ckpt, "variant": "auto", "weight_dtype": "default"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": START}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 2]}},
        "5": {"class_type": "DCN_ImageEncode", "inputs": {"clip_vision": ["1", 3], "image_proj": proj,
                                                          "image": ["2", 0]}},
        "6": {"class_type": "DCN_Conditioning", "inputs": {
            "positive": ["3", 0], "negative": ["4", 0], "image_embeds": ["5", 0], "vae": ["1", 4],
            "start_image": ["2", 0], "width": size, "height": size, "frames": frames, "motion": motion,
            "loop": loop}},
    }
    if model_ckpt is not None:
        g["10"] = {"class_type": "DCN_Loader", "inputs": {"ckpt_name": model_ckpt, "variant": "auto",
                                                         "weight_dtype": "default"}}
    if end is not None:
        g["11"] = {"class_type": "LoadImage", "inputs": {"image": end}}
        g["6"]["inputs"]["end_image"] = ["11", 0]
    return g


def model_ref(g: dict) -> list:
    return ["10", 0] if "10" in g else ["1", 0]


def add_exact_sampler(g: dict, seed: int = 7, steps: int = 5, cfg_text: float = 7.5, cfg_image: float = 4.5,
                      eta: float = 1.0, guidance_rescale: float = 0.7, mode: str = "multi", decode: bool = True,
                      prefix: str = "dcn_test") -> dict:
    g = dict(g)
    g["7"] = {"class_type": "DCN_Sampler", "inputs": {
        "model": model_ref(g), "positive": ["6", 0], "image_only": ["6", 1], "negative": ["6", 2],
        "latent": ["6", 3], "seed": seed, "steps": steps, "cfg_text": cfg_text, "cfg_image": cfg_image,
        "eta": eta, "guidance_rescale": guidance_rescale, "spacing": "auto", "mode": mode}}
    if decode:
        add_decode(g, ["7", 0], prefix)
    else:
        add_sink(g, ["7", 0], prefix)
    return g


def add_sink(g: dict, latent, prefix: str) -> dict:
    """An output node (graphs need one): the host's SaveLatent."""
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": latent, "filename_prefix": prefix}}
    return g


def add_decode(g: dict, latent, prefix: str) -> dict:
    g["8"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["1", 4]}}
    g["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    return g


# ---------------------------------------------------------------------------------------------------------------------
# the reference computation
# ---------------------------------------------------------------------------------------------------------------------
class Reference:
    """model/'s UNet (plain PyTorch SDPA attention, loaded by tests/model/loading.py from the test file) over the exact
    conditioning tensors the graph produced (DCN_Conditioning's outputs, read from the executor's cache)."""

    def __init__(self, ckpt_path: str, conditioning_outputs, variant: str = "512"):
        v = get_variant(variant, tiny=True)
        self.variant = v
        self.unet = load_dynamicrafter(ckpt_path, variant=v, dtype=torch.float32).unet.eval()
        pos, img_only, neg, latent = (o[0] for o in conditioning_outputs)
        info = pos[0][1]["dcn_video"]
        self.frames = info["plan"].frames
        self.fs = int(info["fs"])
        concat = info["concat_latent"].float() * LATENT_SCALE                # [T, 4, h, w]
        self.concat = concat.transpose(0, 1).unsqueeze(0)                  # [1, 4, T, h, w]
        self.latent_shape = tuple(latent["samples"].shape)

        def ctx(c):
            return torch.cat([c[0][0][:, :77].float(), c[0][1]["dcn_video"]["image_tokens"].float()], dim=1)

        self.contexts = {"cond": ctx(pos), "uc": ctx(neg), "uc_img": ctx(img_only)}

    @torch.no_grad()
    def denoise(self, x, t, branches):
        k = len(branches)
        xin = torch.cat([x, self.concat.to(x.dtype).repeat(k, 1, 1, 1, 1)], dim=1)
        ctx = torch.cat([self.contexts[b] for b in branches])
        fs = torch.full((k,), self.fs, dtype=torch.long)
        return self.unet(xin, t, ctx, fs)

    def x_T(self, seed: int) -> torch.Tensor:
        """The host's initial noise for ``seed`` (comfy.sample.prepare_noise), as [1, 4, T, h, w]."""
        n = torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(seed))
        return n.transpose(0, 1).unsqueeze(0)

    def sample(self, seed: int, steps: int, step_noise_seed: Optional[int] = None, **kw):
        x_T = self.x_T(seed)
        noise = None
        if step_noise_seed is not None:
            g = torch.Generator().manual_seed(step_noise_seed)
            n = len(ddim_timesteps(steps, kw.get("spacing", "uniform_trailing"), self.variant.schedule.timesteps))
            noise = [torch.randn(x_T.shape, generator=g) for _ in range(n)]
        return ddim_sample(self.denoise, x_T, self.variant.schedule, steps, noise=noise, **kw)

    def scales(self):
        """Dynamic-rescale factors s_t (float64) and alphas_cumprod of the schedule."""
        cfg = self.variant.schedule
        buf = model_buffers(cfg)
        s = scale_arr(cfg)[: cfg.timesteps].double() if cfg.use_dynamic_rescale else torch.ones(cfg.timesteps)
        return s, buf["alphas_cumprod"].double()


def to_video(latent_frames: torch.Tensor) -> torch.Tensor:
    """Host layout [T, 4, h, w] -> [1, 4, T, h, w]."""
    return latent_frames.transpose(0, 1).unsqueeze(0)


def guider_graph(guider: dict, sampler: dict, steps: int, seed: int) -> dict:
    """The conditioning graph with ``guider`` (node 20) and ``sampler`` (node 23) under SamplerCustomAdvanced (node 24)
    over DCN_Sigmas and RandomNoise; the caller adds the output it reads."""
    g = conditioning_graph()
    g["20"] = guider
    g["21"] = {"class_type": "DCN_Sigmas", "inputs": {"model": ["1", 0], "steps": steps, "spacing": "auto"}}
    g["22"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    g["23"] = sampler
    g["24"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["22", 0], "guider": ["20", 0], "sampler": ["23", 0], "sigmas": ["21", 0],
        "latent_image": ["6", 3]}}
    return g

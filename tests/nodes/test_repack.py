"""The safetensors repacks users already have (tests/nodes/repacks.py: tiny stand-ins in each file's key layout,
dtype and name): each is detected as the variant the file name means, with the reason said; each loads through
DCN_Loader (the pruned ones with CLIP / CLIP_VISION from another loader, their own VAE); a file missing a part
that nothing else can give is refused in one line that names it."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from comfyui_dynamicrafter.model.checkpoint import open_checkpoint
from comfyui_dynamicrafter.model.detect import detect_variant
from comfyui_dynamicrafter.model.tiny import dualref_extra_shapes
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import repacks, tinyckpt

IDS = [r.name.split(".")[0] for r in repacks.REPACKS]


def _one_line(msg: str, *words):
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("r", repacks.REPACKS, ids=IDS)
def test_repack_layout_and_dtype_detected_as_its_variant(r):
    path = repacks.repack_files()[r.name]
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        unet_dtype = f.get_slice("model.diffusion_model.out.2.weight").get_dtype()
    assert unet_dtype == {torch.float16: "F16", torch.bfloat16: "BF16"}[r.dtype]
    assert "dynamicrafter.variant" not in meta and "dynamicrafter.family" not in meta   # as the real files
    assert {"betas", "alphas_cumprod", "scale_arr"} <= keys
    full = "text_encoder" in r.parts
    assert any(k.startswith("cond_stage_model.model.") for k in keys) == full
    assert any(k.startswith("embedder.model.visual.") for k in keys) == full
    assert len(keys & set(dualref_extra_shapes())) == (148 if r.variant == "tooncrafter" else 0)
    with open_checkpoint(path) as ck:
        det = detect_variant(ck)
    assert det.variant == r.variant, det.reason
    if r.variant == "tooncrafter":
        assert det.decided_by == "keys" and "dual-reference VAE decoder" in det.reason
    else:
        assert det.decided_by == "filename", det.reason
        assert f"the file name '{r.name}' suggests {r.variant}" in det.reason


def test_repack_512_and_512_interp_told_apart_by_the_file_names(tmp_path):
    """The same bytes (512 and 512-interp have identical layouts) under the two repack names."""
    sd = repacks.repack_tensors(repacks.REPACKS[0])
    got = {}
    for name in ("dynamicrafter_512_fp16_pruned.safetensors", "dynamicrafter_512_interp_fp16_pruned.safetensors",
                 "dynamicrafter_512_interp_v1_bf16.safetensors", "dynamicrafter-CIL-512-no-watermark-fp16.safetensors"):
        save_file(sd, str(tmp_path / name), metadata=repacks.TINY_ONLY)
        with open_checkpoint(str(tmp_path / name)) as ck:
            det = detect_variant(ck)
        got[name] = det.variant
        assert det.decided_by == "filename" and name in det.reason
    assert list(got.values()) == ["512", "512-interp", "512-interp", "512"]
    # an explicit choice on the loader still wins over the name, and says so
    with open_checkpoint(str(tmp_path / "dynamicrafter_512_fp16_pruned.safetensors")) as ck:
        det = detect_variant(ck, variant="512-interp")
    assert det.variant == "512-interp" and det.decided_by == "argument"


@pytest.mark.parametrize("r", repacks.REPACKS, ids=IDS)
def test_repack_loads_through_dcn_loader(host, r):
    loader = S.pack_module(host, "nodes.loader")
    with torch.inference_mode():
        res = loader.load_checkpoint(repacks.repack_files()[r.name])
    assert res.projector.variant.name == r.variant
    assert res.projector.variant.extra["config"] == "tiny"
    assert r.name in res.info and "config 'tiny'" in res.info
    full = "text_encoder" in r.parts
    assert (res.clip is not None, res.clip_vision is not None, res.vae is not None) == (full, full, True)
    if not full:
        assert "Not in the file (outputs are empty; use the host's loaders): CLIP, CLIP_VISION." in res.info
    assert ("DCN_ToonDecode" in res.info) == (r.variant == "tooncrafter")
    dtypes = {p.dtype for p in res.model.model.diffusion_model.parameters()}
    assert dtypes and all(d.is_floating_point for d in dtypes)


def _pruned_graph(repack: str, encoders: str) -> dict:
    """The interpolation graph with the pruned repack for MODEL, P and VAE, and CLIP / CLIP_VISION from a second
    loader (the stand-in of CLIPLoader / CLIPVisionLoader, whose fixed ViT-H configs cannot read tiny towers)."""
    g = S.conditioning_graph(ckpt=encoders, end=S.END, model_ckpt=repack)
    g["5"]["inputs"]["image_proj"] = ["10", 1]
    g["6"]["inputs"]["vae"] = ["10", 4]
    g = S.add_exact_sampler(g, steps=2)
    g["8"]["inputs"]["vae"] = ["10", 4]
    return g


def _install(host, name: str, src: str) -> None:
    """``src`` in the host's diffusion_models folder as ``name`` (a link), listed."""
    dst = os.path.join(host.model_dirs["diffusion_models"], name)
    if not os.path.lexists(dst):
        os.symlink(src, dst)
    host.refresh_models()


def test_repack_pruned_interp_file_runs_in_the_executor(host, dc):
    r = next(r for r in repacks.REPACKS if r.name == "dynamicrafter_512_interp_fp16_pruned.safetensors")
    _install(host, r.name, repacks.repack_files()[r.name])
    res = host.run_prompt(_pruned_graph(r.name, dc["full"]))
    info = host.node_output("10")[5][0]
    assert "variant '512-interp' because the file name" in info, info
    latent = host.node_output("7")[0][0]["samples"]
    assert tuple(latent.shape) == (S.FRAMES, 4, S.SIZE // 8, S.SIZE // 8) and torch.isfinite(latent).all()
    assert res.outputs["9"]["images"] and len(res.outputs["9"]["images"]) == S.FRAMES


def test_repack_missing_parts_refused_in_one_line(host, dc, tmp_path):
    loader = S.pack_module(host, "nodes.loader")
    error = S.pack_module(host, "model.errors").DynamiCrafterInputError
    r = repacks.REPACKS[0]
    no_p = repacks.write_repack(r, tmp_path, drop=("image_proj_model.",))
    with pytest.raises(error) as err:
        loader.load_checkpoint(no_p)
    _one_line(str(err.value), r.name, "no image_proj weights ('image_proj_model.*')", " missing (image_proj_model.")
    # without its VAE (and no VAE connected from elsewhere) the conditioning node names the VAE and the loader
    name = "dynamicrafter_512_interp_fp16_pruned.safetensors"
    no_vae = repacks.write_repack(next(x for x in repacks.REPACKS if x.name == name), tmp_path / "novae",
                                  drop=("first_stage_model.",))
    _install(host, "novae_" + name, no_vae)
    res = host.run_prompt(_pruned_graph("novae_" + name, dc["full"]), check=False)
    _one_line(res.error_text(), "vae: expected the SD VAE, found nothing", "VAELoader")
    assert "Not in the file (outputs are empty; use the host's loaders): CLIP, CLIP_VISION, VAE." in \
        host.node_output("10")[5][0]
    # the pruned file's empty CLIP_VISION wired in: the image encode node says what to load
    _install(host, name, repacks.repack_files()[name])
    g = _pruned_graph(name, dc["full"])
    g["5"]["inputs"]["clip_vision"] = ["10", 3]
    res = host.run_prompt(g, check=False)
    _one_line(res.error_text(), "clip_vision: expected an image encoder", "found nothing", "CLIPVisionLoader")

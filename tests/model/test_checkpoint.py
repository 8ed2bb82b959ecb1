"""Safe checkpoint I/O: real-size synthetic checkpoints, layouts, detection, the converter, and bad inputs.

Real-size part (marked ``slow``): a synthetic FULL 512 checkpoint with every key and shape of the 512 manifest
(UNet, P, VAE, text and image encoders, schedule buffers; 2.6 B fp16 values tiled from one random block) is written
as ``model.ckpt`` (torch.save of {"state_dict": ...}), then as ``model.safetensors``: a module-scoped fixture per
format, so one 5 GB file is on disk at a time and none outlives this module. Each loads strictly into the real-size
modules, and the converter turns each into a bf16 pruned file whose metadata decides the variant. Memory: the
synthetic dict (5.2 GB) exists only while a file is written.

Everything else uses tiny variants from the same registry (same key structure, small widths).
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from comfyui_dynamicrafter.model import checkpoint as ck
from comfyui_dynamicrafter.model import converter as conv
from comfyui_dynamicrafter.model import detect as det
from comfyui_dynamicrafter.model import fileio
from comfyui_dynamicrafter.model import formats as fmt
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.resampler import Resampler
from comfyui_dynamicrafter.model.unet import UNetModel
from comfyui_dynamicrafter.model.variants import get_variant, variant_names
from comfyui_dynamicrafter.tests.model import loading

try:  # torch >= 2.6: lets the fixture skip zip CRCs (test speed only)
    from torch.utils.serialization import config as _save_config
except ImportError:
    _save_config = None

REPO = Path(__file__).resolve().parents[2]
U, P = "model.diffusion_model.", "image_proj_model."
BLOCK = 1 << 20  # elements of the random block every synthetic tensor is tiled from


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def layout_root() -> Path:
    env = os.environ.get("CHECKPOINT_LAYOUT")
    return Path(env) if env else (REPO / ".." / "shared" / "fixtures" / "checkpoint_layout").resolve()


def manifest_keys(name: str) -> dict:
    path = layout_root() / name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint-layout manifest {path} missing (set CHECKPOINT_LAYOUT)")
    return {k: tuple(v["shape"] if isinstance(v, dict) else v)
            for k, v in json.loads(path.read_text(encoding="utf-8"))["keys"].items()}


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


class Tiler:
    """Deterministic cheap values: tensor i is the random block read cyclically from offset ``start[key]``."""

    def __init__(self, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        block = torch.randn(BLOCK, generator=g).to(dtype)
        self.ext = torch.cat([block, block])
        self.dtype, self.start, self.shape = dtype, {}, {}

    def make(self, key, shape):
        n = _prod(shape)
        start = (sum(map(ord, key)) * 7919 + len(self.start) * 104729) % BLOCK
        self.start[key], self.shape[key] = start, tuple(shape)
        return self.expected(key)

    def expected(self, key):
        n, s0 = _prod(self.shape[key]), self.start[key]
        out = torch.empty(n, dtype=self.dtype)
        whole, rest = divmod(n, BLOCK)
        window = self.ext[s0:s0 + BLOCK]
        if whole:  # one broadcast copy (slice-by-slice copies are ~10x slower)
            out[: whole * BLOCK].view(whole, BLOCK).copy_(window.expand(whole, -1))
        out[whole * BLOCK:] = window[:rest]
        return out.view(self.shape[key])


class ReadCounter:
    """Counts tensor reads (every read of tensor data goes through CheckpointFile.tensor)."""

    def __init__(self, monkeypatch):
        self.n = 0
        orig = ck.CheckpointFile.tensor

        def counting(this, key):
            self.n += 1
            return orig(this, key)

        monkeypatch.setattr(ck.CheckpointFile, "tensor", counting)


def refused(fn, *args, **kw) -> str:
    with pytest.raises(DynamiCrafterInputError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg, f"message must be one line: {msg!r}"
    assert " expected " in msg and ", found " in msg and "; " in msg, msg
    return msg


def tiny_state(name="512", seed=0, vae_keys=()):
    """Full-checkpoint-layout state dict of a tiny variant (plus optional extra first_stage keys)."""
    v = get_variant(name, tiny=True)
    torch.manual_seed(seed)
    sd = {U + k: t.clone() for k, t in UNetModel(v.unet).state_dict().items()}
    sd.update({P + k: t.clone() for k, t in Resampler(v.resampler).state_dict().items()})
    if name == "256":  # make the gates non-zero so loading them is visible
        for k in sd:
            if k.endswith("attn2.alpha"):
                sd[k] = torch.randn(())
    for k in vae_keys:
        sd[k] = torch.randn(4, 4)
    sd["betas"] = torch.linspace(1e-4, 2e-2, 1000)
    return v, sd


def assert_loaded(res, sd, prefix_map=None, dtype=None):
    """Every UNet/P weight of ``res`` equals the source (cast to the loaded dtype)."""
    u = res.unet.state_dict()
    p = res.image_proj.state_dict()
    for k, t in sd.items():
        if k.startswith(U):
            got = u[k[len(U):].replace("framestride_embed", "fps_embedding")]
        elif k.startswith(P):
            got = p[k[len(P):]]
        else:
            continue
        assert got.dtype == (dtype or got.dtype)
        assert torch.equal(got, t.to(got.dtype)), k


# ----------------------------------------------------------------------------------------------------------------
# Real size (one synthetic full 512 checkpoint per format; only one 5 GB file is on disk at a time)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["pickle", "safetensors"])
def full512(request, tmp_path_factory):
    """The file in one format; pytest runs every test of the first format and tears it down before the second."""
    keys = manifest_keys("manifest_inference_512_v1.0.json")
    folder = tmp_path_factory.mktemp("dcfull")  # no variant hint in the path: detection must default
    _check_room(folder, keys)
    tiler = Tiler(torch.float16)
    sd = {k: tiler.make(k, s) for k, s in keys.items()}
    if request.param == "pickle":
        path = folder / "model.ckpt"
        crc = _save_config.save.compute_crc32 if _save_config else None
        if _save_config:
            _save_config.save.compute_crc32 = False  # halves torch.save here; torch.load does not check it under mmap
        try:
            torch.save({"state_dict": sd}, path)
        finally:
            if _save_config:
                _save_config.save.compute_crc32 = crc
    else:
        path = folder / "model.safetensors"
        save_file(sd, str(path))
    del sd
    gc.collect()
    yield SimpleNamespace(folder=folder, path=path, format=request.param, tiler=tiler, keys=keys)
    shutil.rmtree(folder, ignore_errors=True)


def _check_room(folder: Path, keys: dict) -> None:
    """Fail in one line, before writing, when the temp folder cannot hold the file and its bf16 conversion."""
    need = sum(_prod(s) for s in keys.values()) * 2 + sum(_prod(s) for k, s in keys.items() if k.startswith((U, P))) * 2
    try:
        fileio.check_free_space(str(folder), need + (512 << 20), "the real-size checkpoint tests",
                                "free disk space there or point TMPDIR (or --basetemp) at a larger disk")
    except fileio.OutputWriteError as e:
        pytest.fail(str(e), pytrace=False)


SAMPLE_KEYS = (U + "input_blocks.0.0.weight", U + "out.2.weight", U + "fps_embedding.2.bias",
               U + "output_blocks.11.1.transformer_blocks.0.attn2.to_k_ip.weight",
               U + "input_blocks.1.0.temopral_conv.conv4.3.weight", U + "init_attn.0.proj_in.weight",
               P + "latents", P + "layers.3.1.3.weight")


def _check_real(res, full, dtype):
    assert res.part_counts == {"unet": 1516, "image_proj": 51, "vae": 248, "text_encoder": 294,
                               "image_encoder": 398, "schedule": 13, "rest": 0}
    assert sum(p.numel() for p in res.unet.parameters()) == 1_438_854_980
    assert res.dtype == dtype and {p.dtype for p in res.unet.parameters()} == {dtype}
    assert not any(t.is_meta for t in res.unet.state_dict().values())
    u, p = res.unet.state_dict(), res.image_proj.state_dict()
    for k in SAMPLE_KEYS:
        got = u[k[len(U):]] if k.startswith(U) else p[k[len(P):]]
        assert torch.equal(got, full.tiler.expected(k).to(dtype)), k


@pytest.mark.slow
def test_real_size_loads_strictly_with_default_variant(full512):
    res = loading.load_dynamicrafter(full512.path, other_parts=("vae", "schedule"))
    assert (res.family, res.variant.name, res.decided_by) == ("512-family", "512", "default")
    assert "by default" in res.reason and "no 'attn2.alpha'" in res.reason
    assert res.format == full512.format and res.storage_dtype == torch.float16
    _check_real(res, full512, torch.float16)
    assert len(res.other["vae"]) == 248 and len(res.other["schedule"]) == 13
    assert torch.equal(res.other["schedule"]["scale_arr"], full512.tiler.expected("scale_arr"))
    assert torch.equal(res.other["vae"]["decoder.conv_out.weight"],
                       full512.tiler.expected("first_stage_model.decoder.conv_out.weight"))


@pytest.mark.slow
def test_real_size_loads_strictly_with_explicit_variant(full512):
    res = loading.load_dynamicrafter(full512.path, variant="1024")
    assert (res.family, res.variant.name, res.decided_by) == ("512-family", "1024", "argument")
    assert res.variant.schedule.base_scale == 0.3 and res.format == full512.format
    _check_real(res, full512, torch.float16)


@pytest.mark.slow
def test_real_size_refusals_read_no_tensor(full512, monkeypatch):
    reads = ReadCounter(monkeypatch)
    msg = refused(loading.load_dynamicrafter, full512.path, variant="256")
    assert "'256' chosen explicitly" in msg and "attn2.alpha" in msg and "the 256 model has 16" in msg
    msg = refused(loading.load_dynamicrafter, full512.path, variant="4096")
    assert all(n in msg for n in variant_names())
    assert reads.n == 0


@pytest.fixture
def converted_bf16(full512):
    dst = full512.folder / "dc_pruned_bf16.safetensors"
    res = conv.convert_checkpoint(full512.path, dst, variant="1024", dtype="bf16")
    yield res
    dst.unlink(missing_ok=True)


@pytest.mark.slow
def test_real_size_convert_bf16_roundtrip_metadata_decides(full512, converted_bf16):
    res = converted_bf16
    assert res.tensors == 1516 + 51 and res.parts == ("unet", "image_proj")
    assert not [p for p in os.listdir(full512.folder) if ".tmp-" in p], "temporary file left behind"
    with safe_open(res.path, framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        assert f.get_slice(U + "out.2.weight").get_dtype() == "BF16"
    assert meta[ck.META_VARIANT] == "1024" and meta[ck.META_FAMILY] == "512-family"
    assert meta[ck.META_SOURCE] == full512.path.name and meta[ck.META_FORMAT] == ck.FORMAT_VERSION
    assert meta[ck.META_PARTS] == "unet,image_proj" and meta[ck.META_DTYPE] == "bf16"
    assert keys == {k for k in full512.keys if k.startswith((U, P))}

    loaded = loading.load_dynamicrafter(res.path)  # no argument, no hint in the name: the metadata decides
    assert (loaded.variant.name, loaded.decided_by) == ("1024", "metadata")
    assert "metadata" in loaded.reason and loaded.storage_dtype == torch.bfloat16
    _check_real_pruned = dict(loaded.part_counts)
    assert _check_real_pruned["unet"] == 1516 and _check_real_pruned["vae"] == 0
    u = loaded.unet.state_dict()
    assert {t.dtype for t in u.values()} == {torch.bfloat16}
    for k in SAMPLE_KEYS:
        got = u[k[len(U):]] if k.startswith(U) else loaded.image_proj.state_dict()[k[len(P):]]
        assert torch.equal(got, full512.tiler.expected(k).to(torch.bfloat16)), k
    del loaded, u
    msg = refused(loading.load_dynamicrafter, res.path, variant="512")
    assert "metadata" in msg and "'1024'" in msg and "reconvert" in msg


# ----------------------------------------------------------------------------------------------------------------
# Detection on the real key sets (no tensors)
# ----------------------------------------------------------------------------------------------------------------
def test_detection_of_real_key_sets():
    k512 = manifest_keys("manifest_inference_512_v1.0.json")
    k256 = manifest_keys("manifest_inference_256_v1.0.json")
    old256 = {k.replace("fps_embedding", "framestride_embed"): s for k, s in k256.items()}
    toon = manifest_keys("manifest_tooncrafter_inference_512_v1.0.json")

    assert fmt.has_old_framestride_name(old256) and fmt.has_learnable_alpha(old256)
    d = det.detect_variant(old256)
    assert (d.family, d.variant, d.decided_by) == ("256", "256", "keys")
    assert "16 learnable 'attn2.alpha'" in d.reason and "framestride_embed" in d.reason
    d = det.detect_variant(k256, filename="dynamicrafter_1024.ckpt")  # a file-name hint never beats the keys
    assert d.variant == "256"

    extra = sorted(set(toon) - set(k512))
    assert len(extra) == 148 and all(k.startswith("first_stage_model.decoder.") for k in extra)
    assert fmt.is_tooncrafter(toon) and not fmt.is_tooncrafter(k512)
    d = det.detect_variant(toon)
    assert (d.family, d.variant, d.decided_by) == ("tooncrafter", "tooncrafter", "keys") and "ToonCrafter" in d.reason
    msg = refused(det.detect_variant, toon, variant="1024")
    assert "ToonCrafter" in msg and "['tooncrafter']" in msg

    assert fmt.is_dynamicrafter_unet(k512) and not fmt.has_learnable_alpha(k512)
    for name, want, by in (("model.ckpt", "512", "default"), ("dynamicrafter_1024_v1.ckpt", "1024", "filename"),
                           ("dynamicrafter_512_interp_fp16.safetensors", "512-interp", "filename"),
                           ("DynamiCrafter_1024/model.ckpt", "1024", "filename"),
                           ("tooncrafter_512_interp-fp16.safetensors", "tooncrafter", "filename")):
        d = det.detect_variant(k512, filename=name)
        assert (d.variant, d.decided_by) == (want, by), name
    d = det.detect_variant(k512, filename="model.ckpt")
    assert "by default" in d.reason and "choose the variant" in d.reason
    d = det.detect_variant(k512, filename="dc_1024_interp.ckpt")  # disagreeing hints are not guessed
    assert (d.variant, d.decided_by) == ("512", "default") and "several variants" in d.reason

    meta = {ck.META_VARIANT: "512-interp"}
    d = det.detect_variant(k512, metadata=meta, filename="x_1024.ckpt")  # metadata beats a hint
    assert (d.variant, d.decided_by) == ("512-interp", "metadata")
    d = det.detect_variant(k512, variant="1024", filename="x_interp.ckpt")  # an explicit choice beats a hint
    assert (d.variant, d.decided_by) == ("1024", "argument")
    assert det.detect_variant(k512, variant="auto").decided_by == "default"
    msg = refused(det.detect_variant, k512, metadata=meta, variant="1024")
    assert "'512-interp'" in msg and "'1024' chosen explicitly" in msg
    msg = refused(det.detect_variant, k512, metadata={ck.META_VARIANT: "256"})
    assert "metadata" in msg and "reconvert" in msg
    msg = refused(det.detect_variant, k256, variant="512")
    assert "'512' chosen explicitly" in msg and "attn2.alpha" in msg


# ----------------------------------------------------------------------------------------------------------------
# Layouts (tiny variants)
# ----------------------------------------------------------------------------------------------------------------
def test_tiny_256_old_name_alpha_loads(tmp_path):
    v, sd = tiny_state("256")
    sd = {k.replace("fps_embedding", "framestride_embed"): t for k, t in sd.items()}
    assert any("framestride_embed" in k for k in sd)
    path = tmp_path / "dc.ckpt"
    torch.save({"state_dict": sd}, path)
    res = loading.load_dynamicrafter(path, variant=v)
    assert (res.family, res.variant.name, res.decided_by) == ("256", "256", "keys")
    assert any("framestride_embed" in n for n in res.notes)
    assert_loaded(res, sd)
    alphas = [t for k, t in res.unet.state_dict().items() if k.endswith("attn2.alpha")]
    n_gates = sum(k.endswith("attn2.alpha") for k in sd)
    assert n_gates > 0 and len(alphas) == n_gates and all(a.abs() > 0 for a in alphas)


@pytest.mark.parametrize("layout", ["deepspeed", "ddp_module_prefix", "plain_dict"])
def test_tiny_wrapped_layouts_load(tmp_path, layout):
    v, sd = tiny_state("512", seed=1)
    if layout == "deepspeed":  # reference: no 'state_dict'; keys of ['module'] have 16 characters stripped
        obj = {"module": {"_forward_module." + k: t for k, t in sd.items()}, "global_steps": 10}
    elif layout == "ddp_module_prefix":
        obj = {"state_dict": {"module." + k: t for k, t in sd.items()}}
    else:
        obj = sd
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    res = loading.load_dynamicrafter(path, variant=v, other_parts=("schedule",))
    assert_loaded(res, sd)
    assert torch.equal(res.other["schedule"]["betas"], sd["betas"])
    if layout == "deepspeed":
        assert any("DeepSpeed" in n for n in res.notes)


@pytest.mark.parametrize("layout", ["official_pruned", "comfy_prefix", "bare_unet"])
@pytest.mark.parametrize("store,compute", [(torch.float16, torch.float32), (torch.bfloat16, None),
                                           (torch.float32, torch.bfloat16)])
def test_tiny_pruned_safetensors_layouts_and_dtypes(tmp_path, layout, store, compute):
    v, sd = tiny_state("512-interp", seed=2)
    sd = {k: t.to(store) for k, t in sd.items() if k.startswith((U, P))}
    unet_prefix, p_prefix = {"official_pruned": (U, P), "comfy_prefix": ("diffusion_model.", P),
                             "bare_unet": ("", "image_proj.")}[layout]
    out = {(unet_prefix + k[len(U):]) if k.startswith(U) else (p_prefix + k[len(P):]): t for k, t in sd.items()}
    path = tmp_path / "pruned.safetensors"
    save_file(out, str(path))
    res = loading.load_dynamicrafter(path, variant=v, dtype=compute)
    assert res.storage_dtype == store and res.dtype == (compute or store)
    assert {p.dtype for p in res.unet.parameters()} == {compute or store}
    assert_loaded(res, sd, dtype=compute or store)
    assert res.part_counts["vae"] == 0 and res.part_counts["rest"] == 0


def test_tiny_tooncrafter_file(tmp_path):
    vae = ["first_stage_model.decoder.attn_refinement.0.conv.weight",
           "first_stage_model.decoder.mid.block_1.mix_factor", "first_stage_model.encoder.conv_in.weight"]
    v, sd = tiny_state("tooncrafter", seed=3, vae_keys=vae)
    path = tmp_path / "toon.safetensors"
    save_file(sd, str(path))
    res = loading.load_dynamicrafter(path, variant=v, other_parts=("vae",))
    assert (res.family, res.variant.name, res.decided_by) == ("tooncrafter", "tooncrafter", "keys")
    assert set(res.other["vae"]) == {k[len("first_stage_model."):] for k in vae}
    msg = refused(loading.load_dynamicrafter, path, variant=get_variant("512", tiny=True))
    assert "ToonCrafter" in msg


# ----------------------------------------------------------------------------------------------------------------
# Converter (tiny)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["512", "1024", "512-interp"])
def test_tiny_convert_metadata_decides_the_variant(tmp_path, name):
    v, sd = tiny_state(name, seed=4)
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, src)
    dst = tmp_path / "converted.safetensors"
    res = conv.convert_checkpoint(src, dst, variant=v, dtype="fp16", parts="all")
    assert res.metadata[ck.META_VARIANT] == name and res.metadata[ck.META_PARTS].startswith("unet,image_proj")
    info = conv.inspect_checkpoint(dst)
    assert (info.detection.variant, info.detection.decided_by) == (name, "metadata")
    assert info.storage_dtype == torch.float16 and info.part_counts["schedule"] == 1
    with safe_open(str(dst), framework="pt") as f:
        assert f.get_slice("betas").get_dtype() == "F32"  # schedule buffers stay float32
        assert set(f.keys()) == set(sd)
    res2 = loading.load_dynamicrafter(dst, variant=get_variant(name, tiny=True), dtype="fp32")
    assert res2.decided_by == "metadata"
    for k in (U + "out.2.weight", P + "latents"):
        got = (res2.unet if k.startswith(U) else res2.image_proj).state_dict()[k.split(".", 2)[-1] if k.startswith(U)
                                                                             else k[len(P):]]
        assert torch.equal(got, sd[k].half().float())


def test_convert_is_atomic_and_refuses_overwrite(tmp_path, monkeypatch):
    v, sd = tiny_state("512", seed=5)
    src = tmp_path / "src.ckpt"
    torch.save({"state_dict": sd}, src)
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"previous content")
    msg = refused(conv.convert_checkpoint, src, dst, variant=v)
    assert "does not exist yet" in msg and "overwrite" in msg

    calls = {"n": 0}
    orig = ck.CheckpointFile.tensor

    def failing(this, key):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk went away")
        return orig(this, key)

    monkeypatch.setattr(ck.CheckpointFile, "tensor", failing)
    with pytest.raises(DynamiCrafterInputError, match="disk went away reading"):  # the source's error, one line
        conv.convert_checkpoint(src, dst, variant=v, overwrite=True)
    assert dst.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors", "src.ckpt"]
    monkeypatch.setattr(ck.CheckpointFile, "tensor", orig)
    conv.convert_checkpoint(src, dst, variant=v, overwrite=True)
    assert conv.inspect_checkpoint(dst).detection.variant == "512"
    msg = refused(conv.convert_checkpoint, src, src.with_suffix(".ckpt2"), variant=v)
    assert ".safetensors" in msg


def _convert_cli():
    """The top-level convert.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("dc_convert_cli", REPO / "convert.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_convert_inspect_and_error(tmp_path, capsys):
    cli = _convert_cli()
    v, sd = tiny_state("1024", seed=6)
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, src)
    # The CLI builds registry (real-size) variants, so it can convert/validate only real files; inspect reads
    # headers only and works on any file. Convert through the API, then inspect through the CLI.
    dst = tmp_path / "tiny.safetensors"
    conv.convert_checkpoint(src, dst, variant=v)
    assert cli.main(["inspect", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "variant 1024 (metadata)" in out and "unet=" in out
    assert cli.main(["convert", str(src), str(dst), "--variant", "1024"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "overwrite" in err
    # Run as a file, the way a user would call it from the pack folder.
    proc = subprocess.run([sys.executable, str(REPO / "convert.py"), "inspect", str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "variant 1024 (metadata)" in proc.stdout


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs: one line, what was expected / found / what to do, nothing loaded
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_files(tmp_path):
    v, sd = tiny_state("512", seed=7)
    st, pt = tmp_path / "m.safetensors", tmp_path / "m.ckpt"
    save_file(sd, str(st))
    torch.save({"state_dict": sd}, pt)
    return SimpleNamespace(v=v, sd=sd, st=st, pt=pt, dir=tmp_path)


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_truncated_file(small_files, kind, monkeypatch):
    src = small_files.st if kind == "safetensors" else small_files.pt
    bad = small_files.dir / f"cut.{kind}"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    reads = ReadCounter(monkeypatch)
    msg = refused(loading.load_dynamicrafter, bad, variant=small_files.v)
    assert "'cut." in msg and "incomplete or damaged" in msg and "download it again" in msg
    assert reads.n == 0


def test_corrupt_safetensors_header(small_files, monkeypatch):
    data = bytearray(small_files.st.read_bytes())
    bad1 = small_files.dir / "huge_header.safetensors"
    bad1.write_bytes(b"\xff" * 8 + bytes(data[8:]))
    bad2 = small_files.dir / "bad_json.safetensors"
    data[9:14] = b"#####"
    bad2.write_bytes(bytes(data))
    reads = ReadCounter(monkeypatch)
    for bad in (bad1, bad2):
        msg = refused(loading.load_dynamicrafter, bad, variant=small_files.v)
        assert "a complete .safetensors file" in msg and "damaged" in msg and "download it again" in msg
    assert reads.n == 0


class _Evil:
    """Unpickling this would run a shell command creating a marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt, monkeypatch):
    marker = tmp_path / "PWNED"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"x": evil, "model.diffusion_model.out.2.weight": torch.zeros(1)}}
    if fmt == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()
    reads = ReadCounter(monkeypatch)
    for fn in (loading.load_dynamicrafter, conv.inspect_checkpoint):
        msg = refused(fn, path)
        assert "refused" in msg and "posix.system" in msg and "nothing was executed" in msg
        assert ".safetensors" in msg
    msg = refused(conv.convert_checkpoint, path, tmp_path / "out.safetensors")
    assert "refused" in msg
    assert not marker.exists(), "the pickle's code ran"
    assert reads.n == 0 and not (tmp_path / "out.safetensors").exists()


def _sd15_keys():
    return {
        U + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
        U + "out.2.weight": torch.zeros(4, 320, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 768),
        "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 128, 3, 3),
    }


def _sdxl_keys():
    return {
        U + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        U + "label_emb.0.0.weight": torch.zeros(1280, 2816),
        U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 768),
        "conditioner.embedders.1.model.ln_final.weight": torch.zeros(1280),
    }


@pytest.mark.parametrize("kind,looks", [("sd15", "Stable Diffusion 1.x"), ("sdxl", "SDXL")])
def test_image_model_given_as_dynamicrafter(tmp_path, kind, looks, monkeypatch):
    keys = _sd15_keys() if kind == "sd15" else _sdxl_keys()
    assert (fmt.looks_like_sd15 if kind == "sd15" else fmt.looks_like_sdxl)({k: t.shape for k, t in keys.items()})
    path = tmp_path / f"{kind}.safetensors"
    save_file(keys, str(path))
    reads = ReadCounter(monkeypatch)
    msg = refused(loading.load_dynamicrafter, path)
    assert f"found {'an' if kind == 'sdxl' else 'a'} {looks}" in msg
    assert "not a DynamiCrafter model" in msg and "temopral_conv" in msg and "model.ckpt" in msg
    assert "host's own loaders" in msg
    assert reads.n == 0


def test_missing_and_unexpected_keys_are_named(small_files, monkeypatch):
    sd = dict(small_files.sd)
    gone = sorted(k for k in sd if k.startswith(U + "output_blocks.2."))[:4]
    for k in gone:
        del sd[k]
    sd[U + "extra_block.weight"] = torch.zeros(2)
    sd[U + "zz_other.bias"] = torch.zeros(2)
    path = small_files.dir / "holes.safetensors"
    save_file(sd, str(path))
    reads = ReadCounter(monkeypatch)
    msg = refused(loading.load_dynamicrafter, path, variant=small_files.v)
    assert "4 missing (" + ", ".join(gone[:3]) + ", ... (+1 more))" in msg
    assert f"2 unexpected ({U}extra_block.weight, {U}zz_other.bias)" in msg
    assert "the 478 unet weights of the 512 model" in msg.replace(
        str(len(UNetModel(small_files.v.unet, device="meta").state_dict())), "478")
    assert "original DynamiCrafter checkpoint" in msg
    assert reads.n == 0


def test_wrong_shape_is_named(small_files, monkeypatch):
    sd = dict(small_files.sd)
    k = U + "out.2.weight"
    good = list(sd[k].shape)
    sd[k] = torch.zeros(good[0], good[1] + 1, *good[2:])
    path = small_files.dir / "shape.safetensors"
    save_file(sd, str(path))
    reads = ReadCounter(monkeypatch)
    msg = refused(loading.load_dynamicrafter, path, variant=small_files.v)
    bad = [good[0], good[1] + 1] + good[2:]
    assert f"1 of wrong shape, first {k} {bad} where the model has {good}" in msg
    assert reads.n == 0


def test_missing_image_proj_and_other_refusals(small_files, monkeypatch):
    reads = ReadCounter(monkeypatch)
    sd = {k: t for k, t in small_files.sd.items() if not k.startswith(P)}
    path = small_files.dir / "unet_only.safetensors"
    save_file(sd, str(path))
    msg = refused(loading.load_dynamicrafter, path, variant=small_files.v)
    assert "holds no image_proj weights ('image_proj_model.*')" in msg

    msg = refused(loading.load_dynamicrafter, small_files.st, variant="2048")
    assert "found '2048'" in msg and all(f"'{n}'" in msg for n in variant_names())
    msg = refused(loading.load_dynamicrafter, small_files.st, variant="256")
    assert "'256' chosen explicitly" in msg and "attn2.alpha" in msg
    msg = refused(loading.load_dynamicrafter, small_files.dir / "nope.safetensors")
    assert "nothing at" in msg
    gguf = small_files.dir / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    msg = refused(loading.load_dynamicrafter, gguf)
    assert "extension '.gguf'" in msg
    notsd = small_files.dir / "list.pt"
    torch.save([1, 2, 3], notsd)
    msg = refused(loading.load_dynamicrafter, notsd)
    assert "a state dict of tensors" in msg
    msg = refused(loading.load_dynamicrafter, small_files.st, variant=small_files.v, dtype="fp8")
    assert "fp32, fp16, bf16" in msg
    assert reads.n == 0

"""The trainer's kohya-key LoRA copy in ComfyUI's stock ``LoraLoaderModelOnly`` gives the frames ``DCN_ApplyAdapter``
gives with the adapter itself, bit for bit (real executor, real VAE decode); ``DCN_ApplyAdapter`` reads the kohya
copy back too, and refuses a kohya LoRA that is not the trainer's with one line naming the stock loader."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_dynamicrafter.tests import hosting
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt

ADAPTER = "dc_kohya_test.safetensors"            # the trainer's adapter (models/dynamicrafter_adapters)
KOHYA = "dc_kohya_test_kohya.safetensors"         # its kohya-key copy (models/loras)
FOREIGN = "dc_foreign_kohya.safetensors"          # kohya keys without the trainer's metadata (models/loras)
SEED, STEPS = 5, 3


@pytest.fixture(scope="module")
def lora_files(host, dc, tmp_path_factory):
    from comfyui_dynamicrafter.training import demo as synth
    from comfyui_dynamicrafter.training.config import TrainConfig
    from comfyui_dynamicrafter.training.loop import train

    work = tmp_path_factory.mktemp("kohya_training")
    csv, _ = synth.make_video_dataset(str(work / "videos"), n_clips=2, n_frames=8, height=16, width=24)
    s = dict(stage="finetune", variant="512", tiny=True, data_csv=csv, height=32, width=32, frames=4, batch_size=1,
             grad_accum=1, num_workers=0, max_steps=2, save_every=100, lr=1e-2, progress=False,
             output_dir=str(work / "run"), frame_stride_max=2, ema=False, init_checkpoint=tinyckpt.checkpoints()["full"],
             resume="none", groups=["lora"], lora_rank=4, lora_alpha=8.0, resampler_overrides={"embedding_dim": 64},
             threads=1)
    n = torch.get_num_threads()
    try:
        out = train(TrainConfig.from_dict(s))["adapter"]
    finally:
        torch.set_num_threads(n)
    folders = {"dynamicrafter_adapters": str(tmp_path_factory.mktemp("adapters")),
               "loras": str(tmp_path_factory.mktemp("loras"))}
    shutil.copy(out["adapter"], os.path.join(folders["dynamicrafter_adapters"], ADAPTER))
    shutil.copy(out["kohya"], os.path.join(folders["loras"], KOHYA))
    save_file(load_file(out["kohya"]), os.path.join(folders["loras"], FOREIGN))          # no metadata
    with host.swapped_folders(folders):
        yield out


def _graph(kind: str, name: str = None):
    g = S.add_exact_sampler(S.conditioning_graph(), seed=SEED, steps=STEPS, decode=True, prefix="dcn_kohya")
    src = S.model_ref(g)
    if kind == "dcn":
        g["20"] = {"class_type": "DCN_ApplyAdapter", "inputs": {"model": src, "image_proj": [src[0], 1],
                                                                "adapter_name": name, "strength_model": 1.0}}
        g["7"]["inputs"]["model"] = ["20", 0]
        g["5"]["inputs"]["image_proj"] = ["20", 1]
    elif kind == "stock":
        g["20"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": src, "lora_name": name,
                                                                   "strength_model": 1.0}}
        g["7"]["inputs"]["model"] = ["20", 0]
    return g


def _frames(host, g) -> torch.Tensor:
    host.run_prompt(g)
    return host.node_output("8")[0][0].float().clone()


def test_kohya_copy_in_the_stock_lora_loader_equals_dcn_apply_adapter(host, lora_files, record_property):
    plain = _frames(host, _graph("plain"))
    dcn = _frames(host, _graph("dcn", ADAPTER))
    stock = _frames(host, _graph("stock", KOHYA))
    dcn_kohya = _frames(host, _graph("dcn", KOHYA))                     # the node reads the kohya copy back
    change = (dcn - plain).abs().max().item()
    diff = (stock - dcn).abs().max().item()
    record_property("stock_vs_dcn_max_diff", diff)
    print(f"host {host.info.describe()}: frames {tuple(dcn.shape)}; LoraLoaderModelOnly(kohya copy) vs "
          f"DCN_ApplyAdapter(adapter): max |diff| {diff}; adapter vs plain {change:.4g}")
    assert change > 0
    assert torch.equal(stock, dcn)
    assert torch.equal(dcn_kohya, dcn)


def test_foreign_kohya_lora_is_refused_with_one_line(host, lora_files):
    with pytest.raises(hosting.PromptExecutionError) as e:
        host.run_prompt(_graph("dcn", FOREIGN))
    msg = e.value.exception_message
    print(msg)
    assert "\n" not in msg and "LoraLoaderModelOnly" in msg and "kohya" in msg

"""The loader inside a real host: a small registry config is taken from the file's metadata (model/tiny.py writes
it) and said in ``info``; the same weights without that metadata are checked against the real model and refused
with one line, never retried with a small config."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_dynamicrafter.model.tiny import variant_metadata
from comfyui_dynamicrafter.tests.nodes import dcn_support as S
from comfyui_dynamicrafter.tests.nodes import tinyckpt


def test_tiny_file_is_recognised_from_its_metadata(host):
    loader = S.pack_module(host, "nodes.loader")
    with torch.inference_mode():                                  # as the host's executor runs a node
        res = loader.load_checkpoint(tinyckpt.checkpoints()["full"])
    assert res.projector.variant.extra["config"] == "tiny" and res.projector.embedding_dim == 64
    assert "variant '512' from the file's metadata" in res.info
    assert "config 'tiny'" in res.info and "pipeline check" in res.info
    assert res.clip is not None and res.clip_vision is not None and res.vae is not None


def test_tiny_weights_without_their_metadata_are_refused_in_one_line(host, tmp_path):
    loader = S.pack_module(host, "nodes.loader")
    error = S.pack_module(host, "model.errors").DynamiCrafterInputError
    unmarked = tmp_path / "dc_tiny_unmarked.safetensors"
    save_file(load_file(tinyckpt.checkpoints()["interp"]), str(unmarked), metadata=variant_metadata("512-interp", None))
    with pytest.raises(error) as err:
        loader.load_checkpoint(str(unmarked))
    msg = str(err.value)
    assert "\n" not in msg and "dc_tiny_unmarked.safetensors" in msg
    assert "of the 512-interp model" in msg and "wrong shape" in msg

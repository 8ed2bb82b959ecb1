"""Finite-value guards (model/guards.py): numbers, weights, latents and images with NaN/Inf give one line naming
them; finite inputs pass untouched. Real tensors and real safetensors files, no mocks."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_dynamicrafter.model import guards
from comfyui_dynamicrafter.model.errors import DynamiCrafterInputError
from comfyui_dynamicrafter.model.tiny import unet_and_p


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, "nan", "NaN", "inf", "-Infinity"])
def test_number_nan_inf_refused_naming_the_input(value):
    with pytest.raises(guards.NonFiniteError) as e:
        guards.check_finite_number("cfg_text", value, 0.0, 30.0)
    msg = str(e.value)
    assert msg.startswith("cfg_text: expected a finite number from 0 to 30") and "\n" not in msg


@pytest.mark.parametrize("value,expected", [(7.5, 7.5), ("7.5", 7.5), (0, 0.0), (30, 30.0)])
def test_number_finite_passes(value, expected):
    assert guards.check_finite_number("cfg_text", value, 0.0, 30.0) == expected


@pytest.mark.parametrize("value", [31.0, -0.1, True, None, "seven", [1.0]])
def test_number_out_of_range_or_not_a_number_refused(value):
    with pytest.raises(DynamiCrafterInputError) as e:
        guards.check_finite_number("guidance_rescale", value, 0.0, 30.0)
    assert str(e.value).startswith("guidance_rescale: expected a number from 0 to 30")
    assert not isinstance(e.value, guards.NonFiniteError)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_one_reduction_is_exact_for_each_dtype(dtype):
    big = torch.full((1000,), torch.finfo(dtype).max, dtype=dtype)  # its sum overflows: confirmed element-wise
    assert guards.is_finite_tensor(big)
    for bad, label in ((float("nan"), "1 NaN"), (float("inf"), "1 +Inf"), (-float("inf"), "1 -Inf")):
        t = torch.randn(64, 64).to(dtype)
        t[3, 5] = bad
        assert not guards.is_finite_tensor(t)
        assert guards.describe_nonfinite(t) == f"{label} of 4096 values"
    assert guards.is_finite_tensor(torch.arange(10))  # integers
    assert guards.is_finite_tensor(torch.empty(0))


def test_fp8_weights_are_checked():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    t = torch.randn(16).to(torch.float8_e4m3fn)
    assert guards.is_finite_tensor(t)
    t = torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn)
    assert not guards.is_finite_tensor(t)


def test_state_dict_names_first_bad_tensor_from_a_real_file(tmp_path):
    sd = unet_and_p("512", seed=3)
    name = sorted(sd)[len(sd) // 2]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path))
    loaded = load_file(str(path))
    with pytest.raises(guards.NonFiniteError) as e:
        guards.check_state_dict_finite(loaded, "ckpt_name 'nan.safetensors'")
    msg = str(e.value)
    assert f"tensor '{name}' holds 1 NaN of" in msg and "\n" not in msg
    del loaded[name]
    guards.check_state_dict_finite(loaded, "ckpt")  # the rest is fine


def test_module_check_covers_buffers():
    m = torch.nn.BatchNorm1d(4)
    guards.check_module_finite(m, "adapter")
    m.running_var[2] = float("inf")
    with pytest.raises(guards.NonFiniteError, match="tensor 'running_var' holds 1 \\+Inf of 4 values"):
        guards.check_module_finite(m, "adapter")


def test_latent_check_names_the_step():
    x = torch.randn(1, 4, 2, 8, 8)
    assert guards.check_latent_finite(x, 3, 50) is x
    x[0, 0, 1, 2, 2] = float("nan")
    with pytest.raises(guards.NonFiniteError) as e:
        guards.check_latent_finite(x, 7, 50)
    assert str(e.value).startswith("latent after sampling step 7 of 50: expected finite values, found 1 NaN")
    assert "nothing was saved" in str(e.value)


def test_image_check():
    img = torch.rand(2, 32, 32, 3)
    assert guards.check_image_finite(img, "start_image") is img
    img[1, 0, 0, 0] = float("nan")
    with pytest.raises(guards.NonFiniteError, match="^start_image: expected finite pixel values"):
        guards.check_image_finite(img, "start_image")

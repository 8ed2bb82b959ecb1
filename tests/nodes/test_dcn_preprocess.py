"""Training and inference prepare the conditioning image identically: the host's LoadImage -> DCN_ImageEncode's CLIP
pixels are bit-equal to the pixels the trainer's image encoder feeds its patch embedding (both through
model/conditioning.py's ``clip_preprocess``). (The concat layout: tests/model/test_conditioning.py for the builder,
test_dcn_nodes.py for the node's frames.)"""
import os

import numpy as np
import pytest
import torch

from comfyui_dynamicrafter.tests.nodes import dcn_support as S


def _png(path, h, w, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), (xx + yy) % 256], -1).astype(np.int64)
    img = np.clip(img + rng.integers(-40, 41, img.shape), 0, 255).astype(np.uint8)   # texture: the filter matters
    Image.fromarray(img).save(path)
    return img


@pytest.mark.parametrize("size", [(300, 420), (224, 224)])
def test_training_and_inference_clip_pixels_bit_equal(host, size):
    from comfyui_dynamicrafter.training.data import resize_center_crop
    from comfyui_dynamicrafter.training.encoders import ImageEncoder, build_open_clip

    import nodes as host_nodes                                        # the host's own LoadImage

    h, w = size
    name = f"dcn_preprocess_{h}x{w}.png"             # in the host's input folder: LoadImage takes names there (v0.33
    arr = _png(os.path.join(host.dirs["input"], name), h, w)  # refuses absolute paths, as the UI never sends them)
    # inference: LoadImage -> IMAGE [1, H, W, 3] in [0, 1] -> DCN_ImageEncode's CLIP pixels
    image = host_nodes.LoadImage().load_image(name)[0]
    assert tuple(image.shape) == (1, h, w, 3)
    encode = S.pack_module(host, "nodes.encode")
    infer = encode.clip_pixels(image, 224)
    # training: the dataset's frame tensor in [-1, 1] at the image's own size -> ImageEncoder (pixels at conv1)
    video = resize_center_crop(torch.from_numpy(arr[None].copy()), h, w)          # [3, 1, H, W]
    enc = ImageEncoder(build_open_clip(tiny=True, seed=0)).eval()
    seen = []
    enc.visual.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    enc(video[:, 0][None])
    train = seen[0]
    assert train.shape == infer.shape == (1, 3, 224, 224)
    assert train.dtype == infer.dtype == torch.float32
    assert torch.equal(train, infer)


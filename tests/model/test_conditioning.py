"""model/conditioning.py: the concat latent layout and the CLIP preprocessing against the reference recipe
(shared/fixtures/README.md, "Embedder" and "c_concat")."""
import kornia
import pytest
import torch

from comfyui_dynamicrafter.model.conditioning import CLIP_MEAN, CLIP_STD, clip_preprocess, concat_latent


def _latents(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 5, 7, generator=g), torch.randn(b, 4, 5, 7, generator=g)


def test_concat_latent_image_to_video_repeats_the_image_latent():
    first, _ = _latents()
    c = concat_latent(first, 6)
    assert c.shape == (2, 4, 6, 5, 7)
    for t in range(6):
        assert torch.equal(c[:, :, t], first)


@pytest.mark.parametrize("frames", [2, 3, 16])
def test_concat_latent_interpolation_first_last_zeros_between(frames):
    first, last = _latents(1)
    c = concat_latent(first, frames, last)
    assert c.shape == (2, 4, frames, 5, 7) and c.dtype == first.dtype
    assert torch.equal(c[:, :, 0], first) and torch.equal(c[:, :, -1], last)
    assert not c[:, :, 1:-1].any()
    loop = concat_latent(first, frames, first)                      # loop: the video ends on the start image
    assert torch.equal(loop[:, :, -1], first)


def test_clip_preprocess_is_the_reference_recipe():
    """kornia bicubic antialiased align_corners squash to 224, then (x+1)/2, then CLIP mean/std (kornia normalize)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 320, 512, generator=g) * 2 - 1
    ref = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    ref = kornia.enhance.normalize((ref + 1.0) / 2.0, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
    out = clip_preprocess(x)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # not torch's own antialias (a different filter): the reference's kornia Gaussian pre-blur is what is used
    torch_aa = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True, antialias=True)
    torch_aa = ((torch_aa + 1.0) / 2.0 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert (torch_aa - out).abs().max() > 1e-3
    # an image already 224x224 is only normalised (no resampling)
    y = x[..., :224, :224]
    assert torch.equal(clip_preprocess(y), ((y + 1.0) / 2.0 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
                       / torch.tensor(CLIP_STD).view(1, 3, 1, 1))

"""RandAugment's ops (data/randaugment.py): shapes, dtypes, ranges, identity at magnitude 0, hand-computed
results, Pillow's ImageOps / ImageEnhance as the reference of the intensity ops, the policy's seeding, and
the evaluation centre crop of ImageTransform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambamixer.data import randaugment as ra
from mambamixer.data.augment import AugmentConfig, ImageTransform, parse_augment

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402


def _images(batch: int = 4, c: int = 3, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    """Random images on the 256-level grid, (batch, C, H, W) floats in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, c, h, w), generator=g).float() / 255


@pytest.mark.parametrize("name", list(ra.OPS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_dtype_and_range(name: str, channels: int) -> None:
    x = _images(c=channels)
    torch.manual_seed(0)
    out = ra.OPS[name](x, torch.full((4,), 9.0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


IDENTITY_AT_ZERO = ["Rotate", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                    "TranslateYRel"]


@pytest.mark.parametrize("name", IDENTITY_AT_ZERO)
def test_magnitude_zero_is_identity(name: str) -> None:
    x = _images()
    torch.testing.assert_close(ra.OPS[name](x, torch.zeros(4)), x, atol=1e-6, rtol=0)


def test_magnitude_ten_is_strongest() -> None:
    """Posterize increasing: 4 bits at level 0 (not identity), 0 bits (black) at 10; solarize at 10 inverts all."""
    x = _images()
    assert ra.OPS["PosterizeIncreasing"](x, torch.full((4,), 10.0)).max() == 0
    torch.testing.assert_close(ra.OPS["SolarizeIncreasing"](x, torch.full((4,), 10.0)), 1 - x)


def test_hand_computed_ops() -> None:
    v = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.float32).view(1, 1, 1, 6) / 255
    torch.testing.assert_close(ra.invert(v) * 255, torch.tensor([255, 155, 128, 127, 55, 0.]).view(1, 1, 1, 6))
    sol = ra.solarize(v, torch.tensor([128.0])) * 255
    torch.testing.assert_close(sol, torch.tensor([0, 100, 127, 127, 55, 0.]).view(1, 1, 1, 6))
    add = ra.solarize_add(v, torch.tensor([110.0])) * 255
    torch.testing.assert_close(add, torch.tensor([110, 210, 237, 128, 200, 255.]).view(1, 1, 1, 6))
    post = ra.posterize(v, torch.tensor([1])) * 255
    torch.testing.assert_close(post, torch.tensor([0, 0, 0, 128, 128, 128.]).view(1, 1, 1, 6))
    auto = ra.auto_contrast(torch.tensor([50, 100, 150.]).view(1, 1, 1, 3) / 255)
    torch.testing.assert_close(auto, torch.tensor([0, 0.5, 1.]).view(1, 1, 1, 3))


def test_rotate_90_and_translate_match_hand_results() -> None:
    x = _images(batch=2, h=8, w=8)
    torch.testing.assert_close(ra.rotate(x, torch.tensor([90.0, 90.0])), torch.rot90(x, 1, dims=(-2, -1)),
                               atol=1e-5, rtol=0)  # counter-clockwise, as PIL's rotate
    out = ra.translate(x, torch.tensor([0.25, 0.25]), "x", fill=(0.5, 0.5, 0.5))  # 2 of 8 pixels
    torch.testing.assert_close(out[..., :6], x[..., 2:], atol=1e-6, rtol=0)
    assert torch.allclose(out[..., 6:], torch.tensor(0.5))
    sheared = ra.shear(x, torch.tensor([1.0, 1.0]), "x", fill=(0.0, 0.0, 0.0))  # row r reads col c + r
    torch.testing.assert_close(sheared[..., 3, :5], x[..., 3, 3:], atol=1e-6, rtol=0)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].permute(1, 2, 0) * 255).round().byte().numpy(), "RGB")


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("op, reference, atol", [
    (ra.equalize, ImageOps.equalize, 1e-6),
    (ra.auto_contrast, ImageOps.autocontrast, 1 / 255 + 1e-6),  # PIL rounds through a lookup table
    (lambda x: ra.solarize(x, torch.tensor([100.0])), lambda im: ImageOps.solarize(im, 100), 1e-6),
    (lambda x: ra.posterize(x, torch.tensor([2])), lambda im: ImageOps.posterize(im, 2), 1e-6),
    (lambda x: ra.adjust_color(x, torch.tensor([0.3])), lambda im: ImageEnhance.Color(im).enhance(0.3), 2 / 255),
    (lambda x: ra.adjust_contrast(x, torch.tensor([1.7])), lambda im: ImageEnhance.Contrast(im).enhance(1.7),
     2 / 255),
    (lambda x: ra.adjust_brightness(x, torch.tensor([1.5])), lambda im: ImageEnhance.Brightness(im).enhance(1.5),
     1 / 255 + 1e-6),
    (lambda x: ra.adjust_sharpness(x, torch.tensor([1.9])), lambda im: ImageEnhance.Sharpness(im).enhance(1.9),
     2 / 255),
])
def test_intensity_ops_match_pillow(op, reference, atol: float) -> None:
    x = _images(batch=1, h=10, w=9, seed=3)
    torch.testing.assert_close(op(x), _from_pil(reference(_pil(x))), atol=atol, rtol=0)


def test_rand_augment_is_seeded_and_changes_images() -> None:
    x = _images(batch=16, h=16, w=16)
    torch.manual_seed(1)
    a = ra.rand_augment(x)
    torch.manual_seed(1)
    b = ra.rand_augment(x)
    torch.manual_seed(2)
    c = ra.rand_augment(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a - x).abs().flatten(1).amax(dim=1) > 0
    assert 4 <= changed.sum() <= 16  # each image: 2 ops at p = 0.5 -> 3/4 of the images touched
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(ra.rand_augment(x, layers=0), x)
    with pytest.raises(ValueError, match="magnitude"):
        ra.rand_augment(x, magnitude=11)


def test_augment_spec_and_description() -> None:
    aug = parse_augment("flip,rand=7,erase=0.25", "folder", 32)
    assert (aug.rand_layers, aug.rand_magnitude, aug.hflip) == (2, 7.0, True)
    assert aug.describe() == "flip,rand-m7-mstd0.5-inc1,erase=0.25"
    assert AugmentConfig().describe() == "none"
    with pytest.raises(ValueError, match="RandAugment"):
        AugmentConfig(rand_layers=2, rand_magnitude=12)


def test_eval_centre_crop_resizes_then_takes_the_centre() -> None:
    """img_size 8 at crop_pct 0.5: resize to 16 (the stored size: no resampling), keep rows/cols 4..11."""
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    t = ImageTransform([0.0] * 3, [1.0] * 3, img_size=8, crop_pct=0.5)
    torch.testing.assert_close(t(images), images[..., 4:12, 4:12].float() / 255)
    assert t(images, train=True).shape == (2, 3, 8, 8)  # training resizes the whole image
    assert ImageTransform([0.0] * 3, [1.0] * 3, img_size=224, crop_pct=0.875)(
        torch.zeros(1, 3, 300, 300, dtype=torch.uint8)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="crop_pct"):
        ImageTransform([0.0], [1.0], img_size=8, crop_pct=1.5)

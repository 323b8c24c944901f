"""Batch transforms of the image task, in plain torch on whatever device the batch is on.

    transform = ImageTransform(mean, std, img_size=28, augment=default_augment("fashion-mnist", 28))
    x = transform(images_uint8, train=True)     # (batch, C, H, W) uint8 -> normalised float32

Order: uint8 -> [0, 1] floats -> resize (bilinear, antialiased) -> random crop from the
zero-padded image -> horizontal flip -> RandAugment (data/randaugment.py) -> normalise -> random
erasing (erased pixels become 0, the dataset mean, as torchvision's RandomErasing after Normalize).
Evaluation only converts, resizes and normalises; with ``crop_pct`` (the DeiT recipe's 0.875) it
resizes to img_size / crop_pct (256 for 224) and takes the centre img_size square. Random draws
use torch's default generator of the batch's device, which ``seed_everything`` seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mambamixer.data.randaugment import describe_rand_augment, rand_augment

__all__ = ["FLIP_SCHEDULES", "TTA_MODES", "AlternatingFlips", "AugmentConfig", "ImageTransform", "check_tta",
           "default_augment", "describe_augment", "flips_fit", "parse_augment", "random_crop", "random_erase",
           "random_hflip", "tta_views"]

TTA_MODES = ("flip",)  # test-time augmentation: the image and its mirror
FLIP_SCHEDULES = ("random", "alternate")  # which images a training epoch mirrors


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # pixels of zero padding a same-size random crop is taken from (0 = off)
    hflip: bool = False  # horizontal flips (not for digits: a mirrored 2 is no 2)
    flip_schedule: str = "random"  # "random": p = 0.5 per image and epoch; "alternate": see AlternatingFlips
    erase_prob: float = 0.0  # chance per image of random erasing (Zhong et al., AAAI 2020)
    erase_area: tuple[float, float] = (0.02, 0.33)  # erased fraction of the image, uniform
    erase_aspect: tuple[float, float] = (0.3, 3.3)  # erased height / width, log-uniform
    rand_layers: int = 0  # RandAugment ops per image (0 = off; the DeiT recipe: 2)
    rand_magnitude: float = 9.0  # RandAugment magnitude of 10
    rand_magnitude_std: float = 0.5  # its per-image Gaussian noise

    def describe(self) -> str:
        """One line: ``crop=3,flip,rand-m9-mstd0.5-inc1,erase=0.25``."""
        parts = [f"crop={self.crop_padding}"] if self.crop_padding else []
        if self.hflip:
            parts.append("flip" if self.flip_schedule == "random" else f"flip={self.flip_schedule}")
        if self.rand_layers:
            parts.append(describe_rand_augment(self.rand_layers, self.rand_magnitude, self.rand_magnitude_std))
        if self.erase_prob:
            parts.append(f"erase={self.erase_prob:g}")
        return ",".join(parts) or "none"

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"crop_padding must be >= 0 and erase_prob in [0, 1], got {self.crop_padding}, "
                             f"{self.erase_prob}")
        if self.rand_layers < 0 or not 0.0 <= self.rand_magnitude <= 10.0 or self.rand_magnitude_std < 0:
            raise ValueError(f"RandAugment needs layers >= 0, magnitude in [0, 10] and std >= 0, got "
                             f"{self.rand_layers}, {self.rand_magnitude}, {self.rand_magnitude_std}")
        if self.flip_schedule not in FLIP_SCHEDULES:
            raise ValueError(f"flip_schedule must be one of {', '.join(FLIP_SCHEDULES)}, got {self.flip_schedule!r}")


def flips_fit(dataset: str) -> bool:
    """Whether a mirrored image keeps its label: not for digits and MNIST (a mirrored 2 is no 2)."""
    return dataset not in ("digits", "mnist")


def default_augment(dataset: str, img_size: int) -> AugmentConfig:
    """The recipe's augmentation: crop padding img_size // 8; flips and erasing except on digits and MNIST."""
    fit = flips_fit(dataset)
    return AugmentConfig(crop_padding=max(1, img_size // 8), hflip=fit, erase_prob=0.25 if fit else 0.0)


def check_tta(tta: str | None, dataset: str) -> str | None:
    """Validate a test-time augmentation mode (None, "none" or one of ``TTA_MODES``) for ``dataset``."""
    if tta is None or tta == "none":
        return None
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; known: {', '.join(TTA_MODES)} or none")
    if not flips_fit(dataset):
        raise ValueError(f"flip test-time augmentation averages over mirrored images, but a mirrored {dataset} "
                         f"image can change its label")
    return tta


def tta_views(x: Tensor, tta: str | None) -> list[Tensor]:
    """The views (each (batch, C, H, W)) whose predictions a TTA prediction averages: [x], or [x, mirrored x]."""
    return [x] if tta is None else [x, x.flip(-1)]


def parse_augment(spec: str, dataset: str, img_size: int) -> AugmentConfig | None:
    """``"flip,crop=2"`` -> AugmentConfig(hflip=True, crop_padding=2); ``"none"`` -> None; ``"default"`` -> recipe."""
    spec = spec.strip().lower()
    if spec == "default":
        return default_augment(dataset, img_size)
    if spec in ("none", ""):
        return None
    fields: dict[str, Any] = {}
    for item in spec.split(","):
        key, eq, value = item.strip().partition("=")
        try:
            if key == "flip" and (not eq or value.strip() in FLIP_SCHEDULES):
                fields["hflip"] = True
                fields["flip_schedule"] = value.strip() if eq else "random"
            elif key == "crop" and eq:
                fields["crop_padding"] = int(value)
            elif key == "erase" and eq:
                fields["erase_prob"] = float(value)
            elif key == "rand":
                fields["rand_layers"] = 2
                if eq:
                    fields["rand_magnitude"] = float(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"unknown augmentation {item.strip()!r} in {spec!r}; expected default, none, or a "
                             "comma list of flip (or flip=alternate), crop=PIXELS, erase=PROB, rand (or "
                             "rand=MAGNITUDE: RandAugment, 2 ops)") from None
    return AugmentConfig(**fields)


def random_crop(x: Tensor, padding: int) -> Tensor:
    """(batch, C, H, W) -> same shape: each image cropped at a random offset from its zero-padded copy."""
    if padding <= 0:
        return x
    batch, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (batch, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (batch, 1, 1, W)
    b = torch.arange(batch, device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[b, c, rows, cols]


def random_hflip(x: Tensor, p: float = 0.5, flip: Tensor | None = None) -> Tensor:
    """(batch, C, H, W): each image mirrored left-right with probability ``p``, or where ``flip`` (batch,) is True."""
    if flip is None:
        flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


class AlternatingFlips:
    """Derandomised flips (Jordan, "94% on CIFAR-10 in 3.29 seconds", 2024): which images an epoch mirrors.

    Image i is mirrored in the first epoch with probability 1/2 (a seeded draw, the same in every
    process), and from then on in every other epoch: in epoch e iff ``first[i] != (e odd)``. Each
    image is therefore seen in both orientations in any two consecutive epochs, where random flips
    show half of the images the same way in both. ``flips(indices, epoch)`` -> bool (batch,).
    """

    def __init__(self, n_images: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.first = torch.rand(n_images, generator=g) < 0.5

    def __call__(self, indices: Tensor, epoch: int) -> Tensor:
        return self.first[indices.cpu()] ^ bool(epoch % 2)


def random_erase(x: Tensor, p: float, area: tuple[float, float] = (0.02, 0.33),
                 aspect: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> Tensor:
    """(batch, C, H, W): with probability ``p`` per image, one random rectangle set to ``value``.

    The rectangle covers a uniform fraction ``area`` of the image with a log-uniform
    height/width ratio in ``aspect``, clipped to the image (one draw, no rejection loop).
    """
    if p <= 0:
        return x
    batch, _, h, w = x.shape
    dev = x.device
    target = torch.empty(batch, device=dev).uniform_(*area) * (h * w)
    ratio = torch.exp(torch.empty(batch, device=dev).uniform_(math.log(aspect[0]), math.log(aspect[1])))
    eh = (target * ratio).sqrt().round().clamp(1, h)
    ew = (target / ratio).sqrt().round().clamp(1, w)
    top = (torch.rand(batch, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(batch, device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (batch, H)
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (batch, W)
    chosen = torch.rand(batch, device=dev) < p
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None])[:, None]  # (batch, 1, H, W)
    return x.masked_fill(mask, value)


class ImageTransform:
    """uint8 images (batch, C, H, W) -> normalised float32 (batch, C, img_size, img_size).

    ``mean`` / ``std``: per channel on the [0, 1] scale. ``img_size=None`` keeps the size.
    ``augment`` is applied only when called with ``train=True``. ``crop_pct`` (evaluation only):
    resize to round(img_size / crop_pct), then the centre img_size x img_size square.
    """

    def __init__(self, mean: list[float], std: list[float], img_size: int | None = None,
                 augment: AugmentConfig | None = None, crop_pct: float | None = None) -> None:
        if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if crop_pct is not None and img_size is None:
            raise ValueError("crop_pct needs an img_size")
        self.crop_pct = crop_pct
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.img_size = img_size
        self.augment = augment

    def __call__(self, images: Tensor, train: bool = False, flip: Tensor | None = None) -> Tensor:
        """``flip`` (batch,) bool: which images to mirror when augmenting with flips (default: random, p = 0.5)."""
        x = images.float() / 255.0
        centre_crop = self.crop_pct is not None and not train
        size = round(self.img_size / self.crop_pct) if centre_crop else self.img_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        if centre_crop:
            top = (size - self.img_size) // 2
            x = x[..., top:top + self.img_size, top:top + self.img_size]
        a = self.augment if train else None
        if a is not None:
            x = random_crop(x, a.crop_padding)
            if a.hflip:
                x = random_hflip(x, flip=flip)
            x = rand_augment(x, a.rand_layers, a.rand_magnitude, a.rand_magnitude_std)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if a is not None and a.erase_prob > 0:
            x = random_erase(x, a.erase_prob, a.erase_area, a.erase_aspect)
        return x

    def describe(self) -> dict[str, Any]:
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(), "img_size": self.img_size,
                "crop_pct": self.crop_pct, "augment": None if self.augment is None else asdict(self.augment)}


def describe_augment(augment: AugmentConfig | None) -> str:
    """The augmentation in ``--augment`` syntax ("crop=3,flip,erase=0.25"), or "none": printed at a run's start."""
    return "none" if augment is None else augment.describe()

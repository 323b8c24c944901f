"""Mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) of a batch, with soft targets.

    mix = Mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1), 10)
    x, targets = mix(x, labels)     # x (batch, C, H, W); labels (batch,) int -> targets (batch, classes) floats

timm's ``Mixup`` in mode "batch": one lambda ~ Beta(alpha, alpha) per batch, each batch mixed with its
reverse (image i with image batch-1-i). With both alphas > 0, CutMix is chosen with probability
``switch_prob``; CutMix pastes one box of the reversed batch, its side sqrt(1 - lambda) of the image's,
centred uniformly and clipped to the image, and lambda becomes the kept area's fraction. Targets are
the label-smoothed one-hot vectors mixed with the same lambda, so each row sums to one. Lambda and the
switch are drawn from torch's default CPU generator (seeded by ``seed_everything``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MixupConfig", "Mixup", "cutmix_box", "smooth_one_hot"]


@dataclass
class MixupConfig:
    mixup_alpha: float = 0.8  # Beta(alpha, alpha) of Mixup's lambda (0 = no Mixup)
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) of CutMix's lambda (0 = no CutMix)
    switch_prob: float = 0.5  # with both on: chance of CutMix instead of Mixup for a batch
    prob: float = 1.0  # chance that a batch is mixed at all
    label_smoothing: float = 0.1  # folded into the soft targets

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        for name in ("switch_prob", "prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def describe(self) -> str:
        return (f"mixup {self.mixup_alpha:g} / cutmix {self.cutmix_alpha:g} (switch {self.switch_prob:g}, "
                f"p {self.prob:g})")


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(batch,) int -> (batch, classes): 1 - smoothing + smoothing / classes on the label, smoothing / classes
    elsewhere (the targets of ``F.cross_entropy(label_smoothing=...)``)."""
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


def cutmix_box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The pasted box (top, bottom, left, right), sides sqrt(1 - lam) of the image's, its centre uniform,
    clipped to the image."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, ()).item())
    cx = int(torch.randint(0, width, ()).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


class Mixup:
    """``(images, labels) -> (mixed images, soft targets)``; see the module doc. ``last_lam`` and ``last_mode``
    ("mixup", "cutmix" or "none") record the latest batch's draw."""

    def __init__(self, config: MixupConfig, num_classes: int) -> None:
        self.config, self.num_classes = config, num_classes
        self.last_lam, self.last_mode = 1.0, "none"

    def _draw(self) -> tuple[float, str]:
        c = self.config
        if not c.active or torch.rand(()).item() >= c.prob:
            return 1.0, "none"
        use_cutmix = c.cutmix_alpha > 0 and (c.mixup_alpha <= 0 or torch.rand(()).item() < c.switch_prob)
        alpha = c.cutmix_alpha if use_cutmix else c.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample().item())
        return lam, "cutmix" if use_cutmix else "mixup"

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """images (batch, C, H, W) float, labels (batch,) int64 -> same images mixed, targets (batch, classes)."""
        lam, mode = self._draw()
        flipped = images.flip(0)
        if mode == "mixup":
            images = images * lam + flipped * (1.0 - lam)
        elif mode == "cutmix":
            h, w = images.shape[-2:]
            top, bottom, left, right = cutmix_box(lam, h, w)
            images = images.clone()
            images[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (h * w)  # the area actually kept
        self.last_lam, self.last_mode = lam, mode
        y = smooth_one_hot(labels, self.num_classes, self.config.label_smoothing)
        return images, y * lam + y.flip(0) * (1.0 - lam)

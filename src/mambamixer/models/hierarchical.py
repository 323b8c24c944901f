"""The skeleton every hierarchical vision backbone shares (ViM2, ViQS, MambaOut, SiMBA).

    image (batch, in_chans, H, W)
      -> stem                      (batch, H/s0, W/s0, dims[0])      channels-last inside
      -> stages[i]                 (batch, H/s_i, W/s_i, dims[i])    stage i may down-sample first
      -> head                      (batch, num_classes)

A family builds ``stem``, ``stages`` (an ``nn.ModuleList``), ``head`` and ``feature_info``
(one ``{"num_chs", "reduction", "module"}`` per stage, as timm's ``feature_info``) and calls
``_init_backbone``; this class supplies the input checks, ``forward_features``, ``features_only``
and ``out_indices``, and timm's ``forward_head`` / ``get_classifier`` / ``reset_classifier``
(models/classifier.py). A family whose down-sampling pads odd grids (ViM2's patch merging) sets
``input_multiple`` to its stem's patch size: the image sides need only be multiples of that, and
a stage's map is then ceil(side / reduction) on a side. Feature maps are returned channels-first
(batch, C, H, W), the layout detection and segmentation necks expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mambamixer.models.classifier import ClassifierMixin


class HierarchicalBackbone(ClassifierMixin, nn.Module):
    """Base class; see the module docstring for the contract a family fulfils."""

    stem: nn.Module
    stages: nn.ModuleList
    head: nn.Module
    feature_info: list[dict[str, Any]]
    input_multiple: int | None = None  # None: the total stride

    def _init_backbone(self, in_chans: int, features_only: bool, out_indices: Sequence[int]) -> None:
        n = len(self.stages)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices must index the {n} stages (0..{n - 1}), got {out_indices}")
        self.in_chans = in_chans
        self.features_only = features_only
        self.out_indices = tuple(i % n for i in out_indices)
        self.total_stride = self.feature_info[-1]["reduction"]
        if features_only:  # a backbone for a neck carries no classifier
            self.head = nn.Identity()

    def check_input(self, x: Tensor) -> None:
        """Clear errors for a wrong rank, channel count, dtype or image size."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects images (batch, {self.in_chans}, height, width), "
                             f"got {shape}")
        if not torch.is_floating_point(x):
            raise ValueError(f"{type(self).__name__} expects a floating-point image tensor, got {x.dtype}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} was built for in_chans={self.in_chans}, got an image with "
                             f"{x.shape[1]} channels (batch, channels, height, width) = {tuple(x.shape)}")
        h, w = x.shape[-2:]
        multiple = self.input_multiple or self.total_stride
        if h % multiple or w % multiple:
            what = "total stride" if self.input_multiple is None else "stem patch size"
            raise ValueError(f"{type(self).__name__} needs a height and width divisible by its {what} "
                             f"{multiple}, got {h}x{w}; resize or pad the images, or pick the model's "
                             f"small-image configuration")

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(batch, in_chans, H, W) -> one channels-last map per stage, (batch, H/s_i, W/s_i, dims[i])."""
        self.check_input(x)
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits (batch, num_classes); with ``features_only``, the maps of ``out_indices`` as (batch, C, H, W)."""
        features = self.forward_features(x)
        if self.features_only:
            return [features[i].permute(0, 3, 1, 2).contiguous() for i in self.out_indices]
        return self.forward_head(features[-1])

    def forward_head(self, x: Tensor) -> Tensor:
        """The last stage's map (batch, H, W, dims[-1]) -> logits (batch, num_classes)."""
        return self.head(x)

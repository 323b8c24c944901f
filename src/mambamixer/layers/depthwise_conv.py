"""Depthwise 2D convolution for activations kept channels-last in memory.

ViM2's token mixer and MambaOut's gated CNN hold (batch, H, W, C) activations and hand the conv a
permuted view, (batch, C, H, W) with channels-last strides. The weight gradient, (C, 1, k, k), then
comes back channels-last too. That layout is the same memory as the contiguous one: only the
stride of the size-1 dimension differs. DistributedDataParallel compares strides, not memory,
so it warns ("Grad strides do not match bucket view strides") and copies every gradient on every
step. Storing the weight channels-last from the start makes the two agree.
"""

from __future__ import annotations

import torch
from torch import nn


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)``, weight
    stored channels-last. (batch, channels, H, W) -> same shape; state dict as ``nn.Conv2d``'s."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)
        weight = self.weight.data
        self.weight.data = torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight)

"""Patch embedding (the stem) and Swin's patch merging, channels-last as HierarchicalBackbone expects."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches: a (patch x patch) conv with stride patch, then LayerNorm.

    (batch, in_chans, H, W) -> (batch, H / patch, W / patch, dim). ViM2/VMamba's stem is patch 4.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's down-sampling: each 2x2 neighbourhood concatenated, LayerNorm, Linear 4 in_dim -> out_dim.

    (batch, H, W, in_dim) -> (batch, ceil(H / 2), ceil(W / 2), out_dim): an odd grid is first padded
    with a zero row at the bottom and a zero column at the right, as Swin does (7x7 -> 4x4, the
    28x28 path of the small-image sizes). ``downsample=False`` keeps the grid and
    only changes the width (LayerNorm, Linear in_dim -> out_dim): the small-image configurations use
    it so that a 28x28 image is not reduced below 7x7.
    """

    def __init__(self, in_dim: int, out_dim: int, downsample: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.downsample = downsample
        width = 4 * in_dim if downsample else in_dim
        self.norm = nn.LayerNorm(width, eps=eps)
        self.reduction = nn.Linear(width, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample:
            if x.shape[1] % 2 or x.shape[2] % 2:
                x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # (dim, W, H) pads, zeros
            batch, height, width, dim = x.shape
            x = x.view(batch, height // 2, 2, width // 2, 2, dim)
            # channel order (row offset, column offset, dim): any fixed order works, the Linear learns it
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height // 2, width // 2, 4 * dim)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"downsample={self.downsample}"

"""Convolutional stem: two overlapping 3x3 convs instead of one non-overlapping patch conv.

MambaOut's (and InternImage's) stem; ViM2/ViQS take it with ``stem="conv"``, which helps small
images, where a 2x2 patch conv sees 4 pixels of one channel (docs/vision.md).
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvStem(nn.Module):
    """Two 3x3 convs (the first to dim/2), LN and GELU between, LN after.

    (batch, C, H, W) -> (batch, H/stride, W/stride, dim) channels-last; ``stride`` 4 (both convs
    stride 2), 2 (the first) or 1.
    """

    def __init__(self, in_chans: int, dim: int, stride: int = 4, eps: float = 1e-6) -> None:
        super().__init__()
        if stride not in (1, 2, 4):
            raise ValueError(f"the conv stem's stride must be 1, 2 or 4, got {stride}")
        s1, s2 = {4: (2, 2), 2: (2, 1), 1: (1, 1)}[stride]
        self.conv1 = nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=s1, padding=1)
        self.norm1 = nn.LayerNorm(dim // 2, eps=eps)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, kernel_size=3, stride=s2, padding=1)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, C, H, W) -> (batch, H/stride, W/stride, dim)."""
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))  # (batch, H/s1, W/s1, dim/2)
        return self.norm2(self.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))

"""Down-sampling between the stages of a hierarchical backbone: a 3x3 strided conv, then LayerNorm.

The layer MambaOut and SiMBA both place in front of stages 2-4 (InternImage/PVTv2 style). It
keeps the channels-last layout of :class:`~mambamixer.models.hierarchical.HierarchicalBackbone`.
``stride=1`` only changes the width, which the small-image configurations use to keep 28x28
inputs from shrinking below a few pixels.
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvDownsample(nn.Module):
    """(batch, H, W, in_dim) -> (batch, ceil(H/stride), ceil(W/stride), out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int = 2, eps: float = 1e-5) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ConvDownsample stride must be 1 or 2, got {stride}")
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=stride, padding=1)
        self.norm = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, H, W, in_dim) -> (batch, H', W', out_dim)."""
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))

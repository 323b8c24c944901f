"""Gated CNN block (Dauphin et al. 2017, as MambaOut uses it: Yu and Wang, arXiv 2405.07992).

    x (batch, H, W, dim), channels-last
    -> LayerNorm -> fc1 (dim -> 2 * hidden), split into
         g (hidden)                 the gate
         i (hidden - conv_channels) the identity part
         c (conv_channels)          the part that sees its neighbours: depthwise k x k conv
    -> fc2(GELU(g) * concat(i, conv(c)))  (hidden -> dim)
    -> drop path -> + x

It is the Mamba block with the SSM taken out (MambaOut's point): the gate, the expansion and the
depthwise token mixing remain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.layers.depthwise_conv import DepthwiseConv2d
from mambamixer.layers.drop_path import DropPath


class GatedCNNBlock(nn.Module):
    """Residual gated CNN block: (batch, H, W, dim) -> (batch, H, W, dim)."""

    def __init__(
        self,
        dim: int,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if not 0 < conv_channels <= hidden:
            raise ValueError(f"conv_ratio {conv_ratio} gives {conv_channels} conv channels; need 1..hidden={hidden}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.split = (hidden, hidden - conv_channels, conv_channels)
        self.conv = DepthwiseConv2d(conv_channels, kernel_size)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, H, W, dim) -> (batch, H, W, dim)."""
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # the conv wants (batch, C, H, W)
        return x + self.drop_path(self.fc2(F.gelu(g) * torch.cat((i, c), dim=-1)))

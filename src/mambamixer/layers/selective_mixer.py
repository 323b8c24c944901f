"""The Mamba-style mixing layer shared by the token and channel mixers.

    x -> Linear (d_model -> 2 d_inner) -> (x, z)
    for each scan order: reorder x -> causal depthwise conv -> SiLU -> S6 -> restore order
    sum of the scans * SiLU(z) -> Linear (d_inner -> d_model)

Each scan order has its own conv and S6 parameters; the gate z is shared (paper-notes,
MambaMixer). With one 'forward' order this is exactly Mamba's block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mambamixer.layers.s6 import S6, causal_depthwise_conv1d
from mambamixer.layers.scan_order import ScanOrder


class SelectiveMixer(nn.Module):
    """Mixes the length axis of (batch, length, d_model) -> (batch, length, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: float = 2,
        d_conv: int = 4,
        scan_orders: Sequence[str] = ("forward",),
        dt_rank: int | None = None,
        bias: bool = False,
        selective: bool = True,
    ) -> None:
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.orders = [ScanOrder(name) for name in scan_orders]
        if not self.orders:
            raise ValueError("scan_orders must name at least one scan order")
        dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.convs = nn.ModuleList(
            nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner) for _ in self.orders
        )
        self.ssms = nn.ModuleList(
            S6(self.d_inner, d_state, dt_rank=dt_rank, selective=selective) for _ in self.orders
        )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """x (batch, length, d_model) -> (batch, length, d_model); ``grid`` for 2D scan orders."""
        x, z = rearrange(self.in_proj(x), "b l d -> b d l").chunk(2, dim=1)  # (batch, d_inner, length) each
        y = 0
        for order, conv, ssm in zip(self.orders, self.convs, self.ssms, strict=True):
            xs = F.silu(causal_depthwise_conv1d(conv, order.apply(x, grid)))
            y = y + order.undo(ssm(xs), grid)
        y = y * F.silu(z)
        return self.out_proj(rearrange(y, "b d l -> b l d"))

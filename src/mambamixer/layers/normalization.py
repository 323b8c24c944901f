"""Normalisation layers: reversible instance normalisation (RevIN) and the token norms of the blocks.

RevIN (Kim et al., ICLR 2022):

Each series in a batch is standardised with its own mean and standard deviation over time before
the model sees it, and the model's output is mapped back with the same statistics. The layer is
stateless between calls: ``normalize`` returns the statistics and ``denormalize`` takes them, so
two forward passes can never mix up each other's statistics.

    stats_x, stats = revin.normalize(x)       # x: (batch, seq_len, n_vars)
    y = revin.denormalize(model(stats_x), stats)  # (batch, horizon, n_vars)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class RevINStats(NamedTuple):
    """Per-instance, per-variate statistics, each (batch, 1, n_vars), detached from the graph."""

    mean: Tensor
    std: Tensor


class RevIN(nn.Module):
    """Reversible instance normalisation over time, with an optional learnable affine per variate.

    As in the official code, the statistics are detached, ``std = sqrt(var + eps)`` uses the
    biased variance, and the inverse affine divides by ``weight + eps**2`` to stay finite.
    """

    def __init__(self, n_vars: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_vars = n_vars
        self.affine = affine
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(n_vars))
            self.bias = nn.Parameter(torch.zeros(n_vars))

    def normalize(self, x: Tensor) -> tuple[Tensor, RevINStats]:
        """x: (batch, length, n_vars) -> (normalised x of the same shape, statistics)."""
        if x.shape[-1] != self.n_vars:
            raise ValueError(f"RevIN expects {self.n_vars} variates in the last dim, got {tuple(x.shape)}")
        mean = x.mean(dim=1, keepdim=True).detach()  # (batch, 1, n_vars)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        x = (x - mean) / std
        if self.affine:
            x = x * self.weight + self.bias
        return x, RevINStats(mean, std)

    def denormalize(self, y: Tensor, stats: RevINStats) -> Tensor:
        """y: (batch, horizon, n_vars) in normalised units -> original units, same shape."""
        if self.affine:
            y = (y - self.bias) / (self.weight + self.eps * self.eps)
        return y * stats.std + stats.mean

    def extra_repr(self) -> str:
        return f"{self.n_vars}, affine={self.affine}, eps={self.eps}"


class TokenBatchNorm(nn.Module):
    """BatchNorm over the last axis (d_model), statistics over every other axis: (..., d_model).

    PatchTST's norm (its encoder's BatchNorm1d over batch and tokens), for any leading shape.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.reshape(-1, x.shape[-1])).view(x.shape)


def make_token_norm(kind: str, d_model: int) -> nn.Module:
    """``"layer"`` -> LayerNorm, ``"batch"`` -> ``TokenBatchNorm``; both map (..., d_model) to itself."""
    if kind == "layer":
        return nn.LayerNorm(d_model)
    if kind == "batch":
        return TokenBatchNorm(d_model)
    raise ValueError(f"norm must be 'layer' or 'batch', got {kind!r}")

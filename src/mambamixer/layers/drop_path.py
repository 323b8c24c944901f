"""Stochastic depth (DropPath): drop a whole residual branch per sample during training."""

from __future__ import annotations

from torch import Tensor, nn


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero the branch ``x`` (batch, ...) for a random fraction ``p`` of the samples, scaling the rest by 1/(1-p).

    The identity in eval mode or when ``p == 0``, so inference never pays for it.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; any shape with the batch first."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(max_rate: float, n_blocks: int) -> list[float]:
    """Per-block rates rising linearly from 0 to ``max_rate`` over a network's blocks (Swin, ConvNeXt).

    Plain Python, so a model can be built on the meta device.
    """
    return [max_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]

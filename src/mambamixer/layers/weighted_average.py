"""DenseFormer-style weighted averaging of earlier features (MambaMixer's stabiliser)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightedAverage(nn.Module):
    """Learnable weighted sum of the ``n_inputs`` feature maps produced so far.

    Initialised to weight 1 on the most recent input and 0 elsewhere, so a stack wired with
    these starts as a plain residual stack.
    """

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        init = torch.zeros(n_inputs)
        init[-1] = 1.0
        self.weight = nn.Parameter(init)
        self.weight._no_weight_decay = True

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if len(inputs) != self.weight.numel():
            raise ValueError(f"expected {self.weight.numel()} feature maps, got {len(inputs)}")
        out = inputs[-1] * self.weight[-1]
        for w, x in zip(self.weight[:-1], inputs[:-1], strict=True):
            out = out + w * x
        return out

    def extra_repr(self) -> str:
        return f"n_inputs={self.weight.numel()}"

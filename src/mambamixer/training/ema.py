"""Exponential moving average (EMA) of a model's weights, the copy that is validated and kept.

    ema <- d ema + (1 - d) weights      after every optimiser step, d = min(decay, (1 + t) / (10 + t))

t is the number of updates so far: the warm-up of ``d`` (timm's ModelEmaV2/V3, TensorFlow's
``num_updates``) keeps the average from being dominated by the random initialisation in short
runs. Floating-point parameters are averaged in their own dtype (float32 for models trained
under bf16 autocast); buffers (e.g. BatchNorm statistics) and integer tensors are copied. The
averaged copy lives on the model's device, in eval mode, without gradients.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def check_ema_decay(decay: float) -> None:
    """Raise ``ValueError`` unless 0 < decay < 1 (TrainConfig checks it before anything runs)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), e.g. 0.999, got {decay!r}")


class ModelEMA:
    """An averaged copy of ``model``; ``update(model)`` after each optimiser step, ``module`` to evaluate."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        check_ema_decay(decay)
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._averaged = {name for name, p in self.module.named_parameters() if p.is_floating_point()}

    def current_decay(self) -> float:
        """The decay the next update uses (warmed up from 0.1)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights (same architecture, same device)."""
        weight = 1.0 - self.current_decay()
        averaged, current = [], []
        for (name, mine), (_, theirs) in zip(self.module.state_dict().items(), model.state_dict().items(),
                                             strict=True):  # fmt: skip
            if name in self._averaged:
                averaged.append(mine)
                current.append(theirs.detach().to(mine.dtype))
            else:
                mine.copy_(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, object]:
        """The averaged weights (CPU copies) and the update count."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
        return {"weights": weights, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, blob: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` returned; another model's weights raise ``ValueError``."""
        try:
            self.module.load_state_dict(blob["weights"], strict=True)  # type: ignore[arg-type]
        except RuntimeError as err:
            raise ValueError(f"the EMA weights in the training state do not fit this model: {err}") from err
        self.updates = int(blob["updates"])  # type: ignore[arg-type]

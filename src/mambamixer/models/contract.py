"""The forecaster contract of docs/contracts.md, checked in one place for every family.

A forecaster's config has ``seq_len``, ``horizon``, ``n_vars`` (positive) and ``n_marks`` (>= 0);
its ``forward`` takes ``x`` (batch, seq_len, n_vars) in the dtype of its weights (any float
dtype under autocast). Values are not checked for NaN on every call (a full pass over the
input, and a device sync on GPU, per forward): the data loaders reject NaN and infinite values,
and the training loop stops on a non-finite loss naming the step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def check_forecast_config(config: Any) -> None:
    """``ValueError`` unless seq_len, horizon and n_vars are positive integers and n_marks >= 0."""
    name = type(config).__name__
    for field in ("seq_len", "horizon", "n_vars"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}")
    n_marks = getattr(config, "n_marks", 0)
    if isinstance(n_marks, bool) or not isinstance(n_marks, int) or n_marks < 0:
        raise ValueError(f"{name}.n_marks must be a non-negative integer, got {n_marks!r}")


def check_series(model: nn.Module, x: Tensor) -> None:
    """``ValueError`` unless ``x`` is (batch, seq_len, n_vars) of ``model.config`` in the weights' dtype."""
    c = model.config
    name = type(model).__name__
    if not isinstance(x, Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != (c.seq_len, c.n_vars):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must have shape (batch, seq_len, n_vars) = (batch, {c.seq_len}, {c.n_vars}), "
                         f"got {got}")
    weights = next(model.parameters()).dtype
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} expects a floating-point series ({weights}), got {x.dtype}")
    if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} has {weights} weights but got a {x.dtype} series; convert one of them "
                         f"(x.to({weights}) or model.to({x.dtype}))")

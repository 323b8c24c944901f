"""The public causal depthwise conv1d (Mamba's short conv before the scan): checks and dispatch.

    out[:, c, t] = act(bias[c] + sum_k weight[c, k] * x[:, c, t - (kernel - 1) + k])

with zeros before the first step, so output t sees inputs <= t (``causal_conv1d_fn`` of the
causal-conv1d package that ``mamba_ssm`` uses, with the same weight layout).

Backends:

- ``reference``: a sum of shifted, scaled copies of the once-padded input, in PyTorch (any
  device, differentiated by autograd); the ground truth of the tests.
- ``cpu_fused``: numba kernels for forward and backward, with the SiLU fused in (``conv_cpu_fused``).

CPU tensors go to ``cpu_fused``, others to ``reference``; ``backend=`` overrides it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambamixer.ops.conv_cpu_fused import causal_conv1d_cpu_fused

ACTIVATIONS = (None, "silu")
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    time_dim: int = -1,
    reverse: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Causal depthwise conv over the time axis of x, then ``activation`` (None or "silu").

    x: (batch, d, length) with ``time_dim=-1``, or token-major (batch, length, d) with
    ``time_dim=1``; weight (d, kernel); bias (d,). Returns a tensor of x's shape.
    ``reverse=True`` runs it right to left (output t sees inputs >= t, zeros after the last
    step), the conv before a reversed scan: ``causal_conv1d(x.flip(time_dim)).flip(time_dim)``,
    computed without flipped copies.
    """
    _check_args(x, weight, bias, activation, time_dim)
    token_major = time_dim in (1, -2)
    backend = backend or ("cpu_fused" if x.device.type == "cpu" else "reference")
    if backend == "reference":
        if reverse:
            return _reference(x.flip(time_dim), weight, bias, activation, token_major).flip(time_dim)
        return _reference(x, weight, bias, activation, token_major)
    if backend == "cpu_fused":
        if x.device.type != "cpu":
            raise ValueError(f"backend 'cpu_fused' needs CPU tensors, got tensors on {x.device}")
        return causal_conv1d_cpu_fused(x, weight, bias, activation == "silu", token_major, reverse)
    raise ValueError(f"backend must be 'reference' or 'cpu_fused', got {backend!r}")


def causal_conv1d_ref(*args, **kwargs) -> Tensor:
    """``causal_conv1d`` on the reference backend (the ``_ref`` twin of the fast op)."""
    return causal_conv1d(*args, backend="reference", **kwargs)


def _reference(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None, token_major: bool) -> Tensor:
    """Shifted copies: for Mamba's short kernels (3-4 taps) faster on CPU than a depthwise F.conv1d."""
    kernel = weight.shape[1]
    time_dim = 1 if token_major else 2
    length = x.shape[time_dim]
    taps = weight.t() if token_major else weight.t()[..., None]  # tap k broadcasts over x: (d,) or (d, 1)
    padded = F.pad(x, (0, 0, kernel - 1, 0) if token_major else (kernel - 1, 0))
    out = padded.narrow(time_dim, kernel - 1, length) * taps[kernel - 1]
    for k in range(kernel - 1):  # out[t] += w[k] * x[t - (kernel - 1 - k)]
        out = out + padded.narrow(time_dim, k, length) * taps[k]
    if bias is not None:
        out = out + (bias if token_major else bias[:, None])
    return F.silu(out) if activation == "silu" else out


def _check_args(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None, time_dim: int) -> None:
    if time_dim not in (1, 2, -1, -2):
        raise ValueError(f"time_dim must be -1 (x as (batch, d, length)) or 1 ((batch, length, d)), got {time_dim}")
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, d, length) or (batch, length, d), got shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    d = x.shape[2 if time_dim in (1, -2) else 1]
    if weight.dim() != 2 or weight.shape[0] != d or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (d, kernel) with d = {d}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"bias must have shape (d,) = ({d},), got {tuple(bias.shape)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put all tensors on one device")

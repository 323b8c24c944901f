"""Chunked selective scan in plain PyTorch: the fallback on GPUs without ``mamba_ssm``.

The sequence is cut into chunks of ``chunk_size`` steps. Inside a chunk the linear recurrence
h_t = a_t h_{t-1} + b_t is solved by a log-depth (Hillis-Steele) scan over the pairs (a, b);
chunks are chained sequentially through their last state. Only one chunk's
(batch, d_inner, chunk, d_state) tensors are alive at a time in the forward pass, and each
chunk is recomputed in the backward pass (activation checkpointing) when gradients are needed,
so memory stays O(batch * d_inner * chunk * d_state) instead of O(... * length ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mambamixer.ops.scan_reference import finish_scan_output, prepare_scan_inputs


def _linear_scan(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of (a, b) pairs along dim 2: returns (prod a_1..t, h_t with h_0 = 0).

    a, b: (batch, d_inner, chunk, d_state).
    """
    step = 1
    length = a.shape[2]
    while step < length:
        a_prev = F.pad(a[:, :, :-step], (0, 0, step, 0), value=1.0)
        b_prev = F.pad(b[:, :, :-step], (0, 0, step, 0), value=0.0)
        b = a * b_prev + b
        a = a * a_prev
        step *= 2
    return a, b


def _chunk(h0: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk. h0 (b, d, n); delta, u (b, d, l); B, C (b, d, n, l). Returns y (b, d, l), h_last."""
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, l, n)
    drive = (delta * u).unsqueeze(-1) * B.transpose(2, 3)
    decay_prod, h = _linear_scan(decay, drive)
    h = h + decay_prod * h0.unsqueeze(2)
    y = torch.einsum("bdln,bdnl->bdl", h, C)
    return y, h[:, :, -1]


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = 64,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked selective scan; same signature, shapes and semantics as the reference."""
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    ys = []
    for start in range(0, u.shape[2], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (h, delta[:, :, sl], A, B[..., sl], C[..., sl], u[:, :, sl])
        y, h = checkpoint(_chunk, *args, use_reentrant=False) if use_checkpoint else _chunk(*args)
        ys.append(y)
    out = finish_scan_output(torch.cat(ys, dim=2), u, D, z, dtype_in)
    return (out, h) if return_last_state else out

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
from einops import repeat
from torch import Tensor
from torch.utils.checkpoint import checkpoint


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
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    d_inner = u.shape[1]
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    # Expanded views (no copies) so that channel d reads group d // (d_inner // groups).
    B = repeat(B, "b g n l -> b (g h) n l", h=d_inner // B.shape[1])
    C = repeat(C, "b g n l -> b (g h) n l", h=d_inner // C.shape[1])
    h = u.new_zeros(u.shape[0], d_inner, A.shape[1])
    use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    ys = []
    for start in range(0, u.shape[2], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (h, delta[:, :, sl], A, B[..., sl], C[..., sl], u[:, :, sl])
        y, h = checkpoint(_chunk, *args, use_reentrant=False) if use_checkpoint else _chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=2)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out

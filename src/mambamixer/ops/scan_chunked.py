"""Chunked selective scan in plain PyTorch: the fallback on GPUs without ``mamba_ssm``.

The sequence is cut into chunks of ``chunk_size`` steps. Inside a chunk the linear recurrence
h_t = a_t h_{t-1} + b_t is solved by a log-depth (Hillis-Steele) scan over the pairs (a, b);
chunks are chained sequentially through their last state. Only one chunk's
(batch, d_inner, chunk, d_state) tensors are alive at a time in the forward pass, and each
chunk is recomputed in the backward pass (activation checkpointing) when gradients are needed,
so memory stays O(batch * d_inner * chunk * d_state) instead of O(... * length ...). B and C stay
one per group of channels (never copied per channel). When even one chunk would exceed
``max_chunk_elements`` (a channel mixer scans every token of a feature map as its own short
sequence: hundreds of thousands of sequences), the batch is scanned in pieces that fit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mambamixer.ops.scan_reference import finish_scan_output, prepare_scan_inputs

MAX_CHUNK_ELEMENTS = 2**25  # 128 MiB per float32 chunk tensor


def _linear_scan(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of (a, b) pairs along dim -2: returns (prod a_1..t, h_t with h_0 = 0).

    a, b: (..., chunk, d_state).
    """
    step = 1
    length = a.shape[-2]
    while step < length:
        a_prev = F.pad(a[..., :-step, :], (0, 0, step, 0), value=1.0)
        b_prev = F.pad(b[..., :-step, :], (0, 0, step, 0), value=0.0)
        b = a * b_prev + b
        a = a * a_prev
        step *= 2
    return a, b


def _chunk(h0: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk, channels split into g groups of c. h0 (b, g, c, n); delta, u (b, g, c, l);
    A (g, c, n); B, C (b, g, n, l), shared by the c channels of a group. Returns y (b, g, c, l), h_last."""
    decay = torch.exp(delta.unsqueeze(-1) * A[:, :, None, :])  # (b, g, c, l, n)
    drive = (delta * u).unsqueeze(-1) * B.transpose(-1, -2).unsqueeze(2)
    decay_prod, h = _linear_scan(decay, drive)
    h = h + decay_prod * h0.unsqueeze(-2)
    y = torch.einsum("bgcln,bgnl->bgcl", h, C)
    return y, h[..., -1, :]


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
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked selective scan; same signature, shapes and semantics as the reference.

    ``max_chunk_elements`` bounds one chunk's (batch, d_inner, chunk, d_state) tensors; a larger
    batch is scanned in pieces along its first dimension.
    """
    batch, d_inner, length = u.shape
    rows = max(1, max_chunk_elements // (d_inner * min(chunk_size, length) * A.shape[1]))
    if batch > rows:
        pieces = [
            selective_scan_chunked(
                u[i : i + rows], delta[i : i + rows], A, B[i : i + rows], C[i : i + rows], D,
                z[i : i + rows] if z is not None else None, delta_bias, delta_softplus, True, chunk_size,
                max_chunk_elements,
            )
            for i in range(0, batch, rows)
        ]  # fmt: skip
        out, last = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
        return (out, last) if return_last_state else out
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus, expand_groups=False)
    # B and C may have different group counts (one of them 3-D, say): refine both to the lcm, whose
    # group j reads B's group j // (groups // B_groups), which is channel d's B group as in mamba_ssm
    groups, d_state = math.lcm(B.shape[1], C.shape[1]), A.shape[1]
    B, C = (M if M.shape[1] == groups else M.repeat_interleave(groups // M.shape[1], dim=1) for M in (B, C))
    per_group = (groups, d_inner // groups)
    u_g, delta_g = u.reshape(batch, *per_group, length), delta.reshape(batch, *per_group, length)
    A_g = A.reshape(*per_group, d_state)
    h = u.new_zeros(batch, *per_group, d_state)
    use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    ys = []
    for start in range(0, length, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (h, delta_g[..., sl], A_g, B[..., sl], C[..., sl], u_g[..., sl])
        y, h = checkpoint(_chunk, *args, use_reentrant=False) if use_checkpoint else _chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1).reshape(batch, d_inner, length)
    out = finish_scan_output(y, u, D, z, dtype_in)
    h = h.reshape(batch, d_inner, d_state)
    return (out, h) if return_last_state else out

"""Fused CPU selective scan (forward and backward), compiled with numba.

Each (batch, channel) pair is scanned by one thread with its d_state-sized state in registers,
so the (batch, d_inner, length, d_state) tensors of the reference never exist. The backward
pass recomputes the states of one channel at a time into a (length, d_state) scratch buffer
(per thread), then runs the adjoint recurrence right to left. Gradients of B and C, which are
shared by the channels of a group, are accumulated per work item and summed afterwards.

Why numba rather than a C++ extension: it installs from wheels with ``pip`` on every platform,
needs no compiler or torch build environment at install time, and caches the compiled kernels
on disk after the first call.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mambamixer.ops.numba_math import fast_exp

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@numba.njit(**_JIT)
def _forward_kernel(u, dt, A, Bm, Cm, D, y_out, last_state):
    """y = C . h + D u for every (batch, channel); dt is the already-activated step size."""
    batch, dim, length = u.shape
    d_state = A.shape[1]
    per_group = dim // Bm.shape[1]
    for item in numba.prange(batch * dim):
        b = item // dim
        d = item % dim
        g = d // per_group
        h = np.zeros(d_state, dtype=u.dtype)
        a_row = A[d]
        for t in range(length):
            x = u[b, d, t]
            dt_t = dt[b, d, t]
            dt_x = dt_t * x
            b_t = Bm[b, g, t]
            c_t = Cm[b, g, t]
            y = D[d] * x
            for n in range(d_state):
                h[n] = fast_exp(dt_t * a_row[n]) * h[n] + dt_x * b_t[n]
                y += h[n] * c_t[n]
            y_out[b, d, t] = y
        last_state[b, d] = h


@numba.njit(**_JIT)
def _backward_kernel(u, dt, A, Bm, Cm, D, dy, dlast, du, ddt, dA_part, dB_part, dC_part, dD, n_chunks):
    """Gradients of the pre-gate output y; dB/dC/dA are accumulated per work item.

    Bm, Cm: (batch, groups, length * d_state); dB_part, dC_part: (n_chunks, batch, groups,
    length * d_state). Flat indexing (t * d_state + n) lets LLVM vectorise the d_state loops.
    """
    batch, dim, length = u.shape
    d_state = A.shape[1]
    per_group = dim // Bm.shape[1]
    chunk = (dim + n_chunks - 1) // n_chunks
    for item in numba.prange(batch * n_chunks):
        b = item // n_chunks
        c = item % n_chunks
        states = np.zeros((length + 1) * d_state, dtype=u.dtype)  # h_t at (t + 1) * d_state, h_{-1} = 0
        decays = np.empty(length * d_state, dtype=u.dtype)  # exp(dt_t * A)
        dh = np.empty(d_state, dtype=u.dtype)
        dA_acc = np.empty(d_state, dtype=u.dtype)
        for d in range(c * chunk, min(dim, (c + 1) * chunk)):
            g = d // per_group
            a_row = A[d]
            Bf = Bm[b, g]
            Cf = Cm[b, g]
            dBf = dB_part[c, b, g]
            dCf = dC_part[c, b, g]
            # Recompute the forward states of channel d.
            for t in range(length):
                dt_t = dt[b, d, t]
                dt_x = dt_t * u[b, d, t]
                o = t * d_state
                for n in range(d_state):
                    e = fast_exp(dt_t * a_row[n])
                    decays[o + n] = e
                    states[o + d_state + n] = e * states[o + n] + dt_x * Bf[o + n]
            for n in range(d_state):
                dh[n] = dlast[b, d, n]
                dA_acc[n] = 0.0
            dD_acc = 0.0
            # Adjoint recurrence, right to left; dh holds dLoss/dh_t.
            for t in range(length - 1, -1, -1):
                x = u[b, d, t]
                dt_t = dt[b, d, t]
                grad_y = dy[b, d, t]
                dD_acc += grad_y * x
                dx = grad_y * D[d]
                ddt_t = 0.0
                o = t * d_state
                for n in range(d_state):
                    dh_n = dh[n] + grad_y * Cf[o + n]
                    dCf[o + n] += grad_y * states[o + d_state + n]
                    d_exponent = dh_n * states[o + n] * decays[o + n]  # dLoss/d(dt * A_dn)
                    ddt_t += d_exponent * a_row[n] + dh_n * Bf[o + n] * x
                    dA_acc[n] += d_exponent * dt_t
                    dBf[o + n] += dh_n * dt_t * x
                    dx += dh_n * dt_t * Bf[o + n]
                    dh[n] = dh_n * decays[o + n]
                du[b, d, t] = dx
                ddt[b, d, t] = ddt_t
            for n in range(d_state):
                dA_part[b, d, n] = dA_acc[n]
            dD[b, d] = dD_acc


def _as_grouped(M: Tensor) -> Tensor:
    """(batch, [groups,] d_state, length) -> contiguous (batch, groups, length, d_state)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.transpose(2, 3).contiguous()


def _n_chunks(batch: int, dim: int) -> int:
    threads = numba.get_num_threads()
    return max(1, min(dim, -(-threads // batch)))


class _FusedScan(torch.autograd.Function):
    """The scan proper; the element-wise softplus and SiLU gate run in PyTorch around it."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D):
        ctx.B_shape, ctx.C_shape = B.shape, C.shape
        Bg, Cg = _as_grouped(B), _as_grouped(C)
        y = torch.empty_like(u)
        last = u.new_empty(u.shape[0], u.shape[1], A.shape[1])
        _forward_kernel(u.numpy(), dt.numpy(), A.numpy(), Bg.numpy(), Cg.numpy(), D.numpy(), y.numpy(), last.numpy())
        ctx.save_for_backward(u, dt, A, Bg, Cg, D)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, Bg, Cg, D = ctx.saved_tensors
        batch, dim, _ = u.shape
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dlast = u.new_zeros(batch, dim, A.shape[1]) if dlast is None else dlast.contiguous()
        n_chunks = _n_chunks(batch, dim)
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA_part, dD = u.new_empty(batch, *A.shape), u.new_empty(batch, dim)
        dB_part, dC_part = u.new_zeros(n_chunks, *Bg.shape), u.new_zeros(n_chunks, *Cg.shape)
        flat = Bg.shape[:2] + (-1,)
        _backward_kernel(
            u.numpy(), dt.numpy(), A.numpy(), Bg.reshape(flat).numpy(), Cg.reshape(flat).numpy(), D.numpy(),
            dy.numpy(), dlast.numpy(),
            du.numpy(), ddt.numpy(), dA_part.numpy(), dB_part.reshape((n_chunks,) + flat).numpy(),
            dC_part.reshape((n_chunks,) + flat).numpy(), dD.numpy(), n_chunks,
        )  # fmt: skip
        dB = dB_part.sum(0).transpose(2, 3).reshape(ctx.B_shape)
        dC = dC_part.sum(0).transpose(2, 3).reshape(ctx.C_shape)
        return du, ddt, dA_part.sum(0), dB, dC, dD.sum(0)


def selective_scan_cpu_fused(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused CPU selective scan; same signature, shapes and semantics as the reference.

    Computes in float32 (float64 for float64 inputs); bfloat16/float16 inputs are upcast and
    the output cast back. The last state is differentiable too.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt = delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    D = D.to(compute) if D is not None else u.new_zeros(u.shape[1], dtype=compute)
    y, last = _FusedScan.apply(
        u.to(compute).contiguous(), dt.contiguous(), A.to(compute).contiguous(), B.to(compute), C.to(compute), D
    )
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out


def set_num_threads(n: int) -> None:
    """Threads used by the fused kernel (defaults to numba's: the number of cores)."""
    numba.set_num_threads(n)


if os.environ.get("MAMBAMIXER_NUMBA_THREADS"):
    set_num_threads(int(os.environ["MAMBAMIXER_NUMBA_THREADS"]))

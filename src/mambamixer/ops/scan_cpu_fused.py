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

import math
import os

import numba
import numpy as np
import torch
from torch import Tensor

from mambamixer.ops.numba_math import fast_exp

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)
_SOFTPLUS_THRESHOLD = 20.0  # as torch.nn.functional.softplus


@numba.njit(**_JIT)
def _forward_kernel(u, delta, A, Bm, Cm, D, z, bias, has_z, softplus, out, last_state):
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
            dt = delta[b, d, t] + bias[d]
            if softplus and dt <= _SOFTPLUS_THRESHOLD:
                dt = math.log1p(math.exp(dt))
            x = u[b, d, t]
            dt_x = dt * x
            b_t = Bm[b, g, t]
            c_t = Cm[b, g, t]
            y = D[d] * x
            for n in range(d_state):
                h[n] = fast_exp(dt * a_row[n]) * h[n] + dt_x * b_t[n]
                y += h[n] * c_t[n]
            if has_z:
                zz = z[b, d, t]
                y *= zz / (1.0 + math.exp(-zz))
            out[b, d, t] = y
        last_state[b, d] = h


@numba.njit(**_JIT)
def _backward_kernel(
    u, delta, A, Bm, Cm, D, z, bias, has_z, softplus, dout, dlast,
    du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, n_chunks,
):  # fmt: skip
    batch, dim, length = u.shape
    d_state = A.shape[1]
    per_group = dim // Bm.shape[1]
    chunk = (dim + n_chunks - 1) // n_chunks
    for item in numba.prange(batch * n_chunks):
        b = item // n_chunks
        c = item % n_chunks
        states = np.zeros((length + 1, d_state), dtype=u.dtype)  # states[t + 1] = h_t, states[0] = 0
        decays = np.empty((length, d_state), dtype=u.dtype)  # exp(dt_t * A)
        dts = np.empty(length, dtype=u.dtype)
        ys = np.empty(length, dtype=u.dtype)  # pre-gate outputs, for dz
        dh = np.empty(d_state, dtype=u.dtype)
        dA_acc = np.empty(d_state, dtype=u.dtype)
        for d in range(c * chunk, min(dim, (c + 1) * chunk)):
            g = d // per_group
            a_row = A[d]
            # Recompute the forward states of channel d.
            for t in range(length):
                dt = delta[b, d, t] + bias[d]
                if softplus and dt <= _SOFTPLUS_THRESHOLD:
                    dt = math.log1p(math.exp(dt))
                dts[t] = dt
                dt_x = dt * u[b, d, t]
                b_t, c_t, prev, cur, dec = Bm[b, g, t], Cm[b, g, t], states[t], states[t + 1], decays[t]
                y = D[d] * u[b, d, t]
                for n in range(d_state):
                    dec[n] = fast_exp(dt * a_row[n])
                    cur[n] = dec[n] * prev[n] + dt_x * b_t[n]
                    y += cur[n] * c_t[n]
                ys[t] = y
            # Adjoint recurrence, right to left; dh holds dLoss/dh_t.
            dh[:] = dlast[b, d]
            dA_acc[:] = 0.0
            dD_acc = 0.0
            dbias_acc = 0.0
            for t in range(length - 1, -1, -1):
                x = u[b, d, t]
                dt = dts[t]
                grad_y = dout[b, d, t]
                if has_z:
                    zz = z[b, d, t]
                    sig = 1.0 / (1.0 + math.exp(-zz))
                    dz[b, d, t] = grad_y * ys[t] * sig * (1.0 + zz * (1.0 - sig))
                    grad_y *= zz * sig
                dD_acc += grad_y * x
                dx = grad_y * D[d]
                ddt = 0.0
                b_t, c_t, prev, cur, dec = Bm[b, g, t], Cm[b, g, t], states[t], states[t + 1], decays[t]
                dB_t, dC_t = dB_part[c, b, g, t], dC_part[c, b, g, t]
                for n in range(d_state):
                    dh_n = dh[n] + grad_y * c_t[n]
                    dC_t[n] += grad_y * cur[n]
                    d_exponent = dh_n * prev[n] * dec[n]  # dLoss/d(dt * A_dn)
                    ddt += d_exponent * a_row[n] + dh_n * b_t[n] * x
                    dA_acc[n] += d_exponent * dt
                    dB_t[n] += dh_n * dt * x
                    dx += dh_n * dt * b_t[n]
                    dh[n] = dh_n * dec[n]
                du[b, d, t] = dx
                if softplus:
                    raw = delta[b, d, t] + bias[d]
                    if raw <= _SOFTPLUS_THRESHOLD:
                        ddt *= 1.0 / (1.0 + math.exp(-raw))
                ddelta[b, d, t] = ddt
                dbias_acc += ddt
            dA_part[b, d] = dA_acc
            dD_part[b, d] = dD_acc
            dbias_part[b, d] = dbias_acc


def _as_grouped(M: Tensor) -> Tensor:
    """(batch, [groups,] d_state, length) -> contiguous (batch, groups, length, d_state)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.transpose(2, 3).contiguous()


def _n_chunks(batch: int, dim: int) -> int:
    threads = numba.get_num_threads()
    return max(1, min(dim, -(-threads // batch)))


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        dim = u.shape[1]
        ctx.B_shape, ctx.C_shape = B.shape, C.shape
        ctx.dtypes = [t.dtype if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.has_D, ctx.has_z, ctx.has_bias = D is not None, z is not None, delta_bias is not None
        ctx.softplus = delta_softplus
        uf, df, zf = (t.to(compute).contiguous() if t is not None else None for t in (u, delta, z))
        Af = A.to(compute).contiguous()
        Bf, Cf = _as_grouped(B.to(compute)), _as_grouped(C.to(compute))
        Df = D.to(compute).contiguous() if D is not None else uf.new_zeros(dim)
        biasf = delta_bias.to(compute).contiguous() if delta_bias is not None else uf.new_zeros(dim)
        zarr = zf.numpy() if zf is not None else np.empty((1, 1, 1), dtype=uf.numpy().dtype)
        out = torch.empty_like(uf)
        last = uf.new_empty(u.shape[0], dim, A.shape[1])
        _forward_kernel(
            uf.numpy(), df.numpy(), Af.numpy(), Bf.numpy(), Cf.numpy(), Df.numpy(), zarr,
            biasf.numpy(), zf is not None, delta_softplus, out.numpy(), last.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(uf, df, Af, Bf, Cf, Df, zf, biasf)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        uf, df, Af, Bf, Cf, Df, zf, biasf = ctx.saved_tensors
        batch, dim, _ = uf.shape
        dout = dout.to(uf.dtype).contiguous()
        dlast = torch.zeros_like(uf[:, :, :1].expand(-1, -1, Af.shape[1])) if dlast is None else dlast
        dlast = dlast.to(uf.dtype).contiguous()
        n_chunks = _n_chunks(batch, dim)
        du, ddelta = torch.empty_like(uf), torch.empty_like(uf)
        dz = torch.empty_like(zf) if zf is not None else uf.new_empty(1, 1, 1)
        dA_part = uf.new_zeros(batch, *Af.shape)
        dB_part = uf.new_zeros(n_chunks, *Bf.shape)
        dC_part = uf.new_zeros(n_chunks, *Cf.shape)
        dD_part, dbias_part = uf.new_empty(batch, dim), uf.new_empty(batch, dim)
        zarr = zf.numpy() if zf is not None else dz.numpy()
        _backward_kernel(
            uf.numpy(), df.numpy(), Af.numpy(), Bf.numpy(), Cf.numpy(), Df.numpy(), zarr, biasf.numpy(),
            zf is not None, ctx.softplus, dout.numpy(), dlast.numpy(), du.numpy(), ddelta.numpy(),
            dz.numpy(), dA_part.numpy(), dB_part.numpy(), dC_part.numpy(), dD_part.numpy(),
            dbias_part.numpy(), n_chunks,
        )  # fmt: skip
        dt_u, dt_delta, dt_A, dt_B, dt_C, dt_D, dt_z, dt_bias = ctx.dtypes
        dB = dB_part.sum(0).transpose(2, 3).reshape(ctx.B_shape).to(dt_B)
        dC = dC_part.sum(0).transpose(2, 3).reshape(ctx.C_shape).to(dt_C)
        return (
            du.to(dt_u),
            ddelta.to(dt_delta),
            dA_part.sum(0).to(dt_A),
            dB,
            dC,
            dD_part.sum(0).to(dt_D) if ctx.has_D else None,
            dz.to(dt_z) if ctx.has_z else None,
            dbias_part.sum(0).to(dt_bias) if ctx.has_bias else None,
            None,
        )


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
    out, last = _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out


def set_num_threads(n: int) -> None:
    """Threads used by the fused kernel (defaults to numba's: the number of cores)."""
    numba.set_num_threads(n)


if os.environ.get("MAMBAMIXER_NUMBA_THREADS"):
    set_num_threads(int(os.environ["MAMBAMIXER_NUMBA_THREADS"]))

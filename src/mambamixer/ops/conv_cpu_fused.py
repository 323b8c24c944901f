"""Fused CPU causal depthwise conv1d with an optional SiLU (forward and backward), compiled with numba.

The PyTorch form of Mamba's short conv (``causal_conv1d``'s reference: kernel-many shifted,
scaled copies of the padded input, a bias and a SiLU) runs about ten element-wise kernels forward
and twenty backward. At TSM2's sizes (thousands of sequences of 7-12 steps) their passes over
memory and per-op overheads made the conv cost as much as the scan it feeds. Here the forward is
one pass (each output row accumulated from ``kernel`` input rows, then the SiLU in place), the
backward another (the pre-activation recomputed row by row, then the gradients of the input,
the weight and the bias accumulated together). ``reverse`` runs the conv right to left (output t
sees inputs >= t), reading and writing rows from the end instead of flipping copies.

Layout: the kernels see x as (batch, length, d) and loop over d innermost, where token-major
tensors are contiguous and LLVM vectorises the rows; channel-first inputs (batch, d, length)
are passed as transposed views (correct, slower). Work items are chunks of the batch; the
backward sums the weight and bias gradients per chunk, then over chunks.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from mambamixer.ops.numba_math import fast_exp, run_kernel

ONE = np.float32(1.0)  # keeps float32 arithmetic in float32 (float64 inputs promote it)

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@numba.njit(**_JIT)
def _forward_kernel(x, w, bias, silu, reverse, out):
    """x (batch, length, d), w (kernel, d), bias (d,) -> out (batch, length, d)."""
    batch, length, d = x.shape
    kernel = w.shape[0]
    for b in numba.prange(batch):
        for t in range(length):  # step t of the conv's direction
            row = out[b, length - 1 - t] if reverse else out[b, t]
            for c in range(d):
                row[c] = bias[c]
            for j in range(kernel):
                s = t - (kernel - 1) + j
                if s < 0:
                    continue
                src = x[b, length - 1 - s] if reverse else x[b, s]
                for c in range(d):
                    row[c] += w[j, c] * src[c]
            if silu:
                for c in range(d):
                    row[c] = row[c] / (ONE + fast_exp(-row[c]))


@numba.njit(**_JIT)
def _backward_kernel(x, w, bias, silu, reverse, dout, dx, dw_part, db_part):
    """Gradients of the forward kernel: dx (batch, length, d), zero on entry; dw_part (chunks, kernel, d),
    db_part (chunks, d): each chunk of the batch's sums."""
    batch, length, d = x.shape
    kernel = w.shape[0]
    chunks = dw_part.shape[0]
    per = -(-batch // chunks)
    for chunk in numba.prange(chunks):
        g = np.empty(d, dtype=x.dtype)
        dw, db = dw_part[chunk], db_part[chunk]
        dw[:] = 0
        db[:] = 0
        for b in range(chunk * per, min(batch, (chunk + 1) * per)):
            for t in range(length):
                grow = dout[b, length - 1 - t] if reverse else dout[b, t]
                if silu:  # recompute the pre-activation a, then g = dout * silu'(a)
                    for c in range(d):
                        g[c] = bias[c]
                    for j in range(kernel):
                        s = t - (kernel - 1) + j
                        if s < 0:
                            continue
                        src = x[b, length - 1 - s] if reverse else x[b, s]
                        for c in range(d):
                            g[c] += w[j, c] * src[c]
                    for c in range(d):
                        sig = ONE / (ONE + fast_exp(-g[c]))
                        g[c] = grow[c] * sig * (ONE + g[c] * (ONE - sig))
                else:
                    for c in range(d):
                        g[c] = grow[c]
                for c in range(d):
                    db[c] += g[c]
                for j in range(kernel):
                    s = t - (kernel - 1) + j
                    if s < 0:
                        continue
                    pos = length - 1 - s if reverse else s
                    src, dsrc, dwj = x[b, pos], dx[b, pos], dw[j]
                    for c in range(d):
                        dsrc[c] += w[j, c] * g[c]
                        dwj[c] += g[c] * src[c]


def _time_major(t: Tensor, token_major: bool) -> np.ndarray:
    """t as a (batch, length, d) numpy array: itself when token-major, else a transposed view."""
    return t.numpy() if token_major else t.numpy().transpose(0, 2, 1)


def _n_chunks(batch: int) -> int:
    """Work items of the backward: about 4 per thread (load balance), at most one per sequence."""
    return max(1, min(batch, 4 * numba.get_num_threads()))


class _FusedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu, token_major, reverse):
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        w = weight.t().contiguous()  # (kernel, d): tap j's row over the channels
        run_kernel(_forward_kernel, _time_major(x, token_major), w.numpy(), bias.numpy(), silu, reverse,
                   _time_major(out, token_major))  # fmt: skip
        ctx.save_for_backward(x, w, bias)
        ctx.flags = (silu, token_major, reverse)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, bias = ctx.saved_tensors
        silu, token_major, reverse = ctx.flags
        dout = dout.contiguous()
        dx = torch.zeros_like(x, memory_format=torch.contiguous_format)
        chunks = _n_chunks(x.shape[0])
        dw_part = w.new_empty(chunks, *w.shape)
        db_part = w.new_empty(chunks, w.shape[1])
        run_kernel(_backward_kernel, _time_major(x, token_major), w.numpy(), bias.numpy(), silu, reverse,
                   _time_major(dout, token_major), _time_major(dx, token_major), dw_part.numpy(),
                   db_part.numpy())  # fmt: skip
        return dx, dw_part.sum(0).t(), db_part.sum(0), None, None, None


@torch.compiler.disable  # numba kernels cannot be traced: torch.compile runs around this op
def causal_conv1d_cpu_fused(
    x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, token_major: bool, reverse: bool
) -> Tensor:
    """The fused conv: x (batch, length, d) if ``token_major`` else (batch, d, length), weight (d, kernel).

    Computes in float32 (float64 for float64 inputs); other dtypes are upcast and the output cast
    back. A missing bias is a zero bias without a gradient.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    d = weight.shape[0]
    bias = bias.to(compute) if bias is not None else x.new_zeros(d, dtype=compute)
    out = _FusedConv.apply(x.to(compute).contiguous(), weight.to(compute), bias, silu, token_major, reverse)
    return out.to(x.dtype)

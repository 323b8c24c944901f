"""Fused CPU causal depthwise conv1d with an optional SiLU (forward and backward), compiled with numba.

The PyTorch form of Mamba's short conv (``causal_conv1d``'s reference: kernel-many shifted,
scaled copies of the padded input, a bias and a SiLU) runs about ten element-wise kernels forward
and twenty backward. At TSM2's sizes (thousands of sequences of 7-12 steps) their passes over
memory and per-op overheads made the conv cost as much as the scan it feeds. Here the forward is
one pass (each output row accumulated from ``kernel`` input rows, then the SiLU in place), the
backward another (the pre-activation recomputed row by row, then the gradients of the input,
the weight and the bias accumulated together). ``reverse`` runs the conv right to left (output t
sees inputs >= t), reading and writing rows from the end instead of flipping copies.

Layout: the kernels see x as contiguous (batch, length, d) rows and, when d is a multiple of
16, work on SIMD vectors of 16 channels (``numba_math``), a scalar loop otherwise; channel-first
inputs (batch, d, length) are transposed into that layout and back. The forward's work items are
the sequences; the backward's are chunks of the batch, whose weight and bias gradients are summed
per chunk, then over the chunks.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from mambamixer.ops.numba_math import LANES as W
from mambamixer.ops.numba_math import fast_exp, run_kernel, vload, vsigmoid, vstore

ONE = np.float32(1.0)  # keeps float32 arithmetic in float32 (float64 inputs promote it)

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)
_SERIAL = dict(fastmath=True, cache=True, nogil=True)


@numba.njit(**_SERIAL)
def _row(seq, t, reverse):
    """Row of step t of the conv's direction in seq (length, d): from the end when ``reverse``."""
    return seq[seq.shape[0] - 1 - t] if reverse else seq[t]


@numba.njit(**_SERIAL)
def _pre_activation(xb, w, bias, t, reverse, c0):
    """Vector of the conv's output at step t, channels c0 .. c0 + W, before the activation; xb (length, d)."""
    kernel = w.shape[0]
    acc = vload(bias, c0)
    for j in range(kernel):
        s = t - (kernel - 1) + j
        if s >= 0:
            acc = acc + vload(w[j], c0) * vload(_row(xb, s, reverse), c0)
    return acc


@numba.njit(**_SERIAL)
def _pre_activation_row(xb, w, bias, t, reverse, dst):
    """dst (d,) = the conv's output at step t before the activation, channel by channel (any d)."""
    kernel = w.shape[0]
    dst[:] = bias
    for j in range(kernel):
        s = t - (kernel - 1) + j
        if s >= 0:
            src = _row(xb, s, reverse)
            for c in range(dst.shape[0]):
                dst[c] += w[j, c] * src[c]


@numba.njit(**_JIT)
def _forward_kernel(x, w, bias, silu, reverse, out):
    """x (batch, length, d), w (kernel, d), bias (d,) -> out (batch, length, d), all contiguous."""
    batch, length, d = x.shape
    vectors = d % W == 0
    for b in numba.prange(batch):
        for t in range(length):  # step t of the conv's direction
            row = _row(out[b], t, reverse)
            if vectors:
                for c0 in range(0, d, W):
                    acc = _pre_activation(x[b], w, bias, t, reverse, c0)
                    vstore(row, c0, acc * vsigmoid(acc) if silu else acc)
                continue
            _pre_activation_row(x[b], w, bias, t, reverse, row)
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
    vectors = d % W == 0
    for chunk in numba.prange(chunks):
        g = np.empty(d, dtype=x.dtype)
        dw, db = dw_part[chunk], db_part[chunk]
        dw[:] = 0
        db[:] = 0
        for b in range(chunk * per, min(batch, (chunk + 1) * per)):
            for t in range(length):
                grow = _row(dout[b], t, reverse)
                if vectors:
                    for c0 in range(0, d, W):
                        gv = vload(grow, c0)
                        if silu:  # recompute the pre-activation a: g = dout * silu'(a)
                            a = _pre_activation(x[b], w, bias, t, reverse, c0)
                            sig = vsigmoid(a)
                            gv = gv * sig * (a * (1.0 - sig) + 1.0)
                        vstore(db, c0, vload(db, c0) + gv)
                        for j in range(kernel):
                            s = t - (kernel - 1) + j
                            if s >= 0:
                                src, dsrc, dwj = _row(x[b], s, reverse), _row(dx[b], s, reverse), dw[j]
                                vstore(dsrc, c0, vload(dsrc, c0) + vload(w[j], c0) * gv)
                                vstore(dwj, c0, vload(dwj, c0) + gv * vload(src, c0))
                    continue
                if silu:
                    _pre_activation_row(x[b], w, bias, t, reverse, g)
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
                    if s >= 0:
                        src, dsrc, dwj = _row(x[b], s, reverse), _row(dx[b], s, reverse), dw[j]
                        for c in range(d):
                            dsrc[c] += w[j, c] * g[c]
                            dwj[c] += g[c] * src[c]


def _backward_chunks(batch: int) -> int:
    """Work items of the backward: about 4 per thread (load balance), at most one per sequence."""
    return max(1, min(batch, 4 * numba.get_num_threads()))


class _FusedConv(torch.autograd.Function):
    """x, the output and their gradients: contiguous (batch, length, d)."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu, reverse):
        out = torch.empty_like(x)
        w = weight.t().contiguous()  # (kernel, d): tap j's row over the channels
        run_kernel(_forward_kernel, x.numpy(), w.numpy(), bias.numpy(), silu, reverse, out.numpy())
        ctx.save_for_backward(x, w, bias)
        ctx.flags = (silu, reverse)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, bias = ctx.saved_tensors
        silu, reverse = ctx.flags
        dx = torch.zeros_like(x)
        chunks = _backward_chunks(x.shape[0])
        dw_part = w.new_empty(chunks, *w.shape)
        db_part = w.new_empty(chunks, w.shape[1])
        run_kernel(_backward_kernel, x.numpy(), w.numpy(), bias.numpy(), silu, reverse, dout.contiguous().numpy(),
                   dx.numpy(), dw_part.numpy(), db_part.numpy())  # fmt: skip
        dw = dw_part.sum(0).t() if ctx.needs_input_grad[1] else None
        db = db_part.sum(0) if ctx.needs_input_grad[2] else None
        return dx if ctx.needs_input_grad[0] else None, dw, db, None, None


@torch.compiler.disable  # numba kernels cannot be traced: torch.compile runs around this op
def causal_conv1d_cpu_fused(
    x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, token_major: bool, reverse: bool
) -> Tensor:
    """The fused conv: x (batch, length, d) if ``token_major`` else (batch, d, length), weight (d, kernel).

    Computes in float32 (float64 when any input is float64); the output has the dtype PyTorch's
    promotion gives x, weight and bias (as the reference's). A missing bias is a zero bias
    without a gradient.
    """
    dtype = torch.promote_types(x.dtype, weight.dtype)  # the reference's result type
    dtype = torch.promote_types(dtype, bias.dtype) if bias is not None else dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    bias = bias.to(compute).contiguous() if bias is not None else x.new_zeros(weight.shape[0], dtype=compute)
    rows = x if token_major else x.transpose(1, 2)  # (batch, length, d)
    out = _FusedConv.apply(rows.to(compute).contiguous(), weight.to(compute), bias, silu, reverse)
    return (out if token_major else out.transpose(1, 2)).to(dtype)

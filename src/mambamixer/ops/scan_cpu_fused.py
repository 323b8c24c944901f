"""Fused CPU selective scan (forward and backward), compiled with numba.

Layout: channels are processed in blocks of ``W`` (= ``LANES``) neighbours of one B/C group,
and every vector in the kernels holds one value per channel of a block, so the d_state loop
is a loop over whole SIMD vectors and sums over d_state are plain vector adds. The block's
slices of u, delta, z and the output gradient go into small (time, channel) scratch buffers,
and the results come back the same way. Channel-first tensors (batch, dim, length) move tile by
tile, transposed; a tile cut short by the end of the sequence (lengths that are not a multiple
of 16, and sequences shorter than one tile, such as the vision models' channel mixers' 12
steps) moves with masked loads and stores. Token-major tensors (batch, length, dim), the layout
the mixers produce, move row by row (read from the end for a reversed scan: ``_load_block``).
Only blocks narrower than 16 channels take the element-by-element path.

Forward: one work item per (batch, block); the states of the block stay in a (d_state, W)
buffer, so the (batch, d_inner, length, d_state) tensors of the reference never exist. When a
backward pass may follow, the states at the start of every ``SEG``-step segment are saved
(a 1/SEG fraction of the full states, like the chunk states of mamba_ssm's CUDA kernel).

Backward: one work item per (batch, group, chunk of blocks), segments right to left. The
states of a block's segment are recomputed from the saved ones into a (SEG, d_state, W)
buffer, then the adjoint recurrence runs right to left, so scratch memory does not grow with
the length. The gradients of B and C, shared by the channels of a group, are accumulated lane
by lane over the blocks of a chunk and summed over the lanes once per segment (``vsum``).

exp(dt A) is computed as 2 ** (dt A log2(e)) by ``vexp2`` (A scaled once per block). The
softplus of delta (+ delta_bias) and the SiLU gate of z are fused into the kernels too (the
backward takes softplus and its derivative from one exp, ``vsoftplus_grad``), so the
op runs no element-wise PyTorch kernels besides dtype conversions (each of which also costs a
thread-pool round trip, expensive on a busy machine). Work items are scheduled dynamically over
several threads, in one static chunk on one thread (``numba_math.run_kernel``).

Why numba rather than a C++ extension: it installs from wheels with ``pip`` on every platform,
needs no compiler or torch build environment at install time, and caches the compiled kernels
on disk after the first call.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from torch import Tensor

from mambamixer.ops.numba_math import LANES as W
from mambamixer.ops.numba_math import (
    run_kernel,
    tile_load_t,
    tile_store_t,
    vbroadcast,
    vexp2,
    vload,
    vsigmoid,
    vsoftplus,
    vsoftplus_grad,
    vstore,
    vsum,
)

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)
_SERIAL = dict(fastmath=True, cache=True, nogil=True)

LOG2E = 1.4426950408889634
SEG = 256  # time steps per segment: bounds the scratch memory for long sequences
SUPER = 32  # most blocks per backward work item (their B/C gradients are summed lane by lane)


def _workspace(length: int, d_state: int, dtype: torch.dtype, backward: bool) -> np.ndarray:
    """Scratch for the forward or backward kernel: one row per numba thread, sliced by the kernel.

    Bounded by SEG whatever the length (about 1 MiB per thread for the backward at d_state 16);
    allocated by torch for 64-byte alignment (every slice is a multiple of W elements long).
    """
    seg, nw = min(length, SEG), d_state * W
    if backward:
        cols = (seg + 1) * nw + 3 * seg * nw + 9 * seg * W + 3 * SUPER * nw + 4 * SUPER * W
    else:
        cols = 5 * seg * W + 2 * nw + 2 * W
    return torch.empty(numba.get_num_threads(), cols, dtype=dtype).numpy()


CHANNEL_FIRST, TOKEN_MAJOR, TOKEN_MAJOR_REVERSED = 0, 1, 2  # layouts of u, delta, z and the output


def is_token_major(t: Tensor) -> bool:
    """Whether t (batch, dim, length) lies token-major in memory (a (batch, length, dim) tensor seen
    through ``transpose(1, 2)``): the layout the kernels then read in place."""
    return t.shape[1] > 1 and t.shape[2] > 1 and t.stride(1) == 1


@numba.njit(**_SERIAL)
def _dims(u, layout):
    """(batch, dim, length) of u as the kernels hold it: (batch, dim, length) or token-major (batch, length, dim)."""
    if layout == CHANNEL_FIRST:
        return u.shape[0], u.shape[1], u.shape[2]
    return u.shape[0], u.shape[2], u.shape[1]


@numba.njit(**_SERIAL)
def _row(src, t, layout):
    """Row t (time step t of the scan) of a token-major src (length, dim); from the end when reversed."""
    return src[src.shape[0] - 1 - t] if layout == TOKEN_MAJOR_REVERSED else src[t]


@numba.njit(**_SERIAL)
def _load_block(src, d0, nw, t0, sl, dst, layout):
    """dst[t * W + w] = x[d0 + w, t0 + t] for t < sl, w < W (zero for w >= nw).

    x is src (dim, length) for CHANNEL_FIRST; else src is (length, dim) token-major, x its
    transpose, with the time axis read from the end for TOKEN_MAJOR_REVERSED.
    """
    if layout != CHANNEL_FIRST:
        for t in range(sl):
            row = _row(src, t0 + t, layout)
            if nw == W:
                vstore(dst, t * W, vload(row, d0))
            else:
                for w in range(nw):
                    dst[t * W + w] = row[d0 + w]
                for w in range(nw, W):
                    dst[t * W + w] = 0.0
    elif nw == W:  # src: contiguous rows
        for tt in range(0, sl, W):
            tile_load_t(src, d0, t0 + tt, dst, tt * W, min(W, sl - tt))
    else:
        for t in range(sl):
            for w in range(nw):
                dst[t * W + w] = src[d0 + w, t0 + t]
            for w in range(nw, W):
                dst[t * W + w] = 0.0


@numba.njit(**_SERIAL)
def _store_block(src, dst, d0, nw, t0, sl, layout):
    """x[d0 + w, t0 + t] = src[t * W + w] for t < sl, w < nw, x and dst as in ``_load_block``
    (dst: contiguous rows)."""
    if layout != CHANNEL_FIRST:
        for t in range(sl):
            row = _row(dst, t0 + t, layout)
            if nw == W:
                vstore(row, d0, vload(src, t * W))
            else:
                for w in range(nw):
                    row[d0 + w] = src[t * W + w]
    elif nw == W:
        for tt in range(0, sl, W):
            tile_store_t(src, tt * W, dst, d0, t0 + tt, min(W, sl - tt))
    else:
        for t in range(sl):
            for w in range(nw):
                dst[d0 + w, t0 + t] = src[t * W + w]


@numba.njit(**_SERIAL)
def _load_vec(src, d0, nw, dst, o):
    """dst[o + w] = src[d0 + w] for w < nw, zero up to W."""
    for w in range(nw):
        dst[o + w] = src[d0 + w]
    for w in range(nw, W):
        dst[o + w] = 0.0


@numba.njit(**_SERIAL)
def _load_row(src, d0, nw, dst, o):
    """``_load_vec`` for a contiguous src: one vector load when the block is whole."""
    if nw == W:
        vstore(dst, o, vload(src, d0))
    else:
        _load_vec(src, d0, nw, dst, o)


@numba.njit(**_SERIAL)
def _prepare_dt(ds, dsg, sl, bias, softplus, grad):
    """ds <- softplus(ds + bias) (or ds + bias); dsg <- its derivative when softplus and grad."""
    for t in range(sl):
        o = t * W
        x = vload(ds, o) + bias
        if softplus and grad:
            sp, sg = vsoftplus_grad(x)
            vstore(ds, o, sp)
            vstore(dsg, o, sg)
        elif softplus:
            vstore(ds, o, vsoftplus(x))
        else:
            vstore(ds, o, x)


@numba.njit(**_JIT)
def _forward_kernel(u, delta, At, Bm, Cm, D, z, bias, softplus, layout, out, last_state, ckpt, work):
    """out = (C . h + D u) * silu(z) for every (batch, channel), h the scanned states.

    u, delta, z, out: (batch, dim, length), or (batch, length, dim) token-major (``layout``:
    ``_load_block``); At: A transposed, (d_state, dim); Bm, Cm: (batch, groups, d_state, length),
    in scan order; z and bias have a zero first dimension when absent, last_state when it is not
    wanted. ckpt: (batch, groups * blocks per group, segments, d_state * W) receives the states at
    the segment starts (for the backward pass), unless it has a zero first dimension. work:
    scratch, see ``_workspace``.
    """
    batch, dim, length = _dims(u, layout)
    d_state = At.shape[0]
    groups = Bm.shape[1]
    per_group = dim // groups
    nbg = (per_group + W - 1) // W
    seg = min(length, SEG)
    NW = d_state * W
    has_z = z.shape[0] > 0
    save = ckpt.shape[0] > 0
    for item in numba.prange(batch * groups * nbg):
        b = item // (groups * nbg)
        r = item % (groups * nbg)
        g = r // nbg
        d0 = g * per_group + (r % nbg) * W
        nw = min(W, (g + 1) * per_group - d0)
        buf = work[numba.get_thread_id()]
        sw = seg * W
        xs = buf[0 + 0 * sw : 0 + 1 * sw]
        ds = buf[0 + 1 * sw : 0 + 2 * sw]
        dsg = buf[0 + 2 * sw : 0 + 3 * sw]
        zs = buf[0 + 3 * sw : 0 + 4 * sw]
        ys = buf[0 + 4 * sw : 0 + 5 * sw]
        a = buf[5 * seg * W : 5 * seg * W + NW]
        h = buf[5 * seg * W + NW : 5 * seg * W + 2 * NW]
        small = buf[5 * seg * W + 2 * NW : 5 * seg * W + 2 * NW + 2 * W]
        zero = vbroadcast(xs, 0.0)
        for i in range(0, NW, W):
            vstore(h, i, zero)
        vstore(small, W, zero)
        for n in range(d_state):
            _load_row(At[n], d0, nw, a, n * W)
            vstore(a, n * W, vload(a, n * W) * LOG2E)  # exp(dt A) = 2 ** (dt A log2(e))
        _load_row(D, d0, nw, small, 0)
        if bias.shape[0] > 0:
            _load_row(bias, d0, nw, small, W)
        dv = vload(small, 0)
        bv = vload(small, W)
        Bf = Bm[b, g]
        Cf = Cm[b, g]
        for t0 in range(0, length, seg):
            sl = min(seg, length - t0)
            if save:
                cf = ckpt[b, r, t0 // seg]
                for i in range(0, NW, W):
                    vstore(cf, i, vload(h, i))
            _load_block(u[b], d0, nw, t0, sl, xs, layout)
            _load_block(delta[b], d0, nw, t0, sl, ds, layout)
            _prepare_dt(ds, dsg, sl, bv, softplus, False)
            for t in range(sl):
                o = t * W
                x = vload(xs, o)
                dtv = vload(ds, o)
                dtx = dtv * x
                y = dv * x
                for n in range(d_state):
                    on = n * W
                    hn = vexp2(dtv * vload(a, on)) * vload(h, on) + dtx * Bf[n, t0 + t]
                    vstore(h, on, hn)
                    y = y + hn * Cf[n, t0 + t]
                vstore(ys, o, y)
            if has_z:
                _load_block(z[b], d0, nw, t0, sl, zs, layout)
                for t in range(sl):
                    zv = vload(zs, t * W)
                    vstore(ys, t * W, vload(ys, t * W) * zv * vsigmoid(zv))
            _store_block(ys, out[b], d0, nw, t0, sl, layout)
        if last_state.shape[0] > 0:
            for w in range(nw):
                for n in range(d_state):
                    last_state[b, d0 + w, n] = h[n * W + w]


@numba.njit(**_JIT)
def _backward_kernel(u, delta, At, Bm, Cm, D, z, bias, softplus, layout, ckpt, dout, dlast,
                     du, ddelta, dz, dA, dB_part, dC_part, dD, dbias, n_chunks, work):  # fmt: skip
    """Gradients of every input; dB_part, dC_part: (n_chunks, batch, groups, d_state, length).
    dout, du, ddelta and dz are laid out as u (``layout``).

    dlast has a zero first dimension when the last state gets no gradient; dz and dbias when
    z and bias are absent. The B/C gradients end up summed in dB_part[0], dC_part[0].
    """
    batch, dim, length = _dims(u, layout)
    d_state = At.shape[0]
    groups = Bm.shape[1]
    per_group = dim // groups
    nbg = (per_group + W - 1) // W
    cb = (nbg + n_chunks - 1) // n_chunks
    if cb > SUPER:
        raise ValueError("too few chunks: a chunk holds at most SUPER blocks")
    seg = min(length, SEG)
    nseg = (length + seg - 1) // seg
    NW = d_state * W
    has_z = z.shape[0] > 0
    has_bias = bias.shape[0] > 0
    dtype = u.dtype
    dA_part = np.empty((batch, dim, d_state), dtype=dtype)
    dD_part = np.empty((batch, 2, dim), dtype=dtype)  # D, bias
    for item in numba.prange(batch * groups * n_chunks):
        b = item // (groups * n_chunks)
        r = item % (groups * n_chunks)
        g = r // n_chunks
        c = r % n_chunks
        k_lo = min(nbg, c * cb)
        k_hi = min(nbg, k_lo + cb)
        Bf = Bm[b, g]
        Cf = Cm[b, g]
        dBf = dB_part[c, b, g]
        dCf = dC_part[c, b, g]
        for n in range(d_state):
            for t in range(length):
                dBf[n, t] = 0.0
                dCf[n, t] = 0.0
        buf = work[numba.get_thread_id()]
        p = 0
        hs = buf[p : p + (seg + 1) * NW]
        p += (seg + 1) * NW
        sn = seg * NW
        dec = buf[p + 0 * sn : p + 1 * sn]
        accB = buf[p + 1 * sn : p + 2 * sn]
        accC = buf[p + 2 * sn : p + 3 * sn]
        p += 3 * seg * NW
        sw = seg * W
        xs = buf[p + 0 * sw : p + 1 * sw]
        ds = buf[p + 1 * sw : p + 2 * sw]
        dsg = buf[p + 2 * sw : p + 3 * sw]
        gs = buf[p + 3 * sw : p + 4 * sw]
        gys = buf[p + 4 * sw : p + 5 * sw]
        zs = buf[p + 5 * sw : p + 6 * sw]
        ys = buf[p + 6 * sw : p + 7 * sw]
        dus = buf[p + 7 * sw : p + 8 * sw]
        ddts = buf[p + 8 * sw : p + 9 * sw]
        p += 9 * seg * W
        un = SUPER * NW
        a_blk = buf[p + 0 * un : p + 1 * un]
        dh = buf[p + 1 * un : p + 2 * un]
        dA_acc = buf[p + 2 * un : p + 3 * un]
        p += 3 * SUPER * NW
        small = buf[p : p + SUPER * 4 * W]  # D, bias, dD, dbias per block
        zero = vbroadcast(xs, 0.0)
        nb = k_hi - k_lo  # at most SUPER (see _n_chunks)
        for j in range(nb):
            d0 = g * per_group + (k_lo + j) * W
            nw = min(W, (g + 1) * per_group - d0)
            for n in range(d_state):
                _load_row(At[n], d0, nw, a_blk, j * NW + n * W)
                vstore(a_blk, j * NW + n * W, vload(a_blk, j * NW + n * W) * LOG2E)
                if dlast.shape[0] > 0:
                    _load_vec(dlast[b, :, n], d0, nw, dh, j * NW + n * W)
                else:
                    vstore(dh, j * NW + n * W, zero)
                vstore(dA_acc, j * NW + n * W, zero)
            _load_row(D, d0, nw, small, j * 4 * W)
            if has_bias:
                _load_row(bias, d0, nw, small, j * 4 * W + W)
            else:
                vstore(small, j * 4 * W + W, zero)
            vstore(small, j * 4 * W + 2 * W, zero)
            vstore(small, j * 4 * W + 3 * W, zero)
        # Segments right to left; within a segment, every block of the chunk.
        for s in range(nseg - 1, -1, -1):
            t0 = s * seg
            sl = min(seg, length - t0)
            for i in range(0, sl * NW, W):
                vstore(accB, i, zero)
                vstore(accC, i, zero)
            for j in range(nb):
                d0 = g * per_group + (k_lo + j) * W
                nw = min(W, (g + 1) * per_group - d0)
                ja = j * NW
                js = j * 4 * W
                dv = vload(small, js)
                bv = vload(small, js + W)
                _load_block(u[b], d0, nw, t0, sl, xs, layout)
                _load_block(delta[b], d0, nw, t0, sl, ds, layout)
                _prepare_dt(ds, dsg, sl, bv, softplus, True)
                _load_block(dout[b], d0, nw, t0, sl, gs, layout)
                if has_z:  # gradient of the pre-gate output: dout silu(z); keep sigmoid(z) in dus
                    _load_block(z[b], d0, nw, t0, sl, zs, layout)
                    for t in range(sl):
                        zv = vload(zs, t * W)
                        sig = vsigmoid(zv)
                        vstore(dus, t * W, sig)
                        vstore(gys, t * W, vload(gs, t * W) * zv * sig)
                else:
                    for t in range(sl):
                        vstore(gys, t * W, vload(gs, t * W))
                cf = ckpt[b, g * nbg + k_lo + j, s]
                for i in range(0, NW, W):
                    vstore(hs, i, vload(cf, i))
                # Recompute the states (and the pre-gate output y, for the gradient of z) of the segment.
                for t in range(sl):
                    o = t * W
                    ho = t * NW
                    x = vload(xs, o)
                    dtv = vload(ds, o)
                    gy = vload(gys, o)
                    dtx = dtv * x
                    y = dv * x
                    for n in range(d_state):
                        on = n * W
                        e = vexp2(dtv * vload(a_blk, ja + on))
                        vstore(dec, ho + on, e)
                        hn = e * vload(hs, ho + on) + dtx * Bf[n, t0 + t]
                        vstore(hs, ho + NW + on, hn)
                        if has_z:
                            y = y + hn * Cf[n, t0 + t]
                        vstore(accC, ho + on, vload(accC, ho + on) + gy * hn)
                    vstore(ys, o, y)
                if has_z:  # d out / d z = y * silu'(z)
                    for t in range(sl):
                        o = t * W
                        sig = vload(dus, o)
                        dsilu = sig * (vload(zs, o) * (1.0 - sig) + 1.0)
                        vstore(ys, o, vload(gs, o) * vload(ys, o) * dsilu)
                    _store_block(ys, dz[b], d0, nw, t0, sl, layout)
                # Adjoint recurrence, right to left; dh holds dLoss/dh_t.
                dDv = vload(small, js + 2 * W)
                for t in range(sl - 1, -1, -1):
                    o = t * W
                    ho = t * NW
                    x = vload(xs, o)
                    dtv = vload(ds, o)
                    gy = vload(gys, o)
                    dtx = dtv * x
                    dDv = dDv + gy * x
                    sv = zero  # sum_n dh_n B_n
                    dtg = zero  # dLoss/d dt through the decays
                    for n in range(d_state):
                        on = n * W
                        dh_n = vload(dh, ja + on) + gy * Cf[n, t0 + t]
                        e = vload(dec, ho + on)
                        d_exp = dh_n * vload(hs, ho + on) * e  # dLoss/d(dt * A)
                        dtg = dtg + d_exp * vload(a_blk, ja + on)
                        vstore(dA_acc, ja + on, vload(dA_acc, ja + on) + d_exp * dtv)
                        vstore(accB, ho + on, vload(accB, ho + on) + dh_n * dtx)
                        sv = sv + dh_n * Bf[n, t0 + t]
                        vstore(dh, ja + on, dh_n * e)
                    vstore(dus, o, gy * dv + sv * dtv)
                    vstore(ddts, o, dtg * (1.0 / LOG2E) + sv * x)
                vstore(small, js + 2 * W, dDv)
                if softplus:
                    for t in range(sl):
                        vstore(ddts, t * W, vload(ddts, t * W) * vload(dsg, t * W))
                dbv = vload(small, js + 3 * W)
                for t in range(sl):
                    dbv = dbv + vload(ddts, t * W)
                vstore(small, js + 3 * W, dbv)
                _store_block(dus, du[b], d0, nw, t0, sl, layout)
                _store_block(ddts, ddelta[b], d0, nw, t0, sl, layout)
            # Lane sums of the B/C gradients of the segment.
            for t in range(sl):
                for n in range(d_state):
                    i = (t * d_state + n) * W
                    dBf[n, t0 + t] += vsum(vload(accB, i))
                    dCf[n, t0 + t] += vsum(vload(accC, i))
        for j in range(nb):
            d0 = g * per_group + (k_lo + j) * W
            nw = min(W, (g + 1) * per_group - d0)
            for w in range(nw):
                dD_part[b, 0, d0 + w] = small[j * 4 * W + 2 * W + w]
                dD_part[b, 1, d0 + w] = small[j * 4 * W + 3 * W + w]
                for n in range(d_state):
                    dA_part[b, d0 + w, n] = dA_acc[j * NW + n * W + w]
    # Sums over the batch (and the chunks), serially, in memory order.
    for d in range(dim):
        dD[d] = dD_part[0, 0, d]
        if has_bias:
            dbias[d] = dD_part[0, 1, d]
        for n in range(d_state):
            dA[d, n] = dA_part[0, d, n]
    for b in range(1, batch):
        for d in range(dim):
            dD[d] += dD_part[b, 0, d]
            if has_bias:
                dbias[d] += dD_part[b, 1, d]
            for n in range(d_state):
                dA[d, n] += dA_part[b, d, n]
    for c in range(1, n_chunks):
        for b in range(batch):
            for g in range(groups):
                for n in range(d_state):
                    for t in range(length):
                        dB_part[0, b, g, n, t] += dB_part[c, b, g, n, t]
                        dC_part[0, b, g, n, t] += dC_part[c, b, g, n, t]


def _n_chunks(batch: int, groups: int, dim: int) -> int:
    """Chunks of blocks per (batch, group): about 4 work items per thread (load balance)."""
    threads = numba.get_num_threads()
    blocks = -(-(dim // groups) // W)
    return max(1, min(blocks, max(-(-blocks // SUPER), -(-4 * threads // (batch * groups)))))


def _array(t: Tensor | None, like: Tensor, ndim: int) -> np.ndarray:
    """t as a numpy array, or an empty array of like's dtype with ndim dimensions."""
    return t.numpy() if t is not None else np.empty((0,) * ndim, dtype=like.numpy().dtype)


class _FusedScan(torch.autograd.Function):
    """The whole op: softplus, scan and gate; B, C as (batch, groups, d_state, length).

    u, delta, z: (batch, dim, length), or (batch, length, dim) for the token-major ``layout``s;
    the output and the gradients of u, delta and z come in the same layout.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, layout, want_last):
        batch, dim, length = _dims(u.numpy(), layout)
        d_state = A.shape[1]
        At = A.t().contiguous()  # (d_state, dim): the kernels load A's rows for a block as vectors
        out = torch.empty_like(u)
        last = u.new_empty(batch, dim, d_state) if want_last else u.new_empty(0, 0, 0)
        if any(ctx.needs_input_grad):  # states at the segment starts, for the backward pass
            blocks = B.shape[1] * -(-(dim // B.shape[1]) // W)
            ckpt = u.new_empty(batch, blocks, -(-length // min(length, SEG)), d_state * W)
        else:
            ckpt = u.new_empty(0, 0, 0, 0)
        run_kernel(
            _forward_kernel, u.numpy(), delta.numpy(), At.numpy(), B.numpy(), C.numpy(), D.numpy(), _array(z, u, 3),
            _array(delta_bias, u, 1), softplus, layout, out.numpy(), last.numpy(), ckpt.numpy(),
            _workspace(length, d_state, u.dtype, False),
        )  # fmt: skip
        ctx.save_for_backward(u, delta, At, B, C, D, z, delta_bias, ckpt)
        ctx.softplus, ctx.layout = softplus, layout
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, At, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        batch, dim, length = _dims(u.numpy(), ctx.layout)
        groups = B.shape[1]
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        dlast = dlast.contiguous() if dlast is not None else None
        n_chunks = _n_chunks(batch, groups, dim)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(z) if z is not None else None
        dbias = torch.empty_like(delta_bias) if delta_bias is not None else None
        dA, dD = At.new_empty(At.shape[1], At.shape[0]), torch.empty_like(D)
        dB_part = B.new_empty(n_chunks, *B.shape)
        dC_part = C.new_empty(n_chunks, *C.shape)
        run_kernel(
            _backward_kernel, u.numpy(), delta.numpy(), At.numpy(), B.numpy(), C.numpy(), D.numpy(), _array(z, u, 3),
            _array(delta_bias, u, 1), ctx.softplus, ctx.layout, ckpt.numpy(), dout.numpy(), _array(dlast, u, 3),
            du.numpy(), ddelta.numpy(), _array(dz, u, 3), dA.numpy(), dB_part.numpy(), dC_part.numpy(),
            dD.numpy(), _array(dbias, u, 1), n_chunks, _workspace(length, At.shape[0], u.dtype, True),
        )  # fmt: skip
        return du, ddelta, dA, dB_part[0], dC_part[0], dD, dz, dbias, None, None, None


@torch.compiler.disable  # numba kernels cannot be traced: torch.compile runs around this op
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
    reverse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused CPU selective scan; the reference's signature, shapes and semantics, plus ``reverse``.

    Computes in float32 (float64 for float64 inputs); bfloat16/float16 inputs are upcast and
    the output cast back. The last state is differentiable too. When u lies token-major in
    memory (a (batch, length, d_inner) tensor seen through ``transpose(1, 2)``, as the mixers
    produce it), the kernels read u, delta and z and write the output in that layout, so no
    transposed copies are made (delta and z are copied into it if they lie otherwise), and
    ``reverse`` reads and writes their rows from the end instead of flipping them (only the small
    B and C are flipped). Channel-first inputs are flipped for ``reverse``.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    tm = is_token_major(u)
    if reverse and not tm:
        u, delta, B, C = u.flip(-1), delta.flip(-1), B.flip(-1), C.flip(-1)
        z = z.flip(-1) if z is not None else None
    elif reverse:
        B, C = B.flip(-1), C.flip(-1)  # (batch, [groups,] d_state, length): scan order, as the kernels read them
    layout = (TOKEN_MAJOR_REVERSED if reverse else TOKEN_MAJOR) if tm else CHANNEL_FIRST

    def prep(t: Tensor | None) -> Tensor | None:
        return t.to(compute).contiguous() if t is not None else None

    def seq(t: Tensor | None) -> Tensor | None:  # u, delta, z in the kernels' layout
        return prep(t.transpose(1, 2) if tm and t is not None else t)

    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    D = prep(D) if D is not None else u.new_zeros(u.shape[1], dtype=compute)
    out, last = _FusedScan.apply(seq(u), seq(delta), prep(A), prep(B), prep(C), D, seq(z), prep(delta_bias),
                                 bool(delta_softplus), layout, return_last_state)  # fmt: skip
    out = (out.transpose(1, 2) if tm else out.flip(-1) if reverse else out).to(u.dtype)
    return (out, last) if return_last_state else out


def set_num_threads(n: int) -> None:
    """Threads used by the fused kernel (defaults to numba's: the number of cores)."""
    numba.set_num_threads(n)


if os.environ.get("MAMBAMIXER_NUMBA_THREADS"):
    set_num_threads(int(os.environ["MAMBAMIXER_NUMBA_THREADS"]))

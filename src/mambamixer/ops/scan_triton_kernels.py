"""Triton kernels of the selective scan (``scan_triton`` launches them; this module needs triton).

One program per (batch, block of ``BLOCK_D`` channels of one B/C group); its states, a
(BLOCK_D, BLOCK_N) tile (d_state padded to a power of two, masked), stay in registers while the
program walks the sequence step by step, so any length works (time is a loop, never a tile
dimension; the last chunk is cut short). Inputs are loaded in their own dtype and computed in
A's (float32, or float64). u, delta, z, the output and the gradients of u, delta and z share
one layout, given by (stride_b, stride_d, stride_t); B and C are contiguous (batch, groups,
d_state, length) and A contiguous (d_inner, d_state). With ``REVERSE`` the scan runs right to
left: step t reads and writes time ``length - 1 - t``, so nothing is flipped in memory.

The forward pass saves the state at the start of every ``CHUNK`` steps (``ckpt``: (batch,
d_inner, n_chunks, d_state)). The backward pass walks the chunks right to left: it recomputes a
chunk's states from its checkpoint into the program's slice of ``scratch`` (CHUNK tiles), then
runs the adjoint recurrence right to left over the chunk, with a_t = exp(dt_t A),
r_t = dLoss/dh_t = g_t C_t + a_{t+1} r_{t+1} (g: dLoss/dy) and, per step,
dA += r a h_{t-1} dt, d dt = sum_n r (A a h_{t-1} + u B), du = D g + dt sum_n r B,
dB_t = sum_d r dt u, dC_t = sum_d g h_t (the last two summed over a group's blocks by atomic adds).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _block_channels(block, d_state, per_group, groups, b_groups, c_groups, BLOCK_D: tl.constexpr,
                    BLOCK_N: tl.constexpr):  # fmt: skip
    """Channels (BLOCK_D,) of a block and their mask, states (BLOCK_N,) and their mask, and the
    block's B and C groups. ``groups`` (a multiple of b_groups and c_groups) have ``per_group``
    channels each; a block never straddles two of them."""
    blocks_per_group = (per_group + BLOCK_D - 1) // BLOCK_D
    group = block // blocks_per_group
    local = (block % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    return (group * per_group + local, local < per_group, n, n < d_state, group // (groups // b_groups),
            group // (groups // c_groups))  # fmt: skip


INTERPRETED = not isinstance(_block_channels, triton.runtime.JITFunction)  # TRITON_INTERPRET=1 at import


@triton.jit
def _block_setup(b, block, A_ptr, D_ptr, bias_ptr, length, d_state, per_group, groups, b_groups, c_groups, stride_b,
                 stride_d, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr,
                 HAS_BIAS: tl.constexpr):  # fmt: skip
    """What a (batch b, block) item needs before its time loop: the channels d and their mask, the
    states n and their mask, A (BLOCK_D, BLOCK_N) in the compute dtype, bias and D (BLOCK_D,; zeros
    when absent), and the offsets of its rows of u (row + t * stride_t) and of B and C (+ t)."""
    d, mask_d, n, mask_n, gb, gc = _block_channels(block, d_state, per_group, groups, b_groups, c_groups, BLOCK_D,
                                                   BLOCK_N)  # fmt: skip
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=mask_d[:, None] & mask_n[None, :], other=0.0)
    bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(A.dtype) if HAS_BIAS else tl.zeros((BLOCK_D,), A.dtype)
    D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(A.dtype) if HAS_D else tl.zeros((BLOCK_D,), A.dtype)
    b_row = ((b * b_groups + gb) * d_state + n) * length
    c_row = ((b * c_groups + gc) * d_state + n) * length
    return d, mask_d, n, mask_n, A, bias, D, b * stride_b + d * stride_d, b_row, c_row


@triton.jit
def _load_step(u_ptr, delta_ptr, B_ptr, offs, b_offs, mask_d, mask_n, bias, SOFTPLUS: tl.constexpr):
    """u, dt = softplus(delta + bias) (or delta + bias) and d dt / d delta (BLOCK_D,), and B (BLOCK_N,)
    of one step, in bias's dtype (the compute dtype).

    Helpers stay few and big: Triton's interpreter re-patches triton.language at every call of a
    jit function (most of its time went there with small helpers); compiled kernels inline them.
    """
    x = tl.load(u_ptr + offs, mask=mask_d, other=0.0).to(bias.dtype)
    dt = tl.load(delta_ptr + offs, mask=mask_d, other=0.0).to(bias.dtype) + bias
    if SOFTPLUS:  # log(1 + exp(dt)) as torch computes it (dt above 20 passes through), and its derivative
        e = tl.exp(-tl.abs(dt))
        w = 1.0 + e
        log1p = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))  # log1p(e), accurate for small e
        dt_grad = tl.where(dt > 20.0, 1.0, tl.where(dt >= 0, 1.0 / w, e / w))
        dt = tl.where(dt > 20.0, dt, tl.maximum(dt, 0.0) + log1p)
    else:
        dt_grad = tl.full(dt.shape, 1.0, bias.dtype)
    b = tl.load(B_ptr + b_offs, mask=mask_n, other=0.0).to(bias.dtype)
    return x, dt, dt_grad, b


@triton.jit
def scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    length, d_inner, d_state, per_group, groups, b_groups, c_groups, n_chunks, stride_b, stride_d, stride_t,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
    SAVE: tl.constexpr, WANT_LAST: tl.constexpr,
):  # fmt: skip
    """out = (C . h + D u) * silu(z); grid (batch, blocks). ckpt receives the chunk-start states
    (``SAVE``), last_ptr (batch, d_inner, d_state) the final state (``WANT_LAST``)."""
    b = tl.program_id(0).to(tl.int64)  # offsets in int64: tensors may pass 2**31 elements
    d, mask_d, n, mask_n, A, bias, D, row, b_row, c_row = _block_setup(
        b, tl.program_id(1), A_ptr, D_ptr, bias_ptr, length, d_state, per_group, groups, b_groups, c_groups, stride_b,
        stride_d, BLOCK_D, BLOCK_N, HAS_D, HAS_BIAS)  # fmt: skip
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dtype = A.dtype
    ckpt_offs = (b * d_inner + d[:, None]) * n_chunks * d_state + n[None, :]
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype)
    for c in range(n_chunks):
        if SAVE:
            tl.store(ckpt_ptr + ckpt_offs + c * d_state, h, mask=mask_dn)
        for i in range(tl.minimum(CHUNK, length - c * CHUNK)):
            t = c * CHUNK + i
            tm = (length - 1 - t) if REVERSE else t
            offs = row + tm * stride_t
            x, dt, _, Bt = _load_step(u_ptr, delta_ptr, B_ptr, offs, b_row + tm, mask_d, mask_n, bias, SOFTPLUS)
            Ct = tl.load(C_ptr + c_row + tm, mask=mask_n, other=0.0).to(dtype)
            h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1) + D * x
            if HAS_Z:
                zt = tl.load(z_ptr + offs, mask=mask_d, other=0.0).to(dtype)
                y = y * zt / (1.0 + tl.exp(-zt))
            tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    if WANT_LAST:
        tl.store(last_ptr + (b * d_inner + d[:, None]) * d_state + n[None, :], h, mask=mask_dn)


@triton.jit
def scan_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, dlast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    batch, length, d_inner, d_state, per_group, groups, b_groups, c_groups, n_chunks, stride_b, stride_d, stride_t,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
    HAS_DLAST: tl.constexpr,
):  # fmt: skip
    """Gradients of every input. Persistent programs: program p takes the (batch, block) items
    p, p + programs, ...; scratch holds CHUNK (BLOCK_D, BLOCK_N) tiles per program. dB, dC
    ((batch, groups, d_state, length), zeroed) are accumulated with atomic adds over the blocks
    of a group; dA (batch, d_inner, d_state), dD and dbias (batch, d_inner) get per-sample
    partials, summed by the caller."""
    pid = tl.program_id(0)
    blocks = groups * ((per_group + BLOCK_D - 1) // BLOCK_D)
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    scratch = scratch_ptr + pid * CHUNK * BLOCK_D * BLOCK_N + tile
    for item in range(pid, batch * blocks, tl.num_programs(0)):
        b = (item // blocks).to(tl.int64)
        d, mask_d, n, mask_n, A, bias, D, row, b_row, c_row = _block_setup(
            b, item % blocks, A_ptr, D_ptr, bias_ptr, length, d_state, per_group, groups, b_groups, c_groups,
            stride_b, stride_d, BLOCK_D, BLOCK_N, HAS_D, HAS_BIAS)  # fmt: skip
        mask_dn = mask_d[:, None] & mask_n[None, :]
        dtype = A.dtype
        state_offs = (b * d_inner + d[:, None]) * d_state + n[None, :]
        ckpt_offs = (b * d_inner + d[:, None]) * n_chunks * d_state + n[None, :]
        if HAS_DLAST:  # dLoss/dh flowing into the current step from the step after it (a_{t+1} r_{t+1})
            carry = tl.load(dlast_ptr + state_offs, mask=mask_dn, other=0.0).to(dtype)
        else:
            carry = tl.zeros((BLOCK_D, BLOCK_N), dtype)
        dA = tl.zeros((BLOCK_D, BLOCK_N), dtype)
        dD = tl.zeros((BLOCK_D,), dtype)
        dbias = tl.zeros((BLOCK_D,), dtype)
        for cc in range(n_chunks):
            c = n_chunks - 1 - cc
            h = tl.load(ckpt_ptr + ckpt_offs + c * d_state, mask=mask_dn, other=0.0)
            tl.debug_barrier()  # the previous chunk's adjoint pass has read its scratch
            steps = tl.minimum(CHUNK, length - c * CHUNK)
            for i in range(steps):  # scratch[i] = the state before step c * CHUNK + i
                t = c * CHUNK + i
                tm = (length - 1 - t) if REVERSE else t
                x, dt, _, Bt = _load_step(u_ptr, delta_ptr, B_ptr, row + tm * stride_t, b_row + tm, mask_d, mask_n,
                                          bias, SOFTPLUS)  # fmt: skip
                tl.store(scratch + i * BLOCK_D * BLOCK_N, h)
                h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            tl.debug_barrier()  # scratch written before it is read
            for j in range(steps):  # the adjoint recurrence, right to left
                i = steps - 1 - j
                t = c * CHUNK + i
                tm = (length - 1 - t) if REVERSE else t
                offs = row + tm * stride_t
                x, dt, dt_grad, Bt = _load_step(u_ptr, delta_ptr, B_ptr, offs, b_row + tm, mask_d, mask_n, bias,
                                                SOFTPLUS)  # fmt: skip
                Ct = tl.load(C_ptr + c_row + tm, mask=mask_n, other=0.0).to(dtype)
                g = tl.load(dout_ptr + offs, mask=mask_d, other=0.0).to(dtype)  # dLoss/d out
                h_prev = tl.load(scratch + i * BLOCK_D * BLOCK_N)
                decay = tl.exp(dt[:, None] * A)
                h = decay * h_prev + (dt * x)[:, None] * Bt[None, :]
                if HAS_Z:  # out = y * silu(z): d out / d z = y * silu'(z), and dLoss/dy = g * silu(z)
                    zt = tl.load(z_ptr + offs, mask=mask_d, other=0.0).to(dtype)
                    sig = 1.0 / (1.0 + tl.exp(-zt))
                    y = tl.sum(h * Ct[None, :], axis=1) + D * x
                    dz = g * y * sig * (1.0 + zt * (1.0 - sig))
                    tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                    g = g * zt * sig
                r = carry + g[:, None] * Ct[None, :]  # dLoss/dh_t
                rB = tl.sum(r * Bt[None, :], axis=1)
                ddt = tl.sum(r * A * decay * h_prev, axis=1) + x * rB
                ddelta = ddt * dt_grad
                dA += r * decay * h_prev * dt[:, None]
                dD += g * x
                dbias += ddelta
                tl.store(du_ptr + offs, (D * g + dt * rB).to(du_ptr.dtype.element_ty), mask=mask_d)
                tl.store(ddelta_ptr + offs, ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask_d)
                tl.atomic_add(dB_ptr + b_row + tm, tl.sum(r * (dt * x)[:, None], axis=0), mask=mask_n)
                tl.atomic_add(dC_ptr + c_row + tm, tl.sum(g[:, None] * h, axis=0), mask=mask_n)
                carry = decay * r
        tl.store(dA_ptr + state_offs, dA, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + b * d_inner + d, dD, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + b * d_inner + d, dbias, mask=mask_d)

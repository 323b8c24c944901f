"""The fused kernel's SIMD helpers on their own: softplus with its derivative, lane sums, masked tiles."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mambamixer.ops.numba_math import LANES, tile_load_t, tile_store_t, vload, vsoftplus_grad, vstore, vsum


@numba.njit(cache=False)
def _softplus_grad(x, sp, sg):
    for i in range(0, x.size, LANES):
        a, b = vsoftplus_grad(vload(x, i))
        vstore(sp, i, a)
        vstore(sg, i, b)


@numba.njit(cache=False)
def _lane_sums(x, out):
    for i in range(0, x.size, LANES):
        out[i // LANES] = vsum(vload(x, i))


@numba.njit(cache=False)
def _tile_round_trip(src, row, col, n, scratch, dst):
    tile_load_t(src, row, col, scratch, 0, n)
    tile_store_t(scratch, 0, dst, row, col, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_and_its_derivative_match_torch(dtype):
    """Across the range, at torch's threshold of 20 and where exp(-|x|) underflows float32."""
    special = [-100.0, -88.0, -40.0, -1e-8, 0.0, 1e-8, 0.5, 19.99, 20.0, 20.01, 50.0]
    x = np.concatenate([np.linspace(-30, 30, 30 * LANES - len(special)), special]).astype(dtype)
    sp, sg = np.empty_like(x), np.empty_like(x)
    _softplus_grad(x, sp, sg)
    t = torch.from_numpy(x).requires_grad_()
    want = F.softplus(t)
    (want_grad,) = torch.autograd.grad(want.sum(), t)
    tol = dict(rtol=1e-6, atol=1e-30) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(torch.from_numpy(sp), want.detach(), **tol)
    torch.testing.assert_close(torch.from_numpy(sg), want_grad, **tol)


def test_lane_sums():
    x = np.random.default_rng(0).standard_normal(LANES * 7).astype(np.float32)
    out = np.empty(7, np.float32)
    _lane_sums(x, out)
    np.testing.assert_allclose(out, x.reshape(7, LANES).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 5, LANES])
def test_a_tile_cut_short_moves_only_its_columns(n):
    """A tile of n < LANES columns reads and writes those columns only, even at the end of the array."""
    src = np.arange(LANES * 20, dtype=np.float32).reshape(LANES, 20)
    col = 20 - n  # the tile ends with the rows, the last one with the array
    scratch = np.full(LANES * LANES, -1.0, np.float32)
    dst = np.full_like(src, -7.0)
    _tile_round_trip(src, 0, col, n, scratch, dst)
    np.testing.assert_array_equal(scratch[: n * LANES].reshape(n, LANES), src[:, col:].T)  # transposed
    assert (scratch[n * LANES :] == -1.0).all()  # nothing written past n vectors
    np.testing.assert_array_equal(dst[:, col:], src[:, col:])
    assert (dst[:, :col] == -7.0).all()

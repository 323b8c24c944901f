"""Scalar math for the numba kernels that LLVM can vectorise.

numba lowers ``math.exp`` to a libm call, which blocks SIMD vectorisation of the d_state
loop. ``fast_exp`` is the Cephes single-precision exp (range reduction to
exp(r) * 2**k, degree-6 polynomial, relative error below 1e-7 where the result is a normal
float) written in plain arithmetic plus one bit cast, so the loop compiles to vector code. For
float64 it is ``math.exp`` (used for gradcheck, where accuracy is the point).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def fast_exp(x: float) -> float:
    """exp(x); in numba-compiled code a vectorisable float32 version."""
    return math.exp(x)


@overload(fast_exp, fastmath=True)
def _fast_exp_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def impl(x):
        # Results below float32's smallest normal (exp(-87)) are flushed to ~1.6e-38.
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        k = math.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))

    return impl

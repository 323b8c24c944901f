"""Math for the numba kernels: explicit SIMD vectors, and a vectorisable scalar ``exp``.

LLVM's auto-vectoriser gives up on the scan's loops: they read and write several scratch
arrays, and it cannot prove that numba's arrays do not overlap (it needs a runtime check per
pair of arrays and stops at a handful). So the kernels use explicit vectors: ``Vec`` is a
numba type lowered to an LLVM ``<LANES x float>`` (or ``double``) value, made with ``vload``
or ``vbroadcast``, combined with ``+``, ``-``, ``*``, ``/`` (vector or scalar operands) and
the functions below, and written back with ``vstore``. LLVM maps a vector to whatever SIMD
registers the CPU has (one AVX-512 register for float32, two AVX2 registers, four NEON
registers ...). ``tile_load_t``/``tile_store_t`` move a LANES x LANES tile between a
(channel, time) array and a (time, channel) scratch buffer with in-register shuffles.

Transcendentals: for float32, ``vexp2`` (polynomial on [-0.5, 0.5] plus exponent bits,
relative error below 1e-7) and ``vexp`` (Cephes expf: exp(r) 2**k with r = x - k log(2) split
in two parts, relative error below 1.2e-7); results below float32's smallest normal are
flushed to about 1.2e-38. ``vsigmoid`` and ``vsoftplus`` build on them (softplus with Cephes'
logf polynomial for log1p, and torch's threshold of 20); ``vsoftplus_grad`` gives softplus and
its derivative together from one exp. For float64 every function calls
libm (exp, exp2, log1p), accurate to an ulp: that path serves gradcheck.

``fast_exp`` is the scalar version of the float32 exp for code that relies on LLVM's
auto-vectoriser. ``run_kernel`` schedules the work items of a parallel kernel.
"""

from __future__ import annotations

import math
import operator

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

LANES = 16  # elements of a Vec

_LOG2E = 1.4426950408889634
# exp(r) = 1 + r + r**2 P(r) on [-log(2) / 2, log(2) / 2] (Cephes expf), P highest degree first.
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
# 2**f on [-0.5, 0.5]: near-minimax polynomial (relative error 2e-9), highest degree first.
_EXP2_POLY = (1.5345811783301858e-4, 1.3399931422446447e-3, 9.618488959715087e-3, 5.550328776465759e-2,
              2.4022646890593327e-1, 6.931472057374954e-1, 1.0)  # fmt: skip
# log(1 + r) = r - r**2 / 2 + r**3 P(r) on [sqrt(0.5) - 1, sqrt(2) - 1] (Cephes logf), P highest first.
_LOG1P_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
               -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)  # fmt: skip


# --- scalar exp ----------------------------------------------------------------------------


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def fast_exp(x: float) -> float:
    """exp(x); in numba-compiled code a vectorisable float32 version (math.exp for float64)."""
    return math.exp(x)


@overload(fast_exp, fastmath=True)
def _fast_exp_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def impl(x):
        # Results below float32's smallest normal (exp(-87)) are flushed to ~1.6e-38.
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        k = math.floor(x * np.float32(_LOG2E) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(_EXP_POLY[0])
        p = p * r + np.float32(_EXP_POLY[1])
        p = p * r + np.float32(_EXP_POLY[2])
        p = p * r + np.float32(_EXP_POLY[3])
        p = p * r + np.float32(_EXP_POLY[4])
        p = p * r + np.float32(_EXP_POLY[5])
        p = p * r * r + r + np.float32(1.0)
        return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))

    return impl


# --- the vector type -----------------------------------------------------------------------


class Vec(types.Type):
    """LANES floats of one dtype (float32 or float64), held in SIMD registers."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec{LANES}({dtype})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), LANES))


_FLOATS = (types.float32, types.float64)
_I32 = ir.IntType(32)


def _is_vec_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype in _FLOATS


def _is_row_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout in ("C", "A") and arr.dtype in _FLOATS


def _is_number(t) -> bool:
    return isinstance(t, (types.Float, types.Integer))


def _const(vecty, value):
    return ir.Constant(vecty, [value] * LANES)


def _splat(builder, scalar, vecty):
    undef = ir.Constant(vecty, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _vec_suffix(vecty) -> str:
    """The overload suffix of LLVM intrinsics for vecty: "v16f32" or "v16f64"."""
    return f"v{LANES}{'f64' if vecty.element == ir.DoubleType() else 'f32'}"


def _intrinsic_fn(builder, vecty, name):
    """The unary LLVM intrinsic ``name`` (e.g. "llvm.exp") for vecty."""
    fnty = ir.FunctionType(vecty, [vecty])
    return cgutils.get_or_insert_function(builder.module, fnty, f"{name}.{_vec_suffix(vecty)}")


def _vec_pointer(context, builder, arrty, arr, idxty, idx):
    """Pointer to arr[idx] (1D contiguous arr) as a Vec pointer."""
    data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.gep(data, [context.cast(builder, idx, idxty, types.intp)], inbounds=True)
    return builder.bitcast(ptr, context.get_value_type(Vec(arrty.dtype)).as_pointer())


def _row_pointer(context, builder, arrty, arr, row, col):
    """Pointer to arr[row, col] (2D arr whose rows are contiguous) as a Vec pointer."""
    ary = context.make_array(arrty)(context, builder, arr)
    stride0 = cgutils.unpack_tuple(builder, ary.strides, 2)[0]
    offset = builder.add(builder.mul(row, stride0), builder.mul(col, ir.Constant(row.type, arrty.dtype.bitwidth // 8)))
    ptr = builder.inttoptr(builder.add(builder.ptrtoint(ary.data, offset.type), offset), ary.data.type)
    return builder.bitcast(ptr, context.get_value_type(Vec(arrty.dtype)).as_pointer())


# --- loads, stores, operators --------------------------------------------------------------


@intrinsic
def vload(typingctx, arr, i):
    """arr[i:i + LANES] as a Vec (arr: 1D contiguous float array; no bounds check)."""
    if not (_is_vec_array(arr) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _vec_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        return builder.load(ptr, align=sig.args[0].dtype.bitwidth // 8)

    return Vec(arr.dtype)(arr, i), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """arr[i:i + LANES] = v (no bounds check)."""
    if not (_is_vec_array(arr) and isinstance(i, types.Integer) and isinstance(v, Vec) and v.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        ptr = _vec_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(args[2], ptr, align=sig.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def vbroadcast(typingctx, arr, x):
    """A Vec of arr's dtype with every lane equal to x (arr only gives the dtype)."""
    if not (isinstance(arr, types.Array) and arr.dtype in _FLOATS and _is_number(x)):
        return None
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[1], sig.args[1], vt.dtype)
        return _splat(builder, scalar, context.get_value_type(vt))

    return vt(arr, x), codegen


def _binop_intrinsic(op_name):
    @intrinsic
    def binop(typingctx, a, b):
        vec = a if isinstance(a, Vec) else b
        if not isinstance(vec, Vec):
            return None
        for t in (a, b):
            if t != vec and not _is_number(t):
                return None

        def codegen(context, builder, sig, args):
            vecty = context.get_value_type(vec)
            ops = [
                arg if isinstance(ty, Vec) else _splat(builder, context.cast(builder, arg, ty, vec.dtype), vecty)
                for arg, ty in zip(args, sig.args, strict=True)
            ]
            return getattr(builder, op_name)(*ops)

        return vec(a, b), codegen

    return binop


def _register_operator(op, impl):
    @overload(op)
    def _operator(a, b):
        if isinstance(a, Vec) or isinstance(b, Vec):
            return lambda a, b: impl(a, b)
        return None


for _op, _name in ((operator.add, "fadd"), (operator.sub, "fsub"), (operator.mul, "fmul"), (operator.truediv, "fdiv")):
    _register_operator(_op, _binop_intrinsic(_name))


@intrinsic
def vsum(typingctx, v):
    """The sum of the lanes of v."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        x, width = args[0], LANES
        while width > 1:  # pairwise: add the upper half onto the lower half
            width //= 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            x = builder.fadd(lo, hi)
        return builder.extract_element(x, ir.Constant(_I32, 0))

    return v.dtype(v), codegen


# --- transcendentals -----------------------------------------------------------------------


def _clamp(builder, x, lo, hi):
    x = builder.select(builder.fcmp_ordered("<", x, _const(x.type, lo)), _const(x.type, lo), x)
    return builder.select(builder.fcmp_ordered(">", x, _const(x.type, hi)), _const(x.type, hi), x)


def _horner(builder, coefs, x):
    p = _const(x.type, coefs[0])
    for coef in coefs[1:]:
        p = builder.fadd(builder.fmul(p, x), _const(x.type, coef))
    return p


def _times_pow2(builder, p, k):
    """p * 2**k for float32 p in [0.5, 2) and integral k >= -125: added to p's exponent bits."""
    ivecty = ir.VectorType(_I32, LANES)
    shifted = builder.shl(builder.fptosi(k, ivecty), _const(ivecty, 23))
    return builder.bitcast(builder.add(builder.bitcast(p, ivecty), shifted), p.type)


def _emit_exp2(builder, x):
    if x.type.element == ir.DoubleType():
        return builder.call(_intrinsic_fn(builder, x.type, "llvm.exp2"), [x])
    x = _clamp(builder, x, -126.0, 127.0)
    k = builder.call(_intrinsic_fn(builder, x.type, "llvm.roundeven"), [x])
    # x = -126 gives k = -126 with p = 1: the smallest normal float.
    return _times_pow2(builder, _horner(builder, _EXP2_POLY, builder.fsub(x, k)), k)


def _emit_exp(builder, x):
    if x.type.element == ir.DoubleType():
        return builder.call(_intrinsic_fn(builder, x.type, "llvm.exp"), [x])
    x = _clamp(builder, x, -87.3, 88.0)  # -87.3: k >= -126 and r > 0 there, so the result is normal
    k = builder.call(_intrinsic_fn(builder, x.type, "llvm.roundeven"), [builder.fmul(x, _const(x.type, _LOG2E))])
    r = builder.fsub(x, builder.fmul(k, _const(x.type, 0.693359375)))  # x - k log(2), log(2) in two parts
    r = builder.fadd(r, builder.fmul(k, _const(x.type, 2.12194440e-4)))
    p = builder.fmul(builder.fmul(_horner(builder, _EXP_POLY, r), r), r)
    return _times_pow2(builder, builder.fadd(builder.fadd(p, r), _const(x.type, 1.0)), k)


def _emit_sigmoid(builder, x):
    one = _const(x.type, 1.0)
    return builder.fdiv(one, builder.fadd(one, _emit_exp(builder, builder.fsub(_const(x.type, 0.0), x))))


def _emit_softplus(builder, x, with_sigmoid=False):
    """softplus(x), or (softplus(x), sigmoid(x)) with one exp between them (float32)."""
    one = _const(x.type, 1.0)
    above = builder.fcmp_ordered(">", x, _const(x.type, 20.0))  # torch's threshold: x itself, gradient 1
    if x.type.element == ir.DoubleType():  # lane by lane with libm's log1p
        scalar = ir.DoubleType()
        exp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(scalar, [scalar]), "llvm.exp.f64")
        log1p = cgutils.get_or_insert_function(builder.module, ir.FunctionType(scalar, [scalar]), "log1p")
        res = x
        for i in range(LANES):
            lane = builder.extract_element(x, ir.Constant(_I32, i))
            res = builder.insert_element(res, builder.call(log1p, [builder.call(exp, [lane])]), ir.Constant(_I32, i))
        sig = _emit_sigmoid(builder, x) if with_sigmoid else None
    else:  # max(x, 0) + log1p(q), q = exp(-|x|) in (0, 1]
        zero = _const(x.type, 0.0)
        neg = builder.fcmp_ordered("<", x, zero)
        q = _emit_exp(builder, builder.select(neg, x, builder.fsub(zero, x)))
        # For q > sqrt(2) - 1: log1p(q) = log(2) + log1p((1 + q) / 2 - 1), the argument in (-0.293, 0].
        big = builder.fcmp_ordered(">", q, _const(x.type, 0.41421356))
        r = builder.select(big, builder.fsub(builder.fmul(q, _const(x.type, 0.5)), _const(x.type, 0.5)), q)
        r2 = builder.fmul(r, r)
        p = builder.fmul(builder.fmul(_horner(builder, _LOG1P_POLY, r), r), r2)
        lp = builder.fadd(r, builder.fadd(p, builder.fmul(r2, _const(x.type, -0.5))))
        lp = builder.select(big, builder.fadd(lp, _const(x.type, math.log(2.0))), lp)
        res = builder.fadd(builder.select(neg, zero, x), lp)
        # sigmoid(x) = 1 / (1 + q) for x >= 0, q / (1 + q) below.
        sig = builder.fdiv(builder.select(neg, q, one), builder.fadd(one, q)) if with_sigmoid else None
    res = builder.select(above, x, res)
    return res if not with_sigmoid else (res, builder.select(above, one, sig))


def _unary_intrinsic(emit, doc):
    @intrinsic
    def unary(typingctx, v):
        if not isinstance(v, Vec):
            return None

        def codegen(context, builder, sig, args):
            return emit(builder, args[0])

        return v(v), codegen

    unary.__doc__ = doc
    return unary


vexp = _unary_intrinsic(_emit_exp, "exp of every lane.")
vexp2 = _unary_intrinsic(_emit_exp2, "2**v of every lane.")
vsigmoid = _unary_intrinsic(_emit_sigmoid, "1 / (1 + exp(-v)) of every lane.")
vsoftplus = _unary_intrinsic(_emit_softplus, "log(1 + exp(v)) of every lane; v itself above 20, as in torch.")


@intrinsic
def vsoftplus_grad(typingctx, v):
    """(softplus(v), its derivative sigmoid(v)) of every lane, sharing one exp; above 20: (v, 1), as in torch."""
    if not isinstance(v, Vec):
        return None
    pair = types.UniTuple(v, 2)

    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, pair, list(_emit_softplus(builder, args[0], with_sigmoid=True)))

    return pair(v), codegen


# --- transposed tiles ----------------------------------------------------------------------


def _transpose(builder, rows):
    """Transpose LANES x LANES values held as LANES vectors: log2(LANES) stages of shuffles."""
    rows = list(rows)
    n = len(rows)
    half = n // 2
    while half >= 1:  # swap the off-diagonal (half x half) blocks of every (2 half x 2 half) block
        lo = ir.Constant(ir.VectorType(_I32, n), [j if j & half == 0 else n + j - half for j in range(n)])
        hi = ir.Constant(ir.VectorType(_I32, n), [j + half if j & half == 0 else n + j for j in range(n)])
        new = list(rows)
        for i in range(n):
            if i & half == 0:
                new[i] = builder.shuffle_vector(rows[i], rows[i | half], lo)
                new[i | half] = builder.shuffle_vector(rows[i], rows[i | half], hi)
        rows = new
        half //= 2
    return rows


def _intp(value):
    return ir.Constant(ir.IntType(types.intp.bitwidth), value)


def _lanes_below(builder, n):
    """<LANES x i1> mask of the lanes below n (an integer value)."""
    lanes = ir.Constant(ir.VectorType(n.type, LANES), list(range(LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, n, ir.VectorType(n.type, LANES)))


def _masked_load(builder, ptr, vecty, mask, align):
    """Lanes of *ptr where mask is set, zero elsewhere; lanes off the mask are not read."""
    fnty = ir.FunctionType(vecty, [ptr.type, _I32, mask.type, vecty])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.{_vec_suffix(vecty)}.p0")
    return builder.call(fn, [ptr, ir.Constant(_I32, align), mask, ir.Constant(vecty, [0.0] * LANES)])


def _masked_store(builder, value, ptr, mask, align):
    """*ptr = value in the lanes where mask is set; the other lanes are not written."""
    fnty = ir.FunctionType(ir.VoidType(), [value.type, ptr.type, _I32, mask.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.{_vec_suffix(value.type)}.p0")
    builder.call(fn, [value, ptr, ir.Constant(_I32, align), mask])


def _tile_args(typingctx, flat, mat, ints):
    return (
        _is_vec_array(flat)
        and _is_row_array(mat)
        and flat.dtype == mat.dtype
        and all(isinstance(t, types.Integer) for t in ints)
    )


@intrinsic
def tile_load_t(typingctx, src, row, col, dst, o, n):
    """dst[o + j * LANES + i] = src[row + i, col + j] for i < LANES, j < n: a transposed tile.

    n (1 to LANES) columns are read, with masked loads, and n vectors written, so a tile may
    end with the rows. src: 2D float array whose rows are contiguous; dst: 1D contiguous
    array of the same dtype.
    """
    if not _tile_args(typingctx, dst, src, (row, col, o, n)):
        return None

    def codegen(context, builder, sig, args):
        srcty, dstty = sig.args[0], sig.args[3]
        row_, col_, o_, n_ = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 2, 4, 5))
        align = srcty.dtype.bitwidth // 8
        vecty = context.get_value_type(Vec(srcty.dtype))
        mask = _lanes_below(builder, n_)
        rows = [
            _masked_load(builder, _row_pointer(context, builder, srcty, args[0], builder.add(row_, _intp(i)), col_),
                         vecty, mask, align)  # fmt: skip
            for i in range(LANES)
        ]
        for j, v in enumerate(_transpose(builder, rows)):
            with cgutils.if_likely(builder, builder.icmp_signed("<", _intp(j), n_)):
                ptr = _vec_pointer(context, builder, dstty, args[3], types.intp, builder.add(o_, _intp(j * LANES)))
                builder.store(v, ptr, align=align)
        return context.get_dummy_value()

    return types.none(src, row, col, dst, o, n), codegen


@intrinsic
def tile_store_t(typingctx, src, o, dst, row, col, n):
    """dst[row + i, col + j] = src[o + j * LANES + i] for i < LANES, j < n (inverse of ``tile_load_t``).

    Only the n vectors src[o:o + n * LANES] are read, and n columns of dst written (masked stores).
    """
    if not _tile_args(typingctx, src, dst, (o, row, col, n)):
        return None

    def codegen(context, builder, sig, args):
        srcty, dstty = sig.args[0], sig.args[2]
        o_, row_, col_, n_ = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 3, 4, 5))
        align = srcty.dtype.bitwidth // 8
        vecty = context.get_value_type(Vec(srcty.dtype))
        mask = _lanes_below(builder, n_)
        cols = [
            _masked_load(builder, _vec_pointer(context, builder, srcty, args[0], types.intp,
                                               builder.add(o_, _intp(j * LANES))),
                         vecty, _splat(builder, builder.icmp_signed("<", _intp(j), n_), mask.type), align)
            for j in range(LANES)
        ]  # fmt: skip
        for i, v in enumerate(_transpose(builder, cols)):
            ptr = _row_pointer(context, builder, dstty, args[2], builder.add(row_, _intp(i)), col_)
            _masked_store(builder, v, ptr, mask, align)
        return context.get_dummy_value()

    return types.none(src, o, dst, row, col, n), codegen


def run_kernel(kernel, *args) -> None:
    """kernel(*args) with dynamic scheduling of the work items over several threads (robust to busy cores).

    One thread (each process of a DDP run) takes them in one static chunk: handing out thousands
    of short items one by one (the channel mixers' 12-step scans) would cost more than it balances.
    """
    if numba.get_num_threads() == 1:
        kernel(*args)
        return
    chunksize = numba.set_parallel_chunksize(1)
    try:
        kernel(*args)
    finally:
        numba.set_parallel_chunksize(chunksize)

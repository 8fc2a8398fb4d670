"""Branch-free, auto-vectorisable ``exp`` / ``log`` / ``log1p`` for Numba kernels.

Why this module exists
----------------------
Numba lowers ``math.exp``, ``math.log`` and ``math.log1p`` to calls into the
C library.  The llvmlite wheels from PyPI have no SVML (Intel's short vector
math library), so LLVM has no vector variant of those calls and any loop that
uses them stays scalar: one libm call per element.  A binary-cross-entropy-
from-logits kernel over 1e7 float32 elements takes ~100 ms that way, against
a memory-bandwidth floor of a few ms.

The functions here use only operations LLVM vectorises: ``fadd``/``fmul``/
``fdiv``, ``llvm.fmuladd``, integer add/shift/and, ``bitcast`` between
``double`` and ``i64`` (:func:`_float_as_int` / :func:`_int_as_float`),
compares and selects.  No tables, no libm calls, and the special cases
(overflow, underflow, zero, negative input, inf, nan) are selects, not
branches, so a loop such as::

    for i in range(n):
        out[i] = exp(np.float64(a[i]))

compiles to packed SIMD code (``vfmadd...pd``/``vmulpd`` on ymm/zmm, or
``mulpd`` on xmm with plain SSE2) for float64 and float32 ``a``.

Using them
----------
All functions are ``@njit(inline="always")``: Numba splices their IR into the
caller, so the caller's loop vectoriser sees the whole body (and CSEs shared
work, e.g. ``exp(-|x|)`` in ``softplus(x)`` and ``sigmoid(x)``).  Consequences:

* The caller's ``fastmath`` flags apply to the inlined code: call these from
  ``fastmath=False`` kernels (the default).  ``nnan``/``ninf`` break the
  inf/nan handling; ``reassoc`` lets LLVM fold the round-to-integer trick in
  ``exp`` and the ``x - (u - 1)`` correction in ``log1p``.
* The caller's ``error_model`` would apply to ``/``, so every division goes
  through :func:`_fdiv`, a bare ``fdiv`` that never raises and never branches.
* A float accumulator ``s += v`` in a ``fastmath=False`` loop must be summed
  in order, and LLVM then refuses to vectorise the *whole* loop; the loop then
  runs these functions scalar, which is slower than libm (long FMA dependency
  chains instead of libm's table lookups).  Accumulate with
  ``s = reassoc_add(s, v)`` (an ``fadd`` carrying only ``reassoc nsz``) to get
  per-lane partial sums.  It is not a ``prange`` reduction: in parallel code,
  ``prange`` over chunks and call a serial kernel that uses it.

Accuracy
--------
Measured against long-double (x87 80-bit) references over ~1e7 points per
function (log-uniform magnitudes of both signs, the over/underflow
thresholds, subnormals; ``tests/test_fastmath.py`` keeps a subset), with and
without FMA hardware (``llvm.fmuladd`` fused or not):

* ``exp``:   < 1 ulp (0.92 ulp worst seen).  Subnormal results are rounded
  once, not flushed; exp(x) = inf for x > 709.782712893384, 0 for
  x <= -745.1332191019412; exp(-inf) = 0, exp(inf) = inf, exp(nan) = nan.
* ``log``:   < 1 ulp (0.82); subnormal inputs handled; log(+-0) = -inf,
  log(x < 0) = nan, log(inf) = inf, log(nan) = nan.
* ``log1p``: < 1 ulp (0.87); returns x exactly for |x| < 2**-54;
  log1p(-1) = -inf, log1p(x < -1) = nan, log1p(inf) = inf, log1p(-0.0) = -0.0.
* ``softplus`` 1.6 ulp, ``log_sigmoid`` 1.6 ulp, ``sigmoid`` 2.4 ulp worst
  seen; exact limits (x, 0, 1, ...) for |x| up to the float64 maximum.

The algorithms are the classic fdlibm ones (Cody-Waite reduction by ln 2,
the fdlibm ``__ieee754_log`` / ``log1p`` kernel and minimax coefficients) in
a table-free, branch-free form.  ``exp`` uses a degree-13 Taylor polynomial
on |r| <= 0.35 (truncation < 0.06 ulp) and scales by 2**k as two normal
factors so that overflow and subnormal results need no special path.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "exp",
    "log",
    "log1p",
    "softplus",
    "sigmoid",
    "log_sigmoid",
    "reassoc_add",
    "max_ignoring_nan",
    "exp_to_float32",
]


# ---------------------------------------------------------------------------
# Low-level intrinsics
# ---------------------------------------------------------------------------

@intrinsic
def _float_as_int(typingctx, x):
    """Reinterpret the bits of a float64 as an int64 (LLVM ``bitcast``)."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _int_as_float(typingctx, i):
    """Reinterpret the bits of an int64 as a float64 (LLVM ``bitcast``)."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _fdiv(typingctx, a, b):
    """IEEE float64 division ``a / b`` without Numba's zero-division check."""
    if a != types.float64 or b != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], args[1])

    return types.float64(types.float64, types.float64), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` via ``llvm.fmuladd``: one FMA where the CPU has one.

    Unlike ``llvm.fma`` this never becomes a libm call on CPUs without FMA
    (it is then a multiply and an add), so it always vectorises.  Every use
    below is accurate with or without fusion.
    """
    if a != types.float64 or b != types.float64 or c != types.float64:
        return None

    def codegen(context, builder, sig, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(d, [d, d, d]), "llvm.fmuladd.f64"
        )
        return builder.call(fn, list(args))

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def _fadd_reassoc(typingctx, a, b):
    """``a + b`` carrying LLVM's ``reassoc nsz`` flags (see reassoc_add)."""
    if a != types.float64 or b != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("reassoc", "nsz"))

    return types.float64(types.float64, types.float64), codegen


@intrinsic
def _maxnum(typingctx, a, b):
    """``llvm.maxnum.f64``: the larger of a and b, the other one if either is nan."""
    if a != types.float64 or b != types.float64:
        return None

    def codegen(context, builder, sig, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(d, [d, d]), "llvm.maxnum.f64"
        )
        return builder.call(fn, list(args))

    return types.float64(types.float64, types.float64), codegen


@intrinsic
def _fma32(typingctx, a, b, c):
    """float32 ``a * b + c`` via ``llvm.fmuladd.f32`` (see _fma)."""
    if a != types.float32 or b != types.float32 or c != types.float32:
        return None

    def codegen(context, builder, sig, args):
        f = ir.FloatType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f, [f, f, f]), "llvm.fmuladd.f32"
        )
        return builder.call(fn, list(args))

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _scale_by_pow2_f32(typingctx, p, k):
    """float32 p·2**k for an integer k in [-150, 130] (an int64), as two normal
    factors 2**(k//2)·2**(k − k//2) so that subnormal results round once.  In
    int32 arithmetic: Numba would widen int32 arithmetic to int64, and the i64
    lanes would halve the vector width of the caller's float32 loop."""
    if p != types.float32 or k != types.int64:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        f32 = ir.FloatType()
        k32 = builder.trunc(args[1], i32)
        k1 = builder.ashr(k32, ir.Constant(i32, 1))
        k2 = builder.sub(k32, k1)
        bias = ir.Constant(i32, 127)
        shift = ir.Constant(i32, 23)
        s1 = builder.bitcast(builder.shl(builder.add(k1, bias), shift), f32)
        s2 = builder.bitcast(builder.shl(builder.add(k2, bias), shift), f32)
        return builder.fmul(builder.fmul(args[0], s1), s2)

    return types.float32(types.float32, types.int64), codegen


# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

_INF = math.inf
_NAN = math.nan

# ln 2 split for Cody-Waite reduction (fdlibm): _LN2_HI has 32 significant
# bits, so k * _LN2_HI is exact for |k| < 2**21.
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")   # 6.93147180369123816490e-01
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")  # 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634

# 1.5 * 2**52: adding it to |y| < 2**51 rounds y to the nearest integer, and
# the integer then sits in the low bits of the result's bit pattern.
_ROUND_MAGIC = 6755399441055744.0
_ROUND_MAGIC_BITS = 0x4338000000000000

# exp: clamp bounds.  exp(710) overflows and exp(-746) underflows to zero in
# float64, so clamping there changes no result but keeps k in [-1076, 1024].
_EXP_HI = 710.0
_EXP_LO = -746.0

# exp(r) = 1 + r + r**2 * (1/2! + r/3! + ... + r**11/13!); Taylor is enough:
# on |r| <= 0.35 the truncation error is < 0.06 ulp.
_E2 = 1.0 / 2.0
_E3 = 1.0 / 6.0
_E4 = 1.0 / 24.0
_E5 = 1.0 / 120.0
_E6 = 1.0 / 720.0
_E7 = 1.0 / 5040.0
_E8 = 1.0 / 40320.0
_E9 = 1.0 / 362880.0
_E10 = 1.0 / 3628800.0
_E11 = 1.0 / 39916800.0
_E12 = 1.0 / 479001600.0
_E13 = 1.0 / 6227020800.0

# log: fdlibm minimax coefficients for R(s) = log(1+f) - 2s + ..., with
# s = f / (2 + f), |s| <= 0.1716.
_LG1 = float.fromhex("0x1.5555555555593p-1")  # 6.666666666666735130e-01
_LG2 = float.fromhex("0x1.999999997fa04p-2")  # 3.999999999940941908e-01
_LG3 = float.fromhex("0x1.2492494229359p-2")  # 2.857142874366239149e-01
_LG4 = float.fromhex("0x1.c71c51d8e78afp-3")  # 2.222219843214978396e-01
_LG5 = float.fromhex("0x1.7466496cb03dep-3")  # 1.818357216161805012e-01
_LG6 = float.fromhex("0x1.39a09d078c69fp-3")  # 1.531383769920937332e-01
_LG7 = float.fromhex("0x1.2f112df3e5244p-3")  # 1.479819860511658591e-01

_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD   # bits of sqrt(1/2)
_MANT_MASK = 0x000FFFFFFFFFFFFF
_MIN_NORMAL = 2.2250738585072014e-308  # 2**-1022
_TWO54 = 18014398509481984.0           # 2**54


# ---------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)
def exp(x):
    """e**x in float64: < 1 ulp, branch-free, subnormal results rounded once."""
    x = np.float64(x)
    # Clamp (nan passes through: both compares are false for nan).
    xc = _EXP_HI if x > _EXP_HI else x
    xc = _EXP_LO if xc < _EXP_LO else xc
    # k = round(x / ln2) by the magic-number trick, as float and as int.
    t = _fma(xc, _LOG2E, _ROUND_MAGIC)
    kf = t - _ROUND_MAGIC
    k = _float_as_int(t) - _ROUND_MAGIC_BITS
    # r = x - k ln2 = hi - lo, |r| <= 0.35 (Cody-Waite; hi is exact).
    hi = _fma(-kf, _LN2_HI, xc)
    lo = kf * _LN2_LO
    r = hi - lo
    # q(r) = 1/2! + r/3! + ... + r**11/13! by Estrin's scheme: a dependency
    # chain of 4 FMAs instead of Horner's 11 (which matters when the caller's
    # loop does not vectorise) for ~0.05 ulp more worst-case error.
    r2 = r * r
    r4 = r2 * r2
    a0 = _fma(r, _E3, _E2)
    a1 = _fma(r, _E5, _E4)
    a2 = _fma(r, _E7, _E6)
    a3 = _fma(r, _E9, _E8)
    a4 = _fma(r, _E11, _E10)
    a5 = _fma(r, _E13, _E12)
    b0 = _fma(r2, a1, a0)
    b1 = _fma(r2, a3, a2)
    b2 = _fma(r2, a5, a4)
    q = _fma(r4 * r4, b2, _fma(r4, b1, b0))
    # e**r = 1 + (hi + (r*r*q - lo)): hi enters unrounded.
    p = 1.0 + (hi + _fma(r2, q, -lo))
    # 2**k as two normal factors 2**k1 * 2**k2 (k in [-1076, 1024]) so that
    # overflow gives inf and subnormal results are rounded only once.
    k1 = k >> 1
    k2 = k - k1
    s1 = _int_as_float((k1 + 1023) << 52)
    s2 = _int_as_float((k2 + 1023) << 52)
    return (p * s1) * s2


# ---------------------------------------------------------------------------
# log / log1p
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _log_poly(f, s, dk, c):
    """log(1 + f) + dk*ln2 + c, with s = f / (2 + f) (fdlibm's kernel)."""
    hfsq = 0.5 * f * f
    z = s * s
    w = z * z
    t1 = w * _fma(w, _fma(w, _LG6, _LG4), _LG2)
    t2 = z * _fma(w, _fma(w, _fma(w, _LG7, _LG5), _LG3), _LG1)
    R = t2 + t1
    lo = _fma(s, hfsq + R, _fma(dk, _LN2_LO, c))
    return ((lo - hfsq) + f) + dk * _LN2_HI


@njit(inline="always", cache=True)
def log(x):
    """Natural logarithm in float64: < 1 ulp, branch-free, subnormals exact."""
    x = np.float64(x)
    # Scale subnormals (and zero) into the normal range.
    sub = x < _MIN_NORMAL
    xs = x * _TWO54 if sub else x
    kadj = 54 if sub else 0
    # xs = 2**k * m, m in [sqrt(1/2), sqrt(2)).
    ix = _float_as_int(xs) - _SQRT_HALF_BITS
    k = (ix >> 52) - kadj
    m = _int_as_float((ix & _MANT_MASK) + _SQRT_HALF_BITS)
    dk = _int_as_float(k + _ROUND_MAGIC_BITS) - _ROUND_MAGIC  # float(k)
    f = m - 1.0
    res = _log_poly(f, _fdiv(f, 2.0 + f), dk, 0.0)
    res = -_INF if x == 0.0 else res
    res = _NAN if x < 0.0 else res
    res = res if x < _INF else x  # +inf -> inf, nan -> nan
    return res


@njit(inline="always", cache=True)
def log1p(x):
    """log(1 + x) in float64: < 1 ulp, exact for tiny |x|, branch-free."""
    x = np.float64(x)
    u = 1.0 + x  # u == 0 or u >= 2**-53: never subnormal
    # u = 2**k * m, m in [sqrt(1/2), sqrt(2)).
    iu = _float_as_int(u) - _SQRT_HALF_BITS
    k = iu >> 52
    m = _int_as_float((iu & _MANT_MASK) + _SQRT_HALF_BITS)
    dk = _int_as_float(k + _ROUND_MAGIC_BITS) - _ROUND_MAGIC  # float(k)
    f = m - 1.0
    # One division gives both s = f/(2+f) and 1/m.
    d = _fdiv(1.0, (2.0 + f) * m)
    s = f * (m * d)
    inv_m = (2.0 + f) * d
    # c = 1 + x - u exactly (fdlibm: each form is exact in its range);
    # log(1+x) = log(u) + c/u to first order.  For huge u, c/u is far below
    # the last bit of log(u), so 2**-k is clamped at 2**-1000 (stays normal).
    c = (1.0 - (u - x)) if u >= 2.0 else (x - (u - 1.0))
    kc = k if k < 1000 else 1000
    c = c * _int_as_float((1023 - kc) << 52)
    # c/m = c - c*f/m: the error of inv_m only enters through the f term, so
    # c/m is accurate when it matters (tiny f, i.e. tiny x).
    c = _fma(-c, f * inv_m, c)
    res = _log_poly(f, s, dk, c)
    res = x if x == 0.0 else res  # keeps the sign of -0.0
    res = -_INF if u == 0.0 else res
    res = _NAN if u < 0.0 else res
    res = res if u < _INF else u  # +inf -> inf, nan -> nan
    return res


# ---------------------------------------------------------------------------
# Composite functions
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)
def softplus(x):
    """log(1 + e**x) = max(x, 0) + log1p(e**-|x|); finite for all finite x."""
    x = np.float64(x)
    pos = x if x > 0.0 else 0.0
    return pos + log1p(exp(-abs(x)))


@njit(inline="always", cache=True)
def sigmoid(x):
    """1 / (1 + e**-x), stable for both signs (never evaluates e**|x|)."""
    x = np.float64(x)
    e = exp(-abs(x))
    num = 1.0 if x >= 0.0 else e
    return _fdiv(num, 1.0 + e)


@njit(inline="always", cache=True)
def log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x)."""
    x = np.float64(x)
    return -softplus(-x)


@njit(inline="always", cache=True)
def reassoc_add(a, b):
    """``a + b`` that LLVM may reassociate: use it for loop accumulators.

    A float reduction ``s += v`` in a ``fastmath=False`` loop must be summed
    in order, so LLVM refuses to vectorise the *whole* loop.  Writing
    ``s = reassoc_add(s, v)`` instead lets the loop vectoriser keep one
    partial sum per SIMD lane (the result then depends on the vector width,
    like numpy's pairwise ``sum``), while every other operation keeps strict
    IEEE semantics.  Not recognised as a ``prange`` reduction: in parallel
    code, call a serial kernel that uses it on chunks.
    """
    return _fadd_reassoc(np.float64(a), np.float64(b))


@njit(inline="always", cache=True)
def max_ignoring_nan(a, b):
    """max(a, b), or the non-nan one of the two (nan only if both are nan).

    Unlike ``a if a > b else b`` (a compare and select, which LLVM does not
    vectorise as a reduction without fastmath flags), this is ``llvm.maxnum``,
    whose reduction ``m = max_ignoring_nan(m, x[i])`` vectorises, exactly.
    """
    return _maxnum(np.float64(a), np.float64(b))


# exp_to_float32: e**r = 1 + r + r**2·(1/2! + … + r**5/7!) on |r| <= 0.35 has a
# truncation error < 6e-9 relative, a tenth of a float32 ulp.
_F32_E2 = np.float32(_E2)
_F32_E3 = np.float32(_E3)
_F32_E4 = np.float32(_E4)
_F32_E5 = np.float32(_E5)
_F32_E6 = np.float32(_E6)
_F32_E7 = np.float32(_E7)
_F32_ONE = np.float32(1.0)
# exp(x) is inf in float32 for x > 88.73 and 0 for x < -103.98: clamping there
# keeps k in [-150, 130] and changes no result.
_F32_EXP_HI = 89.0
_F32_EXP_LO = -104.0


@njit(inline="always", cache=True)
def exp_to_float32(x):
    """e**x (x a float64) rounded to float32 precision: within 2 float32 ulp.

    For float32 results (softmax probabilities of float32 logits) at about half
    the cost of ``exp``: the reduction r = x − k·ln 2 runs in float64, so the
    error does not grow with |x|, and the polynomial and the scaling by 2**k
    in float32, twice as many lanes per vector.  Returns a float32; inf for
    x > 88.73 (and x = inf), 0 below -103.98, nan for nan.
    """
    x = np.float64(x)
    xc = _F32_EXP_HI if x > _F32_EXP_HI else x
    xc = _F32_EXP_LO if xc < _F32_EXP_LO else xc
    t = _fma(xc, _LOG2E, _ROUND_MAGIC)
    kf = t - _ROUND_MAGIC
    k = _float_as_int(t) - _ROUND_MAGIC_BITS
    r = np.float32(_fma(-kf, _LN2_HI, xc) - kf * _LN2_LO)
    q = _fma32(r, _F32_E7, _F32_E6)
    q = _fma32(r, q, _F32_E5)
    q = _fma32(r, q, _F32_E4)
    q = _fma32(r, q, _F32_E3)
    q = _fma32(r, q, _F32_E2)
    p = _fma32(r * r, q, r) + _F32_ONE
    return _scale_by_pow2_f32(p, k)

# cython: language_level=3, cdivision=True, boundscheck=False, wraparound=False
"""Branch-free ``exp`` / ``log`` / ``log1p`` (and ``softplus``, ``sigmoid``,
``log_sigmoid``, ``exp_to_float32``): the Cython mirror of
``numbaloss/_numba/fastmath.py``, same names, same algorithms (fdlibm's Cody-Waite
reduction and minimax kernels, table-free and branch-free), same constants; see that
module for the accuracy (< 1 ulp for exp and log, ≤ 2 ulp for log1p, ≤ 2 float32 ulp
for exp_to_float32) and the special values.

Why: a libm call per element keeps a loop scalar (one call, one spill of every
vector register, per element).  These functions are only arithmetic, bit
reinterpretations (``memcpy`` between double and int64, which compiles to a
register move) and selects, so GCC and clang vectorise the loops that inline them.

Differences from the Numba version (none changes a result):

- ``_fma(a, b, c)``, like ``llvm.fmuladd`` in the Numba version, is one fused
  multiply-add where the code is compiled for a CPU with FMA (the AVX2 and AVX-512
  copies of setup.py) and ``a * b + c`` elsewhere; fastmath.py notes that every use
  is accurate with or without fusion.  Nothing else is fused: the extensions are
  compiled with ``-ffp-contract=off``, as LLVM does not fuse the Numba loops
  without fastmath flags.
- Integer steps that may wrap for nan or negative inputs (whose results the final
  selects discard) are done in uint64 arithmetic, where wrapping is defined in C.
- The two integer selects (log's subnormal exponent adjustment, log1p's
  ``min(k, 1000)``) are made on float(k), exactly: SSE2 and AVX2 have no 64-bit
  integer minimum or blend, and GCC vectorises nothing around them.
"""

from libc.math cimport INFINITY, NAN, fabs
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy


# ---------------------------------------------------------------------------
# Low-level helpers
# ---------------------------------------------------------------------------

cdef inline int64_t _float_as_int(double x) noexcept nogil:
    """Reinterpret the bits of a float64 as an int64."""
    cdef int64_t i
    memcpy(&i, &x, 8)
    return i


cdef inline double _int_as_float(int64_t i) noexcept nogil:
    """Reinterpret the bits of an int64 as a float64."""
    cdef double x
    memcpy(&x, &i, 8)
    return x


cdef inline double _uint_as_float(uint64_t i) noexcept nogil:
    cdef double x
    memcpy(&x, &i, 8)
    return x


cdef inline float _uint32_as_float(uint32_t i) noexcept nogil:
    cdef float x
    memcpy(&x, &i, 4)
    return x


cdef extern from *:
    """
    /* llvm.fmuladd of fastmath.py: one fused multiply-add where the target has
       FMA (the AVX2 copies of setup.py), a multiply and an add elsewhere */
    #if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    #define numbaloss_fmuladd(a, b, c) __builtin_fma((a), (b), (c))
    #else
    #define numbaloss_fmuladd(a, b, c) ((a) * (b) + (c))
    #endif
    """
    double _fma "numbaloss_fmuladd"(double a, double b, double c) noexcept nogil

cdef extern from *:
    """
    /* llvm.fmuladd.f32 of fastmath.py (_fma32), as numbaloss_fmuladd */
    #if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    #define numbaloss_fmuladdf(a, b, c) __builtin_fmaf((a), (b), (c))
    #else
    #define numbaloss_fmuladdf(a, b, c) ((a) * (b) + (c))
    #endif
    """
    float _fma32 "numbaloss_fmuladdf"(float a, float b, float c) noexcept nogil


cdef inline double _pick(bint condition, double a, double b) noexcept nogil:
    """``a if condition else b`` with both sides already computed (a select)."""
    return a if condition else b


# ---------------------------------------------------------------------------
# Constants: C99 hex floats, the very values of fastmath.py (1/k! as divisions,
# evaluated by the compiler in double as Python evaluates them)
# ---------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    /* ln 2 split for Cody-Waite reduction (fdlibm): _LN2_HI has 32 significant bits */
    static const double NUMBALOSS_LN2_HI = 0x1.62e42fee00000p-1;
    static const double NUMBALOSS_LN2_LO = 0x1.a39ef35793c76p-33;
    static const double NUMBALOSS_LOG2E = 1.4426950408889634;
    /* 1.5 * 2**52: adding it to |y| < 2**51 rounds y to the nearest integer */
    static const double NUMBALOSS_ROUND_MAGIC = 6755399441055744.0;
    /* exp overflows above and underflows below these */
    static const double NUMBALOSS_EXP_HI = 710.0;
    static const double NUMBALOSS_EXP_LO = -746.0;
    /* exp(r) = 1 + r + r**2 * (1/2! + r/3! + ... + r**11/13!) */
    static const double NUMBALOSS_E2 = 1.0 / 2.0;
    static const double NUMBALOSS_E3 = 1.0 / 6.0;
    static const double NUMBALOSS_E4 = 1.0 / 24.0;
    static const double NUMBALOSS_E5 = 1.0 / 120.0;
    static const double NUMBALOSS_E6 = 1.0 / 720.0;
    static const double NUMBALOSS_E7 = 1.0 / 5040.0;
    static const double NUMBALOSS_E8 = 1.0 / 40320.0;
    static const double NUMBALOSS_E9 = 1.0 / 362880.0;
    static const double NUMBALOSS_E10 = 1.0 / 3628800.0;
    static const double NUMBALOSS_E11 = 1.0 / 39916800.0;
    static const double NUMBALOSS_E12 = 1.0 / 479001600.0;
    static const double NUMBALOSS_E13 = 1.0 / 6227020800.0;
    /* log: fdlibm minimax coefficients, s = f / (2 + f), |s| <= 0.1716 */
    static const double NUMBALOSS_LG1 = 0x1.5555555555593p-1;
    static const double NUMBALOSS_LG2 = 0x1.999999997fa04p-2;
    static const double NUMBALOSS_LG3 = 0x1.2492494229359p-2;
    static const double NUMBALOSS_LG4 = 0x1.c71c51d8e78afp-3;
    static const double NUMBALOSS_LG5 = 0x1.7466496cb03dep-3;
    static const double NUMBALOSS_LG6 = 0x1.39a09d078c69fp-3;
    static const double NUMBALOSS_LG7 = 0x1.2f112df3e5244p-3;
    static const double NUMBALOSS_MIN_NORMAL = 0x1p-1022;
    static const double NUMBALOSS_TWO54 = 0x1p54;
    static const double NUMBALOSS_TWO_M1000 = 0x1p-1000;
    static const int64_t NUMBALOSS_ROUND_MAGIC_BITS = INT64_C(0x4338000000000000);
    static const int64_t NUMBALOSS_SQRT_HALF_BITS = INT64_C(0x3FE6A09E667F3BCD);
    static const int64_t NUMBALOSS_MANT_MASK = INT64_C(0x000FFFFFFFFFFFFF);
    """
    const double _LN2_HI "NUMBALOSS_LN2_HI"
    const double _LN2_LO "NUMBALOSS_LN2_LO"
    const double _LOG2E "NUMBALOSS_LOG2E"
    const double _ROUND_MAGIC "NUMBALOSS_ROUND_MAGIC"
    const double _EXP_HI "NUMBALOSS_EXP_HI"
    const double _EXP_LO "NUMBALOSS_EXP_LO"
    const double _E2 "NUMBALOSS_E2"
    const double _E3 "NUMBALOSS_E3"
    const double _E4 "NUMBALOSS_E4"
    const double _E5 "NUMBALOSS_E5"
    const double _E6 "NUMBALOSS_E6"
    const double _E7 "NUMBALOSS_E7"
    const double _E8 "NUMBALOSS_E8"
    const double _E9 "NUMBALOSS_E9"
    const double _E10 "NUMBALOSS_E10"
    const double _E11 "NUMBALOSS_E11"
    const double _E12 "NUMBALOSS_E12"
    const double _E13 "NUMBALOSS_E13"
    const double _LG1 "NUMBALOSS_LG1"
    const double _LG2 "NUMBALOSS_LG2"
    const double _LG3 "NUMBALOSS_LG3"
    const double _LG4 "NUMBALOSS_LG4"
    const double _LG5 "NUMBALOSS_LG5"
    const double _LG6 "NUMBALOSS_LG6"
    const double _LG7 "NUMBALOSS_LG7"
    const double _MIN_NORMAL "NUMBALOSS_MIN_NORMAL"
    const double _TWO54 "NUMBALOSS_TWO54"
    const double _TWO_M1000 "NUMBALOSS_TWO_M1000"
    const int64_t _ROUND_MAGIC_BITS "NUMBALOSS_ROUND_MAGIC_BITS"
    const int64_t _SQRT_HALF_BITS "NUMBALOSS_SQRT_HALF_BITS"
    const int64_t _MANT_MASK "NUMBALOSS_MANT_MASK"

cdef extern from *:
    """
    /* exp_to_float32: np.float32 of the float64 1/k! above, as in fastmath.py */
    static const float NUMBALOSS_F32_E2 = (float)(1.0 / 2.0);
    static const float NUMBALOSS_F32_E3 = (float)(1.0 / 6.0);
    static const float NUMBALOSS_F32_E4 = (float)(1.0 / 24.0);
    static const float NUMBALOSS_F32_E5 = (float)(1.0 / 120.0);
    static const float NUMBALOSS_F32_E6 = (float)(1.0 / 720.0);
    static const float NUMBALOSS_F32_E7 = (float)(1.0 / 5040.0);
    /* exp is inf in float32 above 88.73 and 0 below -103.98: k stays in [-150, 130] */
    static const double NUMBALOSS_F32_EXP_HI = 89.0;
    static const double NUMBALOSS_F32_EXP_LO = -104.0;
    """
    const float _F32_E2 "NUMBALOSS_F32_E2"
    const float _F32_E3 "NUMBALOSS_F32_E3"
    const float _F32_E4 "NUMBALOSS_F32_E4"
    const float _F32_E5 "NUMBALOSS_F32_E5"
    const float _F32_E6 "NUMBALOSS_F32_E6"
    const float _F32_E7 "NUMBALOSS_F32_E7"
    const double _F32_EXP_HI "NUMBALOSS_F32_EXP_HI"
    const double _F32_EXP_LO "NUMBALOSS_F32_EXP_LO"


# ---------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------

cdef inline double exp(double x) noexcept nogil:
    """e**x in float64: < 1 ulp, branch-free, subnormal results rounded once."""
    cdef double xc = _pick(x > _EXP_HI, _EXP_HI, x)
    xc = _pick(xc < _EXP_LO, _EXP_LO, xc)
    # k = round(x / ln2) by the magic-number trick, as float and as int
    cdef double t = _fma(xc, _LOG2E, _ROUND_MAGIC)
    cdef double kf = t - _ROUND_MAGIC
    cdef int64_t k = <int64_t>(<uint64_t>_float_as_int(t) - <uint64_t>_ROUND_MAGIC_BITS)
    # r = x - k ln2 = hi - lo, |r| <= 0.35 (Cody-Waite; hi is exact)
    cdef double hi = _fma(-kf, _LN2_HI, xc)
    cdef double lo = kf * _LN2_LO
    cdef double r = hi - lo
    # Estrin's scheme for q(r) = 1/2! + r/3! + ... + r**11/13!
    cdef double r2 = r * r
    cdef double r4 = r2 * r2
    cdef double a0 = _fma(r, _E3, _E2)
    cdef double a1 = _fma(r, _E5, _E4)
    cdef double a2 = _fma(r, _E7, _E6)
    cdef double a3 = _fma(r, _E9, _E8)
    cdef double a4 = _fma(r, _E11, _E10)
    cdef double a5 = _fma(r, _E13, _E12)
    cdef double b0 = _fma(r2, a1, a0)
    cdef double b1 = _fma(r2, a3, a2)
    cdef double b2 = _fma(r2, a5, a4)
    cdef double q = _fma(r4 * r4, b2, _fma(r4, b1, b0))
    # e**r = 1 + (hi + (r*r*q - lo)): hi enters unrounded
    cdef double p = 1.0 + (hi + _fma(r2, q, -lo))
    # 2**k as two normal factors 2**k1 * 2**k2 (k in [-1076, 1024])
    cdef int64_t k1 = k >> 1
    cdef int64_t k2 = k - k1
    cdef double s1 = _uint_as_float((<uint64_t>(k1 + 1023)) << 52)
    cdef double s2 = _uint_as_float((<uint64_t>(k2 + 1023)) << 52)
    return (p * s1) * s2


cdef inline float exp_to_float32(double x) noexcept nogil:
    """e**x (x a float64) rounded to float32 precision, within 2 float32 ulp, at about
    half the cost of ``exp``: the reduction r = x − k·ln 2 in float64 (its error does
    not grow with |x|), the polynomial 1 + r + r²(1/2! + … + r⁵/7!) and the scaling
    by 2**k in float32 (twice the lanes).  inf above 88.73, 0 below -103.98, nan → nan."""
    cdef double xc = _pick(x > _F32_EXP_HI, _F32_EXP_HI, x)
    xc = _pick(xc < _F32_EXP_LO, _F32_EXP_LO, xc)
    cdef double t = _fma(xc, _LOG2E, _ROUND_MAGIC)
    cdef double kf = t - _ROUND_MAGIC
    # k in [-150, 130]: int32 arithmetic keeps the lanes as wide as the float32 ones
    cdef int32_t k = <int32_t>(<uint64_t>_float_as_int(t) - <uint64_t>_ROUND_MAGIC_BITS)
    cdef float r = <float>(_fma(-kf, _LN2_HI, xc) - kf * _LN2_LO)
    cdef float q = _fma32(r, _F32_E7, _F32_E6)
    q = _fma32(r, q, _F32_E5)
    q = _fma32(r, q, _F32_E4)
    q = _fma32(r, q, _F32_E3)
    q = _fma32(r, q, _F32_E2)
    cdef float p = _fma32(r * r, q, r) + <float>1.0
    # 2**k as two normal factors, so that a subnormal result is rounded once
    cdef int32_t k1 = k >> 1
    cdef int32_t k2 = k - k1
    return (p * _uint32_as_float(<uint32_t>(k1 + 127) << 23)) * _uint32_as_float(<uint32_t>(k2 + 127) << 23)


# ---------------------------------------------------------------------------
# log / log1p
# ---------------------------------------------------------------------------

cdef inline double _log_poly(double f, double s, double dk, double c) noexcept nogil:
    """log(1 + f) + dk*ln2 + c, with s = f / (2 + f) (fdlibm's kernel)."""
    cdef double hfsq = 0.5 * f * f
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * _fma(w, _fma(w, _LG6, _LG4), _LG2)
    cdef double t2 = z * _fma(w, _fma(w, _fma(w, _LG7, _LG5), _LG3), _LG1)
    cdef double R = t2 + t1
    cdef double lo = _fma(s, hfsq + R, _fma(dk, _LN2_LO, c))
    return ((lo - hfsq) + f) + dk * _LN2_HI


cdef inline double log(double x) noexcept nogil:
    """Natural logarithm in float64: < 1 ulp, branch-free, subnormals exact."""
    # scale subnormals (and zero) into the normal range
    cdef bint sub = x < _MIN_NORMAL
    cdef double xs = _pick(sub, x * _TWO54, x)
    # xs = 2**k * m, m in [sqrt(1/2), sqrt(2))
    cdef int64_t ix = <int64_t>(<uint64_t>_float_as_int(xs) - <uint64_t>_SQRT_HALF_BITS)
    cdef double m = _int_as_float((ix & _MANT_MASK) + _SQRT_HALF_BITS)
    # float(k), k = (ix >> 52) - (54 if sub else 0), the adjustment made in double
    # (exact) because 64-bit integer selects and minima have no SSE2/AVX2 instruction
    cdef double dk = (_int_as_float((ix >> 52) + _ROUND_MAGIC_BITS) - _ROUND_MAGIC) - _pick(sub, 54.0, 0.0)
    cdef double f = m - 1.0
    cdef double res = _log_poly(f, f / (2.0 + f), dk, 0.0)
    res = _pick(x == 0.0, -INFINITY, res)
    res = _pick(x < 0.0, NAN, res)
    return _pick(x < INFINITY, res, x)  # +inf -> inf, nan -> nan


cdef inline double log1p(double x) noexcept nogil:
    """log(1 + x) in float64: < 1 ulp, exact for tiny |x|, branch-free."""
    cdef double u = 1.0 + x  # u == 0 or u >= 2**-53: never subnormal
    # u = 2**k * m, m in [sqrt(1/2), sqrt(2))
    cdef int64_t iu = <int64_t>(<uint64_t>_float_as_int(u) - <uint64_t>_SQRT_HALF_BITS)
    cdef int64_t k = iu >> 52
    cdef double m = _int_as_float((iu & _MANT_MASK) + _SQRT_HALF_BITS)
    cdef double dk = _int_as_float(k + _ROUND_MAGIC_BITS) - _ROUND_MAGIC  # float(k)
    cdef double f = m - 1.0
    # one division gives both s = f/(2+f) and 1/m
    cdef double d = 1.0 / ((2.0 + f) * m)
    cdef double s = f * (m * d)
    cdef double inv_m = (2.0 + f) * d
    # c = 1 + x - u exactly; log(1+x) = log(u) + c/u to first order, 2**-k clamped
    cdef double c = _pick(u >= 2.0, 1.0 - (u - x), x - (u - 1.0))
    # c * 2**-min(k, 1000), the minimum taken on float(k) (exact; see log)
    c = c * _pick(dk < 1000.0, _uint_as_float((<uint64_t>(1023 - k)) << 52), _TWO_M1000)
    c = _fma(-c, f * inv_m, c)
    cdef double res = _log_poly(f, s, dk, c)
    res = _pick(x == 0.0, x, res)  # keeps the sign of -0.0
    res = _pick(u == 0.0, -INFINITY, res)
    res = _pick(u < 0.0, NAN, res)
    return _pick(u < INFINITY, res, u)  # +inf -> inf, nan -> nan


# ---------------------------------------------------------------------------
# Composite functions
# ---------------------------------------------------------------------------

cdef inline double softplus(double x) noexcept nogil:
    """log(1 + e**x) = max(x, 0) + log1p(e**-|x|); finite for all finite x."""
    cdef double pos = _pick(x > 0.0, x, 0.0)
    return pos + log1p(exp(-fabs(x)))


cdef inline double sigmoid(double x) noexcept nogil:
    """1 / (1 + e**-x), stable for both signs (never evaluates e**|x|)."""
    cdef double e = exp(-fabs(x))
    cdef double num = _pick(x >= 0.0, 1.0, e)
    return num / (1.0 + e)


cdef inline double log_sigmoid(double x) noexcept nogil:
    """log(sigmoid(x)) = -softplus(-x)."""
    return -softplus(-x)

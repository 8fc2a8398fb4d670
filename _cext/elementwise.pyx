# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython loops of the elementwise losses: the mirror of ``numbaloss/_numba/elementwise.py``.

The five loops (``value_sum``, ``value_sum_and_grad``, ``grad_only``, ``value_none``,
``grad_and_hess``) are written once, generic over the term.  A term is a *tag type*
(an empty struct) in the fused type ``Term``; ``_value_grad`` / ``_grad_hess`` pick
the term's point functions of ``_points.pxd`` with compile-time ``if Term is ...``
branches, so every (term, loop, dtype) specialisation has the point function inlined
in its inner loop, as Numba's per-term specialisation has.

Like the Numba loops, every loop walks the flat input in chunks of ``CHUNK``
elements, accumulates in float64 per chunk and adds the chunk sums in chunk order
(the result does not depend on the thread count), checks the chunk against the
term's domain (``bounds = (y_lo, y_hi, z_lo, z_hi)``; a value outside sets a status
bit, nan sets none; no check for infinite bounds) while it is in cache, and applies
sample weights per row of ``m`` elements (no weights: ``m`` is n).  Inside a chunk
the sum runs in eight lanes (see the chunk bodies): a fixed order, so the result is
the same on every machine, vector width and thread count.  Each loop's chunk body
is an inline function, run by a ``prange`` (OpenMP, ``n_threads``) at or above
``PARALLEL_THRESHOLD`` elements and by a plain loop below it.

Everything is written so that GCC/clang vectorise the element loops with the
flags of setup.py (branch-free point functions and fastmath, no integer flags
next to float64 lanes, parameters in locals); ``-fopt-info-vec`` shows it.

A new term: its point functions in ``_points.pxd``, a tag struct here, a branch in
``_value_grad`` (and ``_grad_hess``), a line in ``_dispatch`` and in ``TERMS``.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, ceil, floor, nextafterf
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc

from cython cimport floating

from _common cimport (CHUNK, NUMBALOSS_HAVE_OPENMP, PARALLEL_THRESHOLD, numbaloss_cpu_supports_avx2,
                      numbaloss_cpu_supports_avx512, numbaloss_omp_max_threads, target_t)
from _points cimport *


#: bumped whenever the call signature of ``run`` changes (the backend checks it)
API_VERSION = 1
OPENMP = bool(NUMBALOSS_HAVE_OPENMP)
PARALLEL_THRESHOLD_ELEMENTS = PARALLEL_THRESHOLD
CHUNK_ELEMENTS = CHUNK


def max_threads():
    """OpenMP's default team size here (OMP_NUM_THREADS or the CPUs); 1 without OpenMP."""
    return numbaloss_omp_max_threads()


def cpu_supports(isa):
    """Whether this CPU runs the copies of the _cext modules built for ``isa``
    ("avx2", "avx512"; see setup.py): the same checks (_common.pxd) for every module."""
    if isa == "avx512":
        return bool(numbaloss_cpu_supports_avx512())
    if isa == "avx2":
        return bool(numbaloss_cpu_supports_avx2())
    return isa == "baseline"


# ------------------------------------------------------------------ term tags
ctypedef struct SquaredError:
    char tag
ctypedef struct AbsoluteError:
    char tag
ctypedef struct Huber:
    char tag
ctypedef struct BceLogits:
    char tag
ctypedef struct BceProbs:
    char tag
ctypedef struct FocalLogits:
    char tag
ctypedef struct FocalProbs:
    char tag
ctypedef struct FocalLogitsGamma2:
    char tag
ctypedef struct FocalProbsGamma2:
    char tag
ctypedef struct SquaredErrorToConstant:
    char tag
ctypedef struct BceLogitsToConstant:
    char tag
ctypedef struct BceProbsToConstant:
    char tag

ctypedef fused Term:
    SquaredError
    AbsoluteError
    Huber
    BceLogits
    BceProbs
    FocalLogits
    FocalProbs
    FocalLogitsGamma2
    FocalProbsGamma2
    SquaredErrorToConstant
    BceLogitsToConstant
    BceProbsToConstant

#: term name (numbaloss._registry / reference.pointwise) -> (id for ``run``, has a Hessian)
TERMS = {
    "squared_error": (0, True),
    "absolute_error": (1, True),
    "huber": (2, True),
    "bce_logits": (3, True),
    "bce_probs": (4, True),
    "focal_logits": (5, True),
    "focal_probs": (6, True),
    "squared_error_to_constant": (7, False),
    "bce_logits_to_constant": (8, False),
    "bce_probs_to_constant": (9, False),
    "focal_logits_gamma2": (10, True),
    "focal_probs_gamma2": (11, True),
}

_NO_HESSIAN = frozenset(term_id for term_id, has_hessian in TERMS.values() if not has_hessian)

#: loop names as numbaloss._cython_backend passes them to ``run``
MODES = {"value_sum": 0, "value_sum_and_grad": 1, "grad_only": 2, "value_none": 3,
         "grad_and_hess": 4}


cdef inline (double, double) _value_grad(Term* t, double y, double z, const double* p) noexcept nogil:
    if Term is SquaredError:
        return squared_error_value_grad(y, z, p)
    elif Term is AbsoluteError:
        return absolute_error_value_grad(y, z, p)
    elif Term is Huber:
        return huber_value_grad(y, z, p)
    elif Term is BceLogits:
        return bce_logits_value_grad(y, z, p)
    elif Term is BceProbs:
        return bce_probs_value_grad(y, z, p)
    elif Term is FocalLogits:
        return focal_logits_value_grad(y, z, p)
    elif Term is FocalProbs:
        return focal_probs_value_grad(y, z, p)
    elif Term is FocalLogitsGamma2:
        return focal_logits_gamma2_value_grad(y, z, p)
    elif Term is FocalProbsGamma2:
        return focal_probs_gamma2_value_grad(y, z, p)
    elif Term is SquaredErrorToConstant:
        return squared_error_to_constant_value_grad(y, z, p)
    elif Term is BceLogitsToConstant:
        return bce_logits_to_constant_value_grad(y, z, p)
    else:
        return bce_probs_to_constant_value_grad(y, z, p)


cdef inline (double, double) _grad_hess(Term* t, double y, double z, const double* p) noexcept nogil:
    if Term is SquaredError:
        return squared_error_grad_hess(y, z, p)
    elif Term is AbsoluteError:
        return absolute_error_grad_hess(y, z, p)
    elif Term is Huber:
        return huber_grad_hess(y, z, p)
    elif Term is BceLogits:
        return bce_logits_grad_hess(y, z, p)
    elif Term is BceProbs:
        return bce_probs_grad_hess(y, z, p)
    elif Term is FocalLogits:
        return focal_logits_grad_hess(y, z, p)
    elif Term is FocalProbs:
        return focal_probs_grad_hess(y, z, p)
    elif Term is FocalLogitsGamma2:
        return focal_logits_gamma2_grad_hess(y, z, p)
    elif Term is FocalProbsGamma2:
        return focal_probs_gamma2_grad_hess(y, z, p)
    else:  # constant-target terms have no Hessian; ``run`` refuses before getting here
        return NAN, NAN


ctypedef fused element_t:
    float
    double
    uint8_t


cdef inline float _float_at_least(double b) noexcept nogil:
    """The smallest float32 ≥ b: for a float32 v, v < b exactly when v < this."""
    cdef float f = <float>b
    return nextafterf(f, INFINITY) if <double>f < b else f


cdef inline float _float_at_most(double b) noexcept nogil:
    """The largest float32 ≤ b: for a float32 v, v > b exactly when v > this."""
    cdef float f = <float>b
    return nextafterf(f, -INFINITY) if <double>f > b else f


cdef inline bint _any_outside(const element_t* a, Py_ssize_t start, Py_ssize_t end, double lo,
                              double hi) noexcept nogil:
    """Whether a value of a[start:end] is below ``lo`` or above ``hi`` (nan is not).

    The comparisons are made in the array's own type against bounds rounded the
    safe way (exact), and the answer is kept as a sticky value of that type: the
    form GCC vectorises (it vectorises neither a comparison turned into an integer
    flag next to float64 lanes nor a running min/max without -ffast-math).
    """
    cdef element_t lo_e, hi_e, v, bad = 0
    cdef element_t one = 1
    cdef Py_ssize_t i
    if end <= start:
        return False
    if element_t is double:
        lo_e = lo
        hi_e = hi
    elif element_t is float:
        lo_e = _float_at_least(lo)
        hi_e = _float_at_most(hi)
    else:  # uint8: 0 … 255
        if lo > 255.0 or hi < 0.0:
            return True
        lo_e = <element_t>ceil(lo) if lo > 0.0 else 0  # v < 0: never
        hi_e = <element_t>floor(hi) if hi < 255.0 else 255  # v > 255: never
    for i in range(start, end):
        v = a[i]
        bad = one if v < lo_e else bad
        bad = one if v > hi_e else bad
    return bad != 0


cdef inline int _domain_flags(const target_t* y, const floating* z, Py_ssize_t start, Py_ssize_t end,
                              const double* bounds) noexcept nogil:
    """BAD_TARGET (1) if a y[start:end] is outside [bounds[0], bounds[1]], BAD_PREDICTION (2)
    if a z[start:end] is outside [bounds[2], bounds[3]]; nan is inside.  A separate
    pass over the chunk (in cache by then), which keeps the loss loops free of it."""
    cdef int flags = 0
    if (bounds[0] != -INFINITY or bounds[1] != INFINITY) and _any_outside(y, start, end, bounds[0], bounds[1]):
        flags |= 1
    if (bounds[2] != -INFINITY or bounds[3] != INFINITY) and _any_outside(z, start, end, bounds[2], bounds[3]):
        flags |= 2
    return flags


ctypedef struct Loop:
    # what every chunk body reads besides the typed arrays
    const double* w   # one weight per row, or NULL
    Py_ssize_t m      # elements per row (n when there are no weights)
    double p[4]       # the term's parameters
    double bounds[4]
    double scale


cdef enum:
    #: elements per block of the summing loops (a multiple of LANES; 4 KiB of values)
    BLOCK = 512
    #: float64 accumulators per row segment (see the chunk bodies)
    LANES = 8


cdef inline (double, double) _point(Term* t, const target_t* y, const floating* z, Py_ssize_t e,
                                    const double* p) noexcept nogil:
    """(l, l′) of element e, widened to float64 on load."""
    return _value_grad(t, <double>y[e], <double>z[e], p)


cdef inline void _add_lanes(const double* v, Py_ssize_t count, double* lanes) noexcept nogil:
    """lanes[j % LANES] += v[j] for j = 0 … count − 1, in order (``count`` values that
    start at a multiple of LANES from the beginning of their row segment).  The lanes
    are independent, so the compiler adds them as vectors, exactly."""
    cdef Py_ssize_t j = 0, l
    while j + LANES <= count:
        for l in range(LANES):
            lanes[l] += v[j + l]
        j += LANES
    for l in range(count - j):
        lanes[l] += v[j + l]


cdef inline double _lane_sum(const double* lanes) noexcept nogil:
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


# ------------------------------------------------------------------ chunk bodies
# Each walks the elements [c·CHUNK, min((c+1)·CHUNK, n)) row segment by row segment
# and returns their partial sum (0.0 for the loops that do not sum).  The parameters
# are copied to a local array first: the compiler then knows that the gradient
# stores do not change them, and vectorises the element loops (the point functions
# are branch-free, see _points.pxd).
#
# The two summing loops run in blocks of BLOCK elements: first the element loop
# (vectorised) writes the values to a small buffer (and the gradient), then the
# values are added into eight float64 accumulators, the value at offset j of its
# row segment into lane j mod 8, in order, and the segment's sum is the pairwise
# ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)).
# A fixed order, the same on every machine and vector width, which takes the chain
# of dependent additions off the critical path (the Numba loops get the same effect
# from an add that LLVM may reassociate, in an order that depends on the vector
# width).

cdef inline double _value_sum_chunk(Term* t, const target_t* y, const floating* z, Py_ssize_t n,
                                    const Loop* a, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t k = c * CHUNK
    cdef Py_ssize_t end = min(k + CHUNK, n)
    cdef Py_ssize_t m = a.m, row, seg_end, e, i, count
    cdef double p[4]
    cdef double values[BLOCK]
    cdef double lanes[LANES]
    cdef double acc = 0.0
    for i in range(4):
        p[i] = a.p[i]
    while k < end:
        row = k // m
        seg_end = min((row + 1) * m, end)
        for i in range(LANES):
            lanes[i] = 0.0
        e = k
        while e < seg_end:
            count = min(<Py_ssize_t>BLOCK, seg_end - e)
            for i in range(count):
                values[i] = _point(t, y, z, e + i, p)[0]
            _add_lanes(values, count, lanes)
            e += count
        acc += _lane_sum(lanes) * (a.w[row] if a.w != NULL else 1.0)
        k = seg_end
    return acc


cdef inline double _value_sum_and_grad_chunk(Term* t, const target_t* y, const floating* z, Py_ssize_t n,
                                             const Loop* a, Py_ssize_t c, floating* grad) noexcept nogil:
    cdef Py_ssize_t k = c * CHUNK
    cdef Py_ssize_t end = min(k + CHUNK, n)
    cdef Py_ssize_t m = a.m, row, seg_end, e, i, count
    cdef double p[4]
    cdef double values[BLOCK]
    cdef double lanes[LANES]
    cdef double acc = 0.0, wi, s
    cdef (double, double) q
    for i in range(4):
        p[i] = a.p[i]
    while k < end:
        row = k // m
        seg_end = min((row + 1) * m, end)
        wi = a.w[row] if a.w != NULL else 1.0
        s = a.scale * wi
        for i in range(LANES):
            lanes[i] = 0.0
        e = k
        while e < seg_end:
            count = min(<Py_ssize_t>BLOCK, seg_end - e)
            for i in range(count):
                q = _point(t, y, z, e + i, p)
                values[i] = q[0]
                grad[e + i] = <floating>(s * q[1])
            _add_lanes(values, count, lanes)
            e += count
        acc += _lane_sum(lanes) * wi
        k = seg_end
    return acc


cdef inline double _grad_only_chunk(Term* t, const target_t* y, const floating* z, Py_ssize_t n,
                                    const Loop* a, Py_ssize_t c, floating* grad) noexcept nogil:
    cdef Py_ssize_t k = c * CHUNK
    cdef Py_ssize_t end = min(k + CHUNK, n)
    cdef Py_ssize_t m = a.m, row, seg_end, e, i
    cdef double p[4]
    cdef double s
    for i in range(4):
        p[i] = a.p[i]
    while k < end:
        row = k // m
        seg_end = min((row + 1) * m, end)
        s = a.scale * (a.w[row] if a.w != NULL else 1.0)
        for e in range(k, seg_end):
            grad[e] = <floating>(s * _point(t, y, z, e, p)[1])
        k = seg_end
    return 0.0


cdef inline double _value_none_chunk(Term* t, const target_t* y, const floating* z, Py_ssize_t n,
                                     const Loop* a, Py_ssize_t c, floating* out, floating* grad) noexcept nogil:
    """out = scale·wᵢ·l per element, and grad = scale·wᵢ·l′ when ``grad`` is not NULL."""
    cdef Py_ssize_t k = c * CHUNK
    cdef Py_ssize_t end = min(k + CHUNK, n)
    cdef Py_ssize_t m = a.m, row, seg_end, e, i
    cdef double p[4]
    cdef double s
    cdef (double, double) q
    for i in range(4):
        p[i] = a.p[i]
    while k < end:
        row = k // m
        seg_end = min((row + 1) * m, end)
        s = a.scale * (a.w[row] if a.w != NULL else 1.0)
        if grad != NULL:
            for e in range(k, seg_end):
                q = _point(t, y, z, e, p)
                out[e] = <floating>(s * q[0])
                grad[e] = <floating>(s * q[1])
        else:
            for e in range(k, seg_end):
                out[e] = <floating>(s * _point(t, y, z, e, p)[0])
        k = seg_end
    return 0.0


cdef inline double _grad_and_hess_chunk(Term* t, const target_t* y, const floating* z, Py_ssize_t n,
                                        const Loop* a, Py_ssize_t c, floating* grad,
                                        floating* hess) noexcept nogil:
    """grad = wᵢ·l′ and hess = wᵢ·l″ per element (no scale: gradient-boosting objectives)."""
    cdef Py_ssize_t k = c * CHUNK
    cdef Py_ssize_t end = min(k + CHUNK, n)
    cdef Py_ssize_t m = a.m, row, seg_end, e, i
    cdef double p[4]
    cdef double wi
    cdef (double, double) gh
    for i in range(4):
        p[i] = a.p[i]
    while k < end:
        row = k // m
        seg_end = min((row + 1) * m, end)
        wi = a.w[row] if a.w != NULL else 1.0
        for e in range(k, seg_end):
            gh = _grad_hess(t, <double>y[e], <double>z[e], p)
            grad[e] = <floating>(wi * gh[0])
            hess[e] = <floating>(wi * gh[1])
        k = seg_end
    return 0.0


# ------------------------------------------------------------------ the driver
cdef (double, int) _chunk(Term* t, int mode, const target_t* y, const floating* z, Py_ssize_t n,
                          const Loop* a, Py_ssize_t c, floating* out, floating* grad,
                          floating* hess) noexcept nogil:
    """Chunk c of a loop: (its partial sum, its domain flags)."""
    cdef double total
    # ``mode`` is the same for every chunk of a call: a well-predicted branch
    if mode == 0:
        total = _value_sum_chunk(t, y, z, n, a, c)
    elif mode == 1:
        total = _value_sum_and_grad_chunk(t, y, z, n, a, c, grad)
    elif mode == 2:
        total = _grad_only_chunk(t, y, z, n, a, c, grad)
    elif mode == 3:
        total = _value_none_chunk(t, y, z, n, a, c, out, grad)
    else:
        total = _grad_and_hess_chunk(t, y, z, n, a, c, grad, hess)
    return total, _domain_flags(y, z, c * CHUNK, min((c + 1) * CHUNK, n), a.bounds)


cdef void _loop(Term* t, int mode, const target_t* y, const floating* z, Py_ssize_t n, const Loop* a,
                floating* out, floating* grad, floating* hess, int n_threads, double* partial,
                int* flags) noexcept nogil:
    """Run every chunk, serial or over ``n_threads`` OpenMP threads, into partial[c], flags[c]."""
    cdef Py_ssize_t n_chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c
    cdef (double, int) r
    if n_threads > 1 and n >= PARALLEL_THRESHOLD:
        # dynamic: a thread that the OS holds back leaves its chunks to the others;
        # the result is the same (each chunk writes its own partial sum)
        for c in prange(n_chunks, num_threads=n_threads, schedule="dynamic"):
            r = _chunk(t, mode, y, z, n, a, c, out, grad, hess)
            partial[c] = r[0]
            flags[c] = r[1]
    else:
        for c in range(n_chunks):
            r = _chunk(t, mode, y, z, n, a, c, out, grad, hess)
            partial[c] = r[0]
            flags[c] = r[1]


cdef (double, int) _run(Term* t, int mode, const target_t* y, const floating* z, Py_ssize_t n,
                        const Loop* a, floating* out, floating* grad, floating* hess,
                        int n_threads) noexcept nogil:
    """Returns (Σ partial sums in chunk order, OR of the flags), or (nan, -1) when out of memory."""
    cdef Py_ssize_t n_chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c
    cdef double total = 0.0
    cdef int found = 0
    cdef double* partial = <double*>malloc(max(n_chunks, 1) * sizeof(double))
    cdef int* flags = <int*>malloc(max(n_chunks, 1) * sizeof(int))
    if partial == NULL or flags == NULL:
        free(partial)
        free(flags)
        return NAN, -1
    _loop(t, mode, y, z, n, a, out, grad, hess, n_threads, partial, flags)
    for c in range(n_chunks):
        total += partial[c]
        found |= flags[c]
    free(partial)
    free(flags)
    return total, found


cdef (double, int) _dispatch(int term, int mode, const target_t* yp, const floating* zp, Py_ssize_t n,
                             const Loop* a, floating* op, floating* gp, floating* hp,
                             int n_threads) noexcept nogil:
    """``_run`` for the term with id ``term``; (0.0, -2) for an unknown id.

    Only (y, z) pairs of one float type, and uint8 y with either, are compiled into
    ``run`` (see there); the constant-target terms read no y (the backend passes z)
    and are compiled for the float pairs only: a term that reads y goes above the
    ``target_t is uint8_t`` line, one with a constant target below it."""
    if term == 0:
        return _run(<SquaredError*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 1:
        return _run(<AbsoluteError*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 2:
        return _run(<Huber*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 3:
        return _run(<BceLogits*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 4:
        return _run(<BceProbs*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 5:
        return _run(<FocalLogits*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 6:
        return _run(<FocalProbs*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 10:
        return _run(<FocalLogitsGamma2*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    elif term == 11:
        return _run(<FocalProbsGamma2*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
    if target_t is uint8_t:
        return 0.0, -2
    else:
        if term == 7:
            return _run(<SquaredErrorToConstant*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
        elif term == 8:
            return _run(<BceLogitsToConstant*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
        elif term == 9:
            return _run(<BceProbsToConstant*>NULL, mode, yp, zp, n, a, op, gp, hp, n_threads)
        return 0.0, -2


def run(int term, int mode, y, const floating[::1] z, const double[::1] w,
        Py_ssize_t m, tuple params, tuple bounds, double scale, floating[::1] out_value,
        floating[::1] grad, floating[::1] hess, int n_threads):
    """One elementwise loop over flat contiguous ``y`` and ``z`` (float32/float64); ``y``
    has z's dtype or is uint8 (0/1 targets; a bool array's uint8 view); ``w``: one
    float64 weight per row of ``m`` elements, or None.

    ``term``, ``mode``: ids from ``TERMS``, ``MODES``.  ``out_value``, ``grad``, ``hess``
    (z's dtype, length n, or None) are written as the mode says.  Returns (Σ wᵢ·l or
    0.0, domain flags).
    """
    cdef Py_ssize_t n = z.shape[0]
    cdef Loop a
    cdef Py_ssize_t i
    cdef (double, int) result
    cdef const floating[::1] y_float
    cdef const uint8_t[::1] y_uint8
    cdef bint is_uint8 = y.dtype.itemsize == 1
    if is_uint8:
        y_uint8 = y
        i = y_uint8.shape[0]
    else:
        y_float = y  # raises ValueError unless y has z's dtype
        i = y_float.shape[0]
    if i != n:
        raise ValueError(f"y has {i} elements and z {n}")
    if len(params) > 4 or len(bounds) != 4:
        raise ValueError(f"at most 4 parameters and 4 bounds, got {params!r}, {bounds!r}")
    for i in range(4):
        a.p[i] = params[i] if i < len(params) else NAN
        a.bounds[i] = bounds[i]
    if mode < 0 or mode > 4:
        raise ValueError(f"unknown mode {mode}")
    if mode == 3 and (out_value is None or out_value.shape[0] != n):
        raise ValueError(f"mode value_none needs out_value of length {n}")
    if (mode == 1 or mode == 2 or mode == 4) and (grad is None or grad.shape[0] != n):
        raise ValueError(f"mode {mode} needs grad of length {n}")
    if mode == 3 and grad is not None and grad.shape[0] != n:
        raise ValueError(f"grad must have length {n}")
    if mode == 4 and (hess is None or hess.shape[0] != n):
        raise ValueError(f"mode grad_and_hess needs hess of length {n}")
    if mode == 4 and term in _NO_HESSIAN:
        raise ValueError(f"term {term} has no Hessian")
    if w is not None and w.shape[0] > 0:
        if m <= 0 or w.shape[0] * m != n:
            raise ValueError(f"{w.shape[0]} weights do not cover {n} elements in rows of {m}")
        a.w = &w[0]
        a.m = m
    else:
        a.w = NULL
        a.m = max(n, 1)
    a.scale = scale
    if n == 0:
        return 0.0, 0
    cdef const floating* zp = &z[0]
    cdef floating* op = &out_value[0] if mode == 3 else NULL
    cdef floating* gp = &grad[0] if grad is not None and mode != 0 else NULL
    cdef floating* hp = &hess[0] if mode == 4 else NULL
    cdef const uint8_t* yu = NULL
    cdef const floating* yf = NULL
    if is_uint8:
        yu = &y_uint8[0]
    else:
        yf = &y_float[0]
    with nogil:
        if is_uint8:
            result = _dispatch(term, mode, yu, zp, n, &a, op, gp, hp, n_threads)
        else:
            result = _dispatch(term, mode, yf, zp, n, &a, op, gp, hp, n_threads)
    if result[1] == -1:
        raise MemoryError("numbaloss: no memory for the per-chunk partial sums")
    if result[1] == -2:
        raise ValueError(f"no loop for term id {term}" + (" with uint8 targets" if is_uint8 else ""))
    return result[0], result[1]

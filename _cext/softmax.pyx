# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython loops of the softmax (categorical) losses: the mirror of
``numbaloss/_numba/softmax.py``, one row function per kind with the same name and
arithmetic, and one row loop generic over the kind (a tag type of the fused type
``Kind``, resolved at compile time as in ``elementwise.pyx``).

Kinds: ``{cce,focal}_{logits,probs}_{labels,dense}``.  A row function

    row(target, i, z, k, cw, p, has_ignore, ignore_index, s, grad, hess) -> (loss of row i, status)

gets ``z``, ``grad`` and ``hess`` as pointers to row i (``grad``/``hess`` NULL when
not wanted: the Numba ``want_grad``/``want_hess`` flags), ``target`` as the int64
labels (``*_labels``) or as row i of the dense targets (``*_dense``, z's dtype).
Targets are converted by ``numbaloss._cython_backend``: labels to int64, dense
targets to z's dtype (both exact), which keeps the specialisations to kind × dtype.
Parameters ``p``: cce (smoothing, Σⱼ cⱼ, eps); focal (gamma, eps).  The sums over the
classes of a row are added in order (softmax.py lets LLVM reassociate them), and
``exp``, ``log``, ``log1p`` are the C library's: these row loops stay scalar, where
glibc's functions are faster than the branch-free ones of ``_fastmath.pxd`` that
softmax.py uses (measured: cce 1e6×10 in 130 ms against 216 ms on one thread); both
are accurate to an ulp.
The integer-label logit kinds (cce_logits_labels, focal_logits_labels) run instead
as softmax.py's ``label_rows`` does (``_label_rows_chunk``): loops over whole chunks
that vectorise, with the branch-free exp/log and, for float32 logits, exp_to_float32
(measured at 10⁶×10 float32, value_and_grad on 2 threads: cce 137 ms → ~40 ms,
about numba's time, in the AVX-512 copy of setup.py).
Chunks of rows (about ROW_CHUNK_ELEMENTS elements each) are summed in chunk order,
serial below PARALLEL_THRESHOLD elements and over OpenMP threads above it.
"""

from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, NAN, exp, isfinite, isnan, log, log1p
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from cython cimport floating

from _common cimport (BAD_LABEL, BAD_PREDICTION, BAD_TARGET, PARALLEL_THRESHOLD, ROW_CHUNK_ELEMENTS)
from _fastmath cimport exp as fast_exp
from _fastmath cimport exp_to_float32
from _fastmath cimport log as fast_log
from _fastmath cimport log1p as fast_log1p
from _points cimport _max, _min

#: bumped whenever the call signature of ``run`` changes (the backend checks it)
API_VERSION = 1


# ------------------------------------------------------------------ kind tags
ctypedef struct CceLogitsLabels:
    char tag
ctypedef struct CceLogitsDense:
    char tag
ctypedef struct CceProbsLabels:
    char tag
ctypedef struct CceProbsDense:
    char tag
ctypedef struct FocalLogitsLabels:
    char tag
ctypedef struct FocalLogitsDense:
    char tag
ctypedef struct FocalProbsLabels:
    char tag
ctypedef struct FocalProbsDense:
    char tag

ctypedef fused Kind:
    CceLogitsLabels
    CceLogitsDense
    CceProbsLabels
    CceProbsDense
    FocalLogitsLabels
    FocalLogitsDense
    FocalProbsLabels
    FocalProbsDense

#: kind name -> id for ``run``
KINDS = {
    "cce_logits_labels": 0, "cce_logits_dense": 1, "cce_probs_labels": 2, "cce_probs_dense": 3,
    "focal_logits_labels": 4, "focal_logits_dense": 5, "focal_probs_labels": 6, "focal_probs_dense": 7,
}


ctypedef struct Rows:
    Py_ssize_t n
    Py_ssize_t k
    const void* target   # int64 labels (n,) or dense targets (n, k) of z's dtype
    const double* w      # one weight per row, or NULL
    const double* cw     # per-class weights / alphas (k,)
    const double* p
    bint has_ignore
    int64_t ignore_index
    double scale
    bint write_values


cdef inline void _zero_row(Py_ssize_t k, floating* grad, floating* hess) noexcept nogil:
    cdef Py_ssize_t j
    if grad != NULL:
        for j in range(k):
            grad[j] = 0.0
    if hess != NULL:
        for j in range(k):
            hess[j] = 0.0


cdef inline int _label_status(int64_t label, Py_ssize_t n_classes, bint has_ignore,
                              int64_t ignore_index) noexcept nogil:
    """0: use the label; -1: ignored row; BAD_LABEL: outside [0, K)."""
    if has_ignore and label == ignore_index:
        return -1
    if label < 0 or label >= n_classes:
        return BAD_LABEL
    return 0


cdef inline (double, Py_ssize_t) _max_and_argmax(const floating* z, Py_ssize_t k) noexcept nogil:
    cdef double m, v
    cdef Py_ssize_t arg = 0, j
    if k == 0:  # no classes: log Σ e^{zⱼ} = −inf, as the reference has it
        return 0.0, 0
    m = <double>z[0]
    for j in range(1, k):
        v = <double>z[j]
        if v > m:
            m = v
            arg = j
    if not isfinite(m):  # all −inf, or a +inf/nan: let the arithmetic propagate
        m = 0.0 if m == -INFINITY else m
    return m, arg


cdef inline double _log_sum_exp_shifted(const floating* z, Py_ssize_t k, double m) noexcept nogil:
    """log Σⱼ e^{zⱼ − m}: the log-sum-exp less the shift m, so that log pⱼ =
    (zⱼ − m) − this keeps its precision when the logits are huge."""
    cdef double total = 0.0
    cdef Py_ssize_t j
    for j in range(k):
        total += exp(<double>z[j] - m)
    return log(total)


# ----------------------------------------------------------------------- cce
cdef inline (double, int) cce_logits_labels(const int64_t* target, Py_ssize_t i, const floating* z,
                                            Py_ssize_t k, const double* cw, const double* p,
                                            bint has_ignore, int64_t ignore_index, double s,
                                            floating* grad, floating* hess) noexcept nogil:
    cdef int64_t label = target[i]
    cdef int status = _label_status(label, k, has_ignore, ignore_index)
    cdef double smoothing, uniform, m, log_total, c_label, weight_total, loss, prob, ct
    cdef Py_ssize_t j
    if status != 0:
        _zero_row(k, grad, hess)
        return 0.0, max(status, 0)
    smoothing = p[0]
    uniform = smoothing / k
    m = _max_and_argmax(z, k)[0]
    log_total = _log_sum_exp_shifted(z, k, m)
    c_label = (1.0 - smoothing) * cw[label]
    weight_total = c_label + uniform * p[1]  # S = Σⱼ cⱼtⱼ
    loss = weight_total * log_total - c_label * (<double>z[label] - m)
    if uniform != 0.0:
        for j in range(k):
            loss -= uniform * cw[j] * (<double>z[j] - m)
    if grad != NULL or hess != NULL:
        for j in range(k):
            prob = exp(<double>z[j] - m - log_total)
            ct = uniform * cw[j] + (c_label if j == label else 0.0)
            if grad != NULL:
                grad[j] = <floating>(s * (prob * weight_total - ct))
            if hess != NULL:
                hess[j] = <floating>(s * weight_total * prob * (1.0 - prob))
    return loss, 0


cdef inline (double, int) cce_logits_dense(const floating* target, Py_ssize_t i, const floating* z,
                                           Py_ssize_t k, const double* cw, const double* p,
                                           bint has_ignore, int64_t ignore_index, double s,
                                           floating* grad, floating* hess) noexcept nogil:
    cdef double smoothing = p[0]
    cdef double uniform = smoothing / k
    cdef double m = _max_and_argmax(z, k)[0]
    cdef double log_total = _log_sum_exp_shifted(z, k, m)
    cdef double weight_total = 0.0, loss = 0.0, t, ct, prob
    cdef int status = 0
    cdef Py_ssize_t j
    for j in range(k):
        t = <double>target[j]
        if t < 0.0 or t > 1.0:
            status = BAD_TARGET
        ct = cw[j] * (t * (1.0 - smoothing) + uniform)
        weight_total += ct
        loss += -ct * ((<double>z[j] - m) - log_total)
    if grad != NULL or hess != NULL:
        for j in range(k):
            prob = exp(<double>z[j] - m - log_total)
            ct = cw[j] * (<double>target[j] * (1.0 - smoothing) + uniform)
            if grad != NULL:
                grad[j] = <floating>(s * (prob * weight_total - ct))
            if hess != NULL:
                hess[j] = <floating>(s * weight_total * prob * (1.0 - prob))
    return loss, status


cdef inline (double, int) _cce_probs_term(double zij, double ct, double eps, double s, Py_ssize_t j,
                                          floating* grad, floating* hess) noexcept nogil:
    cdef double prob = _min(_max(zij, eps), 1.0 - eps)
    if grad != NULL:
        grad[j] = <floating>(-s * ct / prob)
    if hess != NULL:
        hess[j] = <floating>(s * ct / (prob * prob))
    return -ct * log(prob), (BAD_PREDICTION if (zij < 0.0) | (zij > 1.0) else 0)


cdef inline (double, int) cce_probs_labels(const int64_t* target, Py_ssize_t i, const floating* z,
                                           Py_ssize_t k, const double* cw, const double* p,
                                           bint has_ignore, int64_t ignore_index, double s,
                                           floating* grad, floating* hess) noexcept nogil:
    cdef int64_t label = target[i]
    cdef int status = _label_status(label, k, has_ignore, ignore_index)
    cdef double smoothing, uniform, loss, ct
    cdef (double, int) term
    cdef Py_ssize_t j
    if status != 0:
        _zero_row(k, grad, hess)
        return 0.0, max(status, 0)
    smoothing = p[0]
    uniform = smoothing / k
    loss = 0.0
    for j in range(k):
        ct = uniform * cw[j] + ((1.0 - smoothing) * cw[label] if j == label else 0.0)
        term = _cce_probs_term(<double>z[j], ct, p[2], s, j, grad, hess)
        loss += term[0]
        status |= term[1]
    return loss, status


cdef inline (double, int) cce_probs_dense(const floating* target, Py_ssize_t i, const floating* z,
                                          Py_ssize_t k, const double* cw, const double* p,
                                          bint has_ignore, int64_t ignore_index, double s,
                                          floating* grad, floating* hess) noexcept nogil:
    cdef double smoothing = p[0]
    cdef double uniform = smoothing / k
    cdef double loss = 0.0, t, ct
    cdef int status = 0
    cdef (double, int) term
    cdef Py_ssize_t j
    for j in range(k):
        t = <double>target[j]
        if t < 0.0 or t > 1.0:
            status |= BAD_TARGET
        ct = cw[j] * (t * (1.0 - smoothing) + uniform)
        term = _cce_probs_term(<double>z[j], ct, p[2], s, j, grad, hess)
        loss += term[0]
        status |= term[1]
    return loss, status


# --------------------------------------------------------------------- focal
# The exp/log of a formula shared by the scalar row loops (the C library's: faster
# there) and the loops of ``_label_rows_chunk`` that vectorise (``_fastmath.pxd``'s).
ctypedef struct Libm:
    char tag
ctypedef struct Branchfree:
    char tag

ctypedef fused Math:
    Libm
    Branchfree


cdef inline double _exp(Math* flavour, double x) noexcept nogil:
    if Math is Branchfree:
        return fast_exp(x)
    else:
        return exp(x)


cdef inline double _log1p(Math* flavour, double x) noexcept nogil:
    if Math is Branchfree:
        return fast_log1p(x)
    else:
        return log1p(x)


cdef inline (double, double, double, double, double) _focal_logit_class(
        Math* flavour, double shifted, double log_total, double log_rest, double gamma) noexcept nogil:
    """For one class with logit zⱼ = m + ``shifted``: (p, log p, u = (1 − p)^γ, B/a,
    dB/dp / a) in log space.

    ``log_rest`` is log(1 − p) when it was computed from the other classes
    (the arg-max class), or nan to take log1p(−p) (exact for p ≤ ½).
    """
    cdef double logp = shifted - log_total
    cdef double prob = _exp(flavour, logp)
    cdef double log_q = log_rest if not isnan(log_rest) else _log1p(flavour, -prob)
    cdef double q = _exp(flavour, log_q)
    cdef double u = 1.0 if gamma == 0.0 else _exp(flavour, gamma * log_q)
    cdef double ratio = logp / q if q > 0.0 else -1.0  # log p / (1 − p) → −1 as p → 1
    cdef double b = u * (1.0 - gamma * prob * ratio)
    cdef double dbdp = gamma * u / q * ((gamma - 1.0) * prob * ratio - logp - 2.0) if q > 0.0 else 0.0
    return prob, logp, u, b, dbdp


cdef inline double _focal_target(const floating* dense, Py_ssize_t j, int64_t label) noexcept nogil:
    if dense != NULL:
        return <double>dense[j]
    return 1.0 if j == label else 0.0


cdef inline (double, int) _focal_logits_row(const floating* dense, const floating* z, Py_ssize_t k,
                                            const double* alphas, double gamma, int64_t label, double s,
                                            floating* grad, floating* hess) noexcept nogil:
    """``dense``: the row of targets, or NULL for the one-hot row of ``label``."""
    cdef double m, total = 0.0, rest = 0.0, e, log_total, log_rest, loss = 0.0, sum_b = 0.0, sum_c = 0.0
    cdef double t, a, prob, logp, u, b, dbdp, b_j, c_j
    cdef Py_ssize_t arg, j
    cdef int status = 0
    m, arg = _max_and_argmax(z, k)
    for j in range(k):
        e = exp(<double>z[j] - m)
        total += e
        rest += e if j != arg else 0.0
    log_total = log(total)
    log_rest = log(rest) - log_total if k > 1 else -INFINITY
    # first pass: the loss, Σⱼ Bⱼ and Σⱼ Cⱼ
    for j in range(k):
        t = _focal_target(dense, j, label)
        if t < 0.0 or t > 1.0:
            status = BAD_TARGET
        a = alphas[j] * t
        if a == 0.0:
            continue
        prob, logp, u, b, dbdp = _focal_logit_class(<Libm*>NULL, <double>z[j] - m, log_total,
                                                    log_rest if j == arg else NAN, gamma)
        loss -= a * u * logp
        sum_b += a * b
        sum_c += a * prob * dbdp
    # second pass: l′ₖ = pₖΣB − Bₖ and the diagonal Hessian (Bₖ, Cₖ recomputed
    # rather than parked in the float32 output, which would round them)
    if grad != NULL or hess != NULL:
        for j in range(k):
            a = alphas[j] * _focal_target(dense, j, label)
            prob, logp, u, b, dbdp = _focal_logit_class(<Libm*>NULL, <double>z[j] - m, log_total,
                                                        log_rest if j == arg else NAN, gamma)
            b_j = a * b if a != 0.0 else 0.0
            c_j = a * prob * dbdp if a != 0.0 else 0.0
            if grad != NULL:
                grad[j] = <floating>(s * (prob * sum_b - b_j))
            if hess != NULL:
                hess[j] = <floating>(s * (
                    prob * (1.0 - prob) * sum_b - c_j * (1.0 - prob) + prob * (c_j - prob * sum_c)
                ))
    return loss, status


cdef inline (double, int) focal_logits_labels(const int64_t* target, Py_ssize_t i, const floating* z,
                                              Py_ssize_t k, const double* cw, const double* p,
                                              bint has_ignore, int64_t ignore_index, double s,
                                              floating* grad, floating* hess) noexcept nogil:
    cdef int64_t label = target[i]
    cdef int status = _label_status(label, k, has_ignore, ignore_index)
    if status != 0:
        _zero_row(k, grad, hess)
        return 0.0, max(status, 0)
    return _focal_logits_row(<const floating*>NULL, z, k, cw, p[0], label, s, grad, hess)


cdef inline (double, int) focal_logits_dense(const floating* target, Py_ssize_t i, const floating* z,
                                             Py_ssize_t k, const double* cw, const double* p,
                                             bint has_ignore, int64_t ignore_index, double s,
                                             floating* grad, floating* hess) noexcept nogil:
    return _focal_logits_row(target, z, k, cw, p[0], -1, s, grad, hess)


cdef inline (double, int) _focal_prob_class(double zij, double a, double gamma, double eps, double s,
                                            Py_ssize_t j, floating* grad, floating* hess) noexcept nogil:
    cdef double prob = _min(_max(zij, eps), 1.0 - eps)
    cdef double q = 1.0 - prob
    cdef double logp = log(prob)
    cdef double log_q = log(q)
    cdef double u = 1.0 if gamma == 0.0 else exp(gamma * log_q)
    cdef double u1 = exp((gamma - 1.0) * log_q)  # q^{γ−1}
    cdef double u2
    if grad != NULL:
        grad[j] = <floating>(-s * a * (u / prob - gamma * u1 * logp))
    if hess != NULL:
        u2 = exp((gamma - 2.0) * log_q)
        hess[j] = <floating>(-s * a * (
            gamma * (gamma - 1.0) * u2 * logp - 2.0 * gamma * u1 / prob - u / (prob * prob)
        ))
    return -a * u * logp, (BAD_PREDICTION if (zij < 0.0) | (zij > 1.0) else 0)


cdef inline (double, int) focal_probs_labels(const int64_t* target, Py_ssize_t i, const floating* z,
                                             Py_ssize_t k, const double* cw, const double* p,
                                             bint has_ignore, int64_t ignore_index, double s,
                                             floating* grad, floating* hess) noexcept nogil:
    cdef int64_t label = target[i]
    cdef int status = _label_status(label, k, has_ignore, ignore_index)
    cdef double loss = 0.0, a
    cdef (double, int) term
    cdef Py_ssize_t j
    if status != 0:
        _zero_row(k, grad, hess)
        return 0.0, max(status, 0)
    for j in range(k):
        a = cw[j] if j == label else 0.0
        term = _focal_prob_class(<double>z[j], a, p[0], p[1], s, j, grad, hess)
        loss += term[0]
        status |= term[1]
    return loss, status


cdef inline (double, int) focal_probs_dense(const floating* target, Py_ssize_t i, const floating* z,
                                            Py_ssize_t k, const double* cw, const double* p,
                                            bint has_ignore, int64_t ignore_index, double s,
                                            floating* grad, floating* hess) noexcept nogil:
    cdef double loss = 0.0, t
    cdef int status = 0
    cdef (double, int) term
    cdef Py_ssize_t j
    for j in range(k):
        t = <double>target[j]
        if t < 0.0 or t > 1.0:
            status |= BAD_TARGET
        term = _focal_prob_class(<double>z[j], cw[j] * t, p[0], p[1], s, j, grad, hess)
        loss += term[0]
        status |= term[1]
    return loss, status


# ------------------------------------------- integer labels from logits (CPU)
# The row functions above handle one row with loops over its K classes; for small K
# those loops are too short to vectorise, so the labelled logit kinds, the common
# case, run as ``label_rows`` does in softmax.py: per chunk of rows, e^{z − shift}
# for the whole chunk in one flat loop (``_softmax_block``), then the scalars of each
# row in one loop over the rows that vectorises its exps and logs
# (``_from_softmax_rows``), then the gradient rows without exps.  Same formulas and
# the same branch-free exp/log (and exp_to_float32 for float32 logits) as softmax.py.

#: a row whose Σⱼ e^{zⱼ − M} (M: the maximum of its chunk) is below this, i.e. whose
#: maximum is more than ~30 below M, gets its own shift (``_softmax_row``): with the
#: shared one the rounding error of log pⱼ = (zⱼ − M) − log Σ grows with M − zⱼ, and
#: beyond ~700 the exps underflow (softmax.py's SHARED_SHIFT_MIN_TOTAL)
cdef double SHARED_SHIFT_MIN_TOTAL = 1e-13

cdef extern from *:
    """
    /* The per-row arrays of a chunk never overlap; saying so lets GCC vectorise the
       loops over several of them, where it would need a run-time overlap check per
       pair of arrays and gives up beyond ten pairs. */
    typedef double *__restrict numbaloss_out_t;
    typedef const double *__restrict numbaloss_in_t;
    """
    ctypedef double* out_t "numbaloss_out_t"
    ctypedef const double* in_t "numbaloss_in_t"

#: the per-row arrays of a chunk, each ``per_chunk`` long, after the chunk's K·per_chunk
#: exps in the scratch memory of a thread: the shift, Σⱼ e^{zⱼ − shift} and its log;
#: the label's e^{z − shift}, z − shift and class weight, Σ_{j≠label} e^{zⱼ − shift}
#: when p_label > ½ (else nan), Σⱼ cⱼ(zⱼ − shift); the results of _from_softmax_rows
cdef enum:
    SHIFT, TOTAL, LOG_TOTAL, EX_LABEL, SHIFTED_LABEL, WEIGHT_LABEL, REST, SMOOTHED_SUM
    LOSS, COEF, GRAD_LABEL, H1, H2, HESS_LABEL
    ROW_ARRAYS


cdef inline Py_ssize_t _scratch_size(Py_ssize_t per_chunk, Py_ssize_t k) noexcept nogil:
    """doubles of scratch memory per thread"""
    return per_chunk * (k + ROW_ARRAYS)


cdef inline double* _row_array(double* scratch, Py_ssize_t per_chunk, Py_ssize_t k, int which) noexcept nogil:
    return scratch + per_chunk * (k + which)


cdef inline double _block_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """max(x[0], …, x[n-1]) passing over nan (−inf for none), in eight interleaved
    lanes (GCC vectorises no running maximum without -ffast-math)."""
    cdef floating lane[8]
    cdef Py_ssize_t c, j, n8 = n - n % 8
    for j in range(8):
        lane[j] = -INFINITY
    for c in range(0, n8, 8):
        for j in range(8):
            lane[j] = x[c + j] if x[c + j] > lane[j] else lane[j]
    for c in range(n8, n):
        lane[0] = x[c] if x[c] > lane[0] else lane[0]
    for j in range(1, 8):
        lane[0] = lane[j] if lane[j] > lane[0] else lane[0]
    return <double>lane[0]


cdef inline void _softmax_row(const floating* z, Py_ssize_t k, double* ex, double* shift, double* total,
                              double* log_total) noexcept nogil:
    """ex[j] = e^{zⱼ − m} for m = maxⱼ zⱼ (0 for a row of −inf); m, Σⱼ and log Σⱼ."""
    cdef double m = _block_max(z, k)
    cdef double acc = 0.0, e
    cdef Py_ssize_t j
    m = 0.0 if m == -INFINITY else m
    for j in range(k):
        e = fast_exp(<double>z[j] - m)
        ex[j] = e
        acc += e
    shift[0] = m
    total[0] = acc
    log_total[0] = fast_log(acc)


cdef inline void _softmax_block(const floating* z, Py_ssize_t count, Py_ssize_t k, out_t ex, out_t shifts,
                                out_t totals, out_t log_totals) noexcept nogil:
    """For the ``count`` rows from ``z`` on: ex[r·K + j] = e^{zᵣⱼ − shifts[r]},
    totals[r] = Σⱼ ex[r·K + j], log_totals[r] = log totals[r].  The shift is the
    block's maximum M, shared so that the exps run as one flat loop over count·K
    values, except for rows far below M (SHARED_SHIFT_MIN_TOTAL), which get their
    own.  float32 logits, whose probabilities are float32, take exp_to_float32."""
    cdef Py_ssize_t size = count * k, t, r, j
    cdef double shift = _block_max(z, size), acc
    shift = 0.0 if shift == -INFINITY else shift
    if floating is float:
        for t in range(size):
            ex[t] = exp_to_float32(<double>z[t] - shift)
    else:
        for t in range(size):
            ex[t] = fast_exp(z[t] - shift)
    for r in range(count):
        acc = 0.0
        for j in range(k):
            acc += ex[r * k + j]
        totals[r] = acc
        shifts[r] = shift
    for r in range(count):
        log_totals[r] = fast_log(totals[r])
    for r in range(count):
        if not totals[r] >= SHARED_SHIFT_MIN_TOTAL:  # nan too: recomputed, stays nan
            _softmax_row(z + r * k, k, ex + r * k, &shifts[r], &totals[r], &log_totals[r])


cdef inline double _one_minus_p(double ex_label, double total, double rest) noexcept nogil:
    """1 − p_label: from the other classes (``rest``) when p > ½, where 1 − p would
    cancel (and ex, Σ carry float32 precision with exp_to_float32)."""
    return 1.0 - ex_label / total if isnan(rest) else rest / total


cdef void _from_softmax_rows(Kind* kind, Py_ssize_t count, Py_ssize_t k, const double* p, in_t ex_label,
                             in_t totals, in_t log_totals, in_t shifted_label, in_t rest, in_t smoothed_sum,
                             in_t weight_label, out_t loss, out_t coef, out_t grad_label, out_t h1, out_t h2,
                             out_t hess_label) noexcept nogil:
    """Per row r of a chunk, with pⱼ = exⱼ / Σ: the loss, and the coefficients of
        l′ⱼ = exⱼ·coef − uniform·cⱼ,   l″ⱼ = pⱼ(1 − pⱼ)·h1 − pⱼ²·h2,
    then the label's own l′ and l″ (softmax.py's cce_from_softmax and
    focal_from_softmax).  One loop over the rows with scalars only: it vectorises."""
    cdef Py_ssize_t r
    cdef double smoothing, uniform, uniform_total, c_label, weight_total, neg_logp, prob, q, e, total, lt, rs
    cdef double gamma, a, log_rest, logp, u, b_unit, dbdp, b, c
    cdef bint none
    if Kind is CceLogitsLabels:
        smoothing = p[0]
        uniform = smoothing / k
        uniform_total = uniform * p[1]
        for r in range(count):
            e = ex_label[r]
            total = totals[r]
            lt = log_totals[r]
            rs = rest[r]
            c_label = (1.0 - smoothing) * weight_label[r]
            weight_total = c_label + uniform_total  # S = Σⱼ cⱼtⱼ
            q = _one_minus_p(e, total, rs)
            # −log p_label = log(1 + rest/ex_label): exact for p near 1, unlike log Σ − (z − m)
            neg_logp = lt - shifted_label[r] if isnan(rs) else fast_log1p(rs / e)
            loss[r] = c_label * neg_logp + uniform_total * lt - uniform * smoothed_sum[r]
            prob = e / total
            coef[r] = weight_total / total
            # l′_label = S·p − c_label − uniform·c_label_class, S·p − c_label through 1 − p
            grad_label[r] = uniform_total * prob - c_label * q - uniform * weight_label[r]
            h1[r] = weight_total
            h2[r] = 0.0
            hess_label[r] = weight_total * prob * q
    else:
        # only the label's class has a nonzero Bⱼ: l′ⱼ = pⱼB − [j = label]·B
        gamma = p[0]
        for r in range(count):
            e = ex_label[r]
            total = totals[r]
            lt = log_totals[r]
            rs = rest[r]
            a = weight_label[r]
            # log(1 − p) = log rest − log Σ when p > ½
            log_rest = NAN if isnan(rs) else (fast_log(rs) - lt if k > 1 else -INFINITY)
            prob, logp, u, b_unit, dbdp = _focal_logit_class(<Branchfree*>NULL, shifted_label[r], lt,
                                                             log_rest, gamma)
            b = a * b_unit
            c = a * prob * dbdp
            q = _one_minus_p(e, total, rs)
            none = a == 0.0
            # l′ = (p − 1)·B and l″ = p(1 − p)B − C(1 − p) + p(C − pC), through 1 − p
            loss[r] = 0.0 if none else -a * u * logp
            coef[r] = 0.0 if none else b / total
            grad_label[r] = 0.0 if none else -q * b
            h1[r] = 0.0 if none else b
            h2[r] = 0.0 if none else c
            hess_label[r] = 0.0 if none else q * (prob * b - c + prob * c)


cdef (double, int) _label_rows_chunk(Kind* kind, const Rows* rw, Py_ssize_t c, Py_ssize_t per_chunk,
                                     const floating* z, floating* out_value, floating* grad, floating* hess,
                                     double* scratch) noexcept nogil:
    """_rows_chunk of cce_logits_labels and focal_logits_labels (K > 0), in three
    passes over the chunk (see above); ``scratch``: _scratch_size doubles."""
    cdef Py_ssize_t k = rw.k, first = c * per_chunk
    cdef Py_ssize_t count = min(per_chunk, rw.n - first), r, i, j
    cdef const int64_t* labels = <const int64_t*>rw.target
    cdef const floating* zc = z + first * k
    cdef double* ex = scratch
    cdef double* shifts = _row_array(scratch, per_chunk, k, SHIFT)
    cdef double* totals = _row_array(scratch, per_chunk, k, TOTAL)
    cdef double* ex_label = _row_array(scratch, per_chunk, k, EX_LABEL)
    cdef double* shifted_label = _row_array(scratch, per_chunk, k, SHIFTED_LABEL)
    cdef double* weight_label = _row_array(scratch, per_chunk, k, WEIGHT_LABEL)
    cdef double* rest = _row_array(scratch, per_chunk, k, REST)
    cdef double* smoothed_sum = _row_array(scratch, per_chunk, k, SMOOTHED_SUM)
    cdef double* loss = _row_array(scratch, per_chunk, k, LOSS)
    cdef double* coef = _row_array(scratch, per_chunk, k, COEF)
    cdef double* grad_label = _row_array(scratch, per_chunk, k, GRAD_LABEL)
    cdef double* h1 = _row_array(scratch, per_chunk, k, H1)
    cdef double* h2 = _row_array(scratch, per_chunk, k, H2)
    cdef double* hess_label = _row_array(scratch, per_chunk, k, HESS_LABEL)
    cdef bint smoothed = False
    cdef double uniform = 0.0, e, others, acc, wi, s, sc, inv_total, pj
    cdef int64_t label
    cdef int status, found = 0
    cdef floating* g
    cdef floating* h
    if Kind is CceLogitsLabels:
        smoothed = rw.p[0] != 0.0
        uniform = rw.p[0] / k
    _softmax_block(zc, count, k, ex, shifts, totals, _row_array(scratch, per_chunk, k, LOG_TOTAL))
    for r in range(count):
        label = labels[first + r]
        if _label_status(label, k, rw.has_ignore, rw.ignore_index) != 0:
            label = 0  # any class: the row's results are not used
        e = ex[r * k + label]
        ex_label[r] = e
        shifted_label[r] = <double>zc[r * k + label] - shifts[r]
        weight_label[r] = rw.cw[label]
        rest[r] = NAN
        if e > 0.5 * totals[r]:
            others = 0.0
            for j in range(k):
                others += ex[r * k + j] if j != label else 0.0
            rest[r] = others
        smoothed_sum[r] = 0.0
        if smoothed:
            acc = 0.0
            for j in range(k):
                acc += rw.cw[j] * (<double>zc[r * k + j] - shifts[r])
            smoothed_sum[r] = acc
    _from_softmax_rows(kind, count, k, rw.p, ex_label, totals, _row_array(scratch, per_chunk, k, LOG_TOTAL),
                       shifted_label, rest, smoothed_sum, weight_label, loss, coef, grad_label, h1, h2,
                       hess_label)
    acc = 0.0
    for r in range(count):
        i = first + r
        wi = rw.w[i] if rw.w != NULL else 1.0
        s = rw.scale * wi
        label = labels[i]
        status = _label_status(label, k, rw.has_ignore, rw.ignore_index)
        g = grad + i * k if grad != NULL else NULL
        h = hess + i * k if hess != NULL else NULL
        if status != 0:
            _zero_row(k, g, h)
            found |= max(status, 0)
            if rw.write_values:
                out_value[i] = 0.0
            continue
        if g != NULL:
            if uniform != 0.0:
                for j in range(k):
                    g[j] = <floating>(s * (ex[r * k + j] * coef[r] - uniform * rw.cw[j]))
            else:
                sc = s * coef[r]
                for j in range(k):
                    g[j] = <floating>(sc * ex[r * k + j])
            g[label] = <floating>(s * grad_label[r])
        if h != NULL:
            inv_total = 1.0 / totals[r]
            for j in range(k):
                pj = ex[r * k + j] * inv_total
                h[j] = <floating>(s * (pj * (1.0 - pj) * h1[r] - pj * pj * h2[r]))
            h[label] = <floating>(s * hess_label[r])
        acc += wi * loss[r]
        if rw.write_values:
            out_value[i] = <floating>(s * loss[r])
    return acc, found


# ---------------------------------------------------------------------- loop
cdef inline (double, int) _row(Kind* kind, const Rows* r, Py_ssize_t i, const floating* z, double s,
                               floating* grad, floating* hess) noexcept nogil:
    """Row i of the kind: z, grad, hess point at row i (grad/hess may be NULL)."""
    cdef const int64_t* labels = <const int64_t*>r.target
    cdef const floating* dense = (<const floating*>r.target) + i * r.k
    if Kind is CceLogitsLabels:
        return cce_logits_labels(labels, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad, hess)
    elif Kind is CceLogitsDense:
        return cce_logits_dense(dense, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad, hess)
    elif Kind is CceProbsLabels:
        return cce_probs_labels(labels, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad, hess)
    elif Kind is CceProbsDense:
        return cce_probs_dense(dense, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad, hess)
    elif Kind is FocalLogitsLabels:
        return focal_logits_labels(labels, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad,
                                   hess)
    elif Kind is FocalLogitsDense:
        return focal_logits_dense(dense, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad,
                                  hess)
    elif Kind is FocalProbsLabels:
        return focal_probs_labels(labels, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad,
                                  hess)
    else:
        return focal_probs_dense(dense, i, z, r.k, r.cw, r.p, r.has_ignore, r.ignore_index, s, grad, hess)


cdef inline (double, int) _rows_chunk(Kind* kind, const Rows* r, Py_ssize_t c, Py_ssize_t per_chunk,
                                      const floating* z, floating* out_value, floating* grad,
                                      floating* hess) noexcept nogil:
    """Σ wᵢ·lᵢ and the flags over the rows of chunk c; fills out_value, grad, hess rows."""
    cdef double acc = 0.0, wi, loss
    cdef int found = 0
    cdef Py_ssize_t i, k = r.k
    cdef (double, int) res
    for i in range(c * per_chunk, min((c + 1) * per_chunk, r.n)):
        wi = r.w[i] if r.w != NULL else 1.0
        res = _row(kind, r, i, z + i * k, r.scale * wi,
                   grad + i * k if grad != NULL else NULL,
                   hess + i * k if hess != NULL else NULL)
        loss = res[0]
        found |= res[1]
        acc += wi * loss
        if r.write_values:
            out_value[i] = <floating>(r.scale * wi * loss)
    return acc, found


cdef inline (double, int) _chunk(Kind* kind, const Rows* r, Py_ssize_t c, Py_ssize_t per_chunk,
                                 const floating* z, floating* out_value, floating* grad, floating* hess,
                                 double* scratch) noexcept nogil:
    """Chunk c: by ``_label_rows_chunk`` where ``scratch`` was given, else row by row."""
    if Kind is CceLogitsLabels or Kind is FocalLogitsLabels:
        if scratch != NULL:
            return _label_rows_chunk(kind, r, c, per_chunk, z, out_value, grad, hess, scratch)
    return _rows_chunk(kind, r, c, per_chunk, z, out_value, grad, hess)


cdef (double, int) _rows(Kind* kind, const Rows* r, const floating* z, floating* out_value, floating* grad,
                         floating* hess, int n_threads) noexcept nogil:
    """Σᵢ wᵢ·lᵢ over the rows (chunk sums added in chunk order) and the status flags;
    (nan, -1) when out of memory."""
    cdef Py_ssize_t per_chunk = max(1, ROW_CHUNK_ELEMENTS // max(r.k, 1))
    cdef Py_ssize_t n_chunks = (r.n + per_chunk - 1) // per_chunk
    cdef Py_ssize_t c, scratch_size = 0
    cdef double total = 0.0
    cdef int result = 0
    cdef (double, int) res
    cdef bint parallel = n_threads > 1 and r.n * r.k >= PARALLEL_THRESHOLD
    cdef int team = n_threads if parallel else 1
    cdef double* partial = <double*>malloc(max(n_chunks, 1) * sizeof(double))
    cdef int* flags = <int*>malloc(max(n_chunks, 1) * sizeof(int))
    cdef double* scratch = NULL  # the scratch memory of each thread (label_rows kinds)
    if Kind is CceLogitsLabels or Kind is FocalLogitsLabels:
        if r.k > 0:
            scratch_size = _scratch_size(per_chunk, r.k)
            scratch = <double*>malloc(team * scratch_size * sizeof(double))
            if scratch == NULL:
                free(partial)
                free(flags)
                return NAN, -1
    if partial == NULL or flags == NULL:
        free(partial)
        free(flags)
        free(scratch)
        return NAN, -1
    if parallel:
        for c in prange(n_chunks, num_threads=team, schedule="dynamic"):
            res = _chunk(kind, r, c, per_chunk, z, out_value, grad, hess,
                         scratch + threadid() * scratch_size if scratch != NULL else NULL)
            partial[c] = res[0]
            flags[c] = res[1]
    else:
        for c in range(n_chunks):
            res = _chunk(kind, r, c, per_chunk, z, out_value, grad, hess, scratch)
            partial[c] = res[0]
            flags[c] = res[1]
    for c in range(n_chunks):
        total += partial[c]
        result |= flags[c]
    free(partial)
    free(flags)
    free(scratch)
    return total, result


def run(int kind, tuple params, object target, const floating[:, ::1] z, const double[::1] w,
        const double[::1] class_weight, object ignore_index, double scale, floating[::1] out_value,
        floating[:, ::1] grad, floating[:, ::1] hess, int n_threads):
    """One row-wise softmax loop over ``z`` (n, K) float32/float64, C-contiguous.

    ``target``: int64 labels (n,) for the ``*_labels`` kinds, or (n, K) targets of z's
    dtype for ``*_dense``; ``w``: float64 (n,) or None; ``class_weight`` float64 (K,);
    ``ignore_index``: int or None.  ``out_value`` (n,) is filled with scale·wᵢ·lᵢ when
    given; ``grad``/``hess`` (n, K) with scale·wᵢ·l′ / scale·wᵢ·l″ when given.
    Returns (Σᵢ wᵢ·lᵢ, status flags).
    """
    cdef Py_ssize_t n = z.shape[0], k = z.shape[1], i
    cdef double p[4]
    cdef Rows r
    cdef const int64_t[::1] labels
    cdef const floating[:, ::1] dense
    cdef (double, int) result
    if kind < 0 or kind > 7:
        raise ValueError(f"unknown softmax kind id {kind}")
    if len(params) > 4:
        raise ValueError(f"at most 4 parameters, got {params!r}")
    for i in range(4):
        p[i] = params[i] if i < len(params) else NAN
    if class_weight.shape[0] != k:
        raise ValueError(f"class_weight has {class_weight.shape[0]} entries for {k} classes")
    if w is not None and w.shape[0] != n:
        raise ValueError(f"w has {w.shape[0]} entries for {n} rows")
    if out_value is not None and out_value.shape[0] != n:
        raise ValueError(f"out_value has {out_value.shape[0]} entries for {n} rows")
    if grad is not None and (grad.shape[0] != n or grad.shape[1] != k):
        raise ValueError(f"grad must have shape ({n}, {k})")
    if hess is not None and (hess.shape[0] != n or hess.shape[1] != k):
        raise ValueError(f"hess must have shape ({n}, {k})")
    if kind % 2 == 0:  # labels
        labels = target
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for {n} rows")
        r.target = &labels[0] if n > 0 else NULL
    else:
        dense = target
        if dense.shape[0] != n or dense.shape[1] != k:
            raise ValueError(f"dense targets must have shape ({n}, {k})")
        r.target = &dense[0, 0] if n * k > 0 else NULL
    if n == 0:
        return 0.0, 0
    r.n = n
    r.k = k
    r.w = &w[0] if w is not None and w.shape[0] > 0 else NULL
    r.cw = &class_weight[0] if k > 0 else NULL
    r.p = p
    r.has_ignore = ignore_index is not None
    r.ignore_index = ignore_index if ignore_index is not None else 0
    r.scale = scale
    r.write_values = out_value is not None
    cdef const floating* zp = &z[0, 0] if k > 0 else NULL
    cdef floating* op = &out_value[0] if out_value is not None else NULL
    cdef floating* gp = &grad[0, 0] if grad is not None and k > 0 else NULL
    cdef floating* hp = &hess[0, 0] if hess is not None and k > 0 else NULL
    with nogil:
        if kind == 0:
            result = _rows(<CceLogitsLabels*>NULL, &r, zp, op, gp, hp, n_threads)
        elif kind == 1:
            result = _rows(<CceLogitsDense*>NULL, &r, zp, op, gp, hp, n_threads)
        elif kind == 2:
            result = _rows(<CceProbsLabels*>NULL, &r, zp, op, gp, hp, n_threads)
        elif kind == 3:
            result = _rows(<CceProbsDense*>NULL, &r, zp, op, gp, hp, n_threads)
        elif kind == 4:
            result = _rows(<FocalLogitsLabels*>NULL, &r, zp, op, gp, hp, n_threads)
        elif kind == 5:
            result = _rows(<FocalLogitsDense*>NULL, &r, zp, op, gp, hp, n_threads)
        elif kind == 6:
            result = _rows(<FocalProbsLabels*>NULL, &r, zp, op, gp, hp, n_threads)
        else:
            result = _rows(<FocalProbsDense*>NULL, &r, zp, op, gp, hp, n_threads)
    if result[1] == -1:
        raise MemoryError("numbaloss: no memory for the per-chunk partial sums")
    return result[0], result[1]

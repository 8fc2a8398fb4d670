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
Chunks of rows (about ROW_CHUNK_ELEMENTS elements each) are summed in chunk order,
serial below PARALLEL_THRESHOLD elements and over OpenMP threads above it.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, exp, isfinite, isnan, log, log1p
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from cython cimport floating

from _common cimport (BAD_LABEL, BAD_PREDICTION, BAD_TARGET, PARALLEL_THRESHOLD, ROW_CHUNK_ELEMENTS)
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
cdef inline (double, double, double, double, double) _focal_logit_class(
        double shifted, double log_total, double log_rest, double gamma) noexcept nogil:
    """For one class with logit zⱼ = m + ``shifted``: (p, log p, u = (1 − p)^γ, B/a,
    dB/dp / a) in log space.

    ``log_rest`` is log(1 − p) when it was computed from the other classes
    (the arg-max class), or nan to take log1p(−p) (exact for p ≤ ½).
    """
    cdef double logp = shifted - log_total
    cdef double prob = exp(logp)
    cdef double log_q = log_rest if not isnan(log_rest) else log1p(-prob)
    cdef double q = exp(log_q)
    cdef double u = 1.0 if gamma == 0.0 else exp(gamma * log_q)
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
        prob, logp, u, b, dbdp = _focal_logit_class(<double>z[j] - m, log_total,
                                                    log_rest if j == arg else NAN, gamma)
        loss -= a * u * logp
        sum_b += a * b
        sum_c += a * prob * dbdp
    # second pass: l′ₖ = pₖΣB − Bₖ and the diagonal Hessian (Bₖ, Cₖ recomputed
    # rather than parked in the float32 output, which would round them)
    if grad != NULL or hess != NULL:
        for j in range(k):
            a = alphas[j] * _focal_target(dense, j, label)
            prob, logp, u, b, dbdp = _focal_logit_class(<double>z[j] - m, log_total,
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


cdef (double, int) _rows(Kind* kind, const Rows* r, const floating* z, floating* out_value, floating* grad,
                         floating* hess, int n_threads) noexcept nogil:
    """Σᵢ wᵢ·lᵢ over the rows (chunk sums added in chunk order) and the status flags;
    (nan, -1) when out of memory."""
    cdef Py_ssize_t per_chunk = max(1, ROW_CHUNK_ELEMENTS // max(r.k, 1))
    cdef Py_ssize_t n_chunks = (r.n + per_chunk - 1) // per_chunk
    cdef Py_ssize_t c
    cdef double total = 0.0
    cdef int result = 0
    cdef (double, int) res
    cdef double* partial = <double*>malloc(max(n_chunks, 1) * sizeof(double))
    cdef int* flags = <int*>malloc(max(n_chunks, 1) * sizeof(int))
    if partial == NULL or flags == NULL:
        free(partial)
        free(flags)
        return NAN, -1
    if n_threads > 1 and r.n * r.k >= PARALLEL_THRESHOLD:
        for c in prange(n_chunks, num_threads=n_threads, schedule="dynamic"):
            res = _rows_chunk(kind, r, c, per_chunk, z, out_value, grad, hess)
            partial[c] = res[0]
            flags[c] = res[1]
    else:
        for c in range(n_chunks):
            res = _rows_chunk(kind, r, c, per_chunk, z, out_value, grad, hess)
            partial[c] = res[0]
            flags[c] = res[1]
    for c in range(n_chunks):
        total += partial[c]
        result |= flags[c]
    free(partial)
    free(flags)
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

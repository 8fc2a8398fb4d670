"""Numba loops of the softmax (categorical) losses: one row function per kind,
one row loop compiled per kind.

Kinds: ``{cce,focal}_{logits,probs}_{labels,dense}``.  A row function

    row(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess)
        -> (loss of row i, status flags)

computes the row's loss (class weights ``cw`` included, no sample weight),
writes s·l′ into ``grad[i]`` and s·l″ (diagonal) into ``hess[i]`` when asked, and
checks its inputs in the same pass: a label outside [0, K) that is not the
ignored one (BAD_LABEL: the row is then skipped, never used as an index), a dense
target outside [0, 1] (BAD_TARGET), a probability outside [0, 1]
(BAD_PREDICTION).  Parameters ``p``: cce (smoothing, Σⱼ cⱼ, eps); focal (gamma, eps).
The formulas are those of ``numbaloss.reference.categorical``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import fastmath
from ._parallel import map_chunks
from ._specialise import source_hash, specialise
from .fastmath import exp, exp_to_float32, log, log1p, max_ignoring_nan, reassoc_add

BAD_TARGET = 1
BAD_PREDICTION = 2
BAD_LABEL = 4
ROW_CHUNK_ELEMENTS = 1 << 14
LABEL_SMOOTHING = False  # rebound per compiled copy of label_rows: p[0] is the smoothing
FLOAT32_EXP = False  # rebound per compiled copy of label_rows: float32 logits

inline = njit(inline="always", nogil=True, error_model="numpy")


@inline
def _zero_row(i, want_grad, grad, want_hess, hess):
    if want_grad:
        for j in range(grad.shape[1]):
            grad[i, j] = 0.0
    if want_hess:
        for j in range(hess.shape[1]):
            hess[i, j] = 0.0


@inline
def _label_status(label, n_classes, has_ignore, ignore_index):
    """0: use the label; -1: ignored row; BAD_LABEL: outside [0, K)."""
    if has_ignore and label == ignore_index:
        return -1
    if label < 0 or label >= n_classes:
        return BAD_LABEL
    return 0


@inline
def _max_and_argmax(z, i):
    m = np.float64(z[i, 0])
    arg = 0
    for j in range(1, z.shape[1]):
        v = np.float64(z[i, j])
        if v > m:
            m = v
            arg = j
    if not math.isfinite(m):  # all −inf, or a +inf/nan: let the arithmetic propagate
        m = 0.0 if m == -math.inf else m
    return m, arg


@inline
def _log_sum_exp_shifted(z, i, m):
    """log Σⱼ e^{zⱼ − m}: the log-sum-exp less the shift m, so that log pⱼ =
    (zⱼ − m) − this keeps its precision when the logits are huge."""
    total = 0.0
    for j in range(z.shape[1]):
        total = reassoc_add(total, exp(np.float64(z[i, j]) - m))
    return log(total)


# ----------------------------------------------------------------------- cce
@inline
def cce_logits_labels(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    label = target[i]
    status = _label_status(label, k, has_ignore, ignore_index)
    if status != 0:
        _zero_row(i, want_grad, grad, want_hess, hess)
        return 0.0, max(status, 0)
    smoothing = p[0]
    uniform = smoothing / k
    m, _ = _max_and_argmax(z, i)
    log_total = _log_sum_exp_shifted(z, i, m)
    c_label = (1.0 - smoothing) * cw[label]
    weight_total = c_label + uniform * p[1]  # S = Σⱼ cⱼtⱼ
    loss = weight_total * log_total - c_label * (np.float64(z[i, label]) - m)
    if uniform != 0.0:
        for j in range(k):
            loss -= uniform * cw[j] * (np.float64(z[i, j]) - m)
    if want_grad or want_hess:
        for j in range(k):
            prob = exp(np.float64(z[i, j]) - m - log_total)
            ct = uniform * cw[j] + (c_label if j == label else 0.0)
            if want_grad:
                grad[i, j] = s * (prob * weight_total - ct)
            if want_hess:
                hess[i, j] = s * weight_total * prob * (1.0 - prob)
    return loss, 0


@inline
def cce_logits_dense(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    smoothing = p[0]
    uniform = smoothing / k
    m, _ = _max_and_argmax(z, i)
    log_total = _log_sum_exp_shifted(z, i, m)
    weight_total = 0.0
    loss = 0.0
    status = 0
    for j in range(k):
        t = np.float64(target[i, j])
        if t < 0.0 or t > 1.0:
            status = BAD_TARGET
        ct = cw[j] * (t * (1.0 - smoothing) + uniform)
        weight_total = reassoc_add(weight_total, ct)
        loss = reassoc_add(loss, -ct * ((np.float64(z[i, j]) - m) - log_total))
    if want_grad or want_hess:
        for j in range(k):
            prob = exp(np.float64(z[i, j]) - m - log_total)
            ct = cw[j] * (np.float64(target[i, j]) * (1.0 - smoothing) + uniform)
            if want_grad:
                grad[i, j] = s * (prob * weight_total - ct)
            if want_hess:
                hess[i, j] = s * weight_total * prob * (1.0 - prob)
    return loss, status


@inline
def _cce_probs_term(zij, ct, eps, s, i, j, want_grad, grad, want_hess, hess):
    prob = min(max(zij, eps), 1.0 - eps)
    if want_grad:
        grad[i, j] = -s * ct / prob
    if want_hess:
        hess[i, j] = s * ct / (prob * prob)
    return -ct * log(prob), (BAD_PREDICTION if (zij < 0.0) | (zij > 1.0) else 0)


@inline
def cce_probs_labels(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    label = target[i]
    status = _label_status(label, k, has_ignore, ignore_index)
    if status != 0:
        _zero_row(i, want_grad, grad, want_hess, hess)
        return 0.0, max(status, 0)
    smoothing = p[0]
    uniform = smoothing / k
    loss = 0.0
    for j in range(k):
        ct = uniform * cw[j] + ((1.0 - smoothing) * cw[label] if j == label else 0.0)
        term, flag = _cce_probs_term(np.float64(z[i, j]), ct, p[2], s, i, j, want_grad, grad, want_hess, hess)
        loss += term
        status |= flag
    return loss, status


@inline
def cce_probs_dense(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    smoothing = p[0]
    uniform = smoothing / k
    loss = 0.0
    status = 0
    for j in range(k):
        t = np.float64(target[i, j])
        if t < 0.0 or t > 1.0:
            status |= BAD_TARGET
        ct = cw[j] * (t * (1.0 - smoothing) + uniform)
        term, flag = _cce_probs_term(np.float64(z[i, j]), ct, p[2], s, i, j, want_grad, grad, want_hess, hess)
        loss += term
        status |= flag
    return loss, status


# --------------------------------------------------------------------- focal
@inline
def _focal_logit_class(shifted, log_total, log_rest, gamma):
    """For one class with logit zⱼ = m + ``shifted``: (p, log p, u = (1 − p)^γ, B/a,
    dB/dp / a) in log space.

    ``log_rest`` is log(1 − p) when it was computed from the other classes
    (the arg-max class), or nan to take log1p(−p) (exact for p ≤ ½).
    """
    logp = shifted - log_total
    prob = exp(logp)
    log_q = log_rest if not math.isnan(log_rest) else log1p(-prob)
    q = exp(log_q)
    u = 1.0 if gamma == 0.0 else exp(gamma * log_q)
    ratio = logp / q if q > 0.0 else -1.0  # log p / (1 − p) → −1 as p → 1
    b = u * (1.0 - gamma * prob * ratio)
    dbdp = gamma * u / q * ((gamma - 1.0) * prob * ratio - logp - 2.0) if q > 0.0 else 0.0
    return prob, logp, u, b, dbdp


@inline
def _focal_target(target, i, j, label, dense):
    if dense:
        return np.float64(target[i, j])
    return 1.0 if j == label else 0.0


@inline
def _focal_logits_row(target, i, z, alphas, gamma, label, dense, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    m, arg = _max_and_argmax(z, i)
    total = 0.0
    rest = 0.0
    for j in range(k):
        e = exp(np.float64(z[i, j]) - m)
        total = reassoc_add(total, e)
        rest = reassoc_add(rest, e if j != arg else 0.0)
    log_total = log(total)
    log_rest = log(rest) - log_total if k > 1 else -math.inf
    loss = 0.0
    sum_b = 0.0
    sum_c = 0.0
    status = 0
    # first pass: the loss, Σⱼ Bⱼ and Σⱼ Cⱼ
    for j in range(k):
        t = _focal_target(target, i, j, label, dense)
        if t < 0.0 or t > 1.0:
            status = BAD_TARGET
        a = alphas[j] * t
        if a == 0.0:
            continue
        prob, logp, u, b, dbdp = _focal_logit_class(
            np.float64(z[i, j]) - m, log_total, log_rest if j == arg else math.nan, gamma
        )
        loss -= a * u * logp
        sum_b += a * b
        sum_c += a * prob * dbdp
    # second pass: l′ₖ = pₖΣB − Bₖ and the diagonal Hessian (Bₖ, Cₖ recomputed
    # rather than parked in the float32 output, which would round them)
    if want_grad or want_hess:
        for j in range(k):
            a = alphas[j] * _focal_target(target, i, j, label, dense)
            prob, logp, u, b, dbdp = _focal_logit_class(
                np.float64(z[i, j]) - m, log_total, log_rest if j == arg else math.nan, gamma
            )
            b_j = a * b if a != 0.0 else 0.0
            c_j = a * prob * dbdp if a != 0.0 else 0.0
            if want_grad:
                grad[i, j] = s * (prob * sum_b - b_j)
            if want_hess:
                hess[i, j] = s * (
                    prob * (1.0 - prob) * sum_b - c_j * (1.0 - prob) + prob * (c_j - prob * sum_c)
                )
    return loss, status


@inline
def focal_logits_labels(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    label = target[i]
    status = _label_status(label, z.shape[1], has_ignore, ignore_index)
    if status != 0:
        _zero_row(i, want_grad, grad, want_hess, hess)
        return 0.0, max(status, 0)
    return _focal_logits_row(target, i, z, cw, p[0], label, False, s, want_grad, grad, want_hess, hess)


@inline
def focal_logits_dense(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    return _focal_logits_row(target, i, z, cw, p[0], -1, True, s, want_grad, grad, want_hess, hess)


@inline
def _focal_prob_class(zij, a, gamma, eps, s, i, j, want_grad, grad, want_hess, hess):
    prob = min(max(zij, eps), 1.0 - eps)
    q = 1.0 - prob
    logp = log(prob)
    log_q = log(q)
    u = 1.0 if gamma == 0.0 else exp(gamma * log_q)
    u1 = exp((gamma - 1.0) * log_q)  # q^{γ−1}
    if want_grad:
        grad[i, j] = -s * a * (u / prob - gamma * u1 * logp)
    if want_hess:
        u2 = exp((gamma - 2.0) * log_q)
        hess[i, j] = -s * a * (
            gamma * (gamma - 1.0) * u2 * logp - 2.0 * gamma * u1 / prob - u / (prob * prob)
        )
    return -a * u * logp, (BAD_PREDICTION if (zij < 0.0) | (zij > 1.0) else 0)


@inline
def focal_probs_labels(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    label = target[i]
    status = _label_status(label, k, has_ignore, ignore_index)
    if status != 0:
        _zero_row(i, want_grad, grad, want_hess, hess)
        return 0.0, max(status, 0)
    loss = 0.0
    for j in range(k):
        a = cw[j] if j == label else 0.0
        term, flag = _focal_prob_class(np.float64(z[i, j]), a, p[0], p[1], s, i, j, want_grad, grad, want_hess, hess)
        loss += term
        status |= flag
    return loss, status


@inline
def focal_probs_dense(target, i, z, cw, p, has_ignore, ignore_index, s, want_grad, grad, want_hess, hess):
    k = z.shape[1]
    loss = 0.0
    status = 0
    for j in range(k):
        t = np.float64(target[i, j])
        if t < 0.0 or t > 1.0:
            status |= BAD_TARGET
        term, flag = _focal_prob_class(
            np.float64(z[i, j]), cw[j] * t, p[0], p[1], s, i, j, want_grad, grad, want_hess, hess
        )
        loss += term
        status |= flag
    return loss, status


# ------------------------------------------- integer labels from logits (CPU)
# The row functions above handle one row with loops over its K classes; for small
# K those loops are too short to vectorise (K = 10: one 8-wide step and two scalar
# exps per loop), so the labelled logit kinds, the common case, run on the CPU as
# ``label_rows``: it computes e^{z − shift} for a whole chunk of rows in one flat
# loop (``_softmax_block``) and then finishes each row without exps
# (``*_from_softmax``).  The CUDA kernels keep the row functions.
#
# Measured: per-row loops here index whole arrays (ex[r, j], grad[i, j]) rather
# than row views: each view (z[i], ex[r]) costs reference-count updates, which made
# the K = 10 loop more than 2x slower.

#: a row whose Σⱼ e^{zⱼ − M} (M: the maximum of its chunk) is below this, i.e. whose
#: maximum is more than ~30 below M, gets its own shift (``_softmax_row``): with the
#: shared one, the rounding error of log pⱼ = (zⱼ − M) − log Σ grows with M − zⱼ
#: (~1e-14 at 30), and beyond ~700 the exps underflow.
SHARED_SHIFT_MIN_TOTAL = 1e-13


@inline
def _softmax_row(z, i, r, k, ex, shifts, totals, log_totals):
    """ex[r, j] = e^{zᵢⱼ − m} for m = maxⱼ zᵢⱼ (0 for a row of −inf); the row's shift,
    Σⱼ and log Σⱼ into shifts[r], totals[r], log_totals[r]."""
    m = -math.inf
    for j in range(k):
        m = max_ignoring_nan(m, np.float64(z[i, j]))
    m = 0.0 if m == -math.inf else m
    total = 0.0
    for j in range(k):
        e = exp(np.float64(z[i, j]) - m)
        ex[r, j] = e
        total = reassoc_add(total, e)
    shifts[r] = m
    totals[r] = total
    log_totals[r] = log(total)


@inline
def _softmax_block(z, z_flat, first, count, k, ex, ex_flat, shifts, totals, log_totals, float32_exp):
    """For the rows first … first + count − 1 (r from 0): ex[r, j] = e^{zᵣⱼ − shifts[r]},
    totals[r] = Σⱼ ex[r, j] and log_totals[r] = log totals[r].  The shift is the
    chunk's maximum M, shared so that the exps run as one flat loop over count·K
    values (``ex_flat`` is ex as one vector, ``z_flat`` z), except for rows far
    below M (``SHARED_SHIFT_MIN_TOTAL``), which get their own maximum.
    ``float32_exp``: float32 logits, whose probabilities are float32, take
    ``exp_to_float32``, about half the cost of the float64 ``exp``."""
    block = z_flat[first * k:(first + count) * k]
    shift = -math.inf
    for t in range(block.shape[0]):
        shift = max_ignoring_nan(shift, np.float64(block[t]))
    shift = 0.0 if shift == -math.inf else shift
    if float32_exp:
        for t in range(block.shape[0]):
            ex_flat[t] = exp_to_float32(np.float64(block[t]) - shift)
    else:
        for t in range(block.shape[0]):
            ex_flat[t] = exp(np.float64(block[t]) - shift)
    for r in range(count):
        total = 0.0
        for j in range(k):
            total = reassoc_add(total, ex[r, j])
        totals[r] = total
        shifts[r] = shift
    for r in range(count):
        log_totals[r] = log(totals[r])
    for r in range(count):
        if not totals[r] >= SHARED_SHIFT_MIN_TOTAL:  # nan too: recomputed, stays nan
            _softmax_row(z, first + r, r, k, ex, shifts, totals, log_totals)


# ``*_from_softmax`` take and return scalars only (an inlined function taking arrays
# cost ~20 ns of reference counting per row here): the row's loss and the
# coefficients with which ``label_rows`` writes, for pⱼ = ex[r, j] / Σ,
#     l′ⱼ = ex[r, j]·coef − uniform·cⱼ,   l″ⱼ = pⱼ(1 − pⱼ)·h1 − pⱼ²·h2,
# and then the label's own l′ and l″.

@inline
def _one_minus_p(ex_label, total, rest):
    """1 − p_label: from the other classes (``rest``) when p > ½, where 1 − p would
    cancel (and ex, Σ carry float32 precision with ``exp_to_float32``)."""
    return 1.0 - ex_label / total if math.isnan(rest) else rest / total


@inline
def cce_from_softmax(ex_label, total, log_total, shifted_label, rest, smoothed_sum, c_label_class, k, p):
    """cce_logits_labels: (loss, coef, uniform, l′_label, h1, h2, l″_label) of a row
    with zⱼ − m, Σⱼ e^{zⱼ − m} and its log, Σⱼ cⱼ(zⱼ − m) (``smoothed_sum``) and
    Σ_{j ≠ label} e^{zⱼ − m} when p_label > ½, else nan (``rest``)."""
    smoothing = p[0]
    uniform = smoothing / k
    c_label = (1.0 - smoothing) * c_label_class
    uniform_total = uniform * p[1]
    weight_total = c_label + uniform_total  # S = Σⱼ cⱼtⱼ
    # −log p_label = log(1 + rest/ex_label): exact for p near 1, unlike log Σ − (z − m)
    neg_logp = log_total - shifted_label if math.isnan(rest) else log1p(rest / ex_label)
    loss = c_label * neg_logp + uniform_total * log_total - uniform * smoothed_sum
    prob = ex_label / total
    # l′_label = S·p − c_label − uniform·c_label_class, with S·p − c_label written
    # through 1 − p
    grad_label = uniform_total * prob - c_label * _one_minus_p(ex_label, total, rest) - uniform * c_label_class
    return (loss, weight_total / total, uniform, grad_label,
            weight_total, 0.0, weight_total * prob * _one_minus_p(ex_label, total, rest))


@inline
def focal_from_softmax(ex_label, total, log_total, shifted_label, rest, smoothed_sum, a, k, p):
    """focal_logits_labels: as ``cce_from_softmax``; only the label's class has a
    nonzero Bⱼ, so l′ⱼ = pⱼB − [j = label]·B.  ``rest`` = Σ_{j ≠ label} e^{zⱼ − m}
    when p_label > ½ (then log(1 − p) = log rest − log Σ), else nan."""
    gamma = p[0]
    if a == 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    log_rest = math.nan
    if not math.isnan(rest):
        log_rest = log(rest) - log_total if k > 1 else -math.inf
    prob, logp, u, b_unit, dbdp = _focal_logit_class(shifted_label, log_total, log_rest, gamma)
    b = a * b_unit
    c = a * prob * dbdp
    q = _one_minus_p(ex_label, total, rest)
    # l′ = (p − 1)·B and l″ = p(1 − p)B − C(1 − p) + p(C − pC), through 1 − p
    return -a * u * logp, b / total, 0.0, -q * b, b, c, q * (prob * b - c + prob * c)


# ---------------------------------------------------------------------- loop
def rows(target, z, w, cw, p, has_ignore, ignore_index, scale, write_values, out_value,
         want_grad, grad, want_hess, hess, c0, c1):
    """Per chunk of rows in [c0, c1): Σᵢ wᵢ·lᵢ, and the status flags; fills
    out_value[i] = scale·wᵢ·lᵢ when ``write_values``, grad/hess rows with
    scale·wᵢ·l′ / scale·wᵢ·l″ when wanted."""
    n = z.shape[0]
    per_chunk = _rows_per_chunk(z.shape[1])
    partial = np.zeros(c1 - c0)
    found = 0
    for cc in range(c1 - c0):
        first = (c0 + cc) * per_chunk
        acc = 0.0
        for r in range(min(per_chunk, n - first)):
            i = first + r
            wi = w[i] if w.shape[0] else 1.0
            loss, status = row(target, i, z, cw, p, has_ignore, ignore_index, scale * wi,
                               want_grad, grad, want_hess, hess)
            found |= status
            acc += wi * loss
            if write_values:
                out_value[i] = scale * wi * loss
        partial[cc] = acc
    return partial, found


def label_rows(target, z, z_flat, w, cw, p, has_ignore, ignore_index, scale, write_values, out_value,
               want_grad, grad, want_hess, hess, c0, c1):
    """``rows`` for integer labels and logits, per chunk of rows in three passes:
    the softmax (``_softmax_block``); ``from_softmax`` over the chunk's rows as one
    flat loop, which vectorises its exps and logs; the gradient rows."""
    n, k = z.shape
    per_chunk = _rows_per_chunk(k)
    partial = np.zeros(c1 - c0)
    found = 0
    ex_flat = np.empty(per_chunk * k)
    ex = ex_flat.reshape(per_chunk, k)
    shifts = np.empty(per_chunk)
    totals = np.empty(per_chunk)
    log_totals = np.empty(per_chunk)
    # per row: the label's ex, z − m and class weight, Σ_{j≠label} ex (or nan), Σⱼ cⱼ(zⱼ − m)
    ex_label = np.empty(per_chunk)
    shifted_label = np.empty(per_chunk)
    weight_label = np.empty(per_chunk)
    rest = np.empty(per_chunk)
    smoothed_sum = np.zeros(per_chunk)
    # per row: from_softmax's results
    loss = np.empty(per_chunk)
    coef = np.empty(per_chunk)
    uniform = np.empty(per_chunk)
    grad_label = np.empty(per_chunk)
    h1 = np.empty(per_chunk)
    h2 = np.empty(per_chunk)
    hess_label = np.empty(per_chunk)
    smoothed = LABEL_SMOOTHING and p[0] != 0.0
    for cc in range(c1 - c0):
        first = (c0 + cc) * per_chunk
        count = min(per_chunk, n - first)
        _softmax_block(z, z_flat, first, count, k, ex, ex_flat, shifts, totals, log_totals, FLOAT32_EXP)
        for r in range(count):
            i = first + r
            label = target[i]
            if _label_status(label, k, has_ignore, ignore_index) != 0:
                label = 0  # any class: the row's results are not used
            e = ex[r, label]
            ex_label[r] = e
            shifted_label[r] = np.float64(z[i, label]) - shifts[r]
            weight_label[r] = cw[label]
            rest[r] = math.nan
            if e > 0.5 * totals[r]:
                others = 0.0
                for j in range(k):
                    others = reassoc_add(others, ex[r, j] if j != label else 0.0)
                rest[r] = others
            if smoothed:
                total = 0.0
                for j in range(k):
                    total += cw[j] * (np.float64(z[i, j]) - shifts[r])
                smoothed_sum[r] = total
        for r in range(count):
            loss[r], coef[r], uniform[r], grad_label[r], h1[r], h2[r], hess_label[r] = from_softmax(
                ex_label[r], totals[r], log_totals[r], shifted_label[r], rest[r], smoothed_sum[r],
                weight_label[r], k, p)
        acc = 0.0
        for r in range(count):
            i = first + r
            wi = w[i] if w.shape[0] else 1.0
            s = scale * wi
            label = target[i]
            status = _label_status(label, k, has_ignore, ignore_index)
            if status != 0:
                _zero_row(i, want_grad, grad, want_hess, hess)
                found |= max(status, 0)
                if write_values:
                    out_value[i] = 0.0
                continue
            if want_grad:
                if uniform[r] != 0.0:
                    for j in range(k):
                        grad[i, j] = s * (ex[r, j] * coef[r] - uniform[r] * cw[j])
                else:
                    sc = s * coef[r]
                    for j in range(k):
                        grad[i, j] = sc * ex[r, j]
                grad[i, label] = s * grad_label[r]
            if want_hess:
                inv_total = 1.0 / totals[r]
                for j in range(k):
                    pj = ex[r, j] * inv_total
                    hess[i, j] = s * (pj * (1.0 - pj) * h1[r] - pj * pj * h2[r])
                hess[i, label] = s * hess_label[r]
            acc += wi * loss[r]
            if write_values:
                out_value[i] = s * loss[r]
        partial[cc] = acc
    return partial, found


@njit(inline="always")
def _rows_per_chunk(n_classes):
    return max(1, ROW_CHUNK_ELEMENTS // max(n_classes, 1))


KINDS = (
    "cce_logits_labels", "cce_logits_dense", "cce_probs_labels", "cce_probs_dense",
    "focal_logits_labels", "focal_logits_dense", "focal_probs_labels", "focal_probs_dense",
)
#: kinds whose CPU loop is ``label_rows`` with this per-row function
_FROM_SOFTMAX = {"cce_logits_labels": "cce_from_softmax", "focal_logits_labels": "focal_from_softmax"}
_SOURCES_HASH = source_hash(fastmath)
_compiled: dict = {}


def _loop(kind: str, dtype):
    if kind not in _FROM_SOFTMAX:
        key = (kind,)
        fn = _compiled.get(key)
        if fn is None:
            fn = _compiled[key] = specialise(rows, f"{kind}__{_SOURCES_HASH}", {"row": globals()[kind]})
        return fn
    float32_exp = dtype == np.float32
    key = (kind, float32_exp)
    fn = _compiled.get(key)
    if fn is None:
        tag = f"{kind}__{'f32' if float32_exp else 'f64'}__{_SOURCES_HASH}"
        fn = _compiled[key] = specialise(label_rows, tag, {
            "from_softmax": globals()[_FROM_SOFTMAX[kind]], "LABEL_SMOOTHING": kind.startswith("cce"),
            "FLOAT32_EXP": float32_exp})
    return fn


def run(kind, params, target, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess):
    """Dispatch one call; mode as in ``numbaloss._numba.backend.elementwise``."""
    n, k = z.shape
    dummy = None
    if grad is None or hess is None:
        dummy = np.empty((0, k), dtype=z.dtype)
    has_ignore = ignore_index is not None
    ignore = np.int64(ignore_index) if has_ignore else np.int64(0)
    write_values = mode == "none"
    values = out_value if write_values else np.empty(0, dtype=z.dtype)
    want_grad = grad is not None
    want_hess = mode == "grad_hess"
    args = (target, z, w, class_weight, params, has_ignore, ignore, scale, write_values, values,
            want_grad, grad if want_grad else dummy, want_hess, hess if want_hess else dummy)
    if kind in _FROM_SOFTMAX:
        args = args[:2] + (z.reshape(-1),) + args[2:]  # z is C-contiguous
    per_chunk = max(1, ROW_CHUNK_ELEMENTS // max(k, 1))
    results = map_chunks(_loop(kind, z.dtype), args, (n + per_chunk - 1) // per_chunk, n * k)
    partial = results[0][0] if len(results) == 1 else np.concatenate([r[0] for r in results])
    flags = 0
    for r in results:
        flags |= r[1]
    return float(partial.sum()), flags

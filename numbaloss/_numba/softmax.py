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
from .fastmath import exp, log, log1p, reassoc_add

BAD_TARGET = 1
BAD_PREDICTION = 2
BAD_LABEL = 4
ROW_CHUNK_ELEMENTS = 1 << 14

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


@njit(inline="always")
def _rows_per_chunk(n_classes):
    return max(1, ROW_CHUNK_ELEMENTS // max(n_classes, 1))


KINDS = (
    "cce_logits_labels", "cce_logits_dense", "cce_probs_labels", "cce_probs_dense",
    "focal_logits_labels", "focal_logits_dense", "focal_probs_labels", "focal_probs_dense",
)
_SOURCES_HASH = source_hash(fastmath)
_compiled: dict = {}


def _loop(kind: str):
    fn = _compiled.get(kind)
    if fn is None:
        tag = f"{kind}__{_SOURCES_HASH}"
        fn = _compiled[kind] = specialise(rows, tag, {"row": globals()[kind]})
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
    per_chunk = max(1, ROW_CHUNK_ELEMENTS // max(k, 1))
    results = map_chunks(_loop(kind), args, (n + per_chunk - 1) // per_chunk, n * k)
    partial = results[0][0] if len(results) == 1 else np.concatenate([r[0] for r in results])
    flags = 0
    for r in results:
        flags |= r[1]
    return float(partial.sum()), flags

"""Float64 NumPy reference of the softmax (categorical) losses, row by row.

Each function takes the targets of n rows (integer labels (n,) or dense
one-hot/soft rows (n, K)), the predictions Z (n, K) (logits or probabilities),
per-class weights ``class_weight`` (K,) and the loss's parameters, and returns

    (loss (n,), gradient dl/dZ (n, K), diagonal Hessian d²l/dZ² (n, K))

per row, with no reduction and no sample weights.  Rows whose label equals
``ignore_index`` get loss, gradient and Hessian 0.  The public objects in
``numbaloss._registry`` apply sample weights and reductions.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(z):
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    shifted = z - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def dense_targets(y, n_classes, ignore_index):
    """Integer labels → one-hot rows (ignored rows all zero); dense rows unchanged."""
    y = np.asarray(y)
    if y.ndim == 2:
        return np.asarray(y, dtype=np.float64), np.ones(y.shape[0], dtype=bool)
    keep = np.ones(y.shape[0], dtype=bool) if ignore_index is None else y != ignore_index
    onehot = np.zeros((y.shape[0], n_classes))
    rows = np.flatnonzero(keep)
    onehot[rows, y[rows]] = 1.0
    return onehot, keep


def cce(y, z, class_weight, smoothing, from_logits, eps, ignore_index):
    """Categorical cross-entropy (PyTorch ``cross_entropy`` semantics, class axis last).

    Targets t (one-hot from labels, or soft rows) are smoothed t ← t(1 − ε) + ε/K,
    then with class weights c:

        l = −Σⱼ cⱼ tⱼ log pⱼ

    with p = softmax(z) (``from_logits``) or p = clip(z, eps, 1 − eps) (never
    renormalised).  With integer labels and smoothing this is PyTorch's
    (1 − ε)·c_y·(−log p_y) + (ε/K)·Σⱼ cⱼ(−log pⱼ).

    Logits: l′ⱼ = pⱼ·S − cⱼtⱼ with S = Σⱼ cⱼtⱼ;  l″ⱼⱼ = S·pⱼ(1 − pⱼ).
    Probabilities: l′ⱼ = −cⱼtⱼ/pⱼ;  l″ⱼⱼ = cⱼtⱼ/pⱼ².
    """
    z = np.asarray(z, dtype=np.float64)
    n_classes = z.shape[-1]
    t, keep = dense_targets(y, n_classes, ignore_index)
    t = t * (1.0 - smoothing) + smoothing / n_classes
    ct = class_weight * t
    if from_logits:
        logp = _log_softmax(z)
        p = np.exp(logp)
        s = ct.sum(axis=-1, keepdims=True)
        loss = -(ct * logp).sum(axis=-1)
        grad = p * s - ct
        hess = s * p * (1.0 - p)
    else:
        p = np.clip(z, eps, 1.0 - eps)
        loss = -(ct * np.log(p)).sum(axis=-1)
        grad = -ct / p
        hess = ct / (p * p)
    keep2 = keep[:, None]
    return np.where(keep, loss, 0.0), np.where(keep2, grad, 0.0), np.where(keep2, hess, 0.0)


def categorical_focal(y, z, alpha, gamma, from_logits, eps):
    """Softmax focal loss (Lin et al. 2017; Keras ``CategoricalFocalCrossentropy``):

        l = −Σⱼ αⱼ tⱼ (1 − pⱼ)^γ log pⱼ

    With logits, log pⱼ = zⱼ − logsumexp(z) and log(1 − pⱼ) = log Σ_{k≠j} e^{zₖ} −
    logsumexp(z) are taken in log space, so value and gradient stay finite for any
    γ ≥ 0 at saturated logits.  Writing Bⱼ = αⱼtⱼ(1 − pⱼ)^γ (1 − γ pⱼ log pⱼ / (1 − pⱼ)),
    the logit gradient is l′ₖ = pₖ Σⱼ Bⱼ − Bₖ.  The diagonal Hessian is
    l″ₖₖ = pₖ(1 − pₖ)ΣB − Cₖ(1 − pₖ) + pₖ(Cₖ − pₖ ΣC), Cⱼ = pⱼ dBⱼ/dpⱼ.
    With probabilities (clipped, not renormalised) derivatives are w.r.t. pⱼ.
    """
    z = np.asarray(z, dtype=np.float64)
    n_classes = z.shape[-1]
    t, _ = dense_targets(y, n_classes, None)
    a = alpha * t
    with np.errstate(divide="ignore", invalid="ignore"):
        if from_logits:
            logp = _log_softmax(z)
            p = np.exp(logp)
            # log(1 − pⱼ) from the other classes: log Σ_{k≠j} pₖ, exact at saturation
            log_q = np.empty_like(z)
            for j in range(n_classes):
                others = np.delete(logp, j, axis=-1)
                if others.shape[-1] == 0:
                    log_q[:, j] = -np.inf
                else:
                    m = others.max(axis=-1, keepdims=True)
                    m = np.where(np.isfinite(m), m, 0.0)
                    log_q[:, j] = (m + np.log(np.exp(others - m).sum(axis=-1, keepdims=True)))[:, 0]
            q = np.exp(log_q)
            u = np.exp(gamma * log_q) if gamma != 0 else np.ones_like(z)
            # ratio log p / (1 − p), → −1 as p → 1
            ratio = np.where(q > 0, logp / q, -1.0)
            b = a * u * (1.0 - gamma * p * ratio)
            loss = -(a * u * logp).sum(axis=-1)
            sb = b.sum(axis=-1, keepdims=True)
            grad = p * sb - b
            # dB/dp = aγ(u/q)[(γ − 1)p·ratio − log p − 2]
            dbdp = np.where(
                q > 0,
                a * gamma * u / q * ((gamma - 1.0) * p * ratio - logp - 2.0),
                0.0,
            )
            c = p * dbdp
            sc = c.sum(axis=-1, keepdims=True)
            hess = p * (1.0 - p) * sb - c * (1.0 - p) + p * (c - p * sc)
        else:
            p = np.clip(z, eps, 1.0 - eps)
            q = 1.0 - p
            logp = np.log(p)
            u = q**gamma
            loss = -(a * u * logp).sum(axis=-1)
            grad = -a * (u / p - gamma * q ** (gamma - 1.0) * logp)
            hess = -a * (
                gamma * (gamma - 1.0) * q ** (gamma - 2.0) * logp
                - 2.0 * gamma * q ** (gamma - 1.0) / p
                - u / (p * p)
            )
    return loss, grad, hess

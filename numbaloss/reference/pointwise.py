"""Float64 NumPy reference of the elementwise loss terms.

Each function takes the target ``y`` and the prediction ``z`` (arrays of the same
shape; some terms ignore ``y`` because their target is a constant) plus the
term's parameters, and returns three float64 arrays of that shape:

    (loss l(y, z), dl/dz, d²l/dz²)

per element, with no reduction and no weights.  The public losses in
``numbaloss._registry`` say which term they use, with which parameters, and how
terms are weighted and reduced; the Numba point functions in
``numbaloss._numba.points`` implement the same names one to one.

Written for clarity: this module is the oracle the tests compare every backend to.
"""

from __future__ import annotations

import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _sigmoid(z):
    """σ(z) = 1 / (1 + e^{-z}), evaluated without overflow for either sign."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    """softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^{-|x|})."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def squared_error(y, z):
    """l = (z − y)²,  l′ = 2(z − y),  l″ = 2.  (PyTorch ``mse_loss`` per element.)"""
    r = _f64(z) - _f64(y)
    return r * r, 2.0 * r, np.full_like(r, 2.0)


def absolute_error(y, z):
    """l = |z − y|,  l′ = sign(z − y) (0 where equal),  l″ = 0."""
    r = _f64(z) - _f64(y)
    return np.abs(r), np.sign(r), np.zeros_like(r)


def huber(y, z, delta):
    """Huber (1964): l = ½r² if |r| ≤ δ else δ(|r| − ½δ), r = z − y.

    l′ = r or δ·sign(r);  l″ = 1 inside the quadratic zone, 0·r outside (0, or NaN
    where r is NaN or ±inf, as the compiled loops give it).
    (PyTorch ``huber_loss``.)
    """
    r = _f64(z) - _f64(y)
    inside = np.abs(r) <= delta
    loss = np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(inside, r, delta * np.sign(r))
    return loss, grad, np.where(inside, 1.0, 0.0 * r)


def _smooth_binary(y, smoothing):
    """Binary label smoothing y ← y(1 − ε) + ε/2."""
    return _f64(y) * (1.0 - smoothing) + 0.5 * smoothing


def bce_logits(y, z, pos_weight, smoothing):
    """Binary cross-entropy on a logit z, with p = σ(z) and the target smoothed.

    l = −[w₊·y·log σ(z) + (1 − y)·log(1 − σ(z))] = w₊·y·softplus(−z) + (1 − y)·softplus(z)
    l′ = (w₊y + 1 − y)·σ(z) − w₊y,   l″ = (w₊y + 1 − y)·σ(z)(1 − σ(z)).
    (PyTorch ``binary_cross_entropy_with_logits`` with scalar ``pos_weight`` w₊.)
    """
    y = _smooth_binary(y, smoothing)
    z = _f64(z)
    s = _sigmoid(z)
    a = pos_weight * y + 1.0 - y
    loss = pos_weight * y * _softplus(-z) + (1.0 - y) * _softplus(z)
    return loss, a * s - pos_weight * y, a * s * _sigmoid(-z)


def bce_probs(y, z, pos_weight, smoothing, eps):
    """Binary cross-entropy on a probability p = clip(z, ε, 1 − ε).

    l = −[w₊·y·log p + (1 − y)·log(1 − p)],
    l′ = −w₊y/p + (1 − y)/(1 − p),  l″ = w₊y/p² + (1 − y)/(1 − p)²
    (derivatives at the clipped p; PyTorch ``binary_cross_entropy`` clamps the
    log at −100 instead, which agrees for p inside [ε, 1 − ε]).
    """
    y = _smooth_binary(y, smoothing)
    p = np.clip(_f64(z), eps, 1.0 - eps)
    loss = -(pos_weight * y * np.log(p) + (1.0 - y) * np.log1p(-p))
    grad = -pos_weight * y / p + (1.0 - y) / (1.0 - p)
    hess = pos_weight * y / (p * p) + (1.0 - y) / ((1.0 - p) * (1.0 - p))
    return loss, grad, hess


def _focal_from_parts(y, alpha_pos, alpha_neg, gamma, ce, dce, d2ce, log_q, dq, d2q, q):
    """FL = α_t·q^γ·CE with q = 1 − p_t, given CE, q and their derivatives.

    FL′ = α_t q^γ [γ (q′/q) CE + CE′]
    FL″ = α_t q^γ [γ² (q′/q)² CE + 2γ (q′/q) CE′ + γ (q″/q − (q′/q)²) CE + CE″]
    q^γ = exp(γ log q) is taken from log q so it stays finite for any γ ≥ 0.
    """
    alpha_t = alpha_pos * y + alpha_neg * (1.0 - y)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q_gamma = np.where(gamma == 0.0, 1.0, np.exp(gamma * log_q))
        r = dq / q  # q′/q, written by the callers in a form that never divides 0 by 0
        r = np.where(np.isfinite(r), r, 0.0)
        r2 = d2q / q
        r2 = np.where(np.isfinite(r2), r2, 0.0)
    loss = alpha_t * q_gamma * ce
    grad = alpha_t * q_gamma * (gamma * r * ce + dce)
    hess = alpha_t * q_gamma * (
        gamma * gamma * r * r * ce + 2.0 * gamma * r * dce + gamma * (r2 - r * r) * ce + d2ce
    )
    return loss, grad, hess


def focal_logits(y, z, alpha_pos, alpha_neg, gamma):
    """Sigmoid focal loss on a logit (Lin et al. 2017, "Focal Loss for Dense Object
    Detection"; torchvision ``sigmoid_focal_loss``), soft targets allowed:

    p = σ(z), p_t = p·y + (1 − p)(1 − y), α_t = α₊·y + α₋·(1 − y),
    FL = α_t (1 − p_t)^γ · BCE(y, p).

    q = 1 − p_t = y·σ(−z) + (1 − y)·σ(z) is evaluated in log space,
    log q = logaddexp(log y + log σ(−z), log(1 − y) + log σ(z)), and
    q′/q = (1 − 2y) / (y/p + (1 − y)/(1 − p)) avoids 0/0 at saturated logits.
    """
    y = _f64(y)
    z = _f64(z)
    p = _sigmoid(z)
    one_minus_p = _sigmoid(-z)
    ce, dce, d2ce = bce_logits(y, z, 1.0, 0.0)
    with np.errstate(divide="ignore"):
        log_q = np.logaddexp(np.log(y) - _softplus(z), np.log1p(-y) - _softplus(-z))
        inv = np.where(y > 0, y / p, 0.0) + np.where(y < 1, (1.0 - y) / one_minus_p, 0.0)
        r = (1.0 - 2.0 * y) / inv  # q′/q
    r = np.where(np.isfinite(r), r, 0.0)
    q = np.ones_like(z)  # r is passed directly as q′/q below
    return _focal_from_parts(
        y, alpha_pos, alpha_neg, gamma, ce, dce, d2ce, log_q, r, r * (1.0 - 2.0 * p), q
    )


def focal_probs(y, z, alpha_pos, alpha_neg, gamma, eps):
    """Sigmoid focal loss on a probability p = clip(z, ε, 1 − ε) (same formula as
    :func:`focal_logits`); q = 1 − p_t = y(1 − p) + (1 − y)p, q′ = 1 − 2y, q″ = 0,
    derivatives w.r.t. p."""
    y = _f64(y)
    p = np.clip(_f64(z), eps, 1.0 - eps)
    ce, dce, d2ce = bce_probs(y, p, 1.0, 0.0, eps)
    q = y * (1.0 - p) + (1.0 - y) * p
    with np.errstate(divide="ignore"):
        log_q = np.log(q)
    return _focal_from_parts(
        y, alpha_pos, alpha_neg, gamma, ce, dce, d2ce, log_q, 1.0 - 2.0 * y, np.zeros_like(p), q
    )


def squared_error_to_constant(y, z, target):
    """l = (z − c)² with a constant target c (LSGAN terms; ``y`` is ignored)."""
    return squared_error(np.float64(target), z)


def bce_logits_to_constant(y, z, target):
    """Binary cross-entropy of a logit against a constant target c ∈ {0, 1}
    (GAN terms; ``y`` is ignored)."""
    return bce_logits(np.full(np.shape(z), target, dtype=np.float64), z, 1.0, 0.0)


def bce_probs_to_constant(y, z, target, eps):
    """Binary cross-entropy of a probability against a constant target c ∈ {0, 1}
    (GAN terms; ``y`` is ignored)."""
    return bce_probs(np.full(np.shape(z), target, dtype=np.float64), z, 1.0, 0.0, eps)

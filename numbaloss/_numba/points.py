"""Scalar point functions of the elementwise loss terms, shared by every compiled loop.

One pair per term, named after the term in ``numbaloss.reference.pointwise``:

    <term>_value_grad(y, z, p) -> (l, dl/dz)
    <term>_grad_hess(y, z, p)  -> (dl/dz, d²l/dz²)

``y`` and ``z`` are float64 scalars (the loops widen float32 elements on load, so
the math of both dtypes runs in float64 registers); ``p`` is the term's parameter
tuple, in the order ``numbaloss._registry`` packs it.  numba.cuda kernels can call
them too.

They are ``inline="always"``, so each loop compiles them into its body (and LLVM
drops what the loop does not use, like the value in a gradient-only loop), and
they use the branch-free ``exp``/``log``/``log1p`` of ``fastmath`` so that the loops
vectorize.  The loops calling them must not use fastmath flags (see ``fastmath``).
"""

from __future__ import annotations

import math

from numba import njit

from .fastmath import exp, log, log1p

point = njit(inline="always", nogil=True, error_model="numpy")


@point
def _sigmoid(z):
    e = exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)


@point
def _softplus(x):
    return max(x, 0.0) + log1p(exp(-abs(x)))


@point
def _clip(x, eps):
    return min(max(x, eps), 1.0 - eps)


# ---------------------------------------------------------------- squared error
@point
def squared_error_value_grad(y, z, p):
    r = z - y
    return r * r, 2.0 * r


@point
def squared_error_grad_hess(y, z, p):
    return 2.0 * (z - y), 2.0


# --------------------------------------------------------------- absolute error
@point
def absolute_error_value_grad(y, z, p):
    r = z - y
    g = 1.0 if r > 0.0 else (-1.0 if r < 0.0 else (0.0 if r == 0.0 else r))
    return abs(r), g


@point
def absolute_error_grad_hess(y, z, p):
    r = z - y
    g = 1.0 if r > 0.0 else (-1.0 if r < 0.0 else (0.0 if r == 0.0 else r))
    return g, 0.0 * r


# ------------------------------------------------------------------------ huber
@point
def huber_value_grad(y, z, p):
    delta = p[0]
    r = z - y
    a = abs(r)
    if a <= delta:
        return 0.5 * r * r, r
    g = delta if r > 0.0 else (-delta if r < 0.0 else r)
    return delta * (a - 0.5 * delta), g


@point
def huber_grad_hess(y, z, p):
    delta = p[0]
    r = z - y
    if abs(r) <= delta:
        return r, 1.0
    g = delta if r > 0.0 else (-delta if r < 0.0 else r)
    return g, 0.0 * r


# ------------------------------------------------------- binary cross-entropy
@point
def bce_logits_value_grad(y, z, p):
    pos_weight = p[0]
    smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    e = exp(-abs(z))
    log1pe = log1p(e)
    # softplus(z) and softplus(-z) share log1p(e^{-|z|})
    sp_pos = max(z, 0.0) + log1pe
    sp_neg = max(-z, 0.0) + log1pe
    s = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
    a = pos_weight * y + 1.0 - y
    return pos_weight * y * sp_neg + (1.0 - y) * sp_pos, a * s - pos_weight * y


@point
def bce_logits_grad_hess(y, z, p):
    pos_weight = p[0]
    smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    e = exp(-abs(z))
    s = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
    a = pos_weight * y + 1.0 - y
    # σ(z)(1 − σ(z)) = e / (1 + e)² for e = exp(−|z|), either sign
    return a * s - pos_weight * y, a * e / ((1.0 + e) * (1.0 + e))


@point
def bce_probs_value_grad(y, z, p):
    pos_weight = p[0]
    smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    q = _clip(z, p[2])
    loss = -(pos_weight * y * log(q) + (1.0 - y) * log1p(-q))
    return loss, -pos_weight * y / q + (1.0 - y) / (1.0 - q)


@point
def bce_probs_grad_hess(y, z, p):
    pos_weight = p[0]
    smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    q = _clip(z, p[2])
    om = 1.0 - q
    return -pos_weight * y / q + (1.0 - y) / om, pos_weight * y / (q * q) + (1.0 - y) / (om * om)


# ------------------------------------------------------------------ focal loss
@point
def _focal_parts_logits(y, z):
    """(ce, ce′, ce″, q, r = q′/q, q″/q) for q = 1 − p_t on a logit."""
    e = exp(-abs(z))
    log1pe = log1p(e)
    sp_pos = max(z, 0.0) + log1pe  # −log(1 − σ(z))
    sp_neg = max(-z, 0.0) + log1pe  # −log σ(z)
    s = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
    om = e / (1.0 + e) if z >= 0.0 else 1.0 / (1.0 + e)  # 1 − σ(z), exact when small
    ce = y * sp_neg + (1.0 - y) * sp_pos
    dce = s - y
    d2ce = e / ((1.0 + e) * (1.0 + e))
    # q = y·σ(−z) + (1 − y)·σ(z): two non-negative terms, each accurate, so q is
    # accurate to a few ulp (and log q with it) down to the subnormals, without a
    # log-add-exp of log y − softplus(z) and log(1 − y) − softplus(−z) (three logs
    # and an exp more).  q underflows to 0 only where q^γ does.
    q = y * om + (1.0 - y) * s
    inv = (y / s if y > 0.0 else 0.0) + ((1.0 - y) / om if y < 1.0 else 0.0)
    r = (1.0 - 2.0 * y) / inv
    if not math.isfinite(r):
        r = 0.0
    return ce, dce, d2ce, q, r, r * (1.0 - 2.0 * s)


@point
def _focal_parts_probs(y, z, eps):
    q_p = _clip(z, eps)
    om = 1.0 - q_p
    ce = -(y * log(q_p) + (1.0 - y) * log1p(-q_p))
    dce = -y / q_p + (1.0 - y) / om
    d2ce = y / (q_p * q_p) + (1.0 - y) / (om * om)
    q = y * om + (1.0 - y) * q_p
    return ce, dce, d2ce, q, (1.0 - 2.0 * y) / q, 0.0


@point
def _focal_value_grad(alpha_t, gamma, parts, gamma_is_2):
    """(l, l′) from ``_focal_parts_*``: l = α_t·q^γ·ce.  ``gamma_is_2`` (a constant
    in each caller) makes q^γ = q·q, without the exp and log of exp(γ log q)."""
    ce, dce, d2ce, q, r, r2 = parts
    u = q * q if gamma_is_2 else (1.0 if gamma == 0.0 else exp(gamma * log(q)))
    m = alpha_t * u
    return m * ce, m * (gamma * r * ce + dce)


@point
def _focal_grad_hess(alpha_t, gamma, parts, gamma_is_2):
    """(l′, l″) from ``_focal_parts_*``, as ``_focal_value_grad``."""
    ce, dce, d2ce, q, r, r2 = parts
    u = q * q if gamma_is_2 else (1.0 if gamma == 0.0 else exp(gamma * log(q)))
    m = alpha_t * u
    hess = m * (gamma * gamma * r * r * ce + 2.0 * gamma * r * dce + gamma * (r2 - r * r) * ce + d2ce)
    return m * (gamma * r * ce + dce), hess


@point
def focal_logits_value_grad(y, z, p):
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), p[2], _focal_parts_logits(y, z), False)


@point
def focal_logits_grad_hess(y, z, p):
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), p[2], _focal_parts_logits(y, z), False)


@point
def focal_probs_value_grad(y, z, p):
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), p[2], _focal_parts_probs(y, z, p[3]), False)


@point
def focal_probs_grad_hess(y, z, p):
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), p[2], _focal_parts_probs(y, z, p[3]), False)


# The focal terms for γ = 2 (the usual choice; p[2] == 2): the CPU loops use them
# instead of the general ones (``numbaloss._term_variants``), two transcendentals fewer.
@point
def focal_logits_gamma2_value_grad(y, z, p):
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), 2.0, _focal_parts_logits(y, z), True)


@point
def focal_logits_gamma2_grad_hess(y, z, p):
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), 2.0, _focal_parts_logits(y, z), True)


@point
def focal_probs_gamma2_value_grad(y, z, p):
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), 2.0, _focal_parts_probs(y, z, p[3]), True)


@point
def focal_probs_gamma2_grad_hess(y, z, p):
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), 2.0, _focal_parts_probs(y, z, p[3]), True)


# ------------------------------------------- terms with a constant target (GAN)
@point
def squared_error_to_constant_value_grad(y, z, p):
    return squared_error_value_grad(p[0], z, p)


@point
def bce_logits_to_constant_value_grad(y, z, p):
    return bce_logits_value_grad(p[0], z, (1.0, 0.0))


@point
def bce_probs_to_constant_value_grad(y, z, p):
    return bce_probs_value_grad(p[0], z, (1.0, 0.0, p[1]))

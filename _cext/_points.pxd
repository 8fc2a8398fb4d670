# cython: language_level=3, cdivision=True, boundscheck=False, wraparound=False
"""Scalar point functions of the elementwise loss terms: the Cython mirror of
``numbaloss/_numba/points.py``, one function per function there, same names, same
arithmetic in the same order.

    <term>_value_grad(y, z, p) -> (l, dl/dz)
    <term>_grad_hess(y, z, p)  -> (dl/dz, d²l/dz²)

``y`` and ``z`` are doubles (the loops widen float32 elements on load, as the Numba
loops do); ``p`` points at the term's parameters, in the order
``numbaloss._registry`` packs its tuple.  Everything is ``inline noexcept nogil``:
each loop of ``elementwise.pyx`` compiles the functions into its body.

Python's ``max(a, b)`` / ``min(a, b)`` (which Numba follows) return the first
argument unless the second is strictly greater / smaller, so ``max(nan, 0.0)`` is
nan; ``_max`` / ``_min`` reproduce that (C's ``fmax`` would drop the nan).

``exp``, ``log`` and ``log1p`` are the branch-free ones of ``_fastmath.pxd`` (the
mirror of ``numbaloss/_numba/fastmath.py``), as in points.py.  Where points.py picks
one of two expressions by the data (``x if z >= 0 else y``, max, min, the Huber and
focal branches), the mirror computes both and picks with ``_select``: the same
numbers, and the loops of elementwise.pyx vectorise (a branch on the data, or a
function call, would keep them scalar).  The C helpers (``_select``, ``_max``,
``_min``, ``_sign_or_nan``) have no counterpart in points.py, which writes them
inline.

Keep this file in step with points.py: a term changed there and not here makes the
numba/cython parity tests (tests/test_cython.py) fail.
"""

from libc.math cimport INFINITY, fabs

from _fastmath cimport exp, log, log1p


cdef inline double _select(bint condition, double a, double b) noexcept nogil:
    """``a if condition else b`` with both sides computed: a select, which the
    compiler vectorises or makes branch-free (``-fno-trapping-math`` lets it evaluate
    both sides; see setup.py)."""
    return a if condition else b


cdef inline double _max(double a, double b) noexcept nogil:
    return _select(b > a, b, a)


cdef inline double _min(double a, double b) noexcept nogil:
    return _select(b < a, b, a)


cdef inline double _sigmoid(double z) noexcept nogil:
    cdef double e = exp(-fabs(z))
    return _select(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


cdef inline double _softplus(double x) noexcept nogil:
    return _max(x, 0.0) + log1p(exp(-fabs(x)))


cdef inline double _clip(double x, double eps) noexcept nogil:
    return _min(_max(x, eps), 1.0 - eps)


cdef inline double _sign_or_nan(double r) noexcept nogil:
    """1, −1, 0, or r itself (nan) — the subgradient of |r| as points.py writes it."""
    return _select(r > 0.0, 1.0, _select(r < 0.0, -1.0, _select(r == 0.0, 0.0, r)))


# ---------------------------------------------------------------- squared error
cdef inline (double, double) squared_error_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double r = z - y
    return r * r, 2.0 * r


cdef inline (double, double) squared_error_grad_hess(double y, double z, const double* p) noexcept nogil:
    return 2.0 * (z - y), 2.0


# --------------------------------------------------------------- absolute error
cdef inline (double, double) absolute_error_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double r = z - y
    return fabs(r), _sign_or_nan(r)


cdef inline (double, double) absolute_error_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double r = z - y
    return _sign_or_nan(r), 0.0 * r


# ------------------------------------------------------------------------ huber
# Both branches of points.py are computed and one is selected without a branch
# (the same numbers): a branch on |r| ≤ δ or on the sign of r would be mispredicted
# on every other element of ordinary data.
cdef inline double _huber_slope(double delta, double r) noexcept nogil:
    """δ·sign(r), or r itself when r is ±0 or nan (as points.py returns it)."""
    return _select(r > 0.0, delta, _select(r < 0.0, -delta, r))


cdef inline (double, double) huber_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double delta = p[0]
    cdef double r = z - y
    cdef double a = fabs(r)
    cdef bint small = a <= delta
    return (_select(small, 0.5 * r * r, delta * (a - 0.5 * delta)),
            _select(small, r, _huber_slope(delta, r)))


cdef inline (double, double) huber_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double delta = p[0]
    cdef double r = z - y
    cdef bint small = fabs(r) <= delta
    return _select(small, r, _huber_slope(delta, r)), _select(small, 1.0, 0.0 * r)


# ------------------------------------------------------- binary cross-entropy
cdef inline (double, double) bce_logits_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double pos_weight = p[0]
    cdef double smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    cdef double e = exp(-fabs(z))
    cdef double log1pe = log1p(e)
    # softplus(z) and softplus(-z) share log1p(e^{-|z|})
    cdef double sp_pos = _max(z, 0.0) + log1pe
    cdef double sp_neg = _max(-z, 0.0) + log1pe
    cdef double s = _select(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    cdef double a = pos_weight * y + 1.0 - y
    return pos_weight * y * sp_neg + (1.0 - y) * sp_pos, a * s - pos_weight * y


cdef inline (double, double) bce_logits_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double pos_weight = p[0]
    cdef double smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    cdef double e = exp(-fabs(z))
    cdef double s = _select(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    cdef double a = pos_weight * y + 1.0 - y
    # σ(z)(1 − σ(z)) = e / (1 + e)² for e = exp(−|z|), either sign
    return a * s - pos_weight * y, a * e / ((1.0 + e) * (1.0 + e))


cdef inline (double, double) bce_probs_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double pos_weight = p[0]
    cdef double smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    cdef double q = _clip(z, p[2])
    cdef double loss = -(pos_weight * y * log(q) + (1.0 - y) * log1p(-q))
    return loss, -pos_weight * y / q + (1.0 - y) / (1.0 - q)


cdef inline (double, double) bce_probs_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double pos_weight = p[0]
    cdef double smoothing = p[1]
    y = y * (1.0 - smoothing) + 0.5 * smoothing
    cdef double q = _clip(z, p[2])
    cdef double om = 1.0 - q
    return -pos_weight * y / q + (1.0 - y) / om, pos_weight * y / (q * q) + (1.0 - y) / (om * om)


# ------------------------------------------------------------------ focal loss
cdef inline (double, double, double, double, double, double) _focal_parts_logits(
        double y, double z) noexcept nogil:
    """(ce, ce′, ce″, q, r = q′/q, q″/q) for q = 1 − p_t on a logit."""
    cdef double e = exp(-fabs(z))
    cdef double log1pe = log1p(e)
    cdef double sp_pos = _max(z, 0.0) + log1pe  # −log(1 − σ(z))
    cdef double sp_neg = _max(-z, 0.0) + log1pe  # −log σ(z)
    cdef double s = _select(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    cdef double om = _select(z >= 0.0, e / (1.0 + e), 1.0 / (1.0 + e))  # 1 − σ(z), exact when small
    cdef double ce = y * sp_neg + (1.0 - y) * sp_pos
    cdef double dce = s - y
    cdef double d2ce = e / ((1.0 + e) * (1.0 + e))
    # q = y·σ(−z) + (1 − y)·σ(z): two non-negative terms, each accurate (points.py)
    cdef double q = y * om + (1.0 - y) * s
    cdef double inv = _select(y > 0.0, y / s, 0.0) + _select(y < 1.0, (1.0 - y) / om, 0.0)
    cdef double r = (1.0 - 2.0 * y) / inv
    r = _select(fabs(r) < INFINITY, r, 0.0)  # not isfinite(r): 0
    return ce, dce, d2ce, q, r, r * (1.0 - 2.0 * s)


cdef inline (double, double, double, double, double, double) _focal_parts_probs(
        double y, double z, double eps) noexcept nogil:
    cdef double q_p = _clip(z, eps)
    cdef double om = 1.0 - q_p
    cdef double ce = -(y * log(q_p) + (1.0 - y) * log1p(-q_p))
    cdef double dce = -y / q_p + (1.0 - y) / om
    cdef double d2ce = y / (q_p * q_p) + (1.0 - y) / (om * om)
    cdef double q = y * om + (1.0 - y) * q_p
    return ce, dce, d2ce, q, (1.0 - 2.0 * y) / q, 0.0


cdef inline double _modulation(double gamma, double q, bint gamma_is_2) noexcept nogil:
    """q^γ; ``gamma_is_2`` (a constant in each caller): q·q, without exp(γ log q)."""
    if gamma_is_2:
        return q * q
    return _select(gamma == 0.0, 1.0, exp(gamma * log(q)))


cdef inline (double, double) _focal_value_grad(double alpha_t, double gamma, double ce, double dce,
                                               double q, double r, bint gamma_is_2) noexcept nogil:
    """(l, l′): l = α_t·q^γ·ce."""
    cdef double m = alpha_t * _modulation(gamma, q, gamma_is_2)
    return m * ce, m * (gamma * r * ce + dce)


cdef inline (double, double) _focal_grad_hess(double alpha_t, double gamma, double ce, double dce,
                                              double d2ce, double q, double r, double r2,
                                              bint gamma_is_2) noexcept nogil:
    """(l′, l″), as ``_focal_value_grad``."""
    cdef double m = alpha_t * _modulation(gamma, q, gamma_is_2)
    cdef double hess = m * (gamma * gamma * r * r * ce + 2.0 * gamma * r * dce
                            + gamma * (r2 - r * r) * ce + d2ce)
    return m * (gamma * r * ce + dce), hess


cdef inline (double, double) focal_logits_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_logits(y, z)
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), p[2], ce, dce, q, r, False)


cdef inline (double, double) focal_logits_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_logits(y, z)
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), p[2], ce, dce, d2ce, q, r, r2, False)


cdef inline (double, double) focal_probs_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_probs(y, z, p[3])
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), p[2], ce, dce, q, r, False)


cdef inline (double, double) focal_probs_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_probs(y, z, p[3])
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), p[2], ce, dce, d2ce, q, r, r2, False)


# The focal terms for γ = 2 (``numbaloss._term_variants``): two transcendentals fewer.
cdef inline (double, double) focal_logits_gamma2_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_logits(y, z)
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), 2.0, ce, dce, q, r, True)


cdef inline (double, double) focal_logits_gamma2_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_logits(y, z)
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), 2.0, ce, dce, d2ce, q, r, r2, True)


cdef inline (double, double) focal_probs_gamma2_value_grad(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_probs(y, z, p[3])
    return _focal_value_grad(p[0] * y + p[1] * (1.0 - y), 2.0, ce, dce, q, r, True)


cdef inline (double, double) focal_probs_gamma2_grad_hess(double y, double z, const double* p) noexcept nogil:
    cdef double ce, dce, d2ce, q, r, r2
    ce, dce, d2ce, q, r, r2 = _focal_parts_probs(y, z, p[3])
    return _focal_grad_hess(p[0] * y + p[1] * (1.0 - y), 2.0, ce, dce, d2ce, q, r, r2, True)


# ------------------------------------------- terms with a constant target (GAN)
cdef inline (double, double) squared_error_to_constant_value_grad(
        double y, double z, const double* p) noexcept nogil:
    return squared_error_value_grad(p[0], z, p)


cdef inline (double, double) bce_logits_to_constant_value_grad(
        double y, double z, const double* p) noexcept nogil:
    cdef double q[2]
    q[0] = 1.0
    q[1] = 0.0
    return bce_logits_value_grad(p[0], z, q)


cdef inline (double, double) bce_probs_to_constant_value_grad(
        double y, double z, const double* p) noexcept nogil:
    cdef double q[3]
    q[0] = 1.0
    q[1] = 0.0
    q[2] = p[1]
    return bce_probs_value_grad(p[0], z, q)

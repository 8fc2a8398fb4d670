"""A point function written with ``numbaloss._numba.fastmath``, as ``points.py`` may be
one day: the PTX test checks that the CUDA kernels rebind it to CUDA's own math."""

from numba import njit

from numbaloss._numba import fastmath as fm
from numbaloss._numba.fastmath import exp, log1p


@njit(nogil=True, error_model="numpy")
def _softplus(x):
    return max(x, 0.0) + log1p(exp(-abs(x)))


@njit(nogil=True, error_model="numpy")
def logistic_value_grad(y, z, p):
    """Logistic loss on a logit, scaled by p[0]: (p0·(softplus(z) − y·z), p0·(σ(z) − y))."""
    return p[0] * (_softplus(z) - y * z), p[0] * (fm.sigmoid(z) - y)

"""The ``numba`` backend: parallel CPU loops compiled by Numba (imported on first use)."""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError as exc:  # pragma: no cover - exercised where numba is missing
    raise ImportError(f"numba is not installed ({exc}); pip install numba") from exc

from . import _parallel
from . import elementwise as _elementwise
from . import softmax as _softmax

name = "numba"
_EMPTY_WEIGHTS = np.empty(0, dtype=np.float64)


def check_available() -> None:
    """Numba imported (the import above raised otherwise)."""


def set_num_threads(n: int) -> None:
    _parallel.set_num_threads(n)


def elementwise(term, params, bounds, y, z, w, m, mode, scale, out_value, grad, hess):
    """Run one elementwise loop over flat contiguous ``y``, ``z``.

    mode "sum": returns (Σ wᵢ·l, flags) and fills ``grad`` with scale·wᵢ·l′ if given;
    "grad": fills ``grad``; "none": fills ``out_value`` with scale·wᵢ·l (and ``grad``);
    "grad_hess": fills ``grad`` and ``hess`` with wᵢ·l′, wᵢ·l″.
    Returns (total or 0.0, domain flags).
    """
    n = z.shape[0]
    if w is None:
        weighting, w, m = 0, _EMPTY_WEIGHTS, 1
    else:
        weighting, m = (1 if m == 1 else 2), max(m, 1)
    loops = _elementwise.loops_for(term, bounds, weighting, params)
    common = (y, z, w, m, params, bounds)
    if mode == "sum":
        if grad is None:
            return _elementwise.run(loops["value_sum"], common, n)
        return _elementwise.run(loops["value_sum_and_grad"], common + (scale, grad), n)
    if mode == "grad":
        return _elementwise.run(loops["grad_only"], common + (scale, grad), n)
    if mode == "none":
        if grad is None:
            return _elementwise.run(loops["value_none"], common + (scale, out_value), n)
        return _elementwise.run(loops["value_none_and_grad"], common + (scale, out_value, grad), n)
    if mode == "grad_hess":
        return _elementwise.run(loops["grad_and_hess"], common + (grad, hess), n)
    raise ValueError(f"unknown mode {mode!r}")


def softmax_rows(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess):
    """Run one row-wise softmax loop; see ``numbaloss._numba.softmax``."""
    if w is None:
        w = _EMPTY_WEIGHTS
    return _softmax.run(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess)


def pairwise(name, inputs, params, coef, need_grad):
    """(per-sample losses, gradients of Σ coefᵢ·lossᵢ) of an embedding loss; see
    ``numbaloss._numba.pairwise``."""
    from . import pairwise as _pairwise  # BLAS-backed kernels: compiled on first use

    return getattr(_pairwise, name)(*inputs, **params, coef=coef, need_grad=need_grad)

"""The ``numba`` backend: parallel CPU loops compiled by Numba (imported on first use)."""

from __future__ import annotations

import numpy as np

from .._config import BackendUnavailableError

try:
    import numba
except ImportError as exc:  # pragma: no cover - exercised where numba is missing
    raise ImportError(f"numba is not installed ({exc}); pip install numba") from exc

from . import elementwise as _elementwise
from . import softmax as _softmax

name = "numba"
_EMPTY_WEIGHTS = np.empty(0, dtype=np.float64)
_threads = None


def check_available() -> None:
    if not hasattr(numba, "prange"):  # pragma: no cover
        raise BackendUnavailableError("backend 'numba' is not available: numba is too old")


def set_num_threads(n: int) -> None:
    global _threads
    _threads = min(n, numba.config.NUMBA_NUM_THREADS)


def _apply_threads() -> None:
    # numba.set_num_threads is per calling thread: apply it on each call that needs it
    if _threads is not None and numba.get_num_threads() != _threads:
        numba.set_num_threads(_threads)


def elementwise(term, params, bounds, y, z, w, m, mode, scale, out_value, grad, hess):
    """Run one elementwise loop over flat contiguous ``y``, ``z``.

    mode "sum": returns (Σ wᵢ·l, flags) and fills ``grad`` with scale·wᵢ·l′ if given;
    "grad": fills ``grad``; "none": fills ``out_value`` with scale·wᵢ·l (and ``grad``);
    "grad_hess": fills ``grad`` and ``hess`` with wᵢ·l′, wᵢ·l″.
    Returns (total or 0.0, domain flags).
    """
    n = z.shape[0]
    loops = _elementwise.loops_for(term, bounds)
    if w is None:
        w, m = _EMPTY_WEIGHTS, max(n, 1)
    if n >= _elementwise.PARALLEL_THRESHOLD:
        _apply_threads()
    if mode == "sum":
        if grad is None:
            return loops.get("value_sum", n)(y, z, w, m, params, bounds)
        return loops.get("value_sum_and_grad", n)(y, z, w, m, params, bounds, scale, grad)
    if mode == "grad":
        return 0.0, loops.get("grad_only", n)(y, z, w, m, params, bounds, scale, grad)
    if mode == "none":
        want_grad = grad is not None
        buffer = grad if want_grad else out_value
        flags = loops.get("value_none", n)(y, z, w, m, params, bounds, scale, out_value, want_grad, buffer)
        return 0.0, flags
    if mode == "grad_hess":
        return 0.0, loops.get("grad_and_hess", n)(y, z, w, m, params, bounds, grad, hess)
    raise ValueError(f"unknown mode {mode!r}")


def softmax_rows(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess):
    """Run one row-wise softmax loop; see ``numbaloss._numba.softmax``."""
    n = z.shape[0]
    if w is None:
        w = _EMPTY_WEIGHTS
    if n * max(z.shape[1], 1) >= _elementwise.PARALLEL_THRESHOLD:
        _apply_threads()
    return _softmax.run(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess)

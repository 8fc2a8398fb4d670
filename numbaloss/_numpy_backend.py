"""The ``numpy`` backend: the float64 reference, with the loop interface of the
compiled backends (so the public objects drive every backend the same way).

Always available; it computes in float64 whatever the input dtype and casts the
arrays it returns to the computation dtype.
"""

from __future__ import annotations

import numpy as np

from ._validation import BAD_LABEL, BAD_PREDICTION, BAD_TARGET, exact_sum
from .reference import categorical, embedding, pointwise

name = "numpy"


def check_available() -> None:
    """The reference needs nothing beyond NumPy."""


def _domain_flags(y, z, bounds) -> int:
    with np.errstate(invalid="ignore"):
        flags = BAD_TARGET if np.any((y < bounds[0]) | (y > bounds[1])) else 0
        if np.any((z < bounds[2]) | (z > bounds[3])):
            flags |= BAD_PREDICTION
    return flags


def _row_weights(w, m, n):
    if w is None:
        return np.ones(n)
    return np.repeat(w, m) if m else np.ones(0)


def elementwise(term, params, bounds, y, z, w, m, mode, scale, out_value, grad, hess):
    """Same contract as ``numbaloss._numba.backend.elementwise``."""
    flags = _domain_flags(y, z, bounds)
    with np.errstate(all="ignore"):
        loss, first, second = getattr(pointwise, term)(y, z, *params)
        weights = _row_weights(w, m, z.shape[0])
        total = 0.0
        if mode == "sum":
            total = exact_sum(weights * loss) if loss.size else 0.0
        if mode == "none":
            out_value[...] = scale * weights * loss
        if grad is not None:
            grad[...] = (1.0 if mode == "grad_hess" else scale) * weights * first
        if mode == "grad_hess":
            hess[...] = weights * second
    return total, flags


def softmax_rows(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess):
    """Same contract as ``numbaloss._numba.backend.softmax_rows``."""
    loss_name, link, target_kind = kind.split("_")
    from_logits = link == "logits"
    n, k = z.shape
    flags = 0
    if target_kind == "labels":
        labels = np.asarray(y).astype(np.int64)
        bad = (labels < 0) | (labels >= k)
        if ignore_index is not None:
            bad &= labels != ignore_index
        if bad.any():
            return 0.0, BAD_LABEL
        y = labels
    else:
        with np.errstate(invalid="ignore"):
            if np.any((y < 0) | (y > 1)):
                flags |= BAD_TARGET
    if not from_logits:
        with np.errstate(invalid="ignore"):
            if np.any((z < 0) | (z > 1)):
                flags |= BAD_PREDICTION
    with np.errstate(all="ignore"):
        if loss_name == "cce":
            smoothing, _, eps = params
            loss, first, second = categorical.cce(y, z, class_weight, smoothing, from_logits, eps, ignore_index)
        else:
            gamma, eps = params
            loss, first, second = categorical.categorical_focal(y, z, class_weight, gamma, from_logits, eps)
        weights = np.ones(n) if w is None else w
        total = exact_sum(weights * loss) if mode == "sum" and n else 0.0
        if mode == "none":
            out_value[...] = scale * weights * loss
        row_scale = (1.0 if mode == "grad_hess" else scale) * weights[:, None]
        if target_kind == "labels" and ignore_index is not None:
            # ignored rows get an exact zero gradient, even when the scale is nan (PyTorch)
            row_scale = np.where((y == ignore_index)[:, None], 0.0, row_scale)
        if grad is not None:
            grad[...] = row_scale * first
        if mode == "grad_hess":
            hess[...] = row_scale * second
    return total, flags


def pairwise(name, inputs, params, coef, need_grad):
    """(per-sample losses, gradients of Σ coefᵢ·lossᵢ) of an embedding loss; see
    ``numbaloss.reference.embedding``."""
    with np.errstate(all="ignore"):
        return getattr(embedding, name)(*inputs, **params, coef=coef, need_grad=need_grad)

"""Custom objectives, metrics and start scores for XGBoost and LightGBM from numbaloss losses.

    >>> import xgboost as xgb, numbaloss.gbdt as ng
    >>> dtrain = xgb.DMatrix(X, label=y, base_margin=np.full(len(y), ng.init_score("bce", y)))
    >>> booster = xgb.train({"disable_default_eval_metric": True}, dtrain, 100,
    ...                     obj=ng.xgboost_objective("bce"), custom_metric=ng.xgboost_metric("bce"))

A boosting objective sees raw margins F (what the trees add up, before any link) and
returns per-sample first and second derivatives of the loss, not divided by n:

    gᵢ = wᵢ·∂lᵢ/∂Fᵢ,   hᵢ = wᵢ·max(∂²lᵢ/∂Fᵢ², hess_floor)

from the loss's ``grad_hess`` (the diagonal Hessian pⱼ(1 − pⱼ)-type terms for the
softmax losses), with ``from_logits=True`` for the losses that have the option.
Multiclass margins, gradients and Hessians are (n, K), the layout of XGBoost ≥ 2.1 and
LightGBM ≥ 4.  Each callable takes either library's calling convention:

==================  ====================================  ==========================================
callable            native API                            scikit-learn API
==================  ====================================  ==========================================
xgboost_objective   ``obj(preds, dtrain)`` (xgb.train)    ``obj(y_true, y_pred, sample_weight=None)``
xgboost_metric      ``(preds, dtrain) → (name, value)``   ``(y_true, y_pred, sample_weight=None) → value``
lightgbm_objective  ``(preds, train_data)`` (params)      ``(y_true, y_pred, weight)``
lightgbm_metric     ``(preds, eval_data) → (name, value,  ``(y_true, y_pred, weight) →`` the same
                    False)`` (``feval``)
==================  ====================================  ==========================================

The native calls are told apart by their second argument (a DMatrix or Dataset, which
has ``get_label``).  The metrics are the loss's weighted mean; they read margins like
the objectives, so pass ``from_logits=False`` to score a built-in objective, whose
predictions the libraries hand to custom metrics as probabilities.
"""

from __future__ import annotations

import numpy as np

from ._losses import Loss
from ._registry import get_loss

#: the default floor of the per-sample Hessian: the one XGBoost's own objectives use
HESS_FLOOR = 1e-16
_START_CLIP = 1e-12  # frequencies in the closed-form starts are kept inside [c, 1 − c]


def xgboost_objective(loss, *, hess_floor: float = HESS_FLOOR, **params):
    """An XGBoost custom objective from a loss with a Hessian (pointwise or softmax).

    Native API: ``xgb.train(params, dtrain, obj=xgboost_objective(loss))`` calls
    ``obj(preds, dtrain)`` and the labels and weights come from ``dtrain``;
    scikit-learn API: ``XGBRegressor(objective=xgboost_objective(loss))`` calls
    ``obj(y_true, y_pred, sample_weight=None)``.  Returns (grad, hess) as in the module
    docstring; set ``num_class`` in XGBoost's parameters for a softmax loss.
    ``hess_floor`` bounds the Hessian below (focal and huber have vanishing or
    negative curvature; use ``-np.inf`` to pass it unchanged).
    """
    loss, params = _objective_loss(loss, params)

    def objective(first, second, sample_weight=None):
        if hasattr(second, "get_label"):  # (preds, DMatrix)
            return _grad_hess(loss, params, second.get_label(), first, second.get_weight(), hess_floor)
        return _grad_hess(loss, params, first, second, sample_weight, hess_floor)

    objective.__name__ = loss.name
    return objective


def lightgbm_objective(loss, *, hess_floor: float = HESS_FLOOR, **params):
    """A LightGBM custom objective from a loss with a Hessian (pointwise or softmax).

    Native API: ``lgb.train({"objective": lightgbm_objective(loss), ...}, train_set)``
    calls ``objective(preds, train_data)``; scikit-learn API:
    ``LGBMRegressor(objective=lightgbm_objective(loss))`` calls
    ``objective(y_true, y_pred, weight)`` (three arguments, so LightGBM passes the
    weights).  Returns (grad, hess) as in the module docstring; set ``num_class`` for a
    softmax loss.  ``hess_floor`` as for :func:`xgboost_objective`.
    """
    loss, params = _objective_loss(loss, params)

    def objective(first, second, weight=None):
        if hasattr(second, "get_label"):  # (preds, Dataset)
            return _grad_hess(loss, params, second.get_label(), first, second.get_weight(), hess_floor)
        return _grad_hess(loss, params, first, second, weight, hess_floor)

    objective.__name__ = loss.name
    return objective


def xgboost_metric(loss, **params):
    """An XGBoost evaluation function: the loss's (weighted) mean, lower is better.

    Native: ``xgb.train(..., custom_metric=xgboost_metric(loss))`` calls it as
    ``(preds, dmatrix) → (name, value)``; scikit-learn ``eval_metric=`` as
    ``(y_true, y_pred, sample_weight=None) → value``, named after the loss.  Reads
    margins (``from_logits=True``) unless ``from_logits=False`` is given.
    """
    loss, params = _metric_loss(loss, params)

    def metric(first, second, sample_weight=None):
        if hasattr(second, "get_label"):
            return loss.name, _mean(loss, params, second.get_label(), first, second.get_weight())
        return _mean(loss, params, first, second, sample_weight)

    metric.__name__ = loss.name
    return metric


def lightgbm_metric(loss, **params):
    """A LightGBM evaluation function: ``(name, value, False)`` (lower is better) with the
    loss's (weighted) mean.  Native ``feval=`` calls it as ``(preds, eval_data)``, the
    scikit-learn ``eval_metric=`` as ``(y_true, y_pred, weight)``.  Reads margins
    (``from_logits=True``) unless ``from_logits=False`` is given.
    """
    loss, params = _metric_loss(loss, params)

    def metric(first, second, weight=None):
        if hasattr(second, "get_label"):
            first, second, weight = second.get_label(), first, second.get_weight()
        return loss.name, _mean(loss, params, first, second, weight), False

    metric.__name__ = loss.name
    return metric


def init_score(loss, y_true, sample_weight=None, *, n_classes: int | None = None, **params):
    """The best constant margin: argmin_c Σᵢ wᵢ·l(yᵢ, c), to start boosting from.

    A float for 1-D targets, one value per column for (n, m) targets, a (K,) vector for
    the softmax losses (``n_classes`` K for integer labels, default max label + 1).
    Starts from the closed form of the plain loss — the weighted mean (mse), weighted
    median (huber), log-odds of the weighted mean target (bce, focal), log of the weighted
    class frequencies (cce, categorical_focal) — then takes Newton steps
    c ← c − Σgᵢ/Σhᵢ on the loss's own ``grad_hess`` (halved while the loss does not
    decrease) until they vanish (at most 100), which accounts for the parameters (``pos_weight``,
    smoothing, ``class_weight``, focal's modulation, huber's ``delta``).  For the plain
    losses the closed form is already the optimum.  Pass the value as XGBoost's
    ``base_margin`` / LightGBM's ``init_score`` (one row per sample).
    """
    loss, params = _objective_loss(loss, params)
    y = np.asarray(y_true)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if loss.family == "softmax":
        y, k = _class_targets(y, n_classes)
        rows = y.shape[0]
        start = np.log(np.clip(_class_frequencies(y, w, k), _START_CLIP, None))
        margins = lambda c: np.broadcast_to(c, (rows, k))  # noqa: E731
    else:
        y = y.astype(np.float64)
        start = _pointwise_start(loss.name, y, w)
        margins = lambda c: np.broadcast_to(c, y.shape)  # noqa: E731
    c = _newton_constant(loss, params, y, w, np.asarray(start, dtype=np.float64), margins)
    return float(c) if c.ndim == 0 else c


# ------------------------------------------------------------------ helpers


def _loss_of(loss, need_hessian: bool) -> Loss:
    loss = get_loss(loss)
    if loss.family not in ("pointwise", "softmax") or len(loss.inputs) != 2 \
            or (need_hessian and not loss.has_hessian):
        what = "a per-sample Hessian" if need_hessian else "one prediction per target"
        raise ValueError(f"{loss.name} is not a loss of {what}; boosting takes a pointwise or softmax "
                         f"loss (mse, bce, huber, focal, cce, categorical_focal)")
    return loss


def _objective_loss(loss, params) -> tuple:
    """The loss object and its parameters, checked, with ``from_logits=True``: a booster
    adds margins, whatever the link."""
    loss = _loss_of(loss, need_hessian=True)
    if "from_logits" in loss.params:
        if params.get("from_logits", True) is not True:
            raise ValueError(f"{loss.name}: boosting works on raw margins, from_logits must be True")
        params = dict(params, from_logits=True)
    loss._params(params)  # unknown or invalid parameters fail here, not in round one
    return loss, params


def _metric_loss(loss, params) -> tuple:
    loss = _loss_of(loss, need_hessian=False)
    if "from_logits" in loss.params:
        params = dict({"from_logits": True}, **params)
    loss._params(params)
    return loss, params


def _targets(loss, y, margins):
    """Labels as the loss takes them: the libraries store them as floats, the softmax
    losses want integer class indices."""
    y = np.asarray(y)
    if loss.family == "softmax":
        if margins.ndim != 2:
            raise ValueError(f"{loss.name} needs margins of shape (n, K) (set num_class in the "
                             f"booster's parameters), got shape {margins.shape}")
        if y.ndim == 1:
            y, _ = _class_targets(y, margins.shape[1])
    return y


def _class_targets(y, n_classes) -> tuple:
    """(integer labels or dense rows, K)."""
    if y.ndim == 2:
        return y, y.shape[1]
    labels = y.astype(np.intp)
    if y.dtype.kind == "f" and np.any(labels != y):
        raise ValueError("class labels must be whole numbers 0 … K−1, got fractional values")
    return labels, (int(labels.max()) + 1 if labels.size else 0) if n_classes is None else n_classes


def _grad_hess(loss, params, y, margins, weights, hess_floor):
    margins = np.asarray(margins, dtype=np.float64)  # the libraries accumulate in double
    g, h = loss.grad_hess(_targets(loss, y, margins), margins, **params)
    np.maximum(h, hess_floor, out=h)
    if weights is not None and np.size(weights):
        w = np.asarray(weights, dtype=np.float64)
        w = w[:, None] if g.ndim == 2 else w
        g *= w
        h *= w
    return g, h


def _mean(loss, params, y, predictions, weights) -> float:
    predictions = np.asarray(predictions, dtype=np.float64)
    if weights is not None and not np.size(weights):  # XGBoost's "no weights"
        weights = None
    return float(loss(_targets(loss, y, predictions), predictions, sample_weight=weights, **params))


def _weighted_mean(y, w):
    return np.average(y, axis=0, weights=w)


def _weighted_median(y, w):
    w = np.ones(y.shape[0]) if w is None else w
    order = np.argsort(y, axis=0)
    cumulative = np.cumsum(w[order], axis=0)
    middle = np.argmax(cumulative >= 0.5 * cumulative[-1], axis=0)
    return np.take_along_axis(np.sort(y, axis=0), np.expand_dims(middle, 0), axis=0)[0]


def _pointwise_start(name, y, w):
    if name == "huber":
        return _weighted_median(y, w)
    mean = _weighted_mean(y, w)
    if name in ("binary_cross_entropy", "focal"):
        p = np.clip(mean, _START_CLIP, 1.0 - _START_CLIP)
        return np.log(p / (1.0 - p))
    return mean


def _class_frequencies(y, w, k):
    if y.ndim == 2:
        return _weighted_mean(y.astype(np.float64), w)
    counts = np.bincount(y, weights=w, minlength=k)[:k]
    return counts / counts.sum()


def _newton_constant(loss, params, y, w, c, margins, max_steps=100):
    def total(c):
        return loss(y, margins(c), reduction="sum", sample_weight=w, **params)

    value = total(c)
    for _ in range(max_steps):
        g, h = loss.grad_hess(y, margins(c), sample_weight=w, **params)
        step = -g.sum(axis=0) / np.maximum(h.sum(axis=0), HESS_FLOOR)
        for _ in range(60):  # halve until the loss does not go up
            candidate = c + step
            new_value = total(candidate)
            if new_value <= value:
                break
            step = step / 2
        else:
            return c
        done = np.all(np.abs(candidate - c) <= 1e-12 * (1.0 + np.abs(c)))
        c, value = candidate, new_value
        if done:
            break
    return c

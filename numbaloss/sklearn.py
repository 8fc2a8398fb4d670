"""scikit-learn scorers from numbaloss losses, for ``cross_val_score``, ``GridSearchCV``
and everything else that takes ``scoring=``.

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import cross_val_score
    >>> scorer = numbaloss.sklearn.make_scorer("bce")
    >>> cross_val_score(LogisticRegression(), X, y, scoring=scorer)   # −log-loss per fold

A scorer returns −loss (scikit-learn maximises scores: greater is better is False
for a loss).  What it asks of the estimator follows the loss: probabilities
(``predict_proba``) for ``binary_cross_entropy`` / ``focal`` and the categorical
losses on probabilities, decision values (``decision_function``, read as logits)
with ``from_logits=True``, ``predict`` for the regression losses.  Class labels are
mapped through ``estimator.classes_``: a binary loss scores the probability (or
logit) of ``classes_[1]``, a categorical loss takes the column index of each label.

scikit-learn itself is not imported here; a scorer is a plain callable.
"""

from __future__ import annotations

import numpy as np

from ._registry import get_loss


#: loss name → what it scores: "regression", "binary" or "categorical"
_TASKS = {
    "mse": "regression",
    "huber": "regression",
    "binary_cross_entropy": "binary",
    "focal": "binary",
    "categorical_cross_entropy": "categorical",
    "categorical_focal": "categorical",
}


class LossScorer:
    """``scorer(estimator, X, y, sample_weight=None)`` → −loss(y, the estimator's
    response to X); made by :func:`make_scorer`."""

    def __init__(self, loss, params: dict):
        self.loss = loss
        self.params = params
        self.task = _TASKS[loss.name]
        self.response_method = ("predict" if self.task == "regression"
                                 else "decision_function" if params.get("from_logits") else "predict_proba")

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"make_scorer({self.loss.name!r}{args})  # -loss from {self.response_method}"

    def __call__(self, estimator, X, y_true, sample_weight=None) -> float:
        response = np.asarray(getattr(estimator, self.response_method)(X))
        y_true = np.asarray(y_true)
        if self.task == "regression":
            y_pred = response
        else:
            classes = np.asarray(estimator.classes_)
            y_true, y_pred = self._classification(classes, y_true, response)
        value = self.loss(y_true, y_pred, sample_weight=sample_weight, **self.params)
        return -float(value)

    def _classification(self, classes, y_true, response):
        index = np.searchsorted(classes, y_true)
        index[index == len(classes)] = 0
        unknown = classes[index] != y_true
        if unknown.any():
            raise ValueError(f"{self.loss.name} scorer: label {y_true[unknown].tolist()[0]!r} is not one of the "
                             f"estimator's classes {classes.tolist()}")
        binary_response = response.ndim == 1
        if self.task == "binary":
            if len(classes) != 2:
                raise ValueError(f"{self.loss.name} scores a binary classifier; this one has "
                                 f"{len(classes)} classes (use categorical_cross_entropy)")
            # the probability / logit of classes_[1], the positive class
            return index.astype(np.float64), response if binary_response else response[:, 1]
        if binary_response:  # a binary decision function: the logit of classes_[1]
            response = np.column_stack([np.zeros_like(response), response])
        return index, response


def make_scorer(loss, **params) -> LossScorer:
    """A scikit-learn scorer computing −``loss`` (a name such as ``"bce"`` or a loss
    object such as ``numbaloss.cce``) with keyword ``params``: greater is better.

    Takes the losses of a (y_true, y_pred) pair that score an estimator:
    mse, huber (``predict``), binary_cross_entropy, focal (binary classifiers),
    categorical_cross_entropy, categorical_focal (any classifier); with
    ``from_logits=True`` the decision function is read as logits.
    """
    loss = get_loss(loss)
    if loss.name not in _TASKS:
        raise ValueError(f"make_scorer takes one of {', '.join(_TASKS)} (a loss of targets and an "
                         f"estimator's predictions); got {loss.name}")
    loss._params(params)  # rejects unknown or bad parameters now, not at the first fold
    return LossScorer(loss, params)


__all__ = ["LossScorer", "make_scorer"]

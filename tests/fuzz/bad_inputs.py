"""The catalogue of bad-input classes: one representative call per class, the
exception it must raise and the words its message must contain (the argument, what
was expected, what was received).

``tests/test_fuzz.py`` checks every entry on every CPU backend that has the loss's
kernels; ``tests/fuzz/gen_errors_doc.py`` turns the catalogue and the messages the
reference backend gives into the table of ``docs/errors.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import numbaloss as nl


@dataclass(frozen=True)
class BadInput:
    group: str
    name: str  # the bad-input class
    example: str  # the call, as written in the docs
    call: Callable  # call(backend) makes the call
    error: type
    words: tuple  # the message must contain each of these
    loss: str = "mse"  # whose kernels the call needs


def _y():
    return np.zeros((4, 3))


def _p():
    return np.full((4, 3), 0.5)


def _labels(*values):
    return np.array(values)


def _emb(n=4, d=3):
    return np.ones((n, d))


def _bad(group, name, example, call, error, words, loss="mse"):
    return BadInput(group, name, example, call, error, tuple(words), loss)


CATALOGUE = [
    # ------------------------------------------------------------------ inputs
    _bad("inputs", "wrong number of positional inputs", "mse(y)",
         lambda b: nl.mse(_y(), backend=b), TypeError, ["mse()", "2 positional inputs", "got 1"]),
    _bad("inputs", "two arrays for a one-input loss", "gan_generator.value_and_grad(d, d)",
         lambda b: nl.gan_generator.value_and_grad(_p(), _p(), backend=b), TypeError,
         ["gan_generator()", "1 positional inputs", "got 2"], "gan_generator"),
    _bad("inputs", "input is None", "mse(None, p)",
         lambda b: nl.mse(None, _p(), backend=b), TypeError, ["y_true", "array", "None"]),
    _bad("inputs", "input is a str / dict / set", 'mse("abc", p)',
         lambda b: nl.mse("abc", _p(), backend=b), TypeError, ["y_true", "numeric array", "str"]),
    _bad("inputs", "ragged nested list", "mse([[1.0], [1.0, 2.0]], p)",
         lambda b: nl.mse([[1.0], [1.0, 2.0]], np.zeros(2), backend=b), TypeError,
         ["y_true", "numeric array"]),
    _bad("inputs", "object dtype", "mse(y, p.astype(object))",
         lambda b: nl.mse(_y(), _p().astype(object), backend=b), TypeError,
         ["y_pred", "float, integer or bool", "object"]),
    _bad("inputs", "complex dtype", "mse(y, p.astype(complex))",
         lambda b: nl.mse(_y(), _p().astype(complex), backend=b), TypeError,
         ["y_pred", "float, integer or bool", "complex128"]),
    _bad("inputs", "string dtype", 'mse(y.astype(str), p)',
         lambda b: nl.mse(_y().astype(str), _p(), backend=b), TypeError, ["y_true", "float, integer or bool", "<U"]),
    _bad("inputs", "datetime dtype", 'mse(y, p.astype("datetime64[s]"))',
         lambda b: nl.mse(_y(), np.zeros((4, 3), "datetime64[s]"), backend=b), TypeError,
         ["y_pred", "float, integer or bool", "datetime64"]),
    _bad("shapes", "shapes of target and prediction differ", "mse(y (4, 3), p (4, 2))",
         lambda b: nl.mse(_y(), _p()[:, :2], backend=b), ValueError,
         ["y_true", "y_pred", "same shape", "(4, 3)", "(4, 2)"]),
    _bad("shapes", "two-term loss: pair shapes differ", "cycle_consistency(x (4, 3), x_cycled (3, 3), y, y_cycled)",
         lambda b: nl.cycle_consistency(_y(), _y()[:3], _y(), _y(), backend=b), ValueError,
         ["x", "x_cycled", "(4, 3)", "(3, 3)"], "cycle_consistency"),
    _bad("shapes", "softmax y_pred without a class axis", "cce(0, 0-d y_pred)",
         lambda b: nl.cce(np.array(0), np.array(0.5), backend=b), ValueError,
         ["y_pred", "class axis", "()"], "categorical_cross_entropy"),
    _bad("shapes", "softmax y_pred with 0 classes", "cce(labels (4,), y_pred (4, 0))",
         lambda b: nl.cce(np.zeros(4, int), np.zeros((4, 0)), from_logits=True, backend=b), ValueError,
         ["y_pred", "at least one class", "(4, 0)"], "categorical_cross_entropy"),
    _bad("shapes", "softmax y_true neither y_pred's shape nor its shape without the class axis",
         "cce(labels (5,), y_pred (4, 3))",
         lambda b: nl.cce(np.zeros(5, int), _p(), backend=b), ValueError,
         ["y_true", "(4, 3)", "(4,)", "(5,)"], "categorical_cross_entropy"),
    _bad("shapes", "embedding input not 2-D", "triplet(anchor (4,), ...)",
         lambda b: nl.triplet(np.ones(4), np.ones(4), np.ones(4), backend=b), ValueError,
         ["anchor", "2-D", "(4,)"], "triplet"),
    _bad("shapes", "triplet inputs without features (D = 0)", "triplet(anchor (4, 0), ...)",
         lambda b: nl.triplet(_emb(4, 0), _emb(4, 0), _emb(4, 0), backend=b), ValueError,
         ["anchor", "D ≥ 1", "(4, 0)"], "triplet"),
    _bad("shapes", "triplet positive shape differs", "triplet(anchor (4, 3), positive (4, 2), ...)",
         lambda b: nl.triplet(_emb(), _emb(4, 2), _emb(), backend=b), ValueError,
         ["anchor", "positive", "(4, 3)", "(4, 2)"], "triplet"),
    _bad("shapes", "info_nce negatives of another width", "info_nce(anchor (4, 3), positive, negatives (5, 2))",
         lambda b: nl.info_nce(_emb(), _emb(), _emb(5, 2), backend=b), ValueError,
         ["negatives", "D=3", "(5, 2)"], "info_nce"),
    _bad("shapes", "info_nce negatives of 4 dimensions", "info_nce(anchor, positive, negatives (4, 2, 2, 3))",
         lambda b: nl.info_nce(_emb(), _emb(), np.ones((4, 2, 2, 3)), backend=b), ValueError,
         ["negatives", "(M, D) or (N, M, D)", "(4, 2, 2, 3)"], "info_nce"),
    _bad("shapes", "arcface weight of another width", "arcface(embeddings (4, 3), labels, weight (5, 2))",
         lambda b: nl.arcface(_emb(), _labels(0, 1, 2, 3), _emb(5, 2), backend=b), ValueError,
         ["weight", "D=3", "(5, 2)"], "arcface"),
    _bad("shapes", "supcon features not 2-D or 3-D", "supcon(features (4,))",
         lambda b: nl.supcon(np.ones(4), backend=b), ValueError,
         ["features", "(N, D) or (N, V, D)", "(4,)"], "supcon"),
    _bad("shapes", "supcon features with no view (V = 0)", "supcon(features (4, 0, 3))",
         lambda b: nl.supcon(np.ones((4, 0, 3)), backend=b), ValueError,
         ["features", "V ≥ 1", "(4, 0, 3)"], "supcon"),
    _bad("shapes", "labels not one per row", "batch_hard_triplet(embeddings (4, 3), labels (3,))",
         lambda b: nl.batch_hard_triplet(_emb(), _labels(0, 1, 0), backend=b), ValueError,
         ["labels", "(4,)", "embeddings", "(3,)"], "batch_hard_triplet"),
    # ---------------------------------------------------------- values and labels
    _bad("values", "probability outside [0, 1]", "bce(y, p + 1.0)",
         lambda b: nl.bce(_y(), _p() + 1.0, backend=b), ValueError,
         ["y_pred", "[0.0, 1.0]", "1.5"], "binary_cross_entropy"),
    _bad("values", "binary target outside [0, 1]", "bce(y - 1.0, p)",
         lambda b: nl.bce(_y() - 1.0, _p(), backend=b), ValueError,
         ["y_true", "[0.0, 1.0]", "-1.0"], "binary_cross_entropy"),
    _bad("values", "soft softmax target outside [0, 1]", "cce(y_true (4, 3) with 2.0, y_pred)",
         lambda b: nl.cce(np.full((4, 3), 2.0), _p(), backend=b), ValueError,
         ["y_true", "[0.0, 1.0]", "2.0"], "categorical_cross_entropy"),
    _bad("values", "class label outside [0, K)", "cce([0, 1, 7, 2], y_pred (4, 3))",
         lambda b: nl.cce(_labels(0, 1, 7, 2), _p(), backend=b), ValueError,
         ["y_true labels", "[0, 3)", "7"], "categorical_cross_entropy"),
    _bad("values", "negative class label (not ignore_index)", "cce([0, -1, 1, 2], y_pred, ignore_index=-100)",
         lambda b: nl.cce(_labels(0, -1, 1, 2), _p(), from_logits=True, ignore_index=-100, backend=b),
         ValueError, ["y_true labels", "[0, 3)", "ignore_index=-100", "-1"], "categorical_cross_entropy"),
    _bad("values", "class labels not integers", "cce(labels.astype(float), y_pred)",
         lambda b: nl.cce(np.zeros(4), _p(), backend=b), TypeError,
         ["y_true", "integers", "float64"], "categorical_cross_entropy"),
    _bad("values", "arcface label outside [0, C)", "arcface(embeddings (4, 3), [0, 1, 5, 2], weight (4, 3))",
         lambda b: nl.arcface(_emb(), _labels(0, 1, 5, 2), _emb(), backend=b), ValueError,
         ["labels", "[0, 4)", "5"], "arcface"),
    _bad("values", "embedding labels not integers", "arcface(embeddings, labels.astype(float), weight)",
         lambda b: nl.arcface(_emb(), np.zeros(4), _emb(), backend=b), TypeError,
         ["labels", "integers", "float64"], "arcface"),
    # ---------------------------------------------------------------- parameters
    _bad("parameters", "non-positive delta / temperature / scale / p", "huber(y, p, delta=0.0)",
         lambda b: nl.huber(_y(), _p(), delta=0.0, backend=b), ValueError, ["delta", "> 0", "0.0"], "huber"),
    _bad("parameters", "negative margin / gamma / weight", "triplet(a, p, n, margin=-1.0)",
         lambda b: nl.triplet(_emb(), _emb(), _emb(), margin=-1.0, backend=b), ValueError,
         ["margin", ">= 0", "-1.0"], "triplet"),
    _bad("parameters", "negative temperature", "info_nce(a, p, temperature=-0.1)",
         lambda b: nl.info_nce(_emb(), _emb(), temperature=-0.1, backend=b), ValueError,
         ["temperature", "> 0", "-0.1"], "info_nce"),
    _bad("parameters", "probability parameter above 1", "focal(y, p, alpha=1.5)",
         lambda b: nl.focal(_y(), _p(), alpha=1.5, backend=b), ValueError, ["alpha", "<= 1", "1.5"], "focal"),
    _bad("parameters", "label_smoothing outside [0, 1]", "bce(y, p, label_smoothing=1.5)",
         lambda b: nl.bce(_y(), _p(), label_smoothing=1.5, backend=b), ValueError,
         ["label_smoothing", "<= 1", "1.5"], "binary_cross_entropy"),
    _bad("parameters", "eps outside (0, 0.5)", "bce(y, p, eps=0.5)",
         lambda b: nl.bce(_y(), _p(), eps=0.5, backend=b), ValueError, ["eps", "< 0.5", "0.5"],
         "binary_cross_entropy"),
    _bad("parameters", "NaN or infinite parameter", "huber(y, p, delta=inf)",
         lambda b: nl.huber(_y(), _p(), delta=np.inf, backend=b), ValueError, ["delta", "finite", "inf"], "huber"),
    _bad("parameters", "parameter not a real number", 'huber(y, p, delta="1")',
         lambda b: nl.huber(_y(), _p(), delta="1", backend=b), TypeError, ["delta", "real number", "str"], "huber"),
    _bad("parameters", "flag not a bool", 'bce(y, p, from_logits="yes")',
         lambda b: nl.bce(_y(), _p(), from_logits="yes", backend=b), TypeError,
         ["from_logits", "True or False", "'yes'"], "binary_cross_entropy"),
    _bad("parameters", "unknown choice", 'info_nce(a, p, similarity="l2")',
         lambda b: nl.info_nce(_emb(), _emb(), similarity="l2", backend=b), ValueError,
         ["similarity", "'cosine' or 'dot'", "'l2'"], "info_nce"),
    _bad("parameters", "squared triplet with p ≠ 2", "triplet(a, p, n, squared=True, p=1.0)",
         lambda b: nl.triplet(_emb(), _emb(), _emb(), squared=True, p=1.0, backend=b), ValueError,
         ["squared=True", "p=2", "p=1.0"], "triplet"),
    _bad("parameters", "ignore_index not an integer", "cce(labels, y_pred, ignore_index=1.0)",
         lambda b: nl.cce(_labels(0, 1, 2, 1), _p(), ignore_index=1.0, backend=b), TypeError,
         ["ignore_index", "integer", "1.0"], "categorical_cross_entropy"),
    _bad("parameters", "ignore_index outside int64", "cce(labels, y_pred, ignore_index=2**70)",
         lambda b: nl.cce(_labels(0, 1, 2, 1), _p(), ignore_index=2**70, backend=b), ValueError,
         ["ignore_index", "int64", str(2**70)], "categorical_cross_entropy"),
    _bad("parameters", "class_weight of the wrong length", "cce(labels, y_pred (4, 3), class_weight=ones(4))",
         lambda b: nl.cce(_labels(0, 1, 2, 1), _p(), class_weight=np.ones(4), backend=b), ValueError,
         ["class_weight", "(3,)", "(4,)"], "categorical_cross_entropy"),
    _bad("parameters", "class_weight negative or NaN", "cce(labels, y_pred, class_weight=[1, -1, nan])",
         lambda b: nl.cce(_labels(0, 1, 2, 1), _p(), class_weight=np.array([1.0, -1.0, np.nan]), backend=b),
         ValueError, ["class_weight", "finite and non-negative", "-1."], "categorical_cross_entropy"),
    _bad("parameters", "per-class alpha of the wrong length", "categorical_focal(labels, y_pred (4, 3), alpha=ones(2))",
         lambda b: nl.categorical_focal(_labels(0, 1, 2, 1), _p(), alpha=np.ones(2), backend=b), ValueError,
         ["alpha", "(3,)", "(2,)"], "categorical_focal"),
    _bad("parameters", "unknown keyword", "mse(y, p, delta=1.0)",
         lambda b: nl.mse(_y(), _p(), delta=1.0, backend=b), TypeError, ["mse()", "unexpected", "delta"]),
    _bad("parameters", "reduction not mean/sum/none", 'mse(y, p, reduction="avg")',
         lambda b: nl.mse(_y(), _p(), reduction="avg", backend=b), ValueError,
         ["reduction", "'mean', 'sum', 'none'", "'avg'"]),
    # ------------------------------------------------------------ sample weights
    _bad("sample_weight", "sample_weight of the wrong length", "mse(y (4, 3), p, sample_weight=ones(3))",
         lambda b: nl.mse(_y(), _p(), sample_weight=np.ones(3), backend=b), ValueError,
         ["sample_weight", "(4,)", "(3,)"]),
    _bad("sample_weight", "sample_weight not 1-D", "mse(y (4, 3), p, sample_weight=ones((4, 1)))",
         lambda b: nl.mse(_y(), _p(), sample_weight=np.ones((4, 1)), backend=b), ValueError,
         ["sample_weight", "(4,)", "(4, 1)"]),
    _bad("sample_weight", "sample_weight of a non-numeric dtype", "mse(y, p, sample_weight=ones(4, object))",
         lambda b: nl.mse(_y(), _p(), sample_weight=np.ones(4, object), backend=b), TypeError,
         ["sample_weight", "float, integer or bool", "object"]),
    _bad("sample_weight", "sample_weight with a 0-d prediction", "mse(0-d y, 0-d p, sample_weight=ones(1))",
         lambda b: nl.mse(np.array(0.0), np.array(1.0), sample_weight=np.ones(1), backend=b), ValueError,
         ["sample_weight", "first axis", "0-d"]),
    _bad("sample_weight", "sample_weight with softmax y_pred not 2-D", "cce(labels (2, 2), y_pred (2, 2, 3), sample_weight=ones(2))",
         lambda b: nl.cce(np.zeros((2, 2), int), np.full((2, 2, 3), 0.3), sample_weight=np.ones(2), backend=b),
         ValueError, ["sample_weight", "(n, K)", "(2, 2, 3)"], "categorical_cross_entropy"),
    _bad("sample_weight", "sample_weight on a loss without it", "cycle_consistency(x, xc, y, yc, sample_weight=w)",
         lambda b: nl.cycle_consistency(_y(), _y(), _y(), _y(), sample_weight=np.ones(4), backend=b), TypeError,
         ["cycle_consistency()", "sample_weight"], "cycle_consistency"),
    # ------------------------------------------------------------ out= buffers
    _bad("out", "out of the wrong shape", "mse.grad(y (4, 3), p, out=empty((1, 1)))",
         lambda b: nl.mse.grad(_y(), _p(), out=np.empty((1, 1)), backend=b), ValueError,
         ["out", "(4, 3)", "(1, 1)"]),
    _bad("out", "out of the wrong dtype", "mse.grad(y, p, out=empty((4, 3), float32))",
         lambda b: nl.mse.grad(_y(), _p(), out=np.empty((4, 3), np.float32), backend=b), ValueError,
         ["out", "float64", "float32"]),
    _bad("out", "read-only out", "mse.grad(y, p, out=<read-only (4, 3)>)",
         lambda b: nl.mse.grad(_y(), _p(), out=_read_only((4, 3)), backend=b), ValueError,
         ["out", "writeable", "read-only"]),
    _bad("out", "out not C-contiguous", "mse.grad(y, p, out=<Fortran-order (4, 3)>)",
         lambda b: nl.mse.grad(_y(), _p(), out=np.empty((4, 3), order="F"), backend=b), ValueError,
         ["out", "C-contiguous", "strides"]),
    _bad("out", "out not an array", "mse.grad(y, p, out=[[0.0] * 3] * 4)",
         lambda b: nl.mse.grad(_y(), _p(), out=[[0.0] * 3] * 4, backend=b), TypeError,
         ["out", "array", "got list"]),
    _bad("out", "wrong number of out buffers", "triplet.grad(a, p, n, out=(g,))",
         lambda b: nl.triplet.grad(_emb(), _emb(), _emb(), out=(np.empty((4, 3)),), backend=b), ValueError,
         ["out", "3 arrays", "tuple of length 1"], "triplet"),
    # ---------------------------------------------------------------- backends
    _bad("backend", "unknown backend name", 'mse(y, p, backend="torch")',
         lambda b: nl.mse(_y(), _p(), backend="torch"), ValueError, ["backend", "'numba'", "'torch'"]),
    _bad("backend", "thread count not a positive integer", "set_num_threads(0)",
         lambda b: nl.set_num_threads(0), ValueError, ["number of threads", "positive integer", "0"]),
]


def _read_only(shape):
    a = np.empty(shape)
    a.flags.writeable = False
    return a


def message(entry: BadInput, backend: str = "numpy") -> tuple[type, str]:
    """(exception type, message) the entry's call raises on ``backend``; raises
    AssertionError if it returns."""
    try:
        entry.call(backend)
    except Exception as exc:  # the test checks the type
        return type(exc), str(exc)
    raise AssertionError(f"{entry.name}: {entry.example} did not raise on {backend}")

"""Test cases shared by the test modules: the parameter variants of every loss and
inputs that are valid for them.  The losses themselves come from the registry, so a
new loss is tested as soon as it has an entry there (and, if it has options, a line
in VARIANTS)."""

from __future__ import annotations

import numpy as np

import numbaloss as nl

#: compiled backends to compare with the reference (the numpy backend *is* it)
COMPILED = [b for b in nl.available_backends() if b not in ("numpy", "cuda")]
BACKENDS = COMPILED + ["numpy"]


def supports(backend: str, name: str) -> bool:
    """Whether ``backend`` has kernels for loss ``name`` (a backend may lack a family)."""
    from numbaloss import _config

    return hasattr(_config.load_backend(backend), nl.LOSSES[name].kernels)
DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]

VARIANTS = {
    "mse": [{}],
    "binary_cross_entropy": [
        {}, {"from_logits": True}, {"from_logits": True, "pos_weight": 3.0, "label_smoothing": 0.1},
        {"label_smoothing": 0.2, "pos_weight": 0.5},
    ],
    "categorical_cross_entropy": [
        {}, {"from_logits": True}, {"from_logits": True, "label_smoothing": 0.1},
        {"from_logits": True, "class_weight": "random"},
        {"from_logits": True, "class_weight": "random", "label_smoothing": 0.2},
        {"from_logits": True, "ignore_index": 1},
        {"from_logits": True, "ignore_index": 1, "class_weight": "random"},
        {"label_smoothing": 0.1, "class_weight": "random"},
    ],
    "huber": [{}, {"delta": 0.3}, {"delta": 2.5}],
    "focal": [
        {}, {"from_logits": True}, {"from_logits": True, "alpha": None, "gamma": 0.5},
        {"from_logits": True, "gamma": 0.0}, {"alpha": 0.7, "gamma": 3.0},
    ],
    "categorical_focal": [
        {}, {"from_logits": True}, {"from_logits": True, "alpha": 0.25, "gamma": 0.5},
        {"from_logits": True, "alpha": "random", "gamma": 0.0}, {"alpha": "random", "gamma": 1.5},
    ],
    "cycle_consistency": [{}, {"weight": 10.0}],
    "lsgan_discriminator": [{}, {"a": -1.0, "b": 1.0}],
    "lsgan_generator": [{}, {"c": 0.5}],
    "gan_discriminator": [{}, {"from_logits": True}],
    "gan_generator": [{}, {"from_logits": True}],
    "triplet": [{}, {"p": 1.0, "swap": True, "margin": 0.3}, {"squared": True, "margin": 0.0},
                {"p": 3.0, "eps": 0.0}],
    "batch_hard_triplet": [{}, {"squared": True, "margin": 0.5}],
    "info_nce": [{}, {"similarity": "dot", "temperature": 0.5}, {"negatives": "shared"},
                 {"negatives": "per_anchor", "temperature": 0.05}],
    "nt_xent": [{}, {"temperature": 0.1}],
    "arcface": [{}, {"easy_margin": True, "s": 30.0, "m": 0.3}],
    "cosface": [{}, {"s": 30.0, "m": 0.2}],
    "supcon": [{}, {"labels": None}, {"temperature": 0.5, "base_temperature": 0.07, "normalize": False},
               {"two_d": True}],
}

SOFTMAX = {"categorical_cross_entropy", "categorical_focal"}
PAIRWISE = {name for name, loss in nl.LOSSES.items() if loss.family == "pairwise"}


def all_cases():
    """(loss name, params) for every variant of every registered loss."""
    return [(name, params) for name in nl.LOSSES for params in VARIANTS.get(name, [{}])]


def case_id(case) -> str:
    name, params = case
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def make_case(name, params, rng, shape=(7, 5), dtype=np.float64, dense=False):
    """Inputs and concrete keyword arguments for one variant.

    Predictions are logits (normal, scale 3) when ``from_logits``; "random" class
    vectors are drawn; ``dense`` gives softmax losses one-hot/soft targets instead
    of labels.
    """
    loss = nl.LOSSES[name]
    inputs = list(loss.example(rng, shape, dtype))
    kwargs = dict(params)
    n_classes = shape[-1]
    for key in ("class_weight", "alpha"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = rng.uniform(0.2, 2.0, n_classes)
    if params.get("from_logits"):
        for i in loss.differentiable:
            inputs[i] = (3.0 * rng.standard_normal(shape)).astype(dtype)
    if name == "info_nce" and "negatives" in kwargs:
        mode = kwargs.pop("negatives")
        d = shape[-1]
        inputs.append(rng.standard_normal((5, d) if mode == "shared" else (shape[0], 4, d)).astype(dtype))
    if name == "supcon":
        if kwargs.pop("two_d", False):
            inputs[0] = inputs[0][:, 0, :].copy()
        if "labels" in kwargs and kwargs.pop("labels") is None:
            inputs = inputs[:1]
    if name in SOFTMAX:
        if dense:
            soft = rng.random(shape)
            inputs[0] = (soft / soft.sum(axis=-1, keepdims=True)).astype(dtype)
        elif "ignore_index" in kwargs:
            inputs[0][::3] = kwargs["ignore_index"]
    return tuple(inputs), kwargs


def rows_of(inputs, name):
    """Number of rows (first axis) of the differentiated input."""
    loss = nl.LOSSES[name]
    return inputs[loss.differentiable[0]].shape[0]


def grad_inputs(loss, inputs):
    """Indices of the inputs that get a gradient in this call (info_nce's negatives
    only when given)."""
    return [i for i in loss.differentiable if i < len(inputs) and inputs[i] is not None]


def require(backend: str, name: str) -> None:
    """Skip the calling test where ``backend`` has no kernels for loss ``name``."""
    import pytest

    if not supports(backend, name):
        pytest.skip(f"backend {backend} has no kernels for {name}")

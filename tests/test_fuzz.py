"""Property fuzzing of every public loss on every CPU backend (issue 8).

Each example starts from valid inputs of one loss variant (``tests/cases.py``) of a
random shape (0- and 1-sized axes included), then changes them: benign changes
(dtypes, memory layouts, NaN/±inf/huge values, Python lists) and at most one bad
input (see ``MUTATIONS``: wrong dtypes, shapes, labels, parameters at and beyond
their domain edges, bad reductions, weights and ``out=`` buffers).  The call runs
on the reference (``numpy``) backend and on every compiled backend that has the
loss's kernels, and each backend must

- return the reference's result (same structure, dtypes and shapes, values to
  rounding, NaN where the reference has NaN), or raise the reference's exception
  type, which is ValueError or TypeError with a message naming one of the
  arguments the example touched — never another exception, a crash or a hang;
- leave every input as it was (bytes compared before and after).

The CUDA backend has its own simulator suite (``tests/cuda``) and is not run here.

Bounded time: ``NUMBALOSS_FUZZ_EXAMPLES`` examples per loss (default 25,
derandomized, so CI runs the same examples every time): the whole file took 2 min
of CPU time on the 2-core machine (Numba compiling the loops of the dtype
combinations drawn included), plus the 30 s atheris run.  For a longer exploration run e.g.
``NUMBALOSS_FUZZ_EXAMPLES=2000 NUMBALOSS_FUZZ_RANDOM=1 pytest tests/test_fuzz.py``.
The figures (calls per loss × backend, bad-input classes covered) are printed at
the end of the run by ``fuzz.report`` (hooked in ``tests/conftest.py``).
"""

from __future__ import annotations

import faulthandler
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import numbaloss as nl
from cases import BACKENDS, PAIRWISE, SOFTMAX, VARIANTS, make_case, supports
from fuzz import gen_errors_doc, report
from fuzz.bad_inputs import CATALOGUE, message

EXAMPLES = int(os.environ.get("NUMBALOSS_FUZZ_EXAMPLES", "25"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("NUMBALOSS_FUZZ_RANDOM"),
    database=None, suppress_health_check=list(HealthCheck),
    # no shrinking: a failure is reported as drawn (shrinking recompiles kernels for minutes)
    phases=(Phase.explicit, Phase.generate),
)
#: a call that has not returned after this many seconds is a hang: dump the stacks and exit
HANG_SECONDS = 600

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
# integer and bool inputs are read as they are (targets, labels, exact predictions)
# (a few only: each target dtype compiles Numba loops of its own)
OTHER_NUMERIC_DTYPES = [np.int64, np.bool_]
BAD_DTYPES = {"object": object, "complex": np.complex128, "str": "U4", "datetime": "datetime64[s]"}

# parameter values at and beyond the edges of every parameter's domain
EDGE_VALUES = {
    "zero": 0.0, "minus_zero": -0.0, "negative": -1.0, "tiny_negative": -5e-324,
    "subnormal": 5e-324, "small": 1e-3, "half": 0.5, "one": 1.0, "above_one": 1.5, "huge": 1e300,
    "nan": math.nan, "inf": math.inf, "minus_inf": -math.inf, "int": 2, "negative_int": -3,
    "big_int": 2**70, "bool": True, "none": None, "str": "1.0", "list": [1.0], "np_float32": np.float32(0.25),
    "np_int64": np.int64(3), "0d_array": np.array(0.3), "1d_array": np.array([0.1, 0.2]),
    "complex": 1j,
}
# ignore_index values (integers; the label range is [0, K))
INDEX_VALUES = {
    "minus_one": -1, "zero": 0, "minus_100": -100, "int64_max": 2**63 - 1, "above_int64": 2**63,
    "below_int64": -(2**63) - 1, "huge": 2**70, "np_uint64": np.uint64(2**64 - 1), "np_int8": np.int8(1),
    "float": 1.0, "bool": True, "str": "1",
}
BAD_REDUCTIONS = {"avg": "avg", "upper": "MEAN", "empty": "", "none_object": None, "int": 0, "list": ["mean"]}


def _float_inputs(loss, inputs):
    return [i for i, a in enumerate(inputs) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]


def _label_inputs(loss, inputs):
    """Indices of the inputs that hold integer class labels."""
    idx = [i for i, name in enumerate(loss.inputs)
           if i < len(inputs) and name in getattr(loss, "integer_inputs", ()) and inputs[i] is not None]
    if loss.name in SOFTMAX and inputs[0].dtype.kind in "iu":
        idx.append(0)
    return idx


def _name(loss, i):
    return loss.inputs[i] if i < len(loss.inputs) else "positional"


def _rows_shape(loss, inputs):
    return inputs[loss.differentiable[0]].shape


# ------------------------------------------------------------------ bad inputs
# Each mutation changes the call in one way and returns (class, touched argument
# names).  ``call`` is a dict: inputs (list), kwargs, reduction, sample_weight, out
# (a function of the backend's result dtype → buffers, or a value), entry.


def _mut_dtype_bad(draw, loss, call):
    i = draw(st.sampled_from([i for i, a in enumerate(call["inputs"]) if a is not None]))
    kind = draw(st.sampled_from(sorted(BAD_DTYPES)))
    a = call["inputs"][i]
    call["inputs"][i] = (a.astype(str).astype(BAD_DTYPES[kind]) if kind == "str" else
                         np.zeros(a.shape, dtype=BAD_DTYPES[kind]) if kind == "datetime" else
                         a.astype(BAD_DTYPES[kind]))
    return f"input dtype {kind}", {loss.inputs[i]}


def _mut_input_none(draw, loss, call):
    i = draw(st.sampled_from([i for i, n in enumerate(loss.inputs)
                              if n not in getattr(loss, "optional_inputs", ()) and i < len(call["inputs"])]))
    call["inputs"][i] = None
    return "input None", {loss.inputs[i]}


def _mut_input_object(draw, loss, call):
    i = draw(st.integers(0, len(call["inputs"]) - 1))
    value = draw(st.sampled_from(["text", {"a": 1}, [[1.0, 2.0], [3.0]], object()]))
    call["inputs"][i] = value
    return "input not an array (str, dict, ragged list, object)", {loss.inputs[i]}


def _mut_positional_count(draw, loss, call):
    inputs = call["inputs"]
    if draw(st.booleans()):
        # one more than the loss takes (optional trailing inputs such as info_nce's
        # negatives would otherwise take the extra one)
        call["inputs"] = inputs + [inputs[-1]] * (len(loss.inputs) + 1 - len(inputs))
    else:
        # one fewer than it needs (supcon works without its optional labels)
        required = len(loss.inputs) - len(getattr(loss, "optional_inputs", ()))
        call["inputs"] = inputs[:required - 1]
    return "wrong number of positional inputs", {loss.name}


def _mut_shape_mismatch(draw, loss, call):
    arrays = [i for i, a in enumerate(call["inputs"]) if a is not None and a.ndim >= 1]
    if len(arrays) < 2:
        return None
    i = draw(st.sampled_from(arrays))
    a = call["inputs"][i]
    axis = draw(st.integers(0, a.ndim - 1))
    if a.shape[axis] > 0 and draw(st.booleans()):
        call["inputs"][i] = np.take(a, range(a.shape[axis] - 1), axis=axis)
    else:
        call["inputs"][i] = np.concatenate([a, np.take(a, [0] * 1, axis=axis) if a.shape[axis] else
                                            np.zeros(a.shape[:axis] + (1,) + a.shape[axis + 1:], a.dtype)],
                                           axis=axis)
    return "shape mismatch between inputs", {loss.inputs[i]}


def _mut_ndim(draw, loss, call):
    i = draw(st.sampled_from([i for i, a in enumerate(call["inputs"]) if a is not None]))
    a = call["inputs"][i]
    how = draw(st.sampled_from(["add_axis", "flatten", "scalar"]))
    call["inputs"][i] = a[None] if how == "add_axis" else a.reshape(-1) if how == "flatten" else \
        np.asarray(a.reshape(-1)[0] if a.size else 0.0)
    return "wrong number of dimensions", {loss.inputs[i]}


def _mut_empty_class_axis(draw, loss, call):
    if loss.name not in SOFTMAX:
        return None
    z = call["inputs"][1]
    call["inputs"][1] = z[..., :0]
    if call["inputs"][0].shape == z.shape:
        call["inputs"][0] = call["inputs"][0][..., :0]
    return "empty class axis (K = 0)", {"y_pred", "y_true"}


def _mut_label_range(draw, loss, call):
    idx = _label_inputs(loss, call["inputs"])
    idx = [i for i in idx if call["inputs"][i].size]
    if not idx:
        return None
    i = draw(st.sampled_from(idx))
    a = call["inputs"][i].astype(draw(st.sampled_from([np.int64, np.uint64])))
    n_classes = (call["inputs"][1].shape[-1] if loss.name in SOFTMAX else
                 call["inputs"][2].shape[0] if loss.name in ("arcface", "cosface") else 1000)
    bad = draw(st.sampled_from([n_classes, -1, n_classes + 7, -(2**31), 2**62, np.iinfo(a.dtype).max]))
    flat = a.reshape(-1).copy()
    flat[draw(st.integers(0, flat.size - 1))] = np.array(bad).astype(a.dtype)
    call["inputs"][i] = flat.reshape(a.shape)
    return "label outside [0, n_classes)", {loss.inputs[i], "labels", "y_true", "ignore_index"}


def _mut_label_dtype(draw, loss, call):
    idx = _label_inputs(loss, call["inputs"])
    if not idx:
        return None
    i = draw(st.sampled_from(idx))
    call["inputs"][i] = call["inputs"][i].astype(draw(st.sampled_from([np.float64, np.float32, np.bool_])))
    return "labels not integers", {loss.inputs[i]}


def _mut_unit_domain(draw, loss, call):
    floats = _float_inputs(loss, call["inputs"])
    floats = [i for i in floats if call["inputs"][i].size]
    if not floats:
        return None
    i = draw(st.sampled_from(floats))
    a = call["inputs"][i].copy()
    a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([1.5, -0.5, 1.0000001, -1e-7]))
    call["inputs"][i] = a
    return "value outside [0, 1] (probabilities, binary targets)", {loss.inputs[i]}


def _mut_param(draw, loss, call):
    if not loss.params:
        return None
    name = draw(st.sampled_from(sorted(loss.params)))
    if name == "ignore_index":
        label = draw(st.sampled_from(sorted(INDEX_VALUES)))
        call["kwargs"][name] = INDEX_VALUES[label]
        return f"ignore_index {label}", {name}
    if name in ("class_weight", "alpha") and draw(st.booleans()):
        return _class_vector(draw, loss, call, name)
    label = draw(st.sampled_from(sorted(EDGE_VALUES)))
    call["kwargs"][name] = EDGE_VALUES[label]
    return f"parameter {label}", {name}


def _class_vector(draw, loss, call, name):
    k = call["inputs"][1].shape[-1] if call["inputs"][1].ndim else 1
    kind = draw(st.sampled_from(["short", "long", "negative", "nan", "inf", "2d", "int", "object", "bool"]))
    w = np.linspace(0.5, 1.5, k)
    w = {"short": w[:-1], "long": np.append(w, 1.0), "negative": w - 1.0,
         "nan": np.where(np.arange(k) == 0, np.nan, w), "inf": np.where(np.arange(k) == 0, np.inf, w),
         "2d": w[None], "int": np.arange(k), "object": w.astype(object), "bool": np.ones(k, bool)}[kind]
    call["kwargs"][name] = w
    return f"class vector {kind}", {name}


def _mut_reduction(draw, loss, call):
    label = draw(st.sampled_from(sorted(BAD_REDUCTIONS)))
    call["reduction"] = BAD_REDUCTIONS[label]
    call["force_reduction"] = True  # (grad_hess takes no reduction: passing one is the error)
    return "reduction not mean/sum/none", {"reduction"}


def _mut_unknown_keyword(draw, loss, call):
    call["kwargs"][draw(st.sampled_from(["delta", "gamma", "weights", "axis", "sample_weights"]))] = 1.0
    names = {k for k in call["kwargs"] if k not in loss.params}
    if not names:
        return None
    return "unknown keyword", names


def _mut_sample_weight(draw, loss, call):
    shape = _rows_shape(loss, call["inputs"])
    n = loss.name in ("nt_xent",) and 2 * shape[0] or (shape[0] if shape else 1)
    kind = draw(st.sampled_from(["short", "long", "2d", "nan", "negative", "object", "complex", "scalar",
                                 "zeros", "int", "noncontiguous"]))
    w = np.linspace(0.5, 2.0, n)
    call["sample_weight"] = {
        "short": w[:-1], "long": np.append(w, 1.0), "2d": w[:, None], "nan": np.where(np.arange(n) == 0, np.nan, w),
        "negative": -w, "object": w.astype(object), "complex": w.astype(complex), "scalar": 1.0,
        "zeros": np.zeros(n), "int": np.arange(n), "noncontiguous": np.repeat(w, 2)[::2],
    }[kind]
    return f"sample_weight {kind}", {"sample_weight"}


def _mut_out(draw, loss, call):
    if call["entry"] == "__call__":
        call["entry"] = "grad"
    kind = draw(st.sampled_from(["shape", "dtype", "readonly", "fortran", "not_array", "count"]))

    def make(shapes, dtype):
        bufs = [np.empty(s, dtype) for s in shapes]
        if kind == "shape":
            bufs[0] = np.empty(bufs[0].shape + (1,), dtype)
        elif kind == "dtype":
            bufs[0] = bufs[0].astype(np.float64 if dtype == np.float32 else np.float32)
        elif kind == "readonly":
            bufs[0].flags.writeable = False
        elif kind == "fortran":
            bufs[0] = np.empty(bufs[0].shape + (2,), dtype)[..., 0]
        elif kind == "not_array":
            bufs[0] = bufs[0].tolist()
        elif kind == "count":
            bufs = bufs + bufs[:1]
        return bufs[0] if len(bufs) == 1 else tuple(bufs)

    call["out"] = make
    return f"out buffer {kind}", {"out"}


def _mut_sample_weight_not_taken(draw, loss, call):
    if loss.has_sample_weight:
        return None
    call["sample_weight"] = np.ones(1)
    return "sample_weight on a loss without it", {"sample_weight"}


MUTATIONS = [
    _mut_dtype_bad, _mut_input_none, _mut_input_object, _mut_positional_count, _mut_shape_mismatch, _mut_ndim,
    _mut_empty_class_axis, _mut_label_range, _mut_label_dtype, _mut_unit_domain, _mut_param, _mut_param,
    _mut_reduction, _mut_unknown_keyword, _mut_sample_weight, _mut_out, _mut_sample_weight_not_taken,
]


#: classes that are an error whatever else the call holds
MUST_RAISE = ("input dtype object", "input dtype complex", "input dtype str", "input dtype datetime", "input None",
              "input not an array", "wrong number of positional inputs", "reduction not", "unknown keyword",
              "sample_weight on a loss without it", "labels not integers")


# ------------------------------------------------------------------ benign changes
def _layout(draw, a):
    """The same values in another memory layout: (array, layout name)."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a, "C"
    how = draw(st.sampled_from(["C", "fortran", "strided", "negative_strides", "readonly"]))
    if how == "fortran":
        a = np.asfortranarray(a)
    elif how == "strided":
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif how == "negative_strides":
        a = np.flip(np.flip(a).copy())
    elif how == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a, how


def _special_values(draw, loss, call):
    floats = [i for i in _float_inputs(loss, call["inputs"]) if call["inputs"][i].size]
    if not floats:
        return None
    i = draw(st.sampled_from(floats))
    a = call["inputs"][i].copy()
    kind = draw(st.sampled_from(["nan", "inf", "minus_inf", "huge", "minus_huge", "zero"]))
    big = {np.float16: 6e4, np.float32: 3e38}.get(a.dtype.type, 1e300)
    value = {"nan": np.nan, "inf": np.inf, "minus_inf": -np.inf, "huge": big, "minus_huge": -big, "zero": 0.0}[kind]
    count = draw(st.integers(1, max(1, a.size)))
    positions = draw(st.lists(st.integers(0, a.size - 1), min_size=1, max_size=count))
    a.reshape(-1)[positions] = value
    call["inputs"][i] = a
    return f"{kind} values", {loss.inputs[i]}


def _numeric_dtype(draw, loss, call):
    i = draw(st.sampled_from([i for i, a in enumerate(call["inputs"]) if a is not None]))
    dtype = draw(st.sampled_from(FLOAT_DTYPES + OTHER_NUMERIC_DTYPES))
    a = call["inputs"][i]
    with np.errstate(all="ignore"):
        call["inputs"][i] = a.astype(dtype)
    return f"input dtype {np.dtype(dtype).name}", {loss.inputs[i]}


def _as_list(draw, loss, call):
    # (numeric arrays only: the list of an object array of numbers is a valid input)
    arrays = [i for i, a in enumerate(call["inputs"]) if isinstance(a, np.ndarray) and a.dtype.kind in "fiub"]
    if not arrays:
        return None
    i = draw(st.sampled_from(arrays))
    call["inputs"][i] = call["inputs"][i].tolist()
    return "input a Python list", {_name(loss, i)}


# ------------------------------------------------------------------ drawing a call
def _shape(draw, loss):
    if loss.family == "pairwise":
        # (triplet with D = 0 is a class of the catalogue: tests/fuzz/bad_inputs.py)
        widths = [1, 3, 4] if loss.name == "triplet" else [0, 1, 3, 4]
        return (draw(st.sampled_from([0, 1, 2, 3, 6])), draw(st.sampled_from(widths)))
    # softmax: 1-D y_pred (one row, 0-d label) comes from the "wrong number of dimensions" class
    low = 2 if loss.name in SOFTMAX else 0
    ndim = draw(st.integers(low, 3))
    dims = tuple(draw(st.sampled_from([0, 1, 2, 3, 5])) for _ in range(ndim))
    if loss.name in SOFTMAX and dims[-1] == 0:
        dims = dims[:-1] + (1,)  # K = 0 is a bad-input class of its own
    return dims


@st.composite
def calls(draw, name):
    loss = nl.LOSSES[name]
    params = draw(st.sampled_from(VARIANTS.get(name, [{}])))
    shape = _shape(draw, loss)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    dense = name in SOFTMAX and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # the examples draw 0-d inputs from a 1-element shape
    inputs, kwargs = make_case(name, params, rng, shape=shape or (1,), dtype=dtype, dense=dense)
    inputs = [np.asarray(a).reshape(()) if not shape else np.asarray(a) for a in inputs]
    entries = ["__call__", "grad", "value_and_grad"] + (["grad_hess"] if loss.has_hessian else [])
    call = {"inputs": inputs, "kwargs": kwargs, "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
            "sample_weight": None, "out": None, "entry": draw(st.sampled_from(entries))}
    # (softmax losses take sample_weight with 2-D y_pred only)
    if loss.has_sample_weight and shape and (name not in SOFTMAX or len(shape) == 2) and draw(st.booleans()):
        rows = _rows_shape(loss, inputs)[0]
        call["sample_weight"] = rng.uniform(0.0, 2.0, rows)
    classes, touched = [], set()
    changes = [_numeric_dtype, _special_values]
    changes += [draw(st.sampled_from(MUTATIONS))] if draw(st.integers(0, 3)) > 0 else []
    changes += [_as_list]  # last: the other changes work on arrays
    for change in changes:
        if change in MUTATIONS or draw(st.integers(0, 3)) == 0:
            found = change(draw, loss, call)
            if found:
                classes.append(found[0])
                touched |= found[1]
    call["inputs"] = [_layout(draw, a)[0] for a in call["inputs"]]
    call["classes"], call["touched"] = classes, touched
    return call


# ------------------------------------------------------------------ running a call
def _invoke(loss, call, backend):
    kwargs = dict(call["kwargs"])
    if call["sample_weight"] is not None:
        kwargs["sample_weight"] = call["sample_weight"]
    if call["entry"] != "grad_hess" or call.get("force_reduction"):
        kwargs["reduction"] = call["reduction"]
    if call["out"] is not None:
        kwargs["out"] = call["out"](*_out_spec(loss, call))
    fn = loss if call["entry"] == "__call__" else getattr(loss, call["entry"])
    return fn(*call["inputs"], backend=backend, **kwargs)


def _out_spec(loss, call):
    """Shapes and dtype of the gradient buffers the call would fill."""
    arrays = [np.asarray(a) if a is not None and not isinstance(a, str) else None for a in call["inputs"]]
    floats = [a for a in arrays if a is not None and a.dtype.kind == "f"]
    dtype = np.result_type(*floats) if floats else np.dtype(np.float64)
    dtype = np.float32 if dtype == np.float16 else dtype
    if call["entry"] == "grad_hess":
        shape = arrays[-1].shape
        return [shape, shape], dtype
    return [arrays[i].shape for i in loss.differentiable if i < len(arrays) and arrays[i] is not None], dtype


def _compute_dtype(call):
    floats = [np.asarray(a).dtype for a in call["inputs"] if a is not None and np.asarray(a).dtype.kind == "f"]
    return np.dtype(np.float32) if any(d.itemsize <= 4 for d in floats) else np.dtype(np.float64)


def _snapshot(call):
    things = list(call["inputs"]) + [call["sample_weight"]] + list(call["kwargs"].values())
    return [(id(a), a.tobytes() if isinstance(a, np.ndarray) and a.dtype != object else repr(a)) for a in things]


def _flatten(result):
    if isinstance(result, tuple):
        return [x for r in result for x in _flatten(r)]
    return [result]


def _gradient_size(name, call):
    """The size the embedding losses' results are rounded against: ArcFace/CosFace
    multiply the cosines by s, the contrastive losses divide them by the temperature,
    and the gradient of a row of norm below 1e-12 is divided by 1e-12 (F.normalize's
    clamp), its rounding with it."""
    kwargs = call["kwargs"]
    size = 1.0
    try:
        if name in ("arcface", "cosface"):
            size = abs(float(kwargs.get("s", 64.0)))
        elif "temperature" in kwargs:
            size = 1.0 / abs(float(kwargs["temperature"]))
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    cosine = name in ("nt_xent", "supcon", "info_nce", "arcface", "cosface")
    for a in call["inputs"] if cosine else []:
        if isinstance(a, np.ndarray) and a.ndim >= 2 and a.dtype.kind == "f" and a.size:
            with np.errstate(all="ignore"):
                norms = np.sqrt(np.sum(a.astype(np.float64) ** 2, axis=-1))
            if np.any(norms < 1e-12):
                size /= 1e-12
                break
    return size


def _assert_same_result(name, got, ref, backend, compute_dtype, call):
    got, ref = _flatten(got), _flatten(ref)
    assert len(got) == len(ref), f"{backend}: {len(got)} results, reference {len(ref)}"
    for a, b in zip(got, ref):
        assert type(a) is type(b), f"{backend}: result type {type(a)}, reference {type(b)}"
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, \
            f"{backend}: {a.dtype}{a.shape}, reference {b.dtype}{b.shape}"
        # the looser of the result's and the computation's precision (float32 sums return float64)
        precision = a.dtype if a.dtype == np.float16 else compute_dtype
        tol = {np.float16: (4e-3, 1e-3), np.float32: (2e-5, 1e-6)}.get(precision.type, (1e-9, 1e-12))
        finite = np.isfinite(b)
        scale = max(1.0, float(np.max(np.abs(b[finite]), initial=0.0)))
        if name in PAIRWISE:  # matrix products round relative to the largest entry (see test_api)
            scale = max(scale, _gradient_size(name, call))
            tol = (1e-4, 1e-5 * scale) if precision != np.float64 else (1e-9, 1e-7 * scale)
        np.testing.assert_allclose(a, b, rtol=tol[0], atol=tol[1], equal_nan=True,
                                   err_msg=f"{backend} differs from the reference")


def _outcome(loss, call, backend):
    before = _snapshot(call)
    try:
        result = ("ok", _invoke(loss, call, backend))
    except (ValueError, TypeError) as exc:
        result = ("error", exc)
    assert _snapshot(call) == before, f"{backend} modified an input"
    return result


def _check_error(exc, call, backend):
    message = str(exc)
    assert call["touched"], f"{backend}: {type(exc).__name__} on valid input: {message}"
    assert any(name in message for name in call["touched"]), \
        f"{backend}: the message does not name any of {sorted(call['touched'])}: {message}"


@pytest.fixture(autouse=True)
def _hang_guard():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("name", list(nl.LOSSES))
def test_fuzz_loss_on_every_backend(name):
    loss = nl.LOSSES[name]
    backends = [b for b in BACKENDS if b != "numpy" and supports(b, name)]
    started = time.perf_counter()

    @FUZZ_SETTINGS
    @given(call=calls(name))
    def check(call):
        reference = _outcome(loss, call, "numpy")
        outcomes = {b: _outcome(loss, call, b) for b in backends}
        for backend, (kind, value) in [("numpy", reference)] + list(outcomes.items()):
            report.record(name, backend, call["classes"], kind if kind == "ok" else type(value).__name__)
            if kind == "error":
                _check_error(value, call, backend)
        if any(c.startswith(MUST_RAISE) for c in call["classes"]):
            assert reference[0] == "error", f"{call['classes']}: the reference returned instead of raising"
        for backend, (kind, value) in outcomes.items():
            if reference[0] == "error":
                assert kind == "error", f"{backend} returned where the reference raised {reference[1]!r}"
                assert type(value) is type(reference[1]), f"{backend} raised {value!r}, reference {reference[1]!r}"
            else:
                assert kind == "ok", f"{backend} raised {value!r} where the reference returned"
                _assert_same_result(name, value, reference[1], backend, _compute_dtype(call), call)

    check()
    report.record_time(name, time.perf_counter() - started)


# ------------------------------------------------------------ the bad-input catalogue
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.name)
def test_bad_input_class_raises_named_error(entry, backend):
    if not supports(backend, entry.loss):
        pytest.skip(f"backend {backend} has no kernels for {entry.loss}")
    error, text = message(entry, backend)
    assert error is entry.error, f"{entry.example} on {backend}: {error.__name__}: {text}"
    missing = [word for word in entry.words if word not in text]
    assert not missing, f"{entry.example} on {backend}: message lacks {missing}: {text}"
    report.record_class(entry.name, backend, error.__name__)


def test_errors_doc_is_up_to_date():
    assert gen_errors_doc.main(["--check"]) == 0, "run python tests/fuzz/gen_errors_doc.py"


# ------------------------------------------------------------ coverage-guided fuzzing
FUZZ_DIR = pathlib.Path(__file__).parent / "fuzz"
ATHERIS_RUNS = int(os.environ.get("NUMBALOSS_ATHERIS_RUNS", "40000"))
ATHERIS_SECONDS = int(os.environ.get("NUMBALOSS_ATHERIS_SECONDS", "120"))
#: libFuzzer's random seed: fixed, so that a run is a replay of the same mutations, a
#: slower machine running a prefix of a faster one's (a finding is reproducible and CI
#: does not fail by chance).  Longer runs with other seeds are for finding bugs by hand.
ATHERIS_SEED = int(os.environ.get("NUMBALOSS_ATHERIS_SEED", "20261129"))


def test_atheris_fuzz_validation(tmp_path):
    """tests/fuzz/fuzz_validation.py under libFuzzer for ATHERIS_RUNS inputs (at most
    ATHERIS_SECONDS), seeded with the committed corpus (tests/fuzz/corpus); new inputs
    go to a temporary folder."""
    pytest.importorskip("atheris", reason="atheris is not installed (the test extra installs it on "
                                          "Linux x86-64 with CPython 3.11-3.13, where it has wheels)")
    new = tmp_path / "new"
    new.mkdir()
    command = [sys.executable, str(FUZZ_DIR / "fuzz_validation.py"), str(new), str(FUZZ_DIR / "corpus"),
               f"-runs={ATHERIS_RUNS}", f"-max_total_time={ATHERIS_SECONDS}", f"-seed={ATHERIS_SEED}", "-timeout=120", f"-artifact_prefix={tmp_path}/",
               "-print_final_stats=1"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=ATHERIS_SECONDS + 600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, f"the fuzzer found a failing input (in {tmp_path}):\n{log[-4000:]}"
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    cov = re.findall(r"cov: (\d+)", log)
    report.NOTES.append(f"atheris (seed {ATHERIS_SEED}): {runs.group(1) if runs else '?'} inputs, "
                        f"coverage {cov[-1] if cov else '?'} edges, {len(list(new.iterdir()))} new corpus "
                        f"entries, no finding")

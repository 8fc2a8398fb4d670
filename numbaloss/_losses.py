"""The public loss objects: validate once, pick the backend, call its loop.

A loss is an instance of one of three families:

- :class:`PointwiseLoss` — one elementwise term l(y, z) over ``y_pred`` (mse, bce, …);
- :class:`TwoTermLoss` — two elementwise terms over two input pairs, each with its
  own mean (cycle_consistency, the GAN/LSGAN discriminators);
- :class:`SoftmaxLoss` — a row-wise softmax loss over the last axis (cce,
  categorical_focal).

Each has ``__call__`` (the value), ``grad``, ``value_and_grad`` and, where the loss
has a second derivative, ``grad_hess``.  The definitions of the losses themselves
(which term, which parameters, which domains) are in ``numbaloss._registry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _config
from . import _validation as v

INF = math.inf
ANY = (-INF, INF)
UNIT = (0.0, 1.0)

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_MAX_PLANS = 64  # cached (backend, parameters) resolutions per loss


@dataclass(frozen=True)
class Param:
    """A keyword parameter: its default and the function that validates a value."""

    name: str
    default: object
    check: Callable


@dataclass(frozen=True)
class Term:
    """An elementwise term as the kernels see it: its name (a function of
    ``numbaloss.reference.pointwise`` and a point-function pair of
    ``numbaloss._numba.points``), its parameter tuple and the domains of y and z."""

    name: str
    params: tuple = ()
    target_domain: tuple = ANY
    prediction_domain: tuple = ANY


def _float32_products_overflow(arrays) -> bool:
    """Whether dot products of rows of these float32 arrays could exceed float32:
    D·max|x|² above a quarter of its largest value (a pass over the inputs, made only
    for the dot-product similarities)."""
    largest = max((float(np.max(np.abs(a), initial=0.0)) for a in arrays if a.size), default=0.0)
    dim = max(a.shape[-1] for a in arrays) if arrays else 0
    return dim * largest * largest > float(np.finfo(np.float32).max) / 4


def _plain_mean(reduction, sample_weight) -> bool:
    """Whether a call may take the latency fast path (validation comes later: a
    ``reduction`` that is not a string is only rejected there)."""
    return isinstance(reduction, str) and reduction == "mean" and sample_weight is None


class Loss:
    """Base of the public loss objects (see the module docstring)."""

    family = "base"
    kernels = ""  # the name of the backend function a family calls
    def __init__(self, name: str, inputs: tuple, params: tuple, doc: str, *,
                 differentiable: tuple, has_hessian: bool, has_sample_weight: bool,
                 example: Callable):
        self.name = name
        self._example = example
        self.inputs = inputs
        self.params = {p.name: p for p in params}
        self.differentiable = differentiable
        self.has_hessian = has_hessian
        self.has_sample_weight = has_sample_weight
        # a class per loss so that help(nl.<loss>) shows the loss's own docstring
        self.__class__ = type(name, (type(self),), {"__doc__": doc})

    def example(self, rng: np.random.Generator, shape: tuple = (8, 5), dtype=np.float64) -> tuple:
        """Valid synthetic inputs of this loss: a tuple in the order of ``inputs``
        (used by the tests, the demo and the benchmarks)."""
        return self._example(rng, tuple(shape), np.dtype(dtype))

    def __repr__(self) -> str:
        return f"<numbaloss loss {self.name}({', '.join(self.inputs)})>"

    # ------------------------------------------------------------ argument parsing
    def _arrays(self, args) -> list:
        if len(args) != len(self.inputs):
            raise TypeError(
                f"{self.name}() takes {len(self.inputs)} positional inputs "
                f"({', '.join(self.inputs)}), got {len(args)}"
            )
        return [v.as_array(name, a) for name, a in zip(self.inputs, args)]

    def _params(self, kwargs: dict) -> dict:
        unknown = set(kwargs) - set(self.params)
        if unknown:
            raise TypeError(
                f"{self.name}() got unexpected keyword argument(s) {sorted(unknown)}; "
                f"its parameters are {sorted(self.params)} and reduction, sample_weight, backend"
            )
        values = {}
        for name, param in self.params.items():
            value = kwargs.get(name, param.default)
            values[name] = param.check(name, value)
        return values

    def _prepare(self, args, kwargs, reduction, sample_weight, backend, out=None):
        v.check_reduction(reduction)
        if sample_weight is not None and not self.has_sample_weight:
            raise TypeError(f"{self.name}() does not take sample_weight")
        arrays = self._arrays(args)
        params = self._params(kwargs)
        on_device = v.any_device(arrays) or v.is_device(sample_weight) or (
            v.any_device(out) if isinstance(out, (tuple, list)) else v.is_device(out))
        module = _config.resolve(backend, arrays, self.kernels, self.name, on_device)
        if on_device:
            # one device array puts the whole call on the device: host inputs are
            # copied over, results come back as device arrays
            if module.name != "cuda":
                raise TypeError(
                    f"{self.name}(): CUDA device arrays need backend='cuda' (or 'auto'), "
                    f"got backend={module.name!r}"
                )
            arrays = [v.to_device(a) for a in arrays]
        return arrays, params, module

    # ------------------------------------------------------------ public entry points
    def __call__(self, *args, reduction="mean", sample_weight=None, backend=None, **kwargs):
        """The loss value (a float64 scalar, or per-element arrays with reduction="none")."""
        if _plain_mean(reduction, sample_weight):
            result = self._fast_path(args, kwargs, backend, True, False, None)
            if result is not None:
                return result[0]
        arrays, params, module = self._prepare(args, kwargs, reduction, sample_weight, backend)
        value, _ = self._evaluate(module, arrays, params, reduction, sample_weight, True, False, None)
        return value

    def grad(self, *args, reduction="mean", sample_weight=None, backend=None, out=None, **kwargs):
        """The gradient of the value w.r.t. the predictions (a tuple for several inputs)."""
        if _plain_mean(reduction, sample_weight):
            result = self._fast_path(args, kwargs, backend, False, True, out)
            if result is not None:
                return result[1]
        arrays, params, module = self._prepare(args, kwargs, reduction, sample_weight, backend, out)
        _, grads = self._evaluate(module, arrays, params, reduction, sample_weight, False, True, out)
        return grads

    def value_and_grad(self, *args, reduction="mean", sample_weight=None, backend=None, out=None,
                       **kwargs):
        """``(value, grad)`` computed in one fused pass."""
        if _plain_mean(reduction, sample_weight):
            result = self._fast_path(args, kwargs, backend, True, True, out)
            if result is not None:
                return result
        arrays, params, module = self._prepare(args, kwargs, reduction, sample_weight, backend, out)
        return self._evaluate(module, arrays, params, reduction, sample_weight, True, True, out)

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out):
        raise NotImplementedError  # each family implements it

    def _fast_path(self, args, kwargs, backend, want_value, want_grad, out):
        """``(value, grad)`` of a mean without sample weights when the call is the
        common case a family can serve without the general argument handling, else
        None (the general path then handles, or rejects, the call)."""
        return None


def _mean_scale(factor: float, denominator: float) -> float:
    return v.nan_safe_divide(factor, denominator)


def _gradient_buffer(out, name, shape, compute_dtype, result_dtype, on_device=False):
    """(buffer the kernel writes, array returned to the caller); new buffers are on
    the device when ``on_device``, a caller's ``out`` is used where it lives."""
    if out is None:
        buf = v.empty(shape, compute_dtype, on_device)
        return buf, buf
    target = v.out_buffer(name, out, shape, result_dtype)
    if result_dtype != compute_dtype:  # float16: compute in float32, copy at the end
        return v.empty(shape, compute_dtype, v.is_device(target)), target
    return target, target


def _finish(buf, target, given):
    """The caller's ``out`` (``given``) once it holds the gradient: ``buf`` is a view of
    the checked ``target`` itself unless the result dtype differs (float16), when it
    is a temporary to copy in."""
    if buf.dtype != target.dtype:
        v.copy_into(target, buf)
    return given


def _cast_result(arr, result_dtype):
    return v.cast(arr, result_dtype) if arr.dtype != result_dtype else arr


def _elementwise_denominator(shape, weights) -> float:
    """What the mean of an elementwise term over an array of ``shape`` divides by:
    its element count n, or m·Σᵢwᵢ with per-row ``weights`` over rows of m elements."""
    n = math.prod(shape)
    if weights is None:
        return float(n)
    n_rows = shape[0] if len(shape) else 1
    return v.total(weights) * (n // n_rows if n_rows else 0)


def run_elementwise(module, term: Term, y, z, weights, reduction, factor, want_value, want_grad,
                    out, names, result_dtype, target_array=None):
    """Evaluate one elementwise term over ``z`` (and its targets ``y``; ``y is None``
    for constant-target terms), with per-row ``weights`` over the first axis.

    Returns (value, grad) as the public API returns them for a single term.
    """
    target_name, pred_name = names
    dtype = v.compute_dtype(*(a for a in (y, z) if a is not None))
    shape = z.shape
    z_flat = v.flat(z, dtype)
    if y is None:
        y_flat = z_flat
    else:
        # targets keep their own dtype (ints, bools, float32/64 are read as they are)
        y_flat = v.flat(y, dtype if y.dtype == np.float16 else None)
    n = z_flat.shape[0]
    n_rows = shape[0] if len(shape) else 1
    m = n // n_rows if n_rows else 0
    denominator = _elementwise_denominator(shape, weights)
    if reduction == "mean":
        scale = _mean_scale(factor, denominator)
    else:
        scale = factor

    grad_buf = grad_target = None
    if want_grad:
        grad_buf, grad_target = _gradient_buffer(out, f"out (gradient of {pred_name})", shape,
                                                 dtype, result_dtype, v.is_device(z))
        grad_buf = grad_buf.reshape(-1)

    if reduction == "none":
        values = v.empty(n, dtype, v.is_device(z))
        _, flags = module.elementwise(term.name, term.params, term.target_domain + term.prediction_domain,
                                      y_flat, z_flat, weights, m, "none", scale, values, grad_buf, None)
        value = _cast_result(values.reshape(shape), result_dtype) if want_value else None
    elif want_value:
        total, flags = module.elementwise(term.name, term.params, term.target_domain + term.prediction_domain,
                                          y_flat, z_flat, weights, m, "sum", scale, None, grad_buf, None)
        if reduction == "mean":
            value = np.float64(v.nan_safe_divide(factor * total, denominator))
        else:
            value = np.float64(factor * total)
    else:
        _, flags = module.elementwise(term.name, term.params, term.target_domain + term.prediction_domain,
                                      y_flat, z_flat, weights, m, "grad", scale, None, grad_buf, None)
        value = None
    if flags:
        v.raise_domain_error(flags, target_name, y, term.target_domain, pred_name, z, term.prediction_domain)
    grad = None
    if want_grad:
        grad = _finish(grad_buf.reshape(shape), grad_target, out) if out is not None else \
            _cast_result(grad_buf.reshape(shape), result_dtype)
    return value, grad


class PointwiseLoss(Loss):
    """A loss that is one elementwise term of (target, prediction), or of a prediction
    alone when the target is a constant (the GAN generators)."""

    family = "pointwise"
    kernels = "elementwise"

    def __init__(self, name, inputs, params, doc, term: Callable[[dict], Term], *,
                 example: Callable, factor: float = 1.0, has_hessian: bool = True):
        super().__init__(name, inputs, params, doc, differentiable=(len(inputs) - 1,),
                         has_hessian=has_hessian, has_sample_weight=True, example=example)
        self.term = term
        self.factor = factor
        # (backend setting, keyword parameters) -> (backend module, Term): what the
        # general path works out on every call, kept for the fast path
        self._plans: dict[tuple, tuple] = {}

    def _fast_path(self, args, kwargs, backend, want_value, want_grad, out):
        """The common case in a few microseconds (issue 6: at 1,000 elements the
        general path's checks cost more than the loop): two NumPy arrays of one
        native float32/float64 dtype and shape, hashable parameters, ``out`` absent
        or an exact buffer.  Anything else returns None for the general path."""
        if len(args) != 2 or len(self.inputs) != 2:  # (one-input losses: a 2nd array is an error)
            return None
        y, z = args
        if type(y) is not np.ndarray or type(z) is not np.ndarray:
            return None
        dtype = z.dtype
        if (dtype is not _FLOAT32 and dtype is not _FLOAT64) or y.dtype is not dtype \
                or y.shape != z.shape or not z.size:
            return None
        if out is not None and not (type(out) is np.ndarray and out.dtype is dtype and out.shape == z.shape
                                    and out.flags.c_contiguous and out.flags.writeable):
            return None
        # the parameters' types are part of the key: True and 1 hash alike, but only
        # one of them is a valid from_logits
        given = tuple([(name, type(x), x) for name, x in kwargs.items()]) if kwargs else ()
        try:
            key = (_config.get_backend() if backend is None else backend, given)
            plan = self._plans.get(key)
        except TypeError:  # an unhashable parameter value
            return None
        if plan is None:
            params = self._params(kwargs)
            plan = (_config.resolve(backend, args, self.kernels, self.name), self.term(params))
            if len(self._plans) >= _MAX_PLANS:  # e.g. a sweep over a parameter
                self._plans.clear()
            self._plans[key] = plan
        module, term = plan
        n = z.size
        grad = None
        if want_grad:
            grad = np.empty(z.shape, dtype) if out is None else out
        total, flags = module.elementwise(
            term.name, term.params, term.target_domain + term.prediction_domain, y.reshape(-1),
            z.reshape(-1), None, n // z.shape[0] if z.ndim else 1, "sum" if want_value else "grad",
            self.factor / n, None, None if grad is None else grad.reshape(-1), None)
        if flags:
            v.raise_domain_error(flags, self.inputs[0], y, term.target_domain, self.inputs[1], z,
                                 term.prediction_domain)
        return (np.float64(self.factor * total / n) if want_value else None), grad

    def mean_divisor(self, *args, sample_weight=None, **kwargs) -> float:
        """What reduction="mean" divides the "sum" value by (n elements, or m·Σw):
        mean = sum / mean_divisor.  Divisors of disjoint row blocks add up, so a
        chunked evaluation combines exactly (``numbaloss.dask``).  Reads only the
        inputs' shapes and ``sample_weight``."""
        arrays = self._arrays(args)
        self._params(kwargs)
        _, z, names = self._split(arrays)
        return _elementwise_denominator(z.shape, self._weights(sample_weight, z, names[1]))

    def _split(self, arrays):
        if len(arrays) == 2:
            y, z = arrays
            v.check_same_shape(self.inputs[0], y, self.inputs[1], z)
            return y, z, self.inputs
        return None, arrays[0], (None, self.inputs[0])

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out):
        y, z, names = self._split(arrays)
        weights = self._weights(sample_weight, z, names[1])
        result_dtype = v.result_dtype(*(a for a in (y, z) if a is not None))
        out = v.out_buffers(out, 1)[0]
        return run_elementwise(module, self.term(params), y, z, weights, reduction, self.factor,
                               want_value, want_grad, out, names, result_dtype)

    @staticmethod
    def _weights(sample_weight, z, name):
        if sample_weight is None:
            return None
        if z.ndim == 0:
            raise ValueError(f"sample_weight needs {name} with a first axis, got a 0-d array")
        weights = v.sample_weights(sample_weight, z.shape[0], name)
        # no element to weigh (e.g. rows of 0 elements): the loops expect rows of m ≥ 1,
        # and every reduction of nothing is the same without weights
        return weights if z.size else None

    def grad_hess(self, *args, sample_weight=None, backend=None, out=None, **kwargs):
        """Per-element gradient and Hessian of the loss w.r.t. the prediction (no 1/n,
        no reduction), multiplied by ``sample_weight``: the pair a gradient-boosting
        custom objective returns.  ``out`` may be a (grad, hess) pair of buffers."""
        if not self.has_hessian:
            raise AttributeError(f"{self.name} has no grad_hess")
        arrays, params, module = self._prepare(args, kwargs, "none", sample_weight, backend, out)
        y, z, names = self._split(arrays)
        weights = self._weights(sample_weight, z, names[1])
        term = self.term(params)
        dtype = v.compute_dtype(*(a for a in (y, z) if a is not None))
        result_dtype = v.result_dtype(*(a for a in (y, z) if a is not None))
        out_grad, out_hess = v.out_buffers(out, 2)
        z_flat = v.flat(z, dtype)
        y_flat = z_flat if y is None else v.flat(y, dtype if y.dtype == np.float16 else None)
        n = z_flat.shape[0]
        n_rows = z.shape[0] if z.ndim else 1
        m = n // n_rows if n_rows else 0
        on_device = v.is_device(z)
        g_buf, g_target = _gradient_buffer(out_grad, "out[0] (gradient)", z.shape, dtype, result_dtype,
                                           on_device)
        h_buf, h_target = _gradient_buffer(out_hess, "out[1] (Hessian)", z.shape, dtype, result_dtype,
                                           on_device)
        g_buf, h_buf = g_buf.reshape(-1), h_buf.reshape(-1)
        _, flags = module.elementwise(term.name, term.params, term.target_domain + term.prediction_domain,
                                      y_flat, z_flat, weights, m, "grad_hess", 1.0, None, g_buf, h_buf)
        if flags:
            v.raise_domain_error(flags, names[0], y, term.target_domain, names[1], z, term.prediction_domain)
        results = []
        for buf, target, given in ((g_buf, g_target, out_grad), (h_buf, h_target, out_hess)):
            if given is not None:
                results.append(_finish(buf.reshape(z.shape), target, given))
            else:
                results.append(_cast_result(buf.reshape(z.shape), result_dtype))
        return tuple(results)


class TwoTermLoss(Loss):
    """factor₁·mean(term₁) + factor₂·mean(term₂) over two input pairs.

    ``pairs`` gives, per term, the index of its target input (None for a constant
    target) and of its prediction input; gradients are w.r.t. the predictions.
    """

    family = "two_term"
    kernels = "elementwise"

    def __init__(self, name, inputs, params, doc, terms: Callable[[dict], tuple], pairs: tuple, *,
                 example: Callable):
        differentiable = tuple(pred for _, pred in pairs)
        super().__init__(name, inputs, params, doc, differentiable=differentiable,
                         has_hessian=False, has_sample_weight=False, example=example)
        self.terms = terms
        self.pairs = pairs

    def mean_divisor(self, *args, **kwargs) -> tuple:
        """Per term, what its mean divides its "sum" by (the element count of its
        prediction input): mean = Σₜ sumₜ / mean_divisorₜ."""
        arrays = self._arrays(args)
        self._params(kwargs)
        self._check_pairs(arrays)
        return tuple(float(arrays[pred].size) for _, pred in self.pairs)

    def _check_pairs(self, arrays):
        for target, pred in self.pairs:
            if target is not None:
                v.check_same_shape(self.inputs[target], arrays[target], self.inputs[pred], arrays[pred])

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out):
        self._check_pairs(arrays)
        outs = v.out_buffers(out, len(self.pairs))
        values, grads = [], []
        for (target, pred), (term, factor), out_i in zip(self.pairs, self.terms(params), outs):
            y = None if target is None else arrays[target]
            z = arrays[pred]
            names = (None if target is None else self.inputs[target], self.inputs[pred])
            result_dtype = v.result_dtype(*(a for a in (y, z) if a is not None))
            value, grad = run_elementwise(module, term, y, z, None, reduction, factor,
                                          want_value, want_grad, out_i, names, result_dtype)
            values.append(value)
            grads.append(grad)
        value = None
        if want_value:
            value = tuple(values) if reduction == "none" else np.float64(values[0] + values[1])
        return value, (tuple(grads) if want_grad else None)


class SoftmaxLoss(Loss):
    """A softmax loss over the last axis of ``y_pred`` with integer-label or dense targets."""

    family = "softmax"
    kernels = "softmax_rows"

    def __init__(self, name, params, doc, setup: Callable, *, example: Callable):
        super().__init__(name, ("y_true", "y_pred"), params, doc, differentiable=(1,),
                         has_hessian=True, has_sample_weight=True, example=example)
        self.setup = setup

    def _layout(self, y, z):
        """(targets flattened to rows, logits as (n, K), kind of target)."""
        if z.ndim < 1 or z.shape[-1] == 0:
            # the row loops read column 0 of every row (no bounds checks): K = 0 must not reach them
            raise ValueError(f"y_pred must have a class axis (its last axis) of at least one class, "
                             f"got shape {z.shape}")
        k = z.shape[-1]
        if y.shape == z.shape:
            return y.reshape(-1, k) if y.ndim != 2 else y, "dense"
        if y.shape == z.shape[:-1]:
            if y.dtype.kind not in "iu":
                raise TypeError(
                    f"y_true of shape {y.shape} (y_pred's shape without the class axis) holds "
                    f"class labels and must be integers, got dtype {y.dtype}"
                )
            return y.reshape(-1), "labels"
        raise ValueError(
            f"y_true must have the shape of y_pred {z.shape} (one-hot or soft targets) or "
            f"y_pred's shape without the class axis {z.shape[:-1]} (integer labels), got {y.shape}"
        )

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out,
                  want_hess=False):
        y, z = arrays
        targets, target_kind = self._layout(y, z)
        k = z.shape[-1]
        n = int(np.prod(z.shape[:-1]))
        dtype = v.compute_dtype(z, y if target_kind == "dense" else None)
        result_dtype = v.result_dtype(z, y if target_kind == "dense" else None)
        on_device = v.is_device(z)
        z2 = v.contiguous(z, dtype)
        if z2.ndim != 2:
            z2 = z2.reshape(n, k)
        if target_kind == "dense":
            keep_dtype = targets.dtype.kind == "f" and targets.dtype.itemsize >= 4
            targets = v.contiguous(targets, None if keep_dtype else dtype)
        else:
            labels = targets
            if not on_device and labels.dtype == np.uint64:
                # (labels ≥ 2⁶³ stay out of range, where a cast would wrap them negative)
                labels = np.minimum(labels, np.iinfo(np.int64).max)
            # one label dtype for the kernels: Numba would compile a loop per integer
            # dtype, and uint64 labels against an int64 ignore_index do not type
            targets = v.contiguous(labels, np.int64)
        weights = self._row_weights(sample_weight, z, n)
        kind, kparams, class_weight, ignore_index, label_weighted = self.setup(params, k, target_kind)
        kind = f"{kind}_{target_kind}"

        if reduction == "mean":
            denominator = self._denominator(targets, target_kind, weights, n, k, class_weight, ignore_index,
                                            label_weighted)
            scale = _mean_scale(1.0, denominator)
        else:
            denominator = 1.0
            scale = 1.0

        out_shape = z.shape
        grad_buf = grad_target = hess_buf = hess_target = None
        out_grad, out_hess = v.out_buffers(out, 2) if want_hess else (v.out_buffers(out, 1)[0], None)
        if want_grad:
            grad_buf, grad_target = _gradient_buffer(out_grad, "out (gradient of y_pred)" if not want_hess
                                                     else "out[0] (gradient)", out_shape, dtype, result_dtype,
                                                     on_device)
            grad_buf = grad_buf.reshape(n, k)
        if want_hess:
            hess_buf, hess_target = _gradient_buffer(out_hess, "out[1] (Hessian)", out_shape, dtype,
                                                     result_dtype, on_device)
            hess_buf = hess_buf.reshape(n, k)
        mode = "grad_hess" if want_hess else ("none" if reduction == "none" else "sum")
        values = v.empty(n, dtype, on_device) if mode == "none" else None
        total, flags = module.softmax_rows(kind, kparams, targets, z2, weights, class_weight, ignore_index,
                                           mode, scale, values, grad_buf, hess_buf)
        if flags & v.BAD_LABEL:
            v.raise_label_error(targets, k, ignore_index)
        if flags:
            v.raise_domain_error(flags, "y_true", y, (0.0, 1.0), "y_pred", z, (0.0, 1.0))
        value = None
        if want_value and not want_hess:
            if reduction == "none":
                value = _cast_result(values.reshape(z.shape[:-1]), result_dtype)
            elif reduction == "mean":
                value = np.float64(v.nan_safe_divide(total, denominator))
            else:
                value = np.float64(total)
        results = []
        for buf, target, given in ((grad_buf, grad_target, out_grad), (hess_buf, hess_target, out_hess)):
            if buf is None:
                continue
            if given is not None:
                results.append(_finish(buf.reshape(out_shape), target, given))
            else:
                results.append(_cast_result(buf.reshape(out_shape), result_dtype))
        if want_hess:
            return tuple(results)
        return value, (results[0] if want_grad else None)

    def mean_divisor(self, *args, sample_weight=None, **kwargs) -> float:
        """What reduction="mean" divides the "sum" value by: the row count n, Σᵢwᵢ,
        or Σᵢ wᵢ·c_{yᵢ} over the rows not ignored (integer labels with ``class_weight``
        or ``ignore_index``): mean = sum / mean_divisor.  Divisors of disjoint row
        blocks add up, so a chunked evaluation combines exactly (``numbaloss.dask``).
        Reads only y_pred's shape and the values of integer labels and ``sample_weight``."""
        y, z = self._arrays(args)
        params = self._params(kwargs)
        targets, target_kind = self._layout(y, z)
        k = z.shape[-1]
        n = int(np.prod(z.shape[:-1]))
        _, _, class_weight, ignore_index, label_weighted = self.setup(params, k, target_kind)
        return self._denominator(targets, target_kind, self._row_weights(sample_weight, z, n), n, k,
                                 class_weight, ignore_index, label_weighted)

    @staticmethod
    def _row_weights(sample_weight, z, n):
        if sample_weight is None:
            return None
        if z.ndim != 2:
            raise ValueError(f"sample_weight needs y_pred of shape (n, K), got {z.shape}")
        return v.sample_weights(sample_weight, n, "y_pred")

    def _denominator(self, targets, target_kind, weights, n, k, class_weight, ignore_index,
                     label_weighted) -> float:
        if label_weighted and target_kind == "labels":
            return self._label_denominator(targets, weights, class_weight, ignore_index, k)
        return v.total(weights) if weights is not None else float(n)

    @staticmethod
    def _label_denominator(labels, weights, class_weight, ignore_index, k) -> float:
        """Σᵢ wᵢ·c_{yᵢ} over the rows not ignored (PyTorch's weighted-mean divisor).

        A pass over the labels only (not the logits); it also rejects bad labels
        before any kernel indexes with them."""
        if v.is_device(labels):
            from ._cuda import backend as cuda_backend

            denominator, bad_label = cuda_backend.label_denominator(labels, weights, class_weight,
                                                                    ignore_index, k)
            if bad_label:
                v.raise_label_error(labels, k, ignore_index)
            return denominator
        keep = np.ones(labels.shape[0], dtype=bool) if ignore_index is None else labels != ignore_index
        kept = labels[keep]
        if kept.size and (kept.min() < 0 or kept.max() >= k):
            v.raise_label_error(labels, k, ignore_index)
        per_row = class_weight[kept.astype(np.intp)]
        if weights is not None:
            per_row = per_row * weights[keep]
        return float(per_row.sum())

    def grad_hess(self, *args, sample_weight=None, backend=None, out=None, **kwargs):
        """Per-row gradient and diagonal Hessian w.r.t. the logits/probabilities (no 1/n,
        no reduction), multiplied by ``sample_weight``, for gradient-boosting objectives."""
        arrays, params, module = self._prepare(args, kwargs, "none", sample_weight, backend, out)
        return self._evaluate(module, arrays, params, "sum", sample_weight, False, True, out,
                              want_hess=True)


class PairwiseLoss(Loss):
    """An embedding / contrastive loss computed over a batch (triplet, InfoNCE, NT-Xent,
    ArcFace, SupCon, …): one per-sample loss per anchor row, gradients w.r.t. the
    differentiable inputs.

    ``validate(arrays, params)`` checks the shapes and returns the inputs as the
    kernels take them (None stays None) plus the number of per-sample losses;
    ``valid(arrays, n_losses)`` (optional) is the mask of anchors that count in a
    mean (anchors without a positive are left out).  The backends implement
    ``module.pairwise(name, inputs, params, coef, need_grad)``.
    """

    family = "pairwise"
    kernels = "pairwise"

    def __init__(self, name, inputs, params, doc, *, differentiable, validate, example,
                 has_sample_weight=False, valid=None, integer_inputs=(), optional_inputs=(),
                 raw_products=None):
        super().__init__(name, inputs, params, doc, differentiable=differentiable, has_hessian=False,
                         has_sample_weight=has_sample_weight, example=example)
        self.validate = validate
        self.valid = valid
        self.integer_inputs = integer_inputs
        self.optional_inputs = optional_inputs
        #: ``raw_products(params)``: whether the similarities are plain dot products of
        #: the rows (not cosines, which the backends keep in range by scaling rows)
        self.raw_products = raw_products

    def _prepare(self, args, kwargs, reduction, sample_weight, backend, out=None):
        # optional trailing inputs (info_nce's negatives, supcon's labels) may come
        # positionally or by keyword
        args = list(args)
        for index, name in enumerate(self.inputs):
            if name in self.optional_inputs and name in kwargs:
                if len(args) > index:
                    raise TypeError(f"{self.name}() got {name} twice")
                args += [None] * (index - len(args)) + [kwargs.pop(name)]
        while len(args) < len(self.inputs) and self.inputs[len(args)] in self.optional_inputs:
            args.append(None)
        return super()._prepare(tuple(args), kwargs, reduction, sample_weight, backend, out)

    def _arrays(self, args):
        if len(args) != len(self.inputs):
            raise TypeError(
                f"{self.name}() takes {len(self.inputs)} positional inputs "
                f"({', '.join(self.inputs)}), got {len(args)}"
            )
        return [None if a is None and name in self.optional_inputs else v.as_array(name, a)
                for name, a in zip(self.inputs, args)]

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out):
        for name, a in zip(self.inputs, arrays):
            if name in self.integer_inputs and a is not None and a.dtype.kind not in "iu":
                raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
        floats = [a for name, a in zip(self.inputs, arrays)
                  if a is not None and name not in self.integer_inputs]
        dtype = v.compute_dtype(*floats)
        result_dtype = v.result_dtype(*floats)
        if v.any_device(arrays):
            # labels (N integers) are checked and turned into the valid-anchor masks on
            # the host; the embeddings stay on the device
            arrays = [v.to_host(a) if name in self.integer_inputs and a is not None else a
                      for name, a in zip(self.inputs, arrays)]
        inputs, n_losses = self.validate(arrays, params)
        if (dtype == np.float32 and self.raw_products is not None and self.raw_products(params)
                and not v.any_device(arrays) and _float32_products_overflow(floats)):
            dtype = np.dtype(np.float64)  # results are still float32: only the computation widens
        inputs = [None if a is None else v.contiguous(a, None if name in self.integer_inputs else dtype)
                  for name, a in zip(self.inputs, inputs)]
        weights = None
        if sample_weight is not None:
            weights = v.sample_weights(sample_weight, n_losses, self.inputs[0])
        coef = np.ones(n_losses) if weights is None else np.array(v.to_host(weights), dtype=np.float64)
        valid = self.valid(inputs, n_losses) if self.valid is not None else None
        if valid is not None:
            coef[~valid] = 0.0
        if reduction == "mean":
            denominator = float(coef.sum()) if (weights is not None or valid is not None) else float(n_losses)
            if n_losses == 0:
                scale = math.nan  # the mean of nothing
            elif valid is not None and not valid.any():
                scale = 0.0  # no anchor counts: the loss is 0 with a zero gradient
            else:
                scale = _mean_scale(1.0, denominator)
            coef = coef * scale
        differentiable = [i for i in self.differentiable if arrays[i] is not None]
        outs = v.out_buffers(out, len(differentiable))
        if want_grad:
            for index, buf in zip(differentiable, outs):
                if buf is not None:
                    v.out_buffer(f"out (gradient of {self.inputs[index]})", buf, arrays[index].shape,
                                 result_dtype)
        kernel_params = {k: params[k] for k in params}
        losses, grads = module.pairwise(self.name, inputs, kernel_params, coef, want_grad)
        value = None
        if want_value:
            if reduction == "none" and v.is_device(losses):
                value = module.weighted(losses, weights, result_dtype)
            elif reduction == "none":
                per_sample = losses * (weights if weights is not None else 1.0)
                value = np.asarray(per_sample, dtype=result_dtype)
            elif n_losses == 0:
                value = np.float64(math.nan if reduction == "mean" else 0.0)
            elif valid is not None and reduction == "mean" and not valid.any():
                value = np.float64(0.0)
            elif v.is_device(losses):
                value = np.float64(module.dot(coef, losses))
            else:
                value = np.float64(np.dot(coef, losses.astype(np.float64)))
        results = None
        if want_grad:
            results = []
            for index, g, buf in zip(differentiable, grads, outs):
                g = g.reshape(arrays[index].shape)
                if buf is not None:
                    v.copy_into(buf, g)
                    results.append(buf)
                else:
                    results.append(_cast_result(g, result_dtype))
            # SPEC: a tuple only for losses with several differentiable inputs
            results = tuple(results) if len(self.differentiable) > 1 else results[0]
        return value, results

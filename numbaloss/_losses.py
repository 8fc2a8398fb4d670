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

    def _prepare(self, args, kwargs, reduction, sample_weight, backend):
        v.check_reduction(reduction)
        if sample_weight is not None and not self.has_sample_weight:
            raise TypeError(f"{self.name}() does not take sample_weight")
        arrays = self._arrays(args)
        params = self._params(kwargs)
        return arrays, params, _config.resolve(backend, arrays, self.kernels, self.name)

    # ------------------------------------------------------------ public entry points
    def __call__(self, *args, reduction="mean", sample_weight=None, backend=None, **kwargs):
        """The loss value (a float64 scalar, or per-element arrays with reduction="none")."""
        arrays, params, module = self._prepare(args, kwargs, reduction, sample_weight, backend)
        value, _ = self._evaluate(module, arrays, params, reduction, sample_weight, True, False, None)
        return value

    def grad(self, *args, reduction="mean", sample_weight=None, backend=None, out=None, **kwargs):
        """The gradient of the value w.r.t. the predictions (a tuple for several inputs)."""
        arrays, params, module = self._prepare(args, kwargs, reduction, sample_weight, backend)
        _, grads = self._evaluate(module, arrays, params, reduction, sample_weight, False, True, out)
        return grads

    def value_and_grad(self, *args, reduction="mean", sample_weight=None, backend=None, out=None,
                       **kwargs):
        """``(value, grad)`` computed in one fused pass."""
        arrays, params, module = self._prepare(args, kwargs, reduction, sample_weight, backend)
        return self._evaluate(module, arrays, params, reduction, sample_weight, True, True, out)

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out):
        raise NotImplementedError  # each family implements it


def _mean_scale(factor: float, denominator: float) -> float:
    return v.nan_safe_divide(factor, denominator)


def _gradient_buffer(out, name, shape, compute_dtype, result_dtype):
    """(buffer the kernel writes, array returned to the caller)."""
    if out is None:
        buf = np.empty(shape, dtype=compute_dtype)
        return buf, buf
    target = v.out_buffer(name, out, shape, result_dtype)
    if result_dtype != compute_dtype:  # float16: compute in float32, copy at the end
        return np.empty(shape, dtype=compute_dtype), target
    return target, target


def _finish(buf, target):
    if buf is not target:
        target[...] = buf
    return target


def _cast_result(arr, result_dtype):
    return arr.astype(result_dtype) if arr.dtype != result_dtype else arr


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
    if weights is not None:
        total_weight = float(weights.sum()) * m
        denominator = total_weight
    else:
        denominator = float(n)
    if reduction == "mean":
        scale = _mean_scale(factor, denominator)
    else:
        scale = factor

    grad_buf = grad_target = None
    if want_grad:
        grad_buf, grad_target = _gradient_buffer(out, f"out (gradient of {pred_name})", shape,
                                                 dtype, result_dtype)
        grad_buf = grad_buf.reshape(-1)

    if reduction == "none":
        values = np.empty(n, dtype=dtype)
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
        grad = _finish(grad_buf.reshape(shape), grad_target) if out is not None else \
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
        return v.sample_weights(sample_weight, z.shape[0], name)

    def grad_hess(self, *args, sample_weight=None, backend=None, out=None, **kwargs):
        """Per-element gradient and Hessian of the loss w.r.t. the prediction (no 1/n,
        no reduction), multiplied by ``sample_weight``: the pair a gradient-boosting
        custom objective returns.  ``out`` may be a (grad, hess) pair of buffers."""
        if not self.has_hessian:
            raise AttributeError(f"{self.name} has no grad_hess")
        arrays, params, module = self._prepare(args, kwargs, "none", sample_weight, backend)
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
        g_buf, g_target = _gradient_buffer(out_grad, "out[0] (gradient)", z.shape, dtype, result_dtype)
        h_buf, h_target = _gradient_buffer(out_hess, "out[1] (Hessian)", z.shape, dtype, result_dtype)
        g_buf, h_buf = g_buf.reshape(-1), h_buf.reshape(-1)
        _, flags = module.elementwise(term.name, term.params, term.target_domain + term.prediction_domain,
                                      y_flat, z_flat, weights, m, "grad_hess", 1.0, None, g_buf, h_buf)
        if flags:
            v.raise_domain_error(flags, names[0], y, term.target_domain, names[1], z, term.prediction_domain)
        results = []
        for buf, target, given in ((g_buf, g_target, out_grad), (h_buf, h_target, out_hess)):
            if given is not None:
                results.append(_finish(buf.reshape(z.shape), target))
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

    def _evaluate(self, module, arrays, params, reduction, sample_weight, want_value, want_grad, out):
        for target, pred in self.pairs:
            if target is not None:
                v.check_same_shape(self.inputs[target], arrays[target], self.inputs[pred], arrays[pred])
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
        if z.ndim < 1:
            raise ValueError(f"y_pred must have a class axis (its last axis), got shape {z.shape}")
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
        z2 = np.ascontiguousarray(z.reshape(n, k) if z.ndim != 2 else z, dtype=dtype)
        if target_kind == "dense":
            t = targets if targets.dtype.kind == "f" and targets.dtype.itemsize >= 4 else targets.astype(dtype)
            targets = np.ascontiguousarray(t)
        else:
            targets = np.ascontiguousarray(targets)
        weights = None
        if sample_weight is not None:
            if z.ndim != 2:
                raise ValueError(f"sample_weight needs y_pred of shape (n, K), got {z.shape}")
            weights = v.sample_weights(sample_weight, n, "y_pred")
        kind, kparams, class_weight, ignore_index, label_weighted = self.setup(params, k, target_kind)
        kind = f"{kind}_{target_kind}"

        if reduction == "mean":
            if label_weighted and target_kind == "labels":
                denominator = self._label_denominator(targets, weights, class_weight, ignore_index, k)
            else:
                denominator = float(weights.sum()) if weights is not None else float(n)
            scale = _mean_scale(1.0, denominator)
        else:
            denominator = 1.0
            scale = 1.0

        out_shape = z.shape
        grad_buf = grad_target = hess_buf = hess_target = None
        out_grad, out_hess = v.out_buffers(out, 2) if want_hess else (v.out_buffers(out, 1)[0], None)
        if want_grad:
            grad_buf, grad_target = _gradient_buffer(out_grad, "out (gradient of y_pred)" if not want_hess
                                                     else "out[0] (gradient)", out_shape, dtype, result_dtype)
            grad_buf = grad_buf.reshape(n, k)
        if want_hess:
            hess_buf, hess_target = _gradient_buffer(out_hess, "out[1] (Hessian)", out_shape, dtype,
                                                     result_dtype)
            hess_buf = hess_buf.reshape(n, k)
        mode = "grad_hess" if want_hess else ("none" if reduction == "none" else "sum")
        values = np.empty(n, dtype=dtype) if mode == "none" else None
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
                results.append(_finish(buf.reshape(out_shape), target))
            else:
                results.append(_cast_result(buf.reshape(out_shape), result_dtype))
        if want_hess:
            return tuple(results)
        return value, (results[0] if want_grad else None)

    @staticmethod
    def _label_denominator(labels, weights, class_weight, ignore_index, k) -> float:
        """Σᵢ wᵢ·c_{yᵢ} over the rows not ignored (PyTorch's weighted-mean divisor).

        A pass over the labels only (not the logits); it also rejects bad labels
        before any kernel indexes with them."""
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
        arrays, params, module = self._prepare(args, kwargs, "none", sample_weight, backend)
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
                 has_sample_weight=False, valid=None, integer_inputs=(), optional_inputs=()):
        super().__init__(name, inputs, params, doc, differentiable=differentiable, has_hessian=False,
                         has_sample_weight=has_sample_weight, example=example)
        self.validate = validate
        self.valid = valid
        self.integer_inputs = integer_inputs
        self.optional_inputs = optional_inputs

    def _prepare(self, args, kwargs, reduction, sample_weight, backend):
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
        return super()._prepare(tuple(args), kwargs, reduction, sample_weight, backend)

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
        inputs, n_losses = self.validate(arrays, params)
        inputs = [None if a is None else
                  np.ascontiguousarray(a if name in self.integer_inputs else a.astype(dtype, copy=False))
                  for name, a in zip(self.inputs, inputs)]
        weights = None
        if sample_weight is not None:
            weights = v.sample_weights(sample_weight, n_losses, self.inputs[0])
        coef = np.ones(n_losses) if weights is None else weights.copy()
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
            if reduction == "none":
                per_sample = losses * (weights if weights is not None else 1.0)
                value = np.asarray(per_sample, dtype=result_dtype)
            elif n_losses == 0:
                value = np.float64(math.nan if reduction == "mean" else 0.0)
            elif valid is not None and reduction == "mean" and not valid.any():
                value = np.float64(0.0)
            else:
                value = np.float64(np.dot(coef, losses.astype(np.float64)))
        results = None
        if want_grad:
            results = []
            for index, g, buf in zip(differentiable, grads, outs):
                g = g.reshape(arrays[index].shape)
                if buf is not None:
                    buf[...] = g
                    results.append(buf)
                else:
                    results.append(np.asarray(g, dtype=result_dtype))
            results = tuple(results)
        return value, results

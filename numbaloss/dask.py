"""Losses over dask arrays chunked along samples, combined exactly across chunks.

    >>> import dask.array as da, numbaloss.dask as nld
    >>> y = da.random.randint(0, 2, 10**6, chunks=10**5).astype("f8")
    >>> z = da.random.normal(size=10**6, chunks=10**5)
    >>> nld.score("bce", y, z, from_logits=True)          # a float64, like nl.bce(...)
    >>> g = nld.grad("bce", y, z, from_logits=True)       # a dask array chunked like z

How blocks combine.  The inputs are aligned on the prediction's chunks (targets and
``sample_weight`` are rechunked to them; a softmax loss's class axis is made one
chunk).  Each block b of rows gives its partial sum Sᵦ = loss(block, reduction="sum")
and its divisor Dᵦ = loss.mean_divisor(block), what the loss's mean divides by: the
element count, m·Σwᵢ with sample weights, Σwᵢ, or Σ wᵢ·c_{yᵢ} over the rows not
ignored for integer-label cross-entropy with ``class_weight`` / ``ignore_index``.
Both add up over disjoint blocks, so::

    sum  = Σᵦ Sᵦ
    mean = Σᵦ Sᵦ / Σᵦ Dᵦ                      (0/0 → nan, as in memory)
    mean = Σₜ (Σᵦ Sₜᵦ / Σᵦ Dₜᵦ)               (two-term losses, each term t its own mean)

The gradient of the mean on a block is the block's "sum" gradient divided by the total
divisor D = Σᵦ Dᵦ.  D is its own small reduction over the inputs the divisor reads
(integer labels and sample weights; float inputs are replaced by zero-stride stand-ins
of their shape), so the predictions are read once.

The embedding losses are computed on a whole batch (InfoNCE, NT-Xent, SupCon and
batch-hard triplet couple its rows: a row's negatives are the other rows; triplet,
ArcFace and CosFace go the same way): they raise ``ValueError`` unless every input is
a single chunk along the batch axis, and are then computed in one task.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # an optional extra
    raise ImportError(f"numbaloss.dask needs dask (pip install numbaloss[dask]): {exc}") from exc

from . import _validation as v
from ._losses import Loss
from ._registry import LOSSES, get_loss

_EMPTY = np.empty(0)
_INDEX = string.ascii_lowercase


def score(loss, *inputs, sample_weight=None, reduction="mean", backend=None, compute=True, **params):
    """The loss over dask arrays chunked along samples: ``score(loss, y_true, y_pred, ...)``.

    ``loss`` is a name (``"bce"``, ``"categorical_cross_entropy"``) or a loss object
    (``nl.bce``); ``inputs`` are its positional inputs (dask or NumPy arrays),
    ``params`` its keyword parameters; ``backend`` as for the loss (None: the default
    in force on the worker).  ``reduction="mean"`` is Σᵦ Sᵦ / Σᵦ Dᵦ and
    ``"sum"`` Σᵦ Sᵦ over the blocks b (see the module docstring); both return a NumPy
    float64, or a lazy 0-d dask array with ``compute=False``.  ``"none"`` returns the
    per-element values as a dask array (a tuple of two for the two-term losses).
    """
    loss = get_loss(loss)
    v.check_reduction(reduction)
    if loss.family == "pairwise":
        return _batch_coupled(loss, inputs, sample_weight, reduction, backend, params, "value", compute)
    terms = _terms(loss, inputs, sample_weight, params)
    key = _key(loss)
    if reduction == "none":
        values = tuple(_map_blocks(key, term, params, backend, "none") for term in terms)
        return values if loss.family == "two_term" else values[0]
    sums = [_total_sum(key, term, params, backend) for term in terms]
    divisors = [_total_divisor(key, term, params) for term in terms] if reduction == "mean" else []
    value = dask.delayed(_combine)(sums, divisors)
    if compute:
        return np.float64(value.compute())
    return da.from_delayed(value, shape=(), dtype=np.float64)


def grad(loss, *inputs, sample_weight=None, reduction="mean", backend=None, **params):
    """The gradient of ``score(loss, *inputs, ...)`` w.r.t. the predictions, as a lazy
    dask array chunked like the prediction (a softmax loss's class axis as one
    chunk), or a tuple of them for losses with several differentiable inputs.

    Block b's gradient is its "sum" gradient; for ``reduction="mean"`` divided by the
    total divisor D = Σᵦ Dᵦ (a reduction over labels and weights only, done first),
    which is the in-memory mean's gradient restricted to the block.
    """
    loss = get_loss(loss)
    v.check_reduction(reduction)
    if loss.family == "pairwise":
        return _batch_coupled(loss, inputs, sample_weight, reduction, backend, params, "grad", False)
    terms = _terms(loss, inputs, sample_weight, params)
    key = _key(loss)
    grads = []
    for term in terms:
        divisor = _total_divisor(key, term, params) if reduction == "mean" else None
        grads.append(_map_blocks(key, term, params, backend, "grad", divisor))
    return tuple(grads) if loss.family == "two_term" else grads[0]


# ------------------------------------------------------------------ aligned terms


@dataclass(frozen=True)
class _Layout:
    """What a block's task needs to know of its term (no arrays: it travels with the task)."""

    index: int          # the term of a two-term loss, and so its gradient's place
    positions: tuple    # the term's inputs' positions in the loss's inputs: (target, prediction)
    weighted: bool      # whether the last block is the sample weights


@dataclass(frozen=True)
class _Term:
    """One elementwise or softmax term: its inputs as dask arrays aligned on the
    prediction's chunks (the prediction last) and the weights on its row chunks."""

    layout: _Layout
    arrays: tuple
    weights: object

    @property
    def prediction(self):
        return self.arrays[-1]


def _terms(loss, inputs, sample_weight, params) -> list:
    if len(inputs) != len(loss.inputs):
        raise TypeError(f"{loss.name} takes {len(loss.inputs)} inputs ({', '.join(loss.inputs)}), "
                        f"got {len(inputs)}")
    if sample_weight is not None and not loss.has_sample_weight:
        raise TypeError(f"{loss.name}() does not take sample_weight")
    arrays = [da.asarray(a) for a in inputs]
    if loss.family == "two_term":
        pairs = loss.pairs
    elif len(arrays) == 2:
        pairs = ((0, 1),)
    else:
        pairs = ((None, 0),)
    positions = [(pred,) if target is None else (target, pred) for target, pred in pairs]
    weights = None if sample_weight is None else da.asarray(sample_weight)
    for term_positions in positions:
        _check_rows(loss, term_positions, arrays, weights)
    _check_one_row(loss, arrays, weights, params)
    terms = []
    for index, term_positions in enumerate(positions):
        z = arrays[term_positions[-1]]
        if loss.family == "softmax":  # a row's softmax needs all its classes in one block
            z = z.rechunk({z.ndim - 1: -1})
        # targets take the prediction's chunks (integer labels: without the class axis)
        aligned = tuple(arrays[p].rechunk(z.chunks[:arrays[p].ndim]) for p in term_positions[:-1]) + (z,)
        layout = _Layout(index, term_positions, weights is not None)
        terms.append(_Term(layout, aligned, None if weights is None else weights.rechunk((z.chunks[0],))))
    return terms


def _check_rows(loss, positions, arrays, weights):
    pred = loss.inputs[positions[-1]]
    if arrays[positions[-1]].ndim == 0:
        raise ValueError(f"{pred} must have a first (sample) axis, got a 0-d array")
    n = arrays[positions[-1]].shape[0]
    named = [(loss.inputs[p], arrays[p]) for p in positions[:-1]] + [("sample_weight", weights)]
    for name, a in named:
        if a is not None and (a.ndim == 0 or a.shape[0] != n):
            raise ValueError(f"{name} must have {n} rows (the rows of {pred}), got shape {a.shape}")
    if weights is not None and weights.ndim != 1:
        raise ValueError(f"sample_weight must have shape ({n},), got shape {weights.shape}")


def _stand_in(dtype, shape):
    """A read-only array of zeros of any shape that takes no memory (zero strides)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _weight_keyword(weights) -> dict:
    return {} if weights is None else {"sample_weight": weights}


def _check_one_row(loss, arrays, weights, params):
    """The loss's own checks of shapes, dtypes and parameters, on one row of each
    input (stand-ins: no data is read)."""
    def row(a):
        return _stand_in(a.dtype, (min(a.shape[0], 1),) + a.shape[1:])

    try:
        loss.mean_divisor(*(row(a) for a in arrays), **params,
                          **_weight_keyword(None if weights is None else row(weights)))
    except (ValueError, TypeError) as exc:
        shapes = ", ".join(f"{name} {a.shape}" for name, a in zip(loss.inputs, arrays))
        raise type(exc)(f"{exc} (checked on one row; the inputs' shapes: {shapes})") from None


def _key(loss: Loss):
    """What the tasks carry to find the loss on a worker: its name when it is a
    registered loss (each loss object has a class of its own, made at import, which
    pickle cannot name), else the object."""
    return loss.name if LOSSES.get(loss.name) is loss else loss


def _lookup(key) -> Loss:
    return LOSSES[key] if isinstance(key, str) else key


# ------------------------------------------------------------------ block functions


def _call_args(loss, layout: _Layout, blocks) -> list:
    """The loss's positional inputs for one block: the term's blocks at their positions,
    any other term's inputs empty (an empty pair adds 0 to "sum" and has an empty gradient)."""
    args = [_EMPTY] * len(loss.inputs)
    for position, block in zip(layout.positions, blocks):
        args[position] = block
    return args


def _of_term(loss, layout: _Layout, result):
    """A two-term loss's result for this term (the other term's is empty)."""
    return result[layout.index] if loss.family == "two_term" else result


def _split_weights(layout: _Layout, blocks):
    return (blocks[:-1], blocks[-1]) if layout.weighted else (blocks, None)


def _block_sum(key, layout, params, backend, *blocks):
    """Sᵦ, as a block of one element per axis."""
    loss = _lookup(key)
    blocks, weights = _split_weights(layout, blocks)
    total = loss(*_call_args(loss, layout, blocks), reduction="sum", sample_weight=weights, backend=backend,
                 **params)
    return np.full((1,) * blocks[-1].ndim, total)


def _block_none(key, layout, params, backend, *blocks):
    loss = _lookup(key)
    blocks, weights = _split_weights(layout, blocks)
    return _of_term(loss, layout, loss(*_call_args(loss, layout, blocks), reduction="none",
                                       sample_weight=weights, backend=backend, **params))


def _block_grad(key, layout, params, backend, divisor, *blocks):
    """The block's "sum" gradient, divided by the total divisor D of a mean."""
    loss = _lookup(key)
    blocks, weights = _split_weights(layout, blocks)
    g = _of_term(loss, layout, loss.grad(*_call_args(loss, layout, blocks), reduction="sum",
                                         sample_weight=weights, backend=backend, **params))
    if divisor is None:
        return g
    with np.errstate(divide="ignore", invalid="ignore"):  # Σw = 0: nan, as in memory
        return g / divisor


def _block_divisor(key, layout, params, stand_ins, *blocks):
    """Dᵦ of one row block, from the inputs the divisor reads (integer inputs, weights);
    ``stand_ins`` gives (trailing shape, dtype) for each float input, None for one read."""
    loss = _lookup(key)
    blocks, weights = _split_weights(layout, blocks)
    rows = (weights if weights is not None else blocks[0]).shape[0]
    read = iter(blocks)
    args = [next(read) if spec is None else _stand_in(spec[1], (rows,) + spec[0]) for spec in stand_ins]
    divisor = loss.mean_divisor(*_call_args(loss, layout, args), **params, **_weight_keyword(weights))
    return np.array([_of_term(loss, layout, divisor)])


def _combine(sums, divisors) -> float:
    if not divisors:
        return float(sum(sums))
    return float(sum(v.nan_safe_divide(float(s), float(d)) for s, d in zip(sums, divisors)))


# ------------------------------------------------------------------ graphs


def _block_inputs(term: _Term) -> list:
    """blockwise's (array, index) arguments: the term's arrays on the prediction's
    indices (integer labels without the class axis), then the weights on the row index."""
    args = []
    for a in term.arrays:
        args += [a, _INDEX[:a.ndim]]
    if term.weights is not None:
        args += [term.weights, _INDEX[0]]
    return args


def _total_sum(key, term: _Term, params, backend):
    """Σᵦ Sᵦ as a lazy 0-d dask array."""
    index = _INDEX[:term.prediction.ndim]
    partial = da.blockwise(functools.partial(_block_sum, key, term.layout, params, backend), index,
                           *_block_inputs(term), adjust_chunks={i: 1 for i in index}, dtype=np.float64,
                           concatenate=True)
    return partial.sum()


def _map_blocks(key, term: _Term, params, backend, what, divisor=None):
    """The term's per-element values (``what="none"``) or gradients, block by block."""
    loss = _lookup(key)
    dtype = v.result_dtype(*(a for a in term.arrays if a.dtype.kind == "f"))
    ndim = term.prediction.ndim
    if what == "none":
        if loss.family == "softmax":  # one value per row: the class axis goes
            ndim -= 1
        function = functools.partial(_block_none, key, term.layout, params, backend)
        extra = []
    else:
        function = functools.partial(_block_grad, key, term.layout, params, backend)
        extra = [divisor, None if divisor is None else ()]  # a 0-d dask array, or None as it is
    return da.blockwise(function, _INDEX[:ndim], *extra, *_block_inputs(term), dtype=dtype, concatenate=True)


def _total_divisor(key, term: _Term, params):
    """D = Σᵦ Dᵦ as a lazy 0-d dask array, reading only integer inputs and weights."""
    loss = _lookup(key)
    stand_ins = [None if a.dtype.kind in "iub" else (a.shape[1:], a.dtype) for a in term.arrays]
    read = [a for a, spec in zip(term.arrays, stand_ins) if spec is None]
    if not read and term.weights is None:  # the shapes alone give it
        whole = [_stand_in(a.dtype, a.shape) for a in term.arrays]
        divisor = _of_term(loss, term.layout, loss.mean_divisor(*_call_args(loss, term.layout, whole), **params))
        return da.from_array(np.float64(divisor))
    args = []
    for a in read:  # one block per row block: the other axes of integer inputs are merged
        args += [a.rechunk({axis: -1 for axis in range(1, a.ndim)}), _INDEX[:a.ndim]]
    if term.weights is not None:
        args += [term.weights, _INDEX[0]]
    partial = da.blockwise(functools.partial(_block_divisor, key, term.layout, params, stand_ins), _INDEX[0],
                           *args, adjust_chunks={_INDEX[0]: 1}, dtype=np.float64, concatenate=True)
    return partial.sum()


# ------------------------------------------------------------------ batch-coupled losses


def _batch_coupled(loss, inputs, sample_weight, reduction, backend, params, what, compute):
    arrays = [None if a is None else da.asarray(a) for a in inputs]
    arrays += [None] * (len(loss.inputs) - len(arrays))  # optional inputs left out
    chunked = [name for name, a in zip(loss.inputs, arrays) if a is not None and a.numblocks[0] > 1]
    if chunked:
        raise ValueError(
            f"{loss.name} is an embedding loss, computed on a whole batch (most couple its rows: "
            f"a row's negatives are the other rows), so it needs the batch in one chunk; "
            f"{', '.join(chunked)} has several chunks along axis 0: rechunk it ({{0: -1}}) or "
            f"score per batch"
        )
    weights = None if sample_weight is None else da.asarray(sample_weight)
    result = dask.delayed(_whole_batch, pure=True)(_key(loss), what, arrays, weights, reduction, backend,
                                                   params)
    floats = [a for name, a in zip(loss.inputs, arrays)
              if a is not None and a.dtype.kind == "f" and name not in loss.integer_inputs]
    dtype = v.result_dtype(*floats)
    if what == "grad":  # a tuple, as the loss's own grad returns
        present = [i for i in loss.differentiable if arrays[i] is not None]
        return tuple(da.from_delayed(result[k], arrays[i].shape, dtype) for k, i in enumerate(present))
    if reduction == "none":
        stand_ins = [None if a is None else _stand_in(a.dtype, a.shape) for a in arrays]
        _, n_losses = loss.validate(stand_ins, loss._params(params))
        return da.from_delayed(result, (n_losses,), dtype)
    return np.float64(result.compute()) if compute else da.from_delayed(result, (), np.float64)


def _whole_batch(key, what, arrays, weights, reduction, backend, params):
    loss = _lookup(key)
    method = loss if what == "value" else loss.grad
    return method(*arrays, sample_weight=weights, reduction=reduction, backend=backend, **params)

"""``numbaloss score``: a loss over prediction files, streamed in chunks of rows.

The pointwise and softmax losses are a sum over rows divided by a total weight,
so a file is read a block of rows at a time and the mean is recombined exactly::

    mean = Σ_c S_c / Σ_c D_c

with S_c the block's ``reduction="sum"`` value and D_c = ``loss.mean_divisor(block)``,
what the loss's mean divides the block's sum by: its element count (pointwise),
Σ wᵢ × elements per row with ``sample_weight``, its row count or Σ wᵢ (softmax), or
Σ wᵢ·c_{yᵢ} over the rows not ignored (softmax with integer labels and
``class_weight`` / ``ignore_index``).
The other losses are read whole: the embedding losses couple the rows of a batch
(a row's negatives are the other rows) and the two-term losses average each term
over its own inputs.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from . import _config
from . import _validation as v
from ._io import open_array
from ._registry import get_loss

#: the loss families whose mean is a sum over rows over a total weight
ROW_DECOMPOSABLE = ("pointwise", "softmax")
#: elements per input read at a time when --chunk-rows is not given
DEFAULT_CHUNK_ELEMENTS = 1 << 20


# ------------------------------------------------------------------ parameters

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _literal(text: str):
    """A value for a parameter whose default is None: bool, int, float, a comma list
    of numbers (an array), or the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "," in text:
        try:
            return np.array([float(part) for part in text.split(",")])
        except ValueError:
            pass
    return text


def parse_param(loss, assignment: str) -> tuple:
    """``"name=value"`` → (name, value), the value typed like the parameter's
    default (bool, int, float, str); ``none`` gives None; a parameter whose default
    is None takes any literal (see ``_literal``).  The loss validates the value."""
    name, sep, text = assignment.partition("=")
    name, text = name.strip(), text.strip()
    if not sep or not name:
        raise ValueError(f"--param takes NAME=VALUE, got {assignment!r}")
    if name not in loss.params:
        known = ", ".join(loss.params)
        raise ValueError(f"unknown parameter {name!r} for {loss.name}; "
                         + (f"its parameters are {known}" if known else "it takes no parameters"))
    default = loss.params[name].default
    if text.lower() in ("none", "null"):
        return name, None
    try:
        if isinstance(default, bool):
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return name, text.lower() in _TRUE
        if isinstance(default, (int, float, str)):
            return name, type(default)(text)
    except ValueError:
        raise ValueError(f"parameter {name} of {loss.name} takes a {type(default).__name__} "
                         f"(default {default!r}), got {text!r}") from None
    return name, _literal(text)


# ------------------------------------------------------------------ scoring


def _call(method, loss, arrays: dict, params, **options):
    """``method`` (the loss, or one of its methods) over named arrays (optional inputs
    by keyword)."""
    positional = [arrays[n] for n in loss.inputs if n in arrays and n not in _optional(loss)]
    optional = {n: arrays[n] for n in _optional(loss) if n in arrays}
    return method(*positional, **options, **optional, **params)


def _optional(loss) -> tuple:
    return getattr(loss, "optional_inputs", ())


def score(loss, files: dict, params: dict, *, reduction="mean", backend=None, sample_weight=None,
          chunk_rows=None, progress=None) -> tuple:
    """The loss over the arrays of ``files`` ({input name: ArrayFile}), with an
    optional ``sample_weight`` ArrayFile.  Row-decomposable losses are read in chunks
    of ``chunk_rows`` rows (default: about 2²⁰ elements per input); the others whole.
    ``progress(fraction, rows)`` is called after each chunk.  Returns (value, rows)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be a positive number of rows, got {chunk_rows}")
    if sample_weight is not None and not loss.has_sample_weight:
        raise ValueError(f"{loss.name} does not take sample weights")
    known = {name: f.rows for name, f in files.items()}
    if sample_weight is not None:
        known["sample_weight"] = sample_weight.rows
    if loss.family in ROW_DECOMPOSABLE:
        counts = {n: r for n, r in known.items() if r is not None}
        if len(set(counts.values())) > 1:
            raise ValueError("the inputs have different numbers of rows: "
                             + ", ".join(f"{n} {r:,}" for n, r in counts.items()))
        return _score_in_chunks(loss, files, params, reduction, backend, sample_weight, chunk_rows,
                                progress)
    largest = max((r for r in known.values() if r is not None), default=0)
    if chunk_rows is not None and largest > chunk_rows:
        raise ValueError(
            f"{loss.name} cannot be computed in chunks of rows (its value couples the rows of the "
            f"whole input), so the {largest:,} rows are read whole; drop --chunk-rows or make it "
            f"at least {largest:,}")
    arrays = {name: f.read() for name, f in files.items()}
    weights = sample_weight.read() if sample_weight is not None else None
    value = _call(loss, loss, arrays, params, reduction=reduction, sample_weight=weights, backend=backend)
    if progress is not None:
        progress(1.0, None)
    first = next(iter(arrays.values()))
    return float(value), (first.shape[0] if first.ndim else 1)


def _score_in_chunks(loss, files, params, reduction, backend, sample_weight, chunk_rows, progress):
    names = list(files)
    sources = list(files.values()) + ([sample_weight] if sample_weight is not None else [])
    if chunk_rows is None:
        chunk_rows = _default_chunk_rows(sources)
    sums, divisors = [], []
    rows = 0
    for blocks in _lockstep(names + ["sample_weight"] * (sample_weight is not None),
                            [s.chunks(chunk_rows) for s in sources]):
        arrays = dict(zip(names, blocks))
        weights = blocks[len(names)] if sample_weight is not None else None
        try:
            sums.append(float(_call(loss, loss, arrays, params, reduction="sum", sample_weight=weights,
                                    backend=backend)))
            if reduction == "mean":
                divisors.append(_call(loss.mean_divisor, loss, arrays, params, sample_weight=weights))
        except ValueError as exc:
            if rows == 0 and len(blocks[0]) < chunk_rows:
                raise  # the whole input was one chunk: the message needs no location
            raise ValueError(f"in rows {rows:,}–{rows + len(blocks[0]) - 1:,}: {exc}") from None
        rows += len(blocks[0])
        if progress is not None:
            progress(sources[0].fraction_read, rows)
    total = v.exact_sum(sums)
    if reduction == "sum":
        return total, rows
    return v.nan_safe_divide(total, v.exact_sum(divisors)), rows


def _default_chunk_rows(sources) -> int:
    """Rows of about DEFAULT_CHUNK_ELEMENTS elements of the widest input."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, *(s.row_elements for s in sources)))


def _lockstep(names, iterators):
    """Blocks of every input together; an input that ends before the others is an error."""
    done = 0
    while True:
        blocks = [next(it, None) for it in iterators]
        present = [b is not None for b in blocks]
        if not any(present):
            return
        lengths = {len(b) for b in blocks if b is not None}
        if not all(present) or len(lengths) > 1:
            shortest = min(range(len(blocks)),
                           key=lambda i: -1 if blocks[i] is None else len(blocks[i]))
            ended = done + (0 if blocks[shortest] is None else len(blocks[shortest]))
            raise ValueError(f"the inputs have different numbers of rows: {names[shortest]} ends "
                             f"after {ended:,} rows, the others have more")
        done += lengths.pop()
        yield blocks


# ------------------------------------------------------------------ progress bar


class ProgressBar:
    """A one-line bar on a terminal stream, redrawn at most every 0.1 s."""

    WIDTH = 30

    def __init__(self, stream):
        self.stream = stream
        self._last = 0.0

    def __call__(self, fraction: float, rows):
        now = time.monotonic()
        if now - self._last < 0.1 and fraction < 1.0:
            return
        self._last = now
        filled = int(self.WIDTH * min(max(fraction, 0.0), 1.0))
        done = f"  {rows:,} rows" if rows is not None else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * fraction:3.0f}%{done}")
        self.stream.flush()

    def close(self):
        if self._last:
            self.stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self.stream.flush()


# ------------------------------------------------------------------ command line


def add_parser(subcommands) -> None:
    p = subcommands.add_parser(
        "score", help="a loss over prediction files (.npy, .npz, .csv, .parquet)",
        description="Score prediction files with a loss. Large files are streamed in chunks of "
                    "rows with the mean combined exactly.")
    p.add_argument("loss", help="loss name, e.g. mse, bce, cce")
    p.add_argument("--y-true", metavar="PATH", help="targets (the loss's input y_true)")
    p.add_argument("--y-pred", metavar="PATH", help="predictions (the loss's input y_pred)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                   help="any input by the loss's own name, e.g. anchor=a.npy (repeatable)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="loss parameter, e.g. from_logits=true, class_weight=1,2,0.5 (repeatable)")
    p.add_argument("--reduction", choices=("mean", "sum"), default="mean")
    p.add_argument("--backend", choices=("auto",) + _config.BACKENDS, default=None)
    p.add_argument("--key", action="append", default=[], metavar="[INPUT=]NAME",
                   help="array of an .npz or column of a .csv/.parquet to read: NAME for every "
                        "file, INPUT=NAME for one input (default: the one named like the input)")
    p.add_argument("--sample-weight", metavar="PATH", help="one weight per row")
    p.add_argument("--chunk-rows", type=int, metavar="N",
                   help="rows read at a time (default: about a million elements)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the number")
    p.set_defaults(run=run)


def _input_paths(loss, args) -> dict:
    paths = {}
    for flag, name in (("--y-true", "y_true"), ("--y-pred", "y_pred")):
        path = getattr(args, name)
        if path is not None:
            if name not in loss.inputs:
                raise ValueError(f"{loss.name} has no input {name} (its inputs: {', '.join(loss.inputs)}); "
                                 f"give them with --input NAME=PATH")
            paths[name] = path
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--input takes NAME=PATH, got {item!r}")
        if name not in loss.inputs:
            raise ValueError(f"{loss.name} has no input {name!r}; its inputs are {', '.join(loss.inputs)}")
        if name in paths:
            raise ValueError(f"input {name} given twice")
        paths[name] = path
    missing = [n for n in loss.inputs if n not in paths and n not in _optional(loss)]
    if missing:
        flags = ", ".join(f"--{n.replace('_', '-')}" if n in ("y_true", "y_pred") else f"--input {n}=PATH"
                          for n in missing)
        raise ValueError(f"{loss.name} needs {flags}")
    return {n: paths[n] for n in loss.inputs if n in paths}


def _keys(items, names) -> dict:
    """--key values → {input name: key}."""
    keys = {}
    for item in items:
        name, sep, key = item.partition("=")
        if not sep:
            keys.update({n: item for n in names})
        elif name not in names:
            raise ValueError(f"--key {item!r} names no input of this loss (inputs: {', '.join(names)})")
        else:
            keys[name] = key
    return keys


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args) -> int:
    loss = get_loss(args.loss)
    params = dict(parse_param(loss, item) for item in args.param)
    loss._params(params)  # rejects bad values before any file is read
    paths = _input_paths(loss, args)
    keys = _keys(args.key, list(paths) + ["sample_weight"])
    files = {name: open_array(path, keys.get(name), prefer=name,
                              exclude=[n for n in loss.inputs if n != name] + ["sample_weight"])
             for name, path in paths.items()}
    weights = None
    if args.sample_weight is not None:
        weights = open_array(args.sample_weight, keys.get("sample_weight"), prefer="sample_weight",
                             exclude=loss.inputs)
    backend = _config.resolve(args.backend, [], loss.kernels, loss.name).name
    bar = ProgressBar(sys.stderr) if not args.quiet and sys.stderr.isatty() else None
    start = time.perf_counter()
    try:
        value, rows = score(loss, files, params, reduction=args.reduction, backend=backend,
                            sample_weight=weights, chunk_rows=args.chunk_rows, progress=bar)
    except KeyboardInterrupt:
        print("numbaloss: interrupted", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"loss": loss.name, "params": {k: _jsonable(x) for k, x in params.items()},
                          "reduction": args.reduction, "value": _jsonable(value), "n_rows": rows,
                          "backend": backend, "seconds": round(seconds, 6)}))
    else:
        print(repr(value))
    return 0


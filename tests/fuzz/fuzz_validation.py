"""Coverage-guided fuzz target (atheris / libFuzzer) for numbaloss's input validation.

The fuzzer's bytes choose a loss, an entry point (value, grad, value_and_grad,
grad_hess), the positional inputs (dtype, shape with 0- and 1-sized axes, values
including NaN/±inf, or None / a string / a list), keyword parameters (real ones and
unknown ones, any value), ``reduction``, ``sample_weight`` and ``out``.  Coverage
comes from the validation and dispatch modules (``_validation``, ``_losses``,
``_registry``, ``_config``), instrumented at import.

Each input is called on the numpy reference and, when every array is of a dtype the
compiled backends already have loops for, on numba and cython too (Numba compiles a
loop per target dtype: other dtypes would spend the time compiling).  A finding is
any exception other than ValueError/TypeError, a compiled backend raising where
the reference returned (or the reverse, or another exception type), or an input
modified by the call.

Run (the first folder receives new inputs; the committed corpus seeds it):

    python tests/fuzz/fuzz_validation.py /tmp/new-corpus tests/fuzz/corpus -max_total_time=30

``tests/test_fuzz.py::test_atheris_fuzz_validation`` runs it for 40,000 inputs with a fixed seed.
"""

from __future__ import annotations

import pathlib
import sys

import atheris
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["numbaloss._validation", "numbaloss._losses", "numbaloss._registry",
                                         "numbaloss._config"]):
    import numbaloss as nl

LOSSES = list(nl.LOSSES.values())
DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int8, np.uint64, np.bool_, object, np.complex64]
#: dtypes the compiled backends' loops exist for already (no compilation while fuzzing)
COMPILED_DTYPES = {np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.bool_)}
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 1e300, -1e300, 5e-324, 1e-7, 2.0, 3.0]
REDUCTIONS = ["mean", "sum", "none", "avg", "", None, 0]
EXTRA_KEYWORDS = ["delta", "gamma", "alpha", "class_weight", "ignore_index", "temperature", "margin", "s", "m",
                  "p", "axis", "weights"]
COMPILED_BACKENDS = [b for b in ("numba", "cython") if b in nl.available_backends()]


def _array(fdp):
    kind = fdp.ConsumeIntInRange(0, 15)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(4)
    if kind == 2:
        return [fdp.ConsumeFloat() for _ in range(fdp.ConsumeIntInRange(0, 3))]
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    shape = tuple(fdp.ConsumeIntInRange(0, 4) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    size = int(np.prod(shape))
    values = [SPECIAL[fdp.ConsumeIntInRange(0, len(SPECIAL) - 1)] if fdp.ConsumeBool() else
              fdp.ConsumeIntInRange(-3, 6) for _ in range(size)]
    with np.errstate(all="ignore"):
        arr = np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    layout = fdp.ConsumeIntInRange(0, 3)
    if layout == 1 and arr.ndim:
        arr = np.flip(np.flip(arr).copy())  # negative strides
    elif layout == 2:
        arr.flags.writeable = False
    elif layout == 3 and arr.ndim >= 2:
        arr = np.asfortranarray(arr)
    return arr


def _value(fdp):
    kind = fdp.ConsumeIntInRange(0, 8)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**65), 2**65)
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(6)
    if kind == 4:
        return _array(fdp)
    if kind == 5:
        return SPECIAL[fdp.ConsumeIntInRange(0, len(SPECIAL) - 1)]
    return fdp.ConsumeRegularFloat() if kind == 6 else fdp.ConsumeProbability()


def _call(fdp):
    loss = LOSSES[fdp.ConsumeIntInRange(0, len(LOSSES) - 1)]
    entries = ["__call__", "grad", "value_and_grad"] + (["grad_hess"] if loss.has_hessian else [])
    entry = entries[fdp.ConsumeIntInRange(0, len(entries) - 1)]
    count = len(loss.inputs) + fdp.ConsumeIntInRange(-1, 1)
    inputs = [_array(fdp) for _ in range(max(0, count))]
    kwargs = {}
    names = sorted(loss.params) + EXTRA_KEYWORDS
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        kwargs[names[fdp.ConsumeIntInRange(0, len(names) - 1)]] = _value(fdp)
    if entry != "grad_hess" and fdp.ConsumeBool():
        kwargs["reduction"] = REDUCTIONS[fdp.ConsumeIntInRange(0, len(REDUCTIONS) - 1)]
    if fdp.ConsumeIntInRange(0, 3) == 0:
        kwargs["sample_weight"] = _array(fdp)
    if entry != "__call__" and fdp.ConsumeIntInRange(0, 3) == 0:
        kwargs["out"] = _array(fdp)
    return loss, entry, inputs, kwargs


def _snapshot(things):
    return [a.tobytes() if isinstance(a, np.ndarray) and a.dtype != object else repr(a) for a in things]


def _run(loss, entry, inputs, kwargs, backend):
    fn = loss if entry == "__call__" else getattr(loss, entry)
    # every argument but ``out=``, which a successful call fills with the gradient
    things = list(inputs) + [value for key, value in kwargs.items() if key != "out"]
    before = _snapshot(things)
    try:
        fn(*inputs, backend=backend, **kwargs)
        outcome = None
    except (ValueError, TypeError) as exc:
        outcome = type(exc)
    if _snapshot(things) != before:
        raise AssertionError(f"{loss.name}.{entry} on {backend} modified an input")
    return outcome


def _compiled_ready(inputs, kwargs):
    arrays = [a for a in list(inputs) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    return all(a.dtype in COMPILED_DTYPES for a in arrays) and "out" not in kwargs


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    loss, entry, inputs, kwargs = _call(fdp)
    reference = _run(loss, entry, inputs, kwargs, "numpy")
    if not _compiled_ready(inputs, kwargs):
        return
    for backend in COMPILED_BACKENDS:
        if not hasattr(nl._config.load_backend(backend), loss.kernels):
            continue
        got = _run(loss, entry, inputs, kwargs, backend)
        if got is not reference:
            raise AssertionError(f"{loss.name}.{entry}: {backend} gave {got}, the reference {reference}")


def main(argv) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

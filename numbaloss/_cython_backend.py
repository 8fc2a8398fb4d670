"""The ``cython`` backend: the loops of ``numbaloss._numba`` compiled ahead of time by
Cython (OpenMP ``prange``), for machines without Numba.

The extensions live in ``numbaloss._cext`` and are built by ``setup.py`` from the
top-level ``_cext/`` folder (``pip install -e .`` or ``python setup.py build_ext
--inplace``).  This module has the contract of ``numbaloss._numba.backend`` for the
elementwise, softmax and embedding losses: ``elementwise(...)``, ``softmax_rows(...)``
and ``pairwise(...)`` with the same arguments and results, the same point functions
and fast exp/log, and float64 sums (in a fixed order of their own), so the two
backends agree to rounding.  The embedding losses (``_cext/pairwise.pyx``) take their
similarity products from NumPy's BLAS on the row blocks of the Numba module; the
compiled loops work on each block.

Target dtypes: the Numba loops read targets of any dtype as they are; the compiled
loops read targets of the predictions' dtype and bool/uint8 ones (0/1 targets, the
common case of bce and focal) as they are, int64 labels and dense softmax targets
of the predictions' dtype.  Everything else is converted here first, exactly:
float32 targets of float64 predictions and integer targets to the predictions'
dtype where it holds them exactly (int8, int16, uint16 for float32), labels to
int64; wider integer targets of float32 predictions run the loop on float64 copies
(the same numbers: the loops compute in float64 and round once when they store).
That keeps the compiled specialisations to term × 4 (target, prediction) dtype
pairs, which the compile time of the extensions (every point function inlined in
every loop) needs.

Instruction sets: setup.py builds the elementwise, softmax and embedding-loss loops as
baseline modules and, on x86-64, as AVX2 and AVX-512 copies; the widest copy the CPU
runs is used (see ``isa()``; ``NUMBALOSS_CYTHON_ISA=avx2`` or ``baseline`` caps the
choice).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from . import _config
from ._config import BackendUnavailableError
from ._term_variants import specialised

name = "cython"

#: the ``run`` call signature these wrappers were written for (see _cext/*.pyx)
_API_VERSION = 1

# OpenMP's default wait policy keeps idle team threads spinning after a parallel
# region; on the 2-core machines measured here that spinning took the cores from the
# caller's next call (mse at 10^7 float32: 4.5x the time of the numba backend with two
# threads, 0.9x with passive waiting).  Only a default: a policy the user set is kept,
# and it has no effect if OpenMP already started in this process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from ._cext import elementwise as _elementwise
    from ._cext import pairwise as _pairwise
    from ._cext import softmax as _softmax
except ImportError as exc:  # not built (or built for another Python)
    _elementwise = _pairwise = _softmax = None
    _import_error = exc
else:
    _import_error = None


#: the copies setup.py builds, widest first (see ISA_VARIANTS there)
ISAS = ("avx512", "avx2", "baseline")


def _isa_variant(module):
    """The widest copy of ``module`` (see setup.py) that was built and that this CPU
    runs (elementwise's ``cpu_supports`` answers for every module).  NUMBALOSS_CYTHON_ISA=avx2 or baseline caps the choice (tests, benchmarks)."""
    cap = os.environ.get("NUMBALOSS_CYTHON_ISA", "").strip().lower()
    allowed = ISAS[ISAS.index(cap):] if cap in ISAS else ISAS
    for isa in allowed:
        if isa == "baseline":
            return module
        if not _elementwise.cpu_supports(isa):
            continue
        try:
            copy = importlib.import_module(f"{module.__name__}_{isa}")
        except ImportError:
            continue
        if getattr(copy, "API_VERSION", None) == getattr(module, "API_VERSION", None):
            return copy  # (a stale copy from an older build is passed over)
    return module


if _import_error is None:
    _elementwise = _isa_variant(_elementwise)
    _pairwise = _isa_variant(_pairwise)
    _softmax = _isa_variant(_softmax)

_threads: int | None = None
_EMPTY_WEIGHTS = np.empty(0, dtype=np.float64)
_INT64 = np.iinfo(np.int64)


def check_available() -> None:
    if _import_error is not None:
        raise BackendUnavailableError(
            "backend 'cython' is not available: the compiled extension numbaloss._cext was not "
            "built (pip install -e . or python setup.py build_ext --inplace builds it; it needs a "
            f"C compiler, Cython and NumPy): {_import_error}"
        )
    for module in (_elementwise, _softmax, _pairwise):
        if getattr(module, "API_VERSION", None) != _API_VERSION:
            raise BackendUnavailableError(
                f"backend 'cython' is not available: the compiled extension {module.__name__} is "
                "out of date with numbaloss._cython_backend; rebuild it (pip install -e . or "
                "python setup.py build_ext --inplace)"
            )


def openmp() -> bool:
    """Whether the extensions were compiled with OpenMP (else the loops are serial)."""
    return bool(_elementwise is not None and _elementwise.OPENMP)


def isa() -> str:
    """Which copy of the elementwise loops runs: "avx512", "avx2" or "baseline"."""
    name = _elementwise.__name__ if _elementwise is not None else ""
    return next((isa for isa in ISAS[:-1] if name.endswith("_" + isa)), "baseline")


def set_num_threads(n: int) -> None:
    """Threads for the loops at or above the parallel threshold (numbaloss.set_num_threads)."""
    global _threads
    _threads = int(n)


def _num_threads() -> int:
    global _threads
    if _threads is None:
        # numbaloss.get_num_threads() (NUMBA_NUM_THREADS or the CPUs), within OpenMP's
        # default (OMP_NUM_THREADS); fixed at the first call, as Numba fixes its own
        _threads = max(1, min(_config.get_num_threads(), _elementwise.max_threads()))
    return _threads


def _flat_float(a: np.ndarray) -> np.ndarray:
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a).reshape(-1)


#: integer targets that float32 holds exactly
_SMALL_INTS = tuple(np.dtype(t) for t in (np.int8, np.int16, np.uint16))


def _targets(y: np.ndarray, z: np.ndarray):
    """Elementwise targets as a dtype the compiled loops read with ``z`` (see the module
    docstring), or None when the pair must run in float64 (float64 or wide-integer
    targets of float32 predictions)."""
    if y is z:
        return z
    if y.dtype == np.bool_:
        return np.ascontiguousarray(y).reshape(-1).view(np.uint8)
    if y.dtype == np.uint8 or y.dtype == z.dtype:
        return np.ascontiguousarray(y).reshape(-1)
    if z.dtype == np.float64 or y.dtype in _SMALL_INTS:
        # float32 targets of float64 predictions, integers: widened exactly, as the
        # Numba loops widen them on load
        return np.ascontiguousarray(y, dtype=z.dtype).reshape(-1)
    return None


def _widened(buf):
    return None if buf is None else np.empty(buf.shape, dtype=np.float64)


def elementwise(term, params, bounds, y, z, w, m, mode, scale, out_value, grad, hess):
    """Run one elementwise loop over flat contiguous ``y``, ``z``; the contract of
    ``numbaloss._numba.backend.elementwise``.

    mode "sum": returns (Σ wᵢ·l, flags) and fills ``grad`` with scale·wᵢ·l′ if given;
    "grad": fills ``grad``; "none": fills ``out_value`` with scale·wᵢ·l (and ``grad``);
    "grad_hess": fills ``grad`` and ``hess`` with wᵢ·l′, wᵢ·l″.
    Returns (total or 0.0, domain flags).
    """
    entry = _elementwise.TERMS.get(specialised(term, params))
    if entry is None:
        raise NotImplementedError(
            f"the cython backend has no loop for the term {term!r}: add its point functions to "
            "_cext/_points.pxd and the term to _cext/elementwise.pyx"
        )
    if mode == "sum":
        loop = "value_sum" if grad is None else "value_sum_and_grad"
    elif mode == "grad":
        loop = "grad_only"
    elif mode == "none":
        loop = "value_none"
    elif mode == "grad_hess":
        loop = "grad_and_hess"
    else:
        raise ValueError(f"unknown mode {mode!r}")
    z = _flat_float(z)
    y_loop = _targets(y, z)
    out_value = out_value if loop == "value_none" else None
    hess = hess if loop == "grad_and_hess" else None
    buffers = (out_value, grad, hess)
    if y_loop is None:
        # float64 targets of float32 predictions: the loop runs on float64 copies,
        # which computes the same numbers (every loop works in float64 and rounds
        # once when it stores), and the results are rounded into the float32 buffers
        z = z.astype(np.float64)
        y_loop = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
        buffers = tuple(_widened(b) for b in buffers)
    if w is None:
        w, m = _EMPTY_WEIGHTS, max(z.shape[0], 1)
    total, flags = _elementwise.run(
        entry[0], _elementwise.MODES[loop], y_loop, z, w, int(m), tuple(params), tuple(bounds),
        float(scale), *buffers, _num_threads(),
    )
    for given, used in zip((out_value, grad, hess), buffers):
        if given is not used:
            given[...] = used
    return (total if mode == "sum" else 0.0), flags


def softmax_rows(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess):
    """Run one row-wise softmax loop; the contract of ``numbaloss._numba.backend.softmax_rows``
    (kinds and row functions: ``numbaloss._numba.softmax``)."""
    kind_id = _softmax.KINDS.get(kind)
    if kind_id is None:
        raise NotImplementedError(f"the cython backend has no softmax loop for {kind!r} (_cext/softmax.pyx)")
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    z = np.ascontiguousarray(z)
    if kind.endswith("_labels"):
        y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
        if ignore_index is not None and not _INT64.min <= ignore_index <= _INT64.max:
            ignore_index = None  # no int64 label can equal it
    else:
        y = np.ascontiguousarray(y, dtype=z.dtype)
    class_weight = np.ascontiguousarray(class_weight, dtype=np.float64)
    write_values = mode == "none"
    return _softmax.run(
        kind_id, tuple(params), y, z, w, class_weight, ignore_index, float(scale),
        out_value if write_values else None, grad, hess if mode == "grad_hess" else None,
        _num_threads(),
    )


def pairwise(name, inputs, params, coef, need_grad):
    """(per-sample losses, gradients of Σ coefᵢ·lossᵢ) of an embedding loss; the
    contract of ``numbaloss._numba.backend.pairwise`` (drivers and kernels:
    ``_cext/pairwise.pyx``)."""
    _pairwise.set_num_threads(_num_threads())
    return getattr(_pairwise, name)(*inputs, **params, coef=coef, need_grad=need_grad)

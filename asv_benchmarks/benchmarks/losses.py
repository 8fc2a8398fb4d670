"""asv benchmarks of every loss on every backend (issue 6).

Sizes come in two profiles: the full one for tracking, and a quick one
(``NUMBALOSS_ASV_QUICK=1``) with small inputs, which CI runs once per commit so that
a broken benchmark fails CI.  A "latency" input is small enough that argument
checking and dispatch dominate; a "throughput" input is large enough that the loops
do.  The shape behind each size depends on the loss family: elementwise and softmax
losses get rows of 10 values, embedding losses get N rows of D features.

The suite uses only numbaloss's public API (not ``numbaloss.bench``), so that asv
can run it against older commits.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import numpy as np

import numbaloss as nl

QUICK = os.environ.get("NUMBALOSS_ASV_QUICK", "").strip() == "1"

#: size label -> the shape passed to ``loss.example``: "rows" for the elementwise and
#: softmax losses (rows of 10; 10⁷ elements at throughput size, as in issue 6),
#: "pairwise" (N, D) for the embedding losses
SHAPES = {
    "latency": {"rows": (100, 10), "pairwise": (64, 16)},
    "throughput": ({"rows": (2_000, 10), "pairwise": (256, 32)} if QUICK else
                   {"rows": (1_000_000, 10), "pairwise": (4_096, 128)}),
}
#: the pairwise losses' peak memory at large N (the kernels work on row blocks, so
#: memory should grow as N·block, not N²)
PEAKMEM_SHAPE = (512, 32) if QUICK else (16_384, 128)

COLD_RUNS = 3 if QUICK else 7  # fresh processes per cold-start figure (median)

LOSS_NAMES = sorted(nl.LOSSES)
PAIRWISE_NAMES = sorted(name for name, loss in nl.LOSSES.items() if loss.family == "pairwise")
BACKENDS = ("numba", "cython", "numpy", "cuda")
DTYPES = ("float32", "float64")


# asv's forkserver imports this module once and forks a process per benchmark: load
# the CPU backends and let Numba set up its compiler here, not in every benchmark's
# setup.  CUDA is left alone: a process that forks after initialising the driver
# leaves its children unable to use it.
for _backend in ("numba", "cython"):
    try:
        nl.mse(np.zeros(2), np.zeros(2), backend=_backend)
    except nl.BackendUnavailableError:
        pass


def _gpu_present() -> bool:
    """Whether an NVIDIA driver is loaded, checked without initialising CUDA: without
    one the cuda benchmarks are skipped at once (the simulator is never timed)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def _shape(loss, size: str) -> tuple:
    return SHAPES[size]["pairwise" if loss.family == "pairwise" else "rows"]


def _inputs(name: str, backend: str, dtype: str, shape: tuple):
    """(inputs, synchronise) for one benchmark; raises NotImplementedError (asv: skip)
    when CUDA cannot run here (a CPU backend that cannot run raises in ``_warm_up``)."""
    if backend == "cuda":
        if not _gpu_present():
            raise NotImplementedError("no NVIDIA driver here")
        state = nl.backend_status()["cuda"]
        if state != "available":
            raise NotImplementedError(state)
    inputs = nl.LOSSES[name].example(np.random.default_rng(0), shape, dtype)
    if backend != "cuda":
        return inputs, _no_op
    from numba import cuda  # time the kernels on device arrays, not the host transfers

    return tuple(cuda.to_device(a) for a in inputs), cuda.synchronize


def _no_op():
    pass


def _warm_up(call, synchronise) -> None:
    """One call, so that compiling (or loading from Numba's cache) is not timed;
    NotImplementedError (asv: skip) when the backend has no kernels for the loss."""
    try:
        call()
    except nl.BackendUnavailableError as exc:
        raise NotImplementedError(str(exc)) from None
    synchronise()


class _TimeLoss:
    """One public entry point (``method``) of every loss on every backend, dtype and size."""

    params = (LOSS_NAMES, list(BACKENDS), list(DTYPES), list(SHAPES))
    param_names = ("loss", "backend", "dtype", "size")
    method = ""

    def setup(self, name, backend, dtype, size):
        loss = nl.LOSSES[name]
        inputs, self.synchronise = _inputs(name, backend, dtype, _shape(loss, size))
        entry = getattr(loss, self.method) if self.method else loss
        self.call = lambda: entry(*inputs, backend=backend)
        _warm_up(self.call, self.synchronise)

    def _time(self):
        self.call()
        self.synchronise()


class Value(_TimeLoss):
    def time_value(self, name, backend, dtype, size):
        self._time()


class Grad(_TimeLoss):
    method = "grad"

    def time_grad(self, name, backend, dtype, size):
        self._time()


class ValueAndGrad(_TimeLoss):
    method = "value_and_grad"

    def time_value_and_grad(self, name, backend, dtype, size):
        self._time()


class PairwiseMemory:
    """Peak resident memory of one value_and_grad of an embedding loss at large N."""

    params = (PAIRWISE_NAMES, ["numba", "numpy"])
    param_names = ("loss", "backend")

    def setup(self, name, backend):
        loss = nl.LOSSES[name]
        small, synchronise = _inputs(name, backend, "float32", (16, 8))
        # compile on a tiny batch, so that the peak is the large call's
        _warm_up(lambda: loss.value_and_grad(*small, backend=backend), synchronise)
        self.inputs = loss.example(np.random.default_rng(0), PEAKMEM_SHAPE, "float32")

    def peakmem_value_and_grad(self, name, backend):
        nl.LOSSES[name].value_and_grad(*self.inputs, backend=backend)


_IMPORT = "import time; t = time.perf_counter(); import numbaloss; print(time.perf_counter() - t)"
_FIRST_CALL = (
    "import time; t = time.perf_counter(); import numpy as np, numbaloss as nl; "
    "y = np.zeros(1000, np.float32); z = np.ones(1000, np.float32); "
    "nl.mse.value_and_grad(y, z); print(time.perf_counter() - t)"
)


def _fresh_process_seconds(code: str, runs: int) -> float:
    """Median of what ``code`` prints, each run in a fresh interpreter."""
    times = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                  text=True).stdout) for _ in range(runs)]
    return statistics.median(times)


class ColdStart:
    """Seconds a fresh process spends in ``import numbaloss``, and in the import plus
    the first ``value_and_grad`` (mse, 1,000 float32) with Numba's cache warm."""

    unit = "seconds"

    def setup(self):
        _fresh_process_seconds(_FIRST_CALL, 1)  # fills Numba's on-disk cache

    def track_import(self):
        return _fresh_process_seconds(_IMPORT, COLD_RUNS)

    def track_first_value_and_grad(self):
        return _fresh_process_seconds(_FIRST_CALL, COLD_RUNS)

"""Reliability under production use (issue 8): concurrent Python threads, thread-count
changes during use, determinism across runs and processes, memory use and leaks.

Backends: numpy, numba and cython where they have the loss's kernels (CUDA has its
own suite).  What changes with the thread count is documented in the README's
"Reliability" section; ``test_results_do_not_depend_on_the_thread_count`` holds it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import numbaloss as nl
from cases import BACKENDS, supports

# inputs above the numba/cython parallel threshold (2**19 elements), so that the
# threaded paths run
ELEMENTWISE_SHAPE = (1024, 640)
SOFTMAX_SHAPE = (65536, 10)
PAIRWISE_SHAPE = (1024, 64)  # above the pairwise kernels' threading threshold (2**15)
LOSS_SAMPLE = ["mse", "binary_cross_entropy", "focal", "categorical_cross_entropy", "categorical_focal",
               "cycle_consistency", "triplet", "info_nce", "nt_xent", "arcface", "supcon"]
MiB = 1 << 20


def _inputs(name, seed=0):
    loss = nl.LOSSES[name]
    shape = PAIRWISE_SHAPE if loss.family == "pairwise" else \
        SOFTMAX_SHAPE if loss.family == "softmax" else ELEMENTWISE_SHAPE
    kwargs = {"from_logits": True} if "from_logits" in loss.params else {}
    return loss.example(np.random.default_rng(seed), shape, np.float32), kwargs


CASES = [(name, backend) for name in LOSS_SAMPLE for backend in BACKENDS if supports(backend, name)]
INPUTS = {name: _inputs(name) for name in LOSS_SAMPLE}


def _run(name, backend):
    inputs, kwargs = INPUTS[name]
    value, grad = nl.LOSSES[name].value_and_grad(*inputs, backend=backend, **kwargs)
    return [np.asarray(value)] + [np.asarray(g) for g in (grad if isinstance(grad, tuple) else (grad,))]


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _assert_identical(got, expected, what):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape, what
        assert g.tobytes() == e.tobytes(), f"{what}: not bit-identical to the serial result"


@pytest.fixture(scope="module")
def serial():
    return {case: _run(*case) for case in CASES}


# ------------------------------------------------------------------- threads
def _in_threads(count, work):
    """Run work(index) on ``count`` threads started together; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors = []

    def target(index):
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread did not finish: deadlock?"
    if errors:
        raise errors[0]


def test_eight_threads_give_the_serial_results(serial):
    """8 Python threads call the same losses at the same time (the kernels release the
    GIL, so they do run concurrently): every result is bit-identical to the serial one."""
    def work(index):
        order = np.random.default_rng(index).permutation(len(CASES))
        for i in order:
            case = CASES[i]
            _assert_identical(_run(*case), serial[case], f"{case} in thread {index}")

    _in_threads(8, work)


def test_set_num_threads_during_use_is_safe(serial):
    """One thread changes the thread count back and forth while 7 others compute."""
    default = nl.get_num_threads()
    counts = [1, min(4, os.cpu_count() or 1)]  # (set_num_threads allows at most the CPUs)
    stop = threading.Event()

    def work(index):
        if index == 0:
            i = 0
            while not stop.is_set():
                nl.set_num_threads(counts[i % 2])
                i += 1
            return
        try:
            for case in CASES:
                _assert_identical(_run(*case), serial[case], f"{case} while the thread count changed")
        finally:
            if index == 1:
                stop.set()

    try:
        _in_threads(8, work)
    finally:
        stop.set()
        nl.set_num_threads(default)


# ---------------------------------------------------------------- determinism
_DIGEST_SCRIPT = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
import numbaloss as nl
import test_reliability as r
nl.set_num_threads({threads})
print(json.dumps({{f"{{n}}/{{b}}": r._digest(r._run(n, b)) for n, b in r.CASES}}))
"""


def _digests_in_subprocess(threads: int) -> dict:
    tests = os.path.dirname(os.path.abspath(__file__))
    code = _DIGEST_SCRIPT.format(root=os.path.dirname(tests), tests=tests, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bit_identical_across_runs_and_processes(serial):
    """Same inputs and thread count: the same bits in this process (twice) and in a
    fresh process."""
    threads = nl.get_num_threads()
    here = {f"{n}/{b}": _digest(result) for (n, b), result in serial.items()}
    again = {f"{n}/{b}": _digest(_run(n, b)) for n, b in CASES}
    assert again == here
    other = _digests_in_subprocess(threads)
    assert other == here, sorted(k for k in here if other.get(k) != here[k])


def test_results_do_not_depend_on_the_thread_count(serial):
    """The elementwise and softmax loops sum fixed chunks in chunk order, whatever the
    thread count; the embedding losses' matrix products run in BLAS, whose own
    threads (OPENBLAS_NUM_THREADS etc.) are not set_num_threads' and are not changed
    here.  So one thread and several give the same bits."""
    default = nl.get_num_threads()
    try:
        nl.set_num_threads(1)
        for case in CASES:
            _assert_identical(_run(*case), serial[case], f"{case} on 1 thread vs {default}")
    finally:
        nl.set_num_threads(default)


# --------------------------------------------------------------------- memory
MEMORY_ELEMENTS = 10**7
COMPILED = [b for b in BACKENDS if b != "numpy"]  # the reference computes in float64 copies
MEMORY_CASES = [(name, backend) for name in ("mse", "binary_cross_entropy", "focal", "categorical_cross_entropy")
                for backend in COMPILED if supports(backend, name)]


@pytest.mark.parametrize("name,backend", MEMORY_CASES)
def test_memory_of_value_and_of_value_and_grad(name, backend):
    """On 10⁷ float32 elements: a value-only call allocates < 1 MiB beyond its inputs,
    value_and_grad allocates the gradient and < 1 MiB more."""
    _value_call_allocates_under_one_mib(name, backend)
    _value_and_grad_allocates_only_the_gradient(name, backend)


@functools.lru_cache(maxsize=1)
def _big_inputs(name):
    loss = nl.LOSSES[name]
    shape = (MEMORY_ELEMENTS // 10, 10)
    inputs = loss.example(np.random.default_rng(1), shape, np.float32)
    return inputs, ({"from_logits": True} if "from_logits" in loss.params else {})


def _traced_peak(fn):
    """Bytes allocated at the peak of fn() beyond what was allocated before, as
    tracemalloc sees them: Python objects and NumPy buffers (NumPy reports its
    allocations to tracemalloc).  Numba's own allocations inside a kernel are not
    seen; the kernels allocate only per-chunk partial sums."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before, result


def _value_call_allocates_under_one_mib(name, backend):
    loss = nl.LOSSES[name]
    inputs, kwargs = _big_inputs(name)
    loss(*inputs, backend=backend, **kwargs)  # compile / load outside the measurement
    extra, _ = _traced_peak(lambda: loss(*inputs, backend=backend, **kwargs))
    assert extra < MiB, f"{name} on {backend}: {extra / MiB:.2f} MiB allocated beyond the inputs"


def _value_and_grad_allocates_only_the_gradient(name, backend):
    loss = nl.LOSSES[name]
    inputs, kwargs = _big_inputs(name)
    loss.value_and_grad(*inputs, backend=backend, **kwargs)
    extra, (_, grad) = _traced_peak(lambda: loss.value_and_grad(*inputs, backend=backend, **kwargs))
    assert extra - grad.nbytes < MiB, \
        f"{name} on {backend}: {(extra - grad.nbytes) / MiB:.2f} MiB beyond the {grad.nbytes / MiB:.0f} MiB gradient"


PAIRWISE_MEMORY = ["info_nce", "nt_xent", "supcon", "arcface", "batch_hard_triplet"]


@pytest.mark.parametrize("name", PAIRWISE_MEMORY)
def test_pairwise_memory_stays_within_row_blocks(name, monkeypatch):
    """With 4 MiB blocks, N = 4,096 rows (a full N×N float32 matrix: 64 MiB) allocate
    at most a few blocks plus O(N·D) beyond inputs and gradients."""
    from numbaloss._numba import pairwise

    block = 4 * MiB
    monkeypatch.setattr(pairwise, "BLOCK_BYTES", block)
    loss = nl.LOSSES[name]
    n, d = 4096, 16
    rng = np.random.default_rng(2)
    if name == "arcface":  # one class per sample: a (N, N) logit matrix as well
        inputs = (rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, n, n),
                  rng.standard_normal((n, d)).astype(np.float32))
    else:
        inputs = loss.example(rng, (n, d), np.float32)
    loss.value_and_grad(*inputs[:1], *inputs[1:], backend="numba")
    extra, (_, grads) = _traced_peak(lambda: loss.value_and_grad(*inputs, backend="numba"))
    grads = grads if isinstance(grads, tuple) else (grads,)
    inputs_bytes = sum(a.nbytes for a in inputs)
    beyond = extra - sum(g.nbytes for g in grads)
    bound = 3 * block + 4 * inputs_bytes + MiB
    assert beyond < bound, f"{name}: {beyond / MiB:.1f} MiB beyond the gradients (bound {bound / MiB:.1f} MiB, " \
                           f"full matrix {n * n * 4 / MiB:.0f} MiB)"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


LEAK_CASES = [(name, backend) for name in ("mse", "categorical_cross_entropy", "info_nce", "supcon")
              for backend in COMPILED if supports(backend, name)]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc (Linux)")
@pytest.mark.parametrize("name,backend", LEAK_CASES)
def test_no_leak_over_ten_thousand_calls(name, backend):
    loss = nl.LOSSES[name]
    shape = (16, 8) if loss.family == "pairwise" else (100, 10)
    inputs = loss.example(np.random.default_rng(3), shape, np.float32)
    kwargs = {"from_logits": True} if "from_logits" in loss.params else {}
    for _ in range(500):  # warm up: compilation, caches, allocator pools
        loss.value_and_grad(*inputs, backend=backend, **kwargs)
    before = _rss_bytes()
    for _ in range(10_000):
        loss.value_and_grad(*inputs, backend=backend, **kwargs)
    growth = _rss_bytes() - before
    assert growth < 4 * MiB, f"{name} on {backend}: RSS grew {growth / MiB:.1f} MiB over 10^4 calls"

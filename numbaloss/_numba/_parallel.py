"""Run a serial Numba kernel over chunk ranges on a pool of Python threads.

Why not ``prange``: measured on this project's machine, a ``prange`` body (which
Numba outlines into a separate function taking its arrays as arguments) ran the
elementwise loops 4-7x slower than the same loop in a plain ``@njit`` function,
even on one thread, and a kernel writing its per-chunk sums into an array passed
as an argument was as slow; the fast form is a serial kernel that allocates its
small per-chunk sum array itself.  The kernels release the GIL (``nogil=True``), so
Python threads run them truly in parallel; each thread gets one contiguous range
of chunks, and the per-chunk results are combined in chunk order, so the result
does not depend on the number of threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: Inputs below this many elements run on the calling thread: handing work to a
#: pool thread costs tens of microseconds.
PARALLEL_THRESHOLD = 1 << 19

_threads = max(1, os.cpu_count() or 1)
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def set_num_threads(n: int) -> None:
    global _threads, _pool
    with _lock:
        if n != _threads and _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None
        _threads = n


def get_num_threads() -> int:
    return _threads


def _submit(kernel, args: tuple, ranges) -> list:
    """Submit ``kernel(*args, c0, c1)`` per range to the pool, under the lock: a
    concurrent set_num_threads cannot shut the pool down between taking it and
    submitting to it (work already submitted to a replaced pool still runs)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="numbaloss")
        return [_pool.submit(kernel, *args, c0, c1) for c0, c1 in ranges]


def map_chunks(kernel, args: tuple, n_chunks: int, n_elements: int) -> list:
    """``[kernel(*args, c0, c1) for each thread's range]`` in chunk order."""
    threads = min(_threads, n_chunks)
    if threads <= 1 or n_elements < PARALLEL_THRESHOLD:
        return [kernel(*args, 0, n_chunks)]
    bounds = [n_chunks * t // threads for t in range(threads + 1)]
    futures = _submit(kernel, args, [(bounds[t], bounds[t + 1]) for t in range(1, threads)])
    first = kernel(*args, bounds[0], bounds[1])  # the calling thread takes the first range
    return [first] + [f.result() for f in futures]

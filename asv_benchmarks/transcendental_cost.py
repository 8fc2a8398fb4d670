"""What the binary and categorical losses' transcendentals cost here, against the
memory floor: the figures behind the "not met" rows of docs/performance.md.

Each case is one threaded pass over n float32 elements reading one input and
writing one output (the floor's traffic, less one input), computing per element:
nothing (copy), numbaloss's float64 ``exp``, ``log1p``, ``log``, ``exp`` then
``log1p`` (the least a logit-based binary loss needs: softplus), and
``exp_to_float32`` (the softmax rows' float32 exponential).  Medians of --repeats
calls after a warm-up.

    python asv_benchmarks/transcendental_cost.py [--elements 10000000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from numbaloss._numba import fastmath


def _pass(fn):
    @njit(parallel=True, cache=False)
    def run(x, out):
        for i in prange(x.shape[0]):
            out[i] = np.float32(fn(np.float64(x[i])))
    return run


CASES = {
    "copy": njit(inline="always")(lambda v: v),
    "exp": fastmath.exp,
    "log1p": fastmath.log1p,
    "log": fastmath.log,
    "exp + log1p (softplus)": njit(inline="always")(lambda v: fastmath.log1p(fastmath.exp(-abs(v)))),
    "exp_to_float32": fastmath.exp_to_float32,
}


def _median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 0.99, args.elements).astype(np.float32)
    y = rng.uniform(0.01, 0.99, args.elements).astype(np.float32)
    out = np.empty_like(x)
    floor = _median_seconds(lambda: np.add(x, y, out=out), args.repeats)
    print(f"{args.elements:,} float32 elements, {numba.get_num_threads()} threads, medians of {args.repeats}")
    print(f"{'memory floor (np.add, two inputs)':40s} {floor * 1e3:8.2f} ms   1.00x")
    for name, fn in CASES.items():
        loop = _pass(fn)
        seconds = _median_seconds(lambda: loop(x, out), args.repeats)
        per_element = seconds * numba.get_num_threads() / args.elements * 1e9
        print(f"{name:40s} {seconds * 1e3:8.2f} ms {seconds / floor:6.2f}x  "
              f"({per_element:.2f} ns per element per thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

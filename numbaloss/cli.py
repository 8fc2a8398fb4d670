"""The ``numbaloss`` command line (also ``python -m numbaloss``).

    numbaloss demo     every loss on every available backend, on built-in synthetic
                       data: value, agreement with the reference and with finite
                       differences, time per call
    numbaloss bench    value+gradient per loss and backend against the memory floor,
                       the hand-written NumPy version, PyTorch and JAX where installed,
                       measured in one run (numbaloss.bench)
    numbaloss info     version, backends (and why one is not available), threads,
                       the Numba cache folder (numbaloss._info)
    numbaloss score    a loss over prediction files, streamed in chunks of rows
                       (numbaloss._score, readers in numbaloss._io)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import _config, _info, _score
from ._registry import LOSSES


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
               for x, y in zip(_as_tuple(a), _as_tuple(b)))


def _finite_difference_error(loss, inputs, backend, grads, h=1e-6) -> float:
    """Max |analytic − central finite difference| over every differentiable input (float64)."""
    worst = 0.0
    for grad, index in zip(_as_tuple(grads), loss.differentiable):
        x = np.array(inputs[index], dtype=np.float64)
        for k in range(x.size):
            keep = x.flat[k]
            values = []
            for step in (h, -h):
                x.flat[k] = keep + step
                args = list(inputs)
                args[index] = x
                values.append(loss(*args, backend=backend))
            x.flat[k] = keep
            worst = max(worst, abs((values[0] - values[1]) / (2 * h) - grad.flat[k]))
    return worst


def _median_time(fn, repeats: int) -> float:
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def demo(args) -> int:
    rng = np.random.default_rng(args.seed)
    status = _config.backend_status()
    backends = [b for b, state in status.items() if state == "available"]
    print("numbaloss demo: every loss on built-in synthetic data")
    for name, state in status.items():
        print(f"  backend {name:7s} {'available' if state == 'available' else state}")
    print(f"  timing: value_and_grad on {args.size:,} float32 elements (embedding losses: a batch "
          f"of 2,048 rows of 64), median of {args.repeats}\n")
    header = f"{'loss':28s} {'backend':8s} {'value':>14s} {'|Δ value|':>10s} {'|Δ grad|':>10s} " \
             f"{'|grad−FD|':>10s} {'time/call':>11s}"
    print(header)
    print("-" * len(header))
    failures = 0
    for name, loss in LOSSES.items():
        small = loss.example(rng, (6, 4), np.float64)
        if loss.family == "pairwise":  # batch-coupled: O(N²) work, time a batch of 2,048
            large = loss.example(rng, (2048, 64), np.float32)
        else:
            large = loss.example(rng, (max(1, args.size // 10), 10), np.float32)
        ref_value, ref_grad = loss.value_and_grad(*small, backend="numpy")
        for backend in backends:
            if backend == "cuda":
                continue  # NumPy inputs run on the CPU backends; cuda has its own demo data path
            if not hasattr(_config.load_backend(backend), loss.kernels):
                print(f"{name:28s} {backend:8s} {'(no kernels for this loss on this backend)':>50s}")
                continue
            value, grad = loss.value_and_grad(*small, backend=backend)
            value_err = abs(value - ref_value)
            grad_err = _max_abs_diff(grad, ref_grad)
            fd_err = _finite_difference_error(loss, small, backend, grad)
            seconds = _median_time(lambda: loss.value_and_grad(*large, backend=backend), args.repeats)
            ok = value_err <= 1e-10 * max(1.0, abs(ref_value)) and grad_err <= 1e-10 and fd_err <= 1e-6
            failures += not ok
            print(f"{name:28s} {backend:8s} {value:14.8f} {value_err:10.1e} {grad_err:10.1e} "
                  f"{fd_err:10.1e} {seconds * 1e3:8.3f} ms" + ("" if ok else "  MISMATCH"))
    print()
    print("all losses agree with the reference and with finite differences" if not failures
          else f"{failures} mismatch(es)")
    return 1 if failures else 0


def bench(args) -> int:
    from . import bench as _bench

    backends = args.backend or None
    dtype = np.dtype(args.dtype)
    only = args.losses or None
    threads = _config.get_num_threads()
    rows = []
    if not only or "mse" in only:
        rows += _bench.run_latency(dtype=dtype, backends=backends)
    rows += _bench.run(size=args.size, repeats=args.repeats, dtype=dtype, backends=backends, only=only,
                       peers=not args.no_peers)
    if not args.no_pairwise:
        rows += _bench.run_pairwise(repeats=args.repeats, dtype=dtype, backends=backends, only=only)
    cold_start = None if args.no_cold_start else _bench.run_cold_start()
    print(f"value_and_grad, {args.size:,} {args.dtype} elements, median of {args.repeats} ({threads} threads)")
    print(_bench.format_table(rows))
    for label, seconds in (cold_start or {}).items():
        print(f"cold start: {label}: {seconds:.3f} s (target < {_bench.COLD_START_TARGETS[label]:g} s)")
    if args.plot:
        _bench.plot_ratios(rows, args.plot, f"numbaloss bench: {args.size:,} {args.dtype} elements, "
                                             f"{threads} threads, medians of {args.repeats}")
        print(f"chart written to {args.plot}")
    if args.markdown:
        folder = os.path.dirname(os.path.abspath(args.markdown))
        link = os.path.relpath(os.path.abspath(args.plot), folder) if args.plot else None
        _bench.write_markdown(args.markdown, _bench.markdown_report(
            rows, args.size, args.dtype, args.repeats, threads, cold_start=cold_start, plot=link))
        print(f"table written to {args.markdown}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="numbaloss", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="every loss on every backend, checked and timed")
    p_demo.add_argument("--size", type=int, default=1_000_000, help="elements for the timing (default 1e6)")
    p_demo.add_argument("--repeats", type=int, default=5)
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.set_defaults(run=demo)
    _info.add_parser(sub)
    _score.add_parser(sub)
    p_bench = sub.add_parser("bench", help="time value+gradient against the memory floor, NumPy, "
                                                "PyTorch and JAX")
    p_bench.add_argument("losses", nargs="*", help="loss names (default: all benchmark cases)")
    p_bench.add_argument("--size", type=int, default=10_000_000)
    p_bench.add_argument("--repeats", type=int, default=7)
    p_bench.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p_bench.add_argument("--backend", action="append", help="backend to time (repeatable)")
    p_bench.add_argument("--markdown", metavar="FILE.md",
                         help="write the table into this Markdown page (between its markers; "
                              "docs/performance.md)")
    p_bench.add_argument("--plot", metavar="FILE.png", help="draw the ratios as a bar chart (needs matplotlib)")
    p_bench.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX even where installed")
    p_bench.add_argument("--no-cold-start", action="store_true",
                         help="skip timing import and first call in fresh processes")
    p_bench.add_argument("--no-pairwise", action="store_true",
                         help="skip the embedding losses (large matrix products)")
    p_bench.set_defaults(run=bench)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except (ValueError, TypeError, _config.BackendUnavailableError) as exc:
        print(f"numbaloss: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: value and gradient of each loss per backend, side by side in one run,
against the hand-written NumPy version and the memory floor.

The memory floor is one pass that reads every input and writes the gradient into
a preallocated buffer (``np.add(z, y, out=g)``, or a copy for one input): no loss can
beat it.  Figures are medians of ``repeats`` calls after a warm-up call.
"""

from __future__ import annotations

import time

import numpy as np

from . import _config
from ._registry import LOSSES


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _hand_mse(y, z):
    r = z - y
    return np.mean(r * r), (2.0 / r.size) * r


def _hand_huber(y, z, delta=1.0):
    r = z - y
    a = np.abs(r)
    quad = a <= delta
    value = np.mean(np.where(quad, 0.5 * r * r, delta * (a - 0.5 * delta)))
    return value, np.where(quad, r, delta * np.sign(r)) / r.size


def _hand_bce_probs(y, p, eps=1e-7):
    p = np.clip(p, eps, 1 - eps)
    value = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    return value, (p - y) / (p * (1 - p)) / p.size


def _hand_bce_logits(y, z):
    value = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    return value, (_sigmoid(z) - y) / z.size


def _hand_focal_logits(y, z, alpha=0.25, gamma=2.0):
    p = _sigmoid(z)
    ce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    mod = (1 - p_t) ** gamma
    value = np.mean(a_t * mod * ce)
    dq = (1 - 2 * y) * p * (1 - p)
    grad = a_t * (gamma * (1 - p_t) ** (gamma - 1) * dq * ce + mod * (p - y))
    return value, grad / z.size


def _hand_cce_labels(labels, z):
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    logp = z - m - np.log(s)
    n = z.shape[0]
    value = -np.mean(logp[np.arange(n), labels])
    grad = e / s
    grad[np.arange(n), labels] -= 1.0
    return value, grad / n


#: (case label, loss name, keyword parameters, input kinds, hand-written NumPy version)
CASES = [
    ("mse", "mse", {}, ("real", "real"), _hand_mse),
    ("huber", "huber", {}, ("real", "real"), _hand_huber),
    ("bce (probabilities)", "binary_cross_entropy", {}, ("binary", "unit"), _hand_bce_probs),
    ("bce (logits)", "binary_cross_entropy", {"from_logits": True}, ("binary", "real"), _hand_bce_logits),
    ("focal (logits)", "focal", {"from_logits": True}, ("binary", "real"), _hand_focal_logits),
    ("cce (logits, labels, K=10)", "categorical_cross_entropy", {"from_logits": True}, ("labels", "real"),
     _hand_cce_labels),
]


def _inputs(kinds, size, dtype, rng):
    k = 10
    out = []
    for kind in kinds:
        if kind == "labels":
            out.append(rng.integers(0, k, size // k))
        elif kind == "real":
            shape = (size // k, k) if "labels" in kinds else (size,)
            out.append((2.0 * rng.standard_normal(shape)).astype(dtype))
        elif kind == "unit":
            out.append(rng.uniform(0.01, 0.99, size).astype(dtype))
        elif kind == "binary":
            out.append((rng.random(size) < 0.3).astype(dtype))
    return out


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(size: int = 10_000_000, repeats: int = 7, dtype=np.float32, backends=None, only=None, seed=0):
    """Rows of (case, backend or baseline, seconds) measured in one run."""
    rng = np.random.default_rng(seed)
    if backends is None:
        backends = [b for b in _config.available_backends() if b not in ("cuda", "numpy")]
    rows = []
    for label, name, params, kinds, hand in CASES:
        if only and name not in only and label not in only:
            continue
        loss = LOSSES[name]
        y, z = _inputs(kinds, size, dtype, rng)
        grad = np.empty_like(z)
        other = y if y.shape == z.shape and y.dtype == z.dtype else z
        floor = median_seconds(lambda: np.add(z, other, out=grad), repeats)
        rows.append((label, "memory floor", floor))
        for backend in backends:
            seconds = median_seconds(
                lambda: loss.value_and_grad(y, z, backend=backend, out=grad, **params), repeats)
            rows.append((label, backend, seconds))
        rows.append((label, "hand-written NumPy", median_seconds(lambda: hand(y, z), repeats)))
    return rows


def markdown_report(rows, size: int, dtype: str, repeats: int, threads: int) -> str:
    """The table as Markdown, with the machine and the date, for docs/performance.md."""
    import datetime
    import os
    import platform

    floor = {case: s for case, impl, s in rows if impl in ("memory floor", "matrix products")}
    lines = [
        "# Performance",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} "
        f"({os.cpu_count()} CPUs, {threads} threads), Python {platform.python_version()}, "
        f"NumPy {np.__version__}: `value_and_grad` on {size:,} {dtype} elements, "
        f"median of {repeats} calls after a warm-up, all rows measured in one run "
        "(regenerate with `numbaloss bench --output docs/performance.md`).",
        "",
        "| case | implementation | median | × base (memory floor or matrix products) |",
        "|---|---|---:|---:|",
    ]
    for case, impl, seconds in rows:
        lines.append(f"| {case} | {impl} | {seconds * 1e3:.2f} ms | {seconds / floor[case]:.2f} |")
    return "\n".join(lines) + "\n"


def _products_in_batch(a, b):
    """The matrix products an in-batch contrastive loss needs: S = A·Bᵀ, S·B, Sᵀ·A."""
    def run():
        s = a @ b.T
        return s @ b, s.T @ a
    return run


def _products_symmetric(z):
    """Z·Zᵀ and its gradient product, as general products (not NumPy's syrk, slower here)."""
    other = z.copy()

    def run():
        s = z @ other.T
        return s @ z
    return run


#: (case label, loss name, params, inputs(rng, dtype), baseline label, baseline(inputs))
PAIRWISE_CASES = [
    ("info_nce N=4096 D=128", "info_nce", {}, lambda rng, dt: (
        rng.standard_normal((4096, 128)).astype(dt), rng.standard_normal((4096, 128)).astype(dt)),
     "matrix products", lambda x: _products_in_batch(x[0], x[1])),
    ("nt_xent N=4096 D=128", "nt_xent", {}, lambda rng, dt: (
        rng.standard_normal((2048, 128)).astype(dt), rng.standard_normal((2048, 128)).astype(dt)),
     "matrix products", lambda x: _products_symmetric(np.concatenate(x))),
    ("supcon N=4096 D=128", "supcon", {}, lambda rng, dt: (
        rng.standard_normal((2048, 2, 128)).astype(dt), rng.integers(0, 100, 2048)),
     "matrix products", lambda x: _products_symmetric(x[0].reshape(-1, 128))),
    ("arcface N=8192 D=512 C=10000", "arcface", {}, lambda rng, dt: (
        rng.standard_normal((8192, 512)).astype(dt), rng.integers(0, 10000, 8192),
        rng.standard_normal((10000, 512)).astype(dt)),
     "matrix products", lambda x: _products_in_batch(x[0], x[2])),
    ("triplet 65536x128", "triplet", {}, lambda rng, dt: tuple(
        rng.standard_normal((65536, 128)).astype(dt) for _ in range(3)),
     "memory floor", lambda x: (lambda: [np.add(a, a, out=np.empty_like(a)) for a in x])),
]


def run_pairwise(repeats: int = 5, dtype=np.float32, backends=None, only=None, seed=0):
    """Rows of (case, implementation, seconds): each embedding loss against the matrix
    products it needs (or the memory floor), timed with the same BLAS in one run."""
    rng = np.random.default_rng(seed)
    if backends is None:
        backends = [b for b in _config.available_backends() if b not in ("cuda", "numpy")]
    rows = []
    for label, name, params, make, base_label, baseline in PAIRWISE_CASES:
        if only and name not in only:
            continue
        inputs = make(rng, dtype)
        rows.append((label, base_label, median_seconds(baseline(inputs), repeats)))
        for backend in backends:
            if not hasattr(_config.load_backend(backend), "pairwise"):
                continue
            loss = LOSSES[name]
            rows.append((label, backend, median_seconds(
                lambda: loss.value_and_grad(*inputs, backend=backend, **params), repeats)))
    return rows


def format_table(rows) -> str:
    lines = [f"{'case':30s} {'implementation':20s} {'median':>10s} {'× base':>8s}"]
    floor = {}
    for case, impl, seconds in rows:
        if impl in ("memory floor", "matrix products"):
            floor[case] = seconds
        lines.append(f"{case:30s} {impl:20s} {seconds * 1e3:8.2f} ms {seconds / floor[case]:8.2f}")
    return "\n".join(lines)

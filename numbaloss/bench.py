"""Benchmark: value and gradient of each loss per backend, side by side in one run,
against its base (the memory floor, or the matrix products an embedding loss
needs), the hand-written NumPy version, PyTorch and JAX where they are installed.

The memory floor is one pass that reads every input and writes the gradient into
a preallocated buffer (``np.add(z, y, out=g)``): no elementwise loss can beat it.
PyTorch is timed forward + backward, JAX as ``jit(value_and_grad)`` (compiled by the
warm-up call).  Figures are medians of ``repeats`` calls after a warm-up call; the
first row of each case is its base, the ratios are to it.

``numbaloss bench --markdown docs/performance.md --plot docs/performance.png``
regenerates the measured part of docs/performance.md (between the markers below;
the prose around them is kept) and the chart of the ratios.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
import timeit

import numpy as np

from . import _config
from ._registry import LOSSES

BEGIN_MARKER = "<!-- numbaloss bench: begin (generated, do not edit) -->"
END_MARKER = "<!-- numbaloss bench: end -->"

PYTORCH = "PyTorch fwd+bwd"
JAX = "JAX jit(value_and_grad)"
NUMPY = "hand-written NumPy"
_SHORT = {PYTORCH: "PyTorch", JAX: "JAX", NUMPY: "NumPy"}


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


# The peers' versions of the same losses with the same parameters: (framework module,
# its functional namespace, targets, predictions) -> scalar loss.
def _torch_focal(torch, F, y, z, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    return ((alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * ce).mean()


def _jax_focal(jnp, nn, y, z, alpha=0.25, gamma=2.0):
    p = nn.sigmoid(z)
    ce = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
    p_t = p * y + (1 - p) * (1 - y)
    return jnp.mean((alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * ce)


def _jax_huber(jnp, nn, y, z, delta=1.0):
    a = jnp.abs(z - y)
    return jnp.mean(jnp.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta)))


def _jax_cce_labels(jnp, nn, labels, z):
    return -jnp.mean(jnp.take_along_axis(nn.log_softmax(z, axis=-1), labels[:, None], axis=-1))


#: (case label, loss name, keyword parameters, input kinds, hand-written NumPy version,
#:  PyTorch version, JAX version, numbaloss target as "≤ bound × base")
CASES = [
    ("mse", "mse", {}, ("real", "real"), _hand_mse,
     lambda torch, F, y, z: F.mse_loss(z, y),
     lambda jnp, nn, y, z: jnp.mean((z - y) ** 2), 1.5),
    ("huber", "huber", {}, ("real", "real"), _hand_huber,
     lambda torch, F, y, z: F.huber_loss(z, y, delta=1.0), _jax_huber, 1.5),
    ("bce (probabilities)", "binary_cross_entropy", {}, ("binary", "unit"), _hand_bce_probs,
     lambda torch, F, y, z: F.binary_cross_entropy(z, y),
     lambda jnp, nn, y, z: -jnp.mean(y * jnp.log(z) + (1 - y) * jnp.log1p(-z)), 1.5),
    ("bce (logits)", "binary_cross_entropy", {"from_logits": True}, ("binary", "real"), _hand_bce_logits,
     lambda torch, F, y, z: F.binary_cross_entropy_with_logits(z, y),
     lambda jnp, nn, y, z: jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))), 1.5),
    ("focal (logits)", "focal", {"from_logits": True}, ("binary", "real"), _hand_focal_logits,
     _torch_focal, _jax_focal, 1.5),
    ("cce (logits, labels, K=10)", "categorical_cross_entropy", {"from_logits": True}, ("labels", "real"),
     _hand_cce_labels, lambda torch, F, y, z: F.cross_entropy(z, y), _jax_cce_labels, 2.0),
]

#: how much faster than each peer the numbaloss backends should be on the elementwise
#: cases (issue 6): "≥ 3× faster than the hand-written NumPy version and JAX, 5× than PyTorch"
PEER_SPEEDUP_TARGETS = {NUMPY: 3.0, JAX: 3.0, PYTORCH: 5.0}


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


def _torch_call(loss_fn, y, z):
    """A forward+backward call of ``loss_fn`` in PyTorch on the same data, or None
    when PyTorch is not installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    y_t = torch.from_numpy(y)
    z_t = torch.from_numpy(z).requires_grad_()

    def run():
        z_t.grad = None
        value = loss_fn(torch, F, y_t, z_t)
        value.backward()
        return value.item(), z_t.grad
    return run


def _jax_call(loss_fn, y, z):
    """``jit(value_and_grad)`` of ``loss_fn`` in JAX on the same data, or None when
    JAX is not installed."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if z.dtype == np.float64:  # JAX computes in float32 unless asked
        jax.config.update("jax_enable_x64", True)
    value_and_grad = jax.jit(jax.value_and_grad(lambda zz, yy: loss_fn(jnp, jax.nn, yy, zz)))
    y_j, z_j = jax.device_put(y), jax.device_put(z)

    def run():
        value, grad = value_and_grad(z_j, y_j)
        return float(value), grad.block_until_ready()
    return run


def run(size: int = 10_000_000, repeats: int = 7, dtype=np.float32, backends=None, only=None, seed=0,
        peers: bool = True):
    """Rows of (case, implementation, seconds) measured in one run, each case's
    memory floor first."""
    rng = np.random.default_rng(seed)
    if backends is None:
        backends = [b for b in _config.available_backends() if b not in ("cuda", "numpy")]
    rows = []
    for label, name, params, kinds, hand, torch_loss, jax_loss, _ in CASES:
        if only and name not in only and label not in only:
            continue
        loss = LOSSES[name]
        y, z = _inputs(kinds, size, dtype, rng)
        grad = np.empty_like(z)
        other = y if y.shape == z.shape and y.dtype == z.dtype else z
        rows.append((label, "memory floor", median_seconds(lambda: np.add(z, other, out=grad), repeats)))
        for backend in backends:
            seconds = median_seconds(
                lambda: loss.value_and_grad(y, z, backend=backend, out=grad, **params), repeats)
            rows.append((label, backend, seconds))
        rows.append((label, NUMPY, median_seconds(lambda: hand(y, z), repeats)))
        if peers:
            for peer, make, loss_fn in ((PYTORCH, _torch_call, torch_loss), (JAX, _jax_call, jax_loss)):
                call = make(loss_fn, y, z)
                if call is not None:
                    rows.append((label, peer, median_seconds(call, repeats)))
    return rows


LATENCY_CASE = "mse, 1,000 elements (latency)"


def run_latency(repeats: int = 31, dtype=np.float32, backends=None, size: int = 1000, seed=0):
    """Rows of (case, implementation, seconds per call) for a small mse through the
    public API (no ``out=``) against the hand-written NumPy expression, interleaved
    so that both see the same machine load."""
    rng = np.random.default_rng(seed)
    if backends is None:
        backends = [b for b in _config.available_backends() if b not in ("cuda", "numpy")]
    y = rng.standard_normal(size).astype(dtype)
    z = rng.standard_normal(size).astype(dtype)
    calls = {NUMPY: lambda: _hand_mse(y, z)}
    for backend in backends:
        calls[backend] = lambda backend=backend: LOSSES["mse"].value_and_grad(y, z, backend=backend)
    samples = {impl: [] for impl in calls}
    number = 500
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for impl, fn in calls.items():
            samples[impl].append(timeit.timeit(fn, number=number) / number)
    return [(LATENCY_CASE, impl, float(np.median(times))) for impl, times in samples.items()]


_COLD_IMPORT = "import time; t = time.perf_counter(); import numbaloss; print(time.perf_counter() - t)"
_COLD_FIRST_CALL = (
    "import time; t = time.perf_counter(); import numpy as np, numbaloss as nl; "
    "y = np.zeros(1000, np.float32); z = np.ones(1000, np.float32); "
    "nl.mse.value_and_grad(y, z); print(time.perf_counter() - t)"
)

#: cold-start targets in seconds (issue 6)
COLD_START_TARGETS = {"import numbaloss": 0.15, "import + first value_and_grad (warm Numba cache)": 0.8}


def run_cold_start(runs: int = 5) -> dict:
    """Median seconds of ``import numbaloss`` and of the import plus a first
    value_and_grad, each in ``runs`` fresh interpreters (after one run that fills
    Numba's on-disk cache)."""
    def fresh(code):
        return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                    text=True).stdout)

    fresh(_COLD_FIRST_CALL)
    return {label: float(np.median([fresh(code) for _ in range(runs)]))
            for label, code in zip(COLD_START_TARGETS, (_COLD_IMPORT, _COLD_FIRST_CALL))}


def _products_in_batch(a, b):
    """The matrix products an in-batch loss (InfoNCE with A, B = anchors, positives;
    ArcFace with A, B = embeddings, class weights) needs: the logits S = A·Bᵀ and the
    two gradient products G·B and Gᵀ·A (timed on S for G), each one full gemm."""
    def run():
        s = a @ b.T
        return s @ b, s.T @ a
    return run


def _products_symmetric(z):
    """The matrix products a symmetric contrastive loss (NT-Xent, SupCon on the N×D
    rows Z) needs when it does not exploit the symmetry: the logits S = Z·Zᵀ once, as
    a full general product (gemm on a copy of Z: NumPy's syrk for z @ z.T was slower
    here), and the gradient product G·Z (timed on S for G).  Taking only half of
    Z·Zᵀ is the loss's own work and is not credited to this base."""
    other = z.copy()

    def run():
        s = z @ other.T
        return s @ z
    return run


#: (case label, loss name, params, inputs(rng, dtype), baseline label, baseline(inputs), target)
PAIRWISE_CASES = [
    ("info_nce N=4096 D=128", "info_nce", {}, lambda rng, dt: (
        rng.standard_normal((4096, 128)).astype(dt), rng.standard_normal((4096, 128)).astype(dt)),
     "matrix products", lambda x: _products_in_batch(x[0], x[1]), 1.25),
    ("nt_xent N=4096 D=128", "nt_xent", {}, lambda rng, dt: (
        rng.standard_normal((2048, 128)).astype(dt), rng.standard_normal((2048, 128)).astype(dt)),
     "matrix products", lambda x: _products_symmetric(np.concatenate(x)), 1.25),
    ("supcon N=4096 D=128", "supcon", {}, lambda rng, dt: (
        rng.standard_normal((2048, 2, 128)).astype(dt), rng.integers(0, 100, 2048)),
     "matrix products", lambda x: _products_symmetric(x[0].reshape(-1, 128)), 1.25),
    ("arcface N=8192 D=512 C=10000", "arcface", {}, lambda rng, dt: (
        rng.standard_normal((8192, 512)).astype(dt), rng.integers(0, 10000, 8192),
        rng.standard_normal((10000, 512)).astype(dt)),
     "matrix products", lambda x: _products_in_batch(x[0], x[2]), 1.15),
    ("triplet 65536x128", "triplet", {}, lambda rng, dt: tuple(
        rng.standard_normal((65536, 128)).astype(dt) for _ in range(3)),
     "memory floor", lambda x: (lambda: [np.add(a, a, out=np.empty_like(a)) for a in x]), 2.0),
]


def run_pairwise(repeats: int = 5, dtype=np.float32, backends=None, only=None, seed=0):
    """Rows of (case, implementation, seconds): each embedding loss against the matrix
    products it needs (or the memory floor), timed with the same BLAS in one run."""
    rng = np.random.default_rng(seed)
    if backends is None:
        backends = [b for b in _config.available_backends() if b not in ("cuda", "numpy")]
    rows = []
    for label, name, params, make, base_label, baseline, _ in PAIRWISE_CASES:
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


# ------------------------------------------------------------------ reporting

#: case label -> the bound a numbaloss backend must reach, in units of the case's base
TARGETS = {**{case[0]: case[-1] for case in CASES}, **{case[0]: case[-1] for case in PAIRWISE_CASES},
           LATENCY_CASE: 1.0}


def _by_case(rows) -> dict:
    """case -> {implementation: seconds}, in the order of the rows (base first)."""
    cases: dict[str, dict] = {}
    for case, impl, seconds in rows:
        cases.setdefault(case, {})[impl] = seconds
    return cases


def _is_backend(impl: str) -> bool:
    return impl in _config.BACKENDS


def _format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _verdict(case: str, times: dict) -> str:
    """The targets of ``case`` and whether the fastest numbaloss backend meets them."""
    base_name, base = next(iter(times.items()))
    ours = [s for impl, s in times.items() if _is_backend(impl)]
    if case not in TARGETS or not ours:
        return ""
    best = min(ours)
    bound = TARGETS[case]
    parts = [f"≤ {bound:g}× {base_name}: " + ("met" if best <= bound * base else "NOT met")]
    if case in {c[0] for c in CASES}:
        for peer, speedup in PEER_SPEEDUP_TARGETS.items():
            if peer in times:
                parts.append(f"{speedup:g}× faster than {_SHORT[peer]}: "
                             + ("met" if best * speedup <= times[peer] else "NOT met"))
    return "; ".join(parts)


def _columns(rows) -> list:
    """Implementations other than the bases: the numbaloss backends, then the others,
    each in order of first appearance."""
    bases = {next(iter(times)) for times in _by_case(rows).values()}
    columns = []
    for case, impl, _ in rows:
        if impl not in columns and (impl not in bases or impl == NUMPY):
            columns.append(impl)
    return sorted(columns, key=lambda impl: not _is_backend(impl))  # a stable sort


def _cell(times: dict, impl: str, base: float) -> str:
    if impl not in times or times[impl] is base:
        return "—"
    return f"{_format_seconds(times[impl])} ({times[impl] / base:.2f}×)"


def format_table(rows) -> str:
    """One line per case and implementation: median and ratio to the case's base."""
    lines = [f"{'case':32s} {'implementation':24s} {'median':>10s} {'× base':>8s}"]
    for case, times in _by_case(rows).items():
        base = next(iter(times.values()))
        for impl, seconds in times.items():
            lines.append(f"{case:32s} {impl:24s} {_format_seconds(seconds):>10s} {seconds / base:8.2f}")
        verdict = _verdict(case, times)
        if verdict:
            lines.append(f"{'':32s} target: {verdict}")
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} CPUs{load}"


def _versions() -> str:
    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
    for module in ("numba", "torch", "jax"):
        if module in sys.modules:
            versions.append(f"{module} {sys.modules[module].__version__}")
    return ", ".join(versions)


def markdown_report(rows, size: int, dtype: str, repeats: int, threads: int, cold_start=None,
                    plot=None) -> str:
    """The measured part of docs/performance.md: machine, date, a table of medians and
    ratios per case (one column per implementation), the targets, the cold start and
    the chart."""
    lines = [
        BEGIN_MARKER,
        f"Measured {datetime.date.today().isoformat()} on {_machine()}, {threads} threads; "
        f"{_versions()}. `value_and_grad` medians of {repeats} calls after a warm-up, all in one "
        f"run; elementwise cases on {size:,} {dtype} elements; each cell is the median and its "
        "ratio to the case's base (the memory floor: one pass reading the inputs and writing the "
        "gradient into a preallocated buffer; or the matrix products the loss needs).",
        "",
    ]
    columns = _columns(rows)
    lines.append("| case | base | " + " | ".join(columns) + " | target (fastest numbaloss backend) |")
    lines.append("|---|---:|" + "---:|" * len(columns) + "---|")
    for case, times in _by_case(rows).items():
        base_name, base = next(iter(times.items()))
        cells = [_cell(times, impl, base) for impl in columns]
        lines.append(f"| {case} | {_format_seconds(base)} ({base_name}) | " + " | ".join(cells)
                     + f" | {_verdict(case, times)} |")
    if cold_start:
        lines += ["", "Cold start, median of fresh processes:", ""]
        for label, seconds in cold_start.items():
            target = COLD_START_TARGETS[label]
            lines.append(f"- {label}: {seconds:.3f} s (target < {target:g} s: "
                         + ("met" if seconds < target else "NOT met") + ")")
    if plot:
        lines += ["", f"![Ratio of each implementation to its base]({plot})"]
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def write_markdown(path: str, report: str) -> None:
    """Put ``report`` between the markers of the file at ``path`` (keeping the text
    around them), or write a new page holding only the report."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    if BEGIN_MARKER in text and END_MARKER in text:
        head, rest = text.split(BEGIN_MARKER, 1)
        tail = rest.split(END_MARKER, 1)[1]
        text = head + report.rstrip("\n") + tail
    else:
        text = "# Performance\n\n" + report
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def plot_ratios(rows, path: str, title: str) -> None:
    """A bar chart (PNG) of each implementation's ratio to its case's base, log scale,
    with each case's numbaloss target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = _by_case(rows)
    columns = _columns(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cases)), 4.5))
    width = 0.8 / max(1, len(columns))
    for j, impl in enumerate(columns):
        xs, ratios = [], []
        for i, times in enumerate(cases.values()):
            base = next(iter(times.values()))
            if impl in times and times[impl] is not base:
                xs.append(i - 0.4 + (j + 0.5) * width)
                ratios.append(times[impl] / base)
        ax.bar(xs, ratios, width, label=impl)
    for i, case in enumerate(cases):
        if case in TARGETS:
            ax.hlines(TARGETS[case], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label="target" if i == 0 else None)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("time / base (log scale)")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(list(cases), rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

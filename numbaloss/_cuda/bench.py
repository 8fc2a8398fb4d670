"""GPU benchmark of the cuda backend: every loss of the registry at a large size, the
memory bandwidth it achieves against the device's peak, and PyTorch's CUDA
forward + backward on the same inputs when PyTorch is installed.

    python -m numbaloss._cuda.bench                  # 1e8 elements per input, float32
    python -m numbaloss._cuda.bench --size 2e8 --dtype float64 --only mse,focal
    python -m numbaloss._cuda.bench --only info_nce,supcon --rows 16384
    NUMBA_ENABLE_CUDASIM=1 python -m numbaloss._cuda.bench --tiny   # CI smoke run

For each loss (and its ``from_logits=True`` variant where it has one) the inputs
are the registry's ``example`` inputs drawn once on the host (10⁶ elements) and
tiled on the device to the full size (pointwise: ``size`` elements per input;
softmax: ``size / classes`` rows of ``classes`` logits with integer labels).  It
times ``value_and_grad`` with the gradient written into preallocated device
buffers:

* ``kernel``: the backend call alone (``numbaloss._cuda.backend.elementwise`` /
  ``softmax_rows`` on device arrays: the fused kernel, the partials read-back);
* ``api``: the public call ``loss.value_and_grad(*device_arrays, out=...)``, when
  the public layer keeps device arrays on the device;
* ``torch``: ``loss.backward()`` of the PyTorch formulation, on the same memory.

The embedding losses (pairwise family) are timed apart, at ``--rows`` rows
(N = 65,536 by default) of ``--dim`` features: ``kernel`` is
``numbaloss._cuda.backend.pairwise`` on device arrays (value and gradients), ``api``
the public ``value_and_grad`` on the same device arrays; they are compute-bound (the
similarity products), so no bandwidth is given for them.

Bandwidth = bytes that must move (every input read once, every gradient written
once) / median time; the peak is the device's (memory clock × bus width), and a
device-to-device copy gives what is reachable in practice.  ``--tiny`` runs every
loss on a few hundred elements with 32-thread blocks, checks the values and
gradients against the NumPy reference, and skips PyTorch: a smoke test that runs
under the CUDA simulator.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

#: peak memory bandwidth (bytes/s) by device name, when the driver does not report it
KNOWN_PEAKS = {
    "H200": 4.8e12, "H100 NVL": 3.9e12, "H100 80GB HBM3": 3.35e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12,
    "GH200": 4.0e12, "B200": 8.0e12, "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12, "L40S": 0.864e12, "L4": 0.3e12, "A10": 0.6e12, "V100": 0.9e12, "T4": 0.32e12,
    "RTX 4090": 1.008e12, "RTX 3090": 0.936e12,
}


def _cuda():
    from numba import cuda

    return cuda


def peak_bandwidth() -> tuple[float | None, str]:
    """(bytes/s, device name): 2 × memory clock × bus width (DDR), else the table above."""
    cuda = _cuda()
    try:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    except Exception:
        return None, "simulator"
    try:
        clock_khz = device.MEMORY_CLOCK_RATE
        bus_bits = device.GLOBAL_MEMORY_BUS_WIDTH
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8.0, name
    except Exception:
        pass
    for key, value in sorted(KNOWN_PEAKS.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return value, name
    return None, name


def to_device_tiled(host: np.ndarray, shape: tuple):
    """A device array of ``shape`` filled by repeating ``host`` (C order) along the
    first axis."""
    from . import backend, kernels

    cuda = _cuda()
    src = cuda.to_device(np.ascontiguousarray(host).reshape(-1))
    dst = cuda.device_array(int(np.prod(shape)), dtype=host.dtype)
    blocks, tpb = backend.launch_config(dst.shape[0])
    kernels.tile[blocks, tpb](src, dst)
    return backend.as_device_array(dst).reshape(shape)


def cases(only=None):
    """(label, loss, keyword arguments) for every elementwise and softmax loss of the
    registry, and its ``from_logits=True`` variant where it has one."""
    from .._registry import LOSSES

    out = []
    for name, loss in LOSSES.items():
        if (only and name not in only) or loss.family == "pairwise":
            continue
        out.append((name, loss, {}))
        if "from_logits" in loss.params:
            out.append((f"{name}[logits]", loss, {"from_logits": True}))
    return out


def _shapes(loss, size: int, classes: int, tiny: bool):
    """(host example shape, full shape) of the differentiated inputs."""
    if loss.family == "softmax":
        rows = max(1, size // classes)
        return (min(rows, 40 if tiny else 1_000_000 // classes), classes), (rows, classes)
    cols = 10 if tiny else 1000
    rows = max(1, size // cols)
    return (min(rows, 30 if tiny else 1000), cols), (rows, cols)


def _kernel_call(loss, kwargs, inputs, grads):
    """The backend-level call of ``value_and_grad`` (kernel + partials read-back); it
    returns the loss value (for the registry's default class weights / no ignored
    label, where the mean divides by the number of rows)."""
    from . import backend

    params = loss._params(kwargs)
    if loss.family == "softmax":
        labels, z = inputs
        n, k = z.shape
        kind, kparams, class_weight, ignore_index, _ = loss.setup(params, k, "labels")
        kind = f"{kind}_labels"
        labels_f, z2, g2 = backend.flat(labels), z, grads[0]
        return lambda: backend.softmax_rows(kind, kparams, labels_f, z2, None, class_weight, ignore_index,
                                            "sum", 1.0 / n, None, g2, None)[0] / n
    if loss.family == "pointwise":
        pairs = [(0 if len(inputs) == 2 else None, len(inputs) - 1)]
        terms = [(loss.term(params), loss.factor)]
    else:
        pairs, terms = loss.pairs, loss.terms(params)
    calls = []
    for (target, pred), (term, factor), g in zip(pairs, terms, grads):
        z = backend.flat(inputs[pred])
        y = z if target is None else backend.flat(inputs[target])
        calls.append((term, y, z, factor / z.shape[0], backend.flat(g)))

    def run():
        value = 0.0
        for term, y, z, scale, g in calls:
            value += scale * backend.elementwise(term.name, term.params, term.target_domain + term.prediction_domain,
                                                 y, z, None, 1, "sum", scale, None, g, None)[0]
        return value

    return run


def pairwise_cases(only=None):
    """(name, loss) of every embedding loss of the registry."""
    from .._registry import LOSSES

    return [(name, loss) for name, loss in LOSSES.items()
            if loss.family == "pairwise" and (not only or name in only)]


# ------------------------------------------------------------------ PyTorch formulations
def _torch_loss(name, kwargs, torch, F):
    """A function of torch tensors (inputs in the order of the loss, the differentiated
    ones with requires_grad) returning the scalar loss, or None."""
    logits = kwargs.get("from_logits", False)
    eps = 1e-7

    def clip(p):
        return p.clamp(eps, 1 - eps)

    if name == "mse":
        return lambda y, z: F.mse_loss(z, y)
    if name == "huber":
        return lambda y, z: F.huber_loss(z, y, delta=1.0)
    if name == "binary_cross_entropy":
        if logits:
            return lambda y, z: F.binary_cross_entropy_with_logits(z, y)
        return lambda y, z: F.binary_cross_entropy(clip(z), y)
    if name == "focal":
        def focal(y, z, alpha=0.25, gamma=2.0):
            p = torch.sigmoid(z) if logits else clip(z)
            ce = F.binary_cross_entropy_with_logits(z, y, reduction="none") if logits else \
                F.binary_cross_entropy(p, y, reduction="none")
            p_t = p * y + (1 - p) * (1 - y)
            a_t = alpha * y + (1 - alpha) * (1 - y)
            return (a_t * (1 - p_t) ** gamma * ce).mean()
        return focal
    if name == "categorical_cross_entropy":
        if logits:
            return lambda labels, z: F.cross_entropy(z, labels)
        return lambda labels, z: F.nll_loss(torch.log(clip(z)), labels)
    if name == "categorical_focal":
        def cfocal(labels, z, gamma=2.0):
            logp = (F.log_softmax(z, dim=-1) if logits else torch.log(clip(z))).gather(1, labels[:, None])
            return -((1 - logp.exp()) ** gamma * logp).mean()
        return cfocal
    if name == "cycle_consistency":
        return lambda x, xc, y, yc: F.l1_loss(xc, x) + F.l1_loss(yc, y)
    if name == "lsgan_discriminator":
        return lambda dr, df: 0.5 * ((dr - 1.0) ** 2).mean() + 0.5 * (df ** 2).mean()
    if name == "lsgan_generator":
        return lambda df: 0.5 * ((df - 1.0) ** 2).mean()
    if name == "gan_discriminator":
        if logits:
            return lambda dr, df: 0.5 * (F.softplus(-dr).mean() + F.softplus(df).mean())
        return lambda dr, df: -0.5 * (torch.log(clip(dr)).mean() + torch.log1p(-clip(df)).mean())
    if name == "gan_generator":
        if logits:
            return lambda df: 0.5 * F.softplus(-df).mean()
        return lambda df: -0.5 * torch.log(clip(df)).mean()
    return None


def _torch_call(loss, label, kwargs, inputs):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    fn = _torch_loss(loss.name, kwargs, torch, F)
    if fn is None:
        return None
    tensors = []
    for i, a in enumerate(inputs):
        t = torch.as_tensor(a, device="cuda")  # the same memory, through __cuda_array_interface__
        if i in loss.differentiable:
            t = t.detach().requires_grad_(True)
        tensors.append(t)

    def run():
        for i in loss.differentiable:
            tensors[i].grad = None
        value = fn(*tensors)
        value.backward()
        return value.item()

    return run


# ------------------------------------------------------------------ timing
def median_seconds(fn, repeats: int) -> float:
    cuda = _cuda()
    fn()  # warm-up: compilation
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def device_copy_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes/s of a device-to-device copy (read + write) of ``nbytes``."""
    cuda = _cuda()
    n = max(1, nbytes // 4)
    src = cuda.device_array(n, dtype=np.float32)
    dst = cuda.device_array(n, dtype=np.float32)
    seconds = median_seconds(lambda: dst.copy_to_device(src), repeats)
    return 2 * 4 * n / seconds


def run(size: int = 100_000_000, dtype=np.float32, classes: int = 32, repeats: int = 10, only=None,
        tiny: bool = False, torch: bool = True, seed: int = 0, peak_gbs: float | None = None, out=None,
        rows: int = 65_536, dim: int = 128, pairwise_repeats: int = 3):
    """Benchmark every case; print the tables to ``out`` and return the rows (dicts):
    the elementwise and softmax losses at ``size`` elements, the embedding losses at
    ``rows`` × ``dim``."""
    from . import backend
    from . import pairwise
    from .. import _config

    _config.load_backend("cuda")
    cuda = _cuda()
    out = out or sys.stdout
    saved = backend.THREADS_PER_BLOCK, backend.MAX_BLOCKS, pairwise.BLOCK_ROWS
    if tiny:  # several blocks, row blocks and product tiles on tiny inputs
        backend.THREADS_PER_BLOCK, backend.MAX_BLOCKS, pairwise.BLOCK_ROWS = 32, 2, 3
    try:
        results = _run(size, np.dtype(dtype), classes, repeats, only, tiny, torch and not tiny, seed, peak_gbs,
                       out, cuda)
        results += _run_pairwise(rows, dim, np.dtype(dtype), pairwise_repeats, only, tiny, seed, out)
    finally:
        backend.THREADS_PER_BLOCK, backend.MAX_BLOCKS, pairwise.BLOCK_ROWS = saved
    return results


def _run(size, dtype, classes, repeats, only, tiny, use_torch, seed, peak_gbs, out, cuda):
    from . import backend

    rng = np.random.default_rng(seed)
    peak, device_name = peak_bandwidth()
    if peak_gbs:
        peak = peak_gbs * 1e9
    print(f"device: {device_name}; dtype {dtype.name}; {size:.3g} elements per input "
          f"(softmax: {classes} classes); threads/block {backend.THREADS_PER_BLOCK}; "
          f"median of {repeats}", file=out)
    copy_bw = None
    if not tiny:
        copy_bw = device_copy_bandwidth(4 * size, repeats)
        print(f"peak bandwidth {peak / 1e9:.0f} GB/s" if peak else "peak bandwidth unknown (--peak-gbs)",
              f"; device-to-device copy {copy_bw / 1e9:.0f} GB/s", file=out)
    header = f"{'loss':34s} {'elements':>10s} {'kernel ms':>10s} {'GB/s':>7s} {'%peak':>6s} " \
             f"{'api ms':>8s} {'torch ms':>9s} {'torch/kernel':>12s}"
    print(header, file=out)
    rows = []
    for label, loss, kwargs in cases(only):
        host_shape, shape = _shapes(loss, size, classes, tiny)
        host_inputs = loss.example(rng, host_shape, dtype)
        if kwargs.get("from_logits"):
            host_inputs = tuple((3.0 * rng.standard_normal(a.shape)).astype(dtype) if i in loss.differentiable
                                else a for i, a in enumerate(host_inputs))
        inputs = []
        for a in host_inputs:
            full = shape if a.shape == host_shape else (shape[0],) + a.shape[1:]
            inputs.append(to_device_tiled(a, full))
        grads = [backend.empty(inputs[i].shape, inputs[i].dtype) for i in loss.differentiable]
        kernel = _kernel_call(loss, kwargs, inputs, grads)
        nbytes = sum(a.size * a.dtype.itemsize for a in inputs) + sum(g.size * g.dtype.itemsize for g in grads)
        seconds = median_seconds(kernel, repeats)
        row = {"loss": label, "elements": int(inputs[loss.differentiable[0]].size), "kernel_s": seconds,
               "bytes": nbytes, "bandwidth": nbytes / seconds, "peak": peak}
        api = lambda: loss.value_and_grad(*inputs, backend="cuda",  # noqa: E731
                                          out=tuple(grads) if len(grads) > 1 else grads[0], **kwargs)
        row["api_s"] = median_seconds(api, repeats)
        if use_torch:
            fn = _torch_call(loss, label, kwargs, inputs)
            if fn is not None:
                row["torch_s"] = median_seconds(fn, repeats)
        if tiny:
            _check_against_reference(loss, kwargs, inputs, grads, kernel)
        rows.append(row)
        print(_format(row), file=out)
        del inputs, grads
    if copy_bw:
        print(f"(a device-to-device copy reaches {copy_bw / 1e9:.0f} GB/s)", file=out)
    return rows


def _run_pairwise(n_rows, dim, dtype, repeats, only, tiny, seed, out):
    """Time every embedding loss on N = ``n_rows`` rows of ``dim`` features drawn on
    the host and copied to the device once; ``tiny``: check against the reference."""
    from . import backend

    selected = pairwise_cases(only)
    if not selected:
        return []
    rng = np.random.default_rng(seed)
    print(f"embedding losses: N = {n_rows} rows of D = {dim}, {dtype.name}, value and gradients, "
          f"median of {repeats}", file=out)
    print(f"{'loss':34s} {'rows':>10s} {'kernel ms':>10s} {'api ms':>8s}", file=out)
    rows = []
    for name, loss in selected:
        host_inputs = list(loss.example(rng, (n_rows, dim), dtype))
        host_inputs += [None] * (len(loss.inputs) - len(host_inputs))
        params = loss._params({})
        n_losses = loss.validate(host_inputs, params)[1]
        inputs = [None if a is None else backend.to_device(a) for a in host_inputs]
        coef = backend.to_device(np.full(n_losses, 1.0 / max(n_losses, 1)))
        kernel = lambda: backend.pairwise(name, inputs, params, coef, True)  # noqa: E731
        api = lambda: loss.value_and_grad(*inputs, backend="cuda")  # noqa: E731
        row = {"loss": name, "rows": n_rows, "kernel_s": median_seconds(kernel, repeats),
               "api_s": median_seconds(api, repeats),
               "bytes": sum(a.size * a.dtype.itemsize for a in host_inputs if a is not None)}
        if tiny:
            value, grads = api()
            ref_value, ref_grads = loss.value_and_grad(*host_inputs, backend="numpy")
            assert math.isclose(value, ref_value, rel_tol=1e-5, abs_tol=1e-7), (name, value, ref_value)
            for g, r in zip(grads, ref_grads):
                np.testing.assert_allclose(backend.to_host(g), r, rtol=2e-5, atol=1e-6)
        rows.append(row)
        print(f"{name:34s} {n_rows:10d} {1e3 * row['kernel_s']:10.3f} {1e3 * row['api_s']:8.3f}", file=out)
    return rows


def _format(row) -> str:
    pct = f"{100 * row['bandwidth'] / row['peak']:5.1f}%" if row.get("peak") else "     -"
    api = f"{1e3 * row['api_s']:8.3f}" if "api_s" in row else f"{'-':>8s}"
    torch = f"{1e3 * row['torch_s']:9.3f}" if "torch_s" in row else f"{'-':>9s}"
    ratio = f"{row['torch_s'] / row['kernel_s']:11.1f}x" if "torch_s" in row else f"{'-':>12s}"
    return (f"{row['loss']:34s} {row['elements']:10.3g} {1e3 * row['kernel_s']:10.3f} "
            f"{row['bandwidth'] / 1e9:7.1f} {pct} {api} {torch} {ratio}")


def _check_against_reference(loss, kwargs, inputs, grads, kernel):
    """--tiny: the device results equal the NumPy reference's (a smoke test)."""
    from . import backend

    kernel_value = kernel()
    host_inputs = [backend.to_host(a) for a in inputs]
    value, ref_grads = loss.value_and_grad(*host_inputs, backend="numpy", **kwargs)
    ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
    assert math.isclose(kernel_value, value, rel_tol=1e-5, abs_tol=1e-7), (loss.name, kernel_value, value)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(backend.to_host(g), r, rtol=2e-5, atol=1e-6)
    api_value, _ = loss.value_and_grad(*inputs, backend="cuda", **kwargs)
    assert math.isclose(api_value, value, rel_tol=1e-5, abs_tol=1e-7), (loss.name, api_value, value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numbaloss._cuda.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=1e8, help="elements per input (default 1e8)")
    parser.add_argument("--classes", type=int, default=32, help="classes of the softmax losses (default 32)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", default=None, help="comma-separated loss names")
    parser.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    parser.add_argument("--peak-gbs", type=float, default=None, help="the device's peak bandwidth, GB/s")
    parser.add_argument("--rows", type=int, default=65_536, help="rows N of the embedding losses (default 65536)")
    parser.add_argument("--dim", type=int, default=128, help="features D of the embedding losses (default 128)")
    parser.add_argument("--pairwise-repeats", type=int, default=3, help="timed runs of each embedding loss")
    parser.add_argument("--tiny", action="store_true",
                        help="a few hundred elements, 32-thread blocks, results checked (simulator smoke run)")
    args = parser.parse_args(argv)
    size = 300 if args.tiny else int(args.size)
    repeats = 1 if args.tiny else args.repeats
    only = set(args.only.split(",")) if args.only else None
    run(size=size, dtype=np.dtype(args.dtype), classes=4 if args.tiny else args.classes, repeats=repeats,
        only=only, tiny=args.tiny, torch=not args.no_torch, peak_gbs=args.peak_gbs,
        rows=4 if args.tiny else args.rows, dim=3 if args.tiny else args.dim,
        pairwise_repeats=1 if args.tiny else args.pairwise_repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

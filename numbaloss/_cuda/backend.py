"""The ``cuda`` backend: numba.cuda kernels (package ``numba-cuda``), imported on first use.

Same loop interface as ``numbaloss._numba.backend`` (``elementwise``,
``softmax_rows``, ``pairwise``), same answers as the float64 reference.  The kernels
are in ``numbaloss._cuda.kernels`` (elementwise, softmax rows, helpers) and
``numbaloss._cuda.pairwise`` (the embedding losses); this module owns the launch
configuration and the movement of arrays.

Arrays
------
Every array argument may be a NumPy array or a CUDA device array (anything with
``__cuda_array_interface__``: numba device arrays, CuPy, PyTorch CUDA tensors; or
a simulator array under ``NUMBA_ENABLE_CUDASIM=1``):

* a device array is used in place, without a copy (numba's ``as_cuda_array``
  view of the same memory), including output buffers (``grad``, ``hess``,
  ``out_value``): the kernels write into the caller's memory;
* a NumPy input is copied to the device; a NumPy output buffer is filled from a
  device temporary after the kernel.

So a call with host arrays behaves exactly like the CPU backends, and a call
with device arrays never moves them (small parameter vectors, the class weights,
are copied once and cached by content).  The only device-to-host transfer of a
device call is the block partials (2 × number of blocks float64): the reduced
value and the domain flags, which the caller needs on the host anyway.

The helpers at the end (``as_device_array``, ``flat``, ``contiguous``, ``empty``,
``total``, ``dot``, ``weighted``, ``to_device``, ``to_host``, ``copy_into``,
``out_buffer``, ``label_denominator``) are what ``numbaloss._validation`` /
``numbaloss._losses`` call for device arrays (the public layer keeps them on the
device instead of ``np.asarray``-ing them).

Launch configuration
--------------------
:data:`THREADS_PER_BLOCK` (a power of two, 32..1024) is the one place that sets
the block size of every kernel; :data:`MAX_BLOCKS` caps the grid (``None``:
enough blocks to fill the device, ``2048 // THREADS_PER_BLOCK`` per
multiprocessor).  Kernels are grid-stride loops, so any grid covers any size.
Work is launched on the default stream, and every call synchronises on it (it
reads the partials back).
"""

from __future__ import annotations

import threading

import numpy as np

from .._config import BackendUnavailableError

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - exercised where numba-cuda is missing
    raise ImportError(f"numba-cuda is not installed ({exc}); pip install 'numbaloss[cuda]'") from exc

from . import kernels as _k

name = "cuda"

#: threads per block of every kernel (a power of two between 32 and 1024)
THREADS_PER_BLOCK = 256
#: the most blocks of one launch; None: ``2048 // THREADS_PER_BLOCK`` per multiprocessor
MAX_BLOCKS: int | None = None

_sm_count: int | None = None


def check_available() -> None:
    """Raise BackendUnavailableError unless numba.cuda can run kernels here (a GPU
    with a driver, or the simulator)."""
    try:
        available = cuda.is_available()
    except Exception as exc:  # pragma: no cover - broken driver installations
        raise BackendUnavailableError(f"backend 'cuda' is not available: {exc}") from exc
    if not available:
        raise BackendUnavailableError(
            "backend 'cuda' is not available: numba.cuda.is_available() is False "
            "(no CUDA GPU or driver found; NUMBA_ENABLE_CUDASIM=1 runs the simulator)"
        )


# ------------------------------------------------------------------ launching
def _threads_per_block() -> int:
    tpb = THREADS_PER_BLOCK
    if isinstance(tpb, bool) or not isinstance(tpb, int) or tpb < 32 or tpb > 1024 or tpb & (tpb - 1):
        raise ValueError(f"THREADS_PER_BLOCK must be a power of two in [32, 1024], got {tpb!r}")
    return tpb


def _multiprocessors() -> int:
    global _sm_count
    if _sm_count is None:
        try:
            _sm_count = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
        except Exception:  # the simulator's fake device has no attributes
            _sm_count = 4
    return _sm_count


def launch_config(n: int) -> tuple[int, int]:
    """(blocks, threads per block) of a grid-stride launch over ``n`` items."""
    tpb = _threads_per_block()
    cap = MAX_BLOCKS if MAX_BLOCKS is not None else _multiprocessors() * max(1, 2048 // tpb)
    return max(1, min((n + tpb - 1) // tpb, int(cap))), tpb


_local = threading.local()


def _partials(blocks: int):
    """(device buffer, pinned host buffer) of 2·blocks float64 for the block partials:
    kept per host thread and context, so that a call allocates nothing."""
    need = 2 * blocks
    context = cuda.current_context()
    cached = getattr(_local, "partials", None)
    if cached is None or cached[0] is not context or cached[1].shape[0] < need:
        size = max(need, 4096)
        cached = _local.partials = (context, cuda.device_array(size, dtype=np.float64),
                                    cuda.pinned_array(size, dtype=np.float64))
    return cached[1][:need], cached[2][:need]


def _run_reduced(kernel, n: int, args: tuple) -> tuple[float, int]:
    """Launch ``kernel(*args, partials)`` over ``n`` items; return (Σ partial sums, OR of flags)."""
    blocks, tpb = launch_config(n)
    partials, host = _partials(blocks)
    kernel[blocks, tpb, 0, 2 * tpb * 8](*args, partials)  # dynamic shared memory: 2·tpb float64
    partials.copy_to_host(host)  # synchronises with the kernel
    flags = int(np.bitwise_or.reduce(host[blocks:].astype(np.int64)))
    return float(host[:blocks].sum()), flags


# ------------------------------------------------------------------ arrays
if _k.SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _FakeCUDAArray

    class _SimulatorArray(_FakeCUDAArray):
        """A simulator device array whose host-side ``shape`` is a plain tuple, like a
        real numba device array's (the simulator's own refuses ``shape[-1]``)."""

        @property
        def shape(self):
            return tuple(self._ary.shape)

        def __getitem__(self, idx):
            return _wrap(super().__getitem__(idx))

        def reshape(self, *args, **kwargs):
            return _wrap(super().reshape(*args, **kwargs))

        def ravel(self, *args, **kwargs):
            return _wrap(super().ravel(*args, **kwargs))

        def view(self, *args, **kwargs):
            return _wrap(super().view(*args, **kwargs))

        def transpose(self, axes=None):
            return _wrap(super().transpose(axes))

        @property
        def T(self):
            return self.transpose()

    def _wrap(x):
        if isinstance(x, _FakeCUDAArray) and not isinstance(x, _SimulatorArray):
            return _SimulatorArray(x._ary, x.stream)
        return x
else:
    def _wrap(x):
        return x


def is_device_array(x) -> bool:
    """A CUDA device array: ``__cuda_array_interface__``, or a numba (simulator) device array."""
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(type(x), "__cuda_ndarray__", False))


def as_device_array(x, name: str = "array"):
    """A numba device-array view of ``x`` (no copy): ``x`` itself for numba device
    arrays, ``numba.cuda.as_cuda_array`` for CuPy arrays, torch tensors and the like."""
    if getattr(type(x), "__cuda_ndarray__", False):
        return _wrap(x)
    if hasattr(x, "__cuda_array_interface__"):
        return cuda.as_cuda_array(x)
    raise TypeError(f"{name} must be a CUDA device array, got {type(x).__name__}")


def _device_input(a):
    """A device array for a kernel input: device arrays as they are, NumPy copied over."""
    if a is None:
        return None
    if is_device_array(a):
        return as_device_array(a)
    return to_device(a)


_constants: dict = {}


def _constant(a):
    """A small read-only parameter array (class weights) on the device, cached by
    content so that repeated calls do not copy it again."""
    if is_device_array(a):
        return as_device_array(a)
    a = np.ascontiguousarray(a, dtype=np.float64)
    key = (a.shape, a.tobytes())
    d = _constants.get(key)
    if d is None:
        if len(_constants) >= 64:
            _constants.clear()
        d = _constants[key] = cuda.to_device(a)
    return d


class _Output:
    """A kernel output: the caller's device buffer itself, or a device temporary that
    :meth:`finish` copies into the caller's NumPy buffer."""

    def __init__(self, buf):
        self.host = None
        if buf is None:
            self.device = None
        elif is_device_array(buf):
            self.device = as_device_array(buf)
        else:
            self.host = buf
            self.device = cuda.device_array(buf.shape, dtype=buf.dtype)

    def finish(self):
        if self.host is not None:
            self.device.copy_to_host(self.host)


def _scalars(params) -> tuple:
    """The parameter tuple as float64s (never empty: a CUDA kernel argument cannot be ())."""
    return tuple(float(x) for x in params) or (0.0,)


def _empty_weights():
    return cuda.device_array(0, dtype=np.float64)


# ------------------------------------------------------------------ the backend contract
def elementwise_args(mode, params, bounds, y, z, w, m, scale, out_value, grad, hess) -> tuple:
    """(kernel name, argument tuple without the partials) of one elementwise call on
    device arrays ``y``, ``z``, ``w`` (None: no weights), outputs as given.  The
    PTX tests build their signatures with this same function."""
    n = z.shape[0]
    if w is None:
        w, m = _empty_weights(), max(n, 1)
    p = _scalars(params)
    b = tuple(float(x) for x in bounds)
    if mode == "sum":
        want_grad = grad is not None
        return "value_sum", (y, z, w, int(m), p, b, float(scale), want_grad, grad if want_grad else z)
    if mode == "grad":
        return "grad_only", (y, z, w, int(m), p, b, float(scale), grad)
    if mode == "none":
        want_grad = grad is not None
        return "value_none", (y, z, w, int(m), p, b, float(scale), out_value, want_grad,
                              grad if want_grad else out_value)
    if mode == "grad_hess":
        return "grad_and_hess", (y, z, w, int(m), p, b, grad, hess)
    raise ValueError(f"unknown mode {mode!r}")


def elementwise(term, params, bounds, y, z, w, m, mode, scale, out_value, grad, hess):
    """Run one elementwise kernel over flat contiguous ``y``, ``z``.

    mode "sum": returns (Σ wᵢ·l, flags) and fills ``grad`` with scale·wᵢ·l′ if given;
    "grad": fills ``grad``; "none": fills ``out_value`` with scale·wᵢ·l (and ``grad``);
    "grad_hess": fills ``grad`` and ``hess`` with wᵢ·l′, wᵢ·l″.
    Returns (total or 0.0, domain flags).  Arrays: NumPy or device (module docstring).
    """
    if mode not in ("sum", "grad", "none", "grad_hess"):
        raise ValueError(f"unknown mode {mode!r}")
    n = z.shape[0]
    if n == 0:
        return 0.0, 0
    outputs = [_Output(b) for b in (out_value, grad, hess)]
    z_d = _device_input(z)
    y_d = z_d if y is z else _device_input(y)  # constant-target terms pass z as y
    w_d = _device_input(w)
    kernel_name, args = elementwise_args(mode, params, bounds, y_d, z_d, w_d, m, scale,
                                         *(o.device for o in outputs))
    kernel = _k.compiled("elementwise", term, kernel_name)
    total, flags = _run_reduced(kernel, n, args)
    for o in outputs:
        o.finish()
    return (total if mode == "sum" else 0.0), flags


def softmax_args(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess,
                 alloc=None) -> tuple:
    """The argument tuple (without the partials) of one softmax-row kernel call on
    device arrays; ``alloc(shape, dtype)`` makes the empty placeholders (default
    ``cuda.device_array``).  The PTX tests build their signatures with this same
    function."""
    if alloc is None:
        def alloc(shape, dtype):
            return cuda.device_array(shape, dtype=dtype)
    k = z.shape[1]
    if w is None:
        w = alloc(0, np.float64)
    dummy_rows = None
    if grad is None or hess is None:
        dummy_rows = alloc((0, k), z.dtype)
    has_ignore = ignore_index is not None
    ignore = np.int64(ignore_index if has_ignore else 0)
    write_values = mode == "none"
    values = out_value if write_values else alloc(0, z.dtype)
    want_grad = grad is not None
    want_hess = mode == "grad_hess"
    return (y, z, w, class_weight, _scalars(params), has_ignore, ignore, float(scale), write_values, values,
            want_grad, grad if want_grad else dummy_rows, want_hess, hess if want_hess else dummy_rows)


def softmax_rows(kind, params, y, z, w, class_weight, ignore_index, mode, scale, out_value, grad, hess):
    """Run one row-wise softmax kernel (one thread per row) over ``z`` of shape (n, K);
    targets ``y`` are labels (n,) or dense rows (n, K).  Same contract as
    ``numbaloss._numba.backend.softmax_rows``; arrays NumPy or device."""
    if mode not in ("sum", "none", "grad_hess", "grad"):
        raise ValueError(f"unknown mode {mode!r}")
    n = z.shape[0]
    if n == 0:
        return 0.0, 0
    if z.shape[1] == 0:  # no class: every label is out of range, dense rows have no term
        if kind.endswith("labels"):
            labels = to_host(y) if is_device_array(y) else np.asarray(y)
            keep = labels != ignore_index if ignore_index is not None else np.ones(n, bool)
            if keep.any():
                return 0.0, _k.BAD_LABEL
        if mode == "none":
            fill(out_value, 0.0)
        return 0.0, 0
    outputs = [_Output(b) for b in (out_value, grad, hess)]
    y_d, z_d, w_d = _device_input(y), _device_input(z), _device_input(w)
    cw_d = _constant(class_weight)
    args = softmax_args(kind, params, y_d, z_d, w_d, cw_d, ignore_index, mode, scale,
                        *(o.device for o in outputs))
    total, flags = _run_reduced(_k.compiled("softmax", kind, "softmax_rows"), n, args)
    for o in outputs:
        o.finish()
    return (total if mode == "sum" else 0.0), flags


def pairwise(name, inputs, params, coef, need_grad):
    """(per-sample losses, gradients of Σ coefᵢ·lossᵢ) of an embedding loss, computed
    by ``numbaloss._cuda.pairwise``; same contract as the numba backend's
    ``pairwise``.  Host inputs give host results (copied back); with any device
    input the losses and gradients stay on the device."""
    from . import pairwise as _pairwise

    on_device = any(is_device_array(a) for a in inputs if a is not None)
    device_inputs = [_device_input(a) for a in inputs]
    coef = _device_input(coef) if is_device_array(coef) else cuda.to_device(np.asarray(coef, np.float64))
    losses, grads = getattr(_pairwise, name)(*device_inputs, **params, coef=coef, need_grad=need_grad)
    if on_device:
        return losses, grads
    return losses.copy_to_host(), None if grads is None else tuple(g.copy_to_host() for g in grads)


#: the loss families this backend has loops for (``elementwise``, ``softmax_rows``,
#: ``pairwise``: every family of the numba backend)
FAMILIES = ("pointwise", "two_term", "softmax", "pairwise")


# ------------------------------------------------- device-array helpers for the public layer
def _copy_flat(dst, src) -> None:
    """dst (1-D contiguous, ``src.size`` items) = src in C order, with a dtype cast;
    ``src`` any layout."""
    if src.ndim == 0:
        src = src.reshape(1)
    kernel = _k.COPY_KERNELS.get(src.ndim)
    if kernel is None:  # more axes: one launch per index of the first axis
        inner = src.size // src.shape[0] if src.shape[0] else 0
        for i in range(src.shape[0]):
            _copy_flat(dst[i * inner:(i + 1) * inner], src[i])
        return
    n = dst.shape[0]
    if n:
        blocks, tpb = launch_config(n)
        kernel[blocks, tpb](src, dst)


def contiguous(arr, dtype=None):
    """A C-contiguous device array of ``dtype`` with ``arr``'s shape and values
    (``arr`` itself when it already is one)."""
    arr = as_device_array(arr)
    dtype = arr.dtype if dtype is None else np.dtype(dtype)
    if arr.dtype == dtype and arr.is_c_contiguous():
        return arr
    out = _wrap(cuda.device_array(tuple(arr.shape), dtype=dtype))
    if out.size:
        _copy_flat(out.reshape(out.size), arr)
    return out


def flat(arr, dtype=None):
    """A contiguous 1-D device array of ``arr`` (a copy only when it is not
    contiguous or not of ``dtype``): the device twin of ``_validation.flat``."""
    arr = contiguous(arr, dtype)
    return arr.reshape(arr.size)


def empty(shape, dtype):
    """An uninitialised device array."""
    return _wrap(cuda.device_array(shape, dtype=np.dtype(dtype)))


def fill(arr, value) -> None:
    """arr[...] = value, on the device or the host."""
    if not is_device_array(arr):
        arr[...] = value
        return
    arr = as_device_array(arr)
    host = np.full(tuple(arr.shape), value, dtype=arr.dtype)
    arr.copy_to_device(host)


def total(arr) -> float:
    """Σ arr in float64, on the device (``float(arr.sum())`` of a NumPy array)."""
    x = flat(arr)
    if x.shape[0] == 0:
        return 0.0
    return _run_reduced(_k.sum_kernel, x.shape[0], (x,))[0]


def dot(a, b) -> float:
    """Σ a·b in float64 (a weighted sum of per-sample losses), on the device."""
    a, b = flat(_device_input(a)), flat(_device_input(b))
    if a.shape[0] == 0:
        return 0.0
    return _run_reduced(_k.dot_kernel, a.shape[0], (a, b))[0]


def weighted(values, weights, dtype):
    """values·weights (1-D; ``weights`` None: values) as a new device array of ``dtype``."""
    values = flat(values)
    weights = _empty_weights() if weights is None else flat(_device_input(weights))
    out = empty(values.shape[0], dtype)
    if values.shape[0]:
        blocks, tpb = launch_config(values.shape[0])
        _k.weighted_values[blocks, tpb](values, weights, out)
    return out


def to_device(arr):
    """A device copy of a NumPy array (host inputs of a call that has device arrays)."""
    return _wrap(cuda.to_device(np.ascontiguousarray(arr)))


def to_host(arr) -> np.ndarray:
    """A NumPy copy of a device array (error messages, tests)."""
    return contiguous(arr).copy_to_host()


def copy_into(target, src) -> None:
    """target[...] = src with a dtype cast (float16 results), either on the device."""
    if not is_device_array(target):
        target[...] = to_host(src) if is_device_array(src) else src
        return
    target = as_device_array(target)
    src = _device_input(src)
    if target.size:
        _copy_flat(target.reshape(target.size), src)


def out_buffer(name: str, out, shape: tuple, dtype) -> object:
    """Check a caller's device gradient buffer: shape, dtype, writeable, C-contiguous;
    return a numba view of it (the kernels then write into the caller's memory)."""
    readonly = False
    interface = getattr(out, "__cuda_array_interface__", None)
    if interface is not None:
        readonly = bool(interface.get("data", (0, False))[1])
    arr = as_device_array(out, name)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    if arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if readonly:
        raise ValueError(f"{name} must be writeable")
    if not arr.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    return arr


def label_denominator(labels, weights, class_weight, ignore_index, n_classes) -> tuple[float, bool]:
    """(Σᵢ wᵢ·c_{yᵢ} over the rows not ignored, whether a label is outside [0, K)) on
    the device: the weighted-mean divisor of integer-label cce, without copying the
    labels to the host."""
    labels = flat(labels)
    n = labels.shape[0]
    if n == 0:
        return 0.0, False
    w = _device_input(weights) if weights is not None else _empty_weights()
    cw = _constant(class_weight)
    has_ignore = ignore_index is not None
    total_weight, flags = _run_reduced(
        _k.label_weight_sum, n, (labels, w, cw, has_ignore, np.int64(ignore_index if has_ignore else 0))
    )
    return total_weight, bool(flags & _k.BAD_LABEL)


__all__ = [
    "MAX_BLOCKS", "THREADS_PER_BLOCK", "as_device_array", "check_available", "contiguous", "copy_into", "dot",
    "elementwise", "empty", "flat", "is_device_array", "label_denominator", "launch_config", "name",
    "out_buffer", "pairwise", "softmax_rows", "to_device", "to_host", "total", "weighted", "FAMILIES",
]

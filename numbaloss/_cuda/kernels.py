"""numba.cuda kernels of the elementwise and softmax losses.

The kernels are written once per loss *shape* and specialised per term, like the
CPU loops of ``numbaloss._numba``:

* the math is not copied: an elementwise kernel calls the term's point functions
  ``<term>_value_grad`` / ``<term>_grad_hess`` of ``numbaloss._numba.points``, a
  softmax kernel calls the row function ``<kind>`` of ``numbaloss._numba.softmax``
  (a numba.cuda kernel may call an ``@njit`` function: numba-cuda compiles its
  Python source for the GPU);
* :func:`specialise` makes, per term / kind, a copy of each generic kernel body
  whose globals bind ``value_grad``, ``grad_hess`` or ``row`` to those functions
  (the same device as ``numbaloss._numba._specialise`` on the CPU);
  :func:`compiled` wraps the copy in ``cuda.jit``, which compiles it lazily once
  per argument signature (that is, per dtype) and keeps it.

CUDA's own exp/log
------------------
The point functions are shared, but the elementary functions they call need
not be.  The CPU side may replace ``math.exp``/``math.log``/``math.log1p`` in
``points.py`` by the branch-free polynomials of ``numbaloss._numba.fastmath``
(vectorisable on the CPU); on the GPU the hardware/libdevice versions are better.
So the kernels never call the point functions of ``points.py`` directly: they
call *rebound copies* (:func:`rebind`).  Every ``@njit`` function defined in
``points.py`` (and ``softmax.py``) is copied with a globals dictionary in which

* every object listed in :data:`CUDA_MATH` -- by identity, whatever name the
  module imported it under -- is replaced by its CUDA variant
  (``fastmath.exp`` -> ``math.exp``, which numba-cuda lowers to libdevice's
  ``__nv_exp``; ``fastmath.softplus`` -> a ``math``-based softplus; ...);
* a reference to the ``fastmath`` module itself (``fm.exp(x)`` style) is
  replaced by :data:`cuda_fastmath`, a module object with the same names;
* the other ``@njit`` functions of the module are the rebound copies, so a
  point function calling a helper (``_clip``, ``_focal_parts_logits``) reaches
  the rebound helper.

The copies are ``inline="always"`` whatever the originals are (``points.py``
keeps its functions out of line on the CPU so that a ``fastmath`` loop does not
reassociate them; the CUDA kernels use no fastmath flags).  Inlining at Numba's
level is also what lets ``cuda.compile_ptx(..., cc=(9, 0))`` compile them
without a GPU: numba-cuda compiles a separate device function for the current
device's compute capability.

While ``points.py`` uses ``math`` directly the rebinding changes nothing; if it
switches to ``fastmath`` the CUDA kernels keep libdevice.  (The
fastmath functions do compile for CUDA -- their bit-casts are plain LLVM IR --
but they are written for CPU SIMD, not for the GPU.)  A new CPU-only function
is supported by adding its CUDA variant to :data:`CUDA_MATH`.

Reductions
----------
Grid-stride loops; every thread accumulates its elements' loss in float64 and
OR-s its domain flags; each block then reduces both in shared memory (dynamic
shared memory of 2·``blockDim.x`` float64, so the block size is a launch
parameter, not a compile-time constant; it must be a power of two) and its
thread 0 writes the block's partial sum to ``partials[block]`` and its flags to
``partials[gridDim + block]``.  The host adds the ``gridDim`` partials (a small
second pass, deterministic run to run, unlike float64 atomics).  Kernels that
write no value still report flags the same way.

Under the simulator
-------------------
Kernels run as Python threads.  The scalar point functions stay CPU-compiled
(Numba's float semantics), but the softmax row functions, which take arrays,
run as plain Python (the simulator's array objects cannot be passed to a
compiled CPU function), where ``math.log(0.0)`` raises instead of returning
``-inf``: keep simulator tests to moderate logits.
"""

from __future__ import annotations

import math
import types as _pytypes

from numba import cuda, float64, int64, njit
from numba.core.dispatcher import Dispatcher

from .._numba import points as _points
from .._term_variants import SPECIAL_CASES
from .._numba import softmax as _softmax

try:  # the CPU polynomial math, if present (the CUDA kernels map it back to libdevice)
    from .._numba import fastmath as _fastmath
except ImportError:  # pragma: no cover
    _fastmath = None

try:
    from numba.cuda.core import config as _cuda_config
except ImportError:  # pragma: no cover - older numba-cuda
    from numba import config as _cuda_config

#: True under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run as Python.
SIMULATOR = bool(getattr(_cuda_config, "ENABLE_CUDASIM", False))

BAD_LABEL = 4


@njit(inline="always")
def _domain_flags(y, z, bounds):
    """Bit 1: y outside [bounds[0], bounds[1]]; bit 2: z outside [bounds[2], bounds[3]]
    (NaN sets neither, as on the CPU)."""
    bad_y = 1 if (y < bounds[0]) | (y > bounds[1]) else 0
    bad_z = 2 if (z < bounds[2]) | (z > bounds[3]) else 0
    return bad_y | bad_z


# ------------------------------------------------------------ CUDA variants of the math
@njit(inline="always")
def _softplus(x):
    x = float64(x)
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(inline="always")
def _sigmoid(x):
    x = float64(x)
    e = math.exp(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@njit(inline="always")
def _log_sigmoid(x):
    x = float64(x)
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


@njit(inline="always")
def _add(a, b):
    return a + b


_CUDA_MATH_BY_NAME = {
    "exp": math.exp,
    "log": math.log,
    "log1p": math.log1p,
    "softplus": _softplus,
    "sigmoid": _sigmoid,
    "log_sigmoid": _log_sigmoid,
    "reassoc_add": _add,
}

#: a module object with the CUDA variants, standing in for ``fastmath`` itself
cuda_fastmath = _pytypes.ModuleType("numbaloss._cuda.cuda_fastmath")
cuda_fastmath.__dict__.update(_CUDA_MATH_BY_NAME)

#: (CPU object, CUDA replacement) pairs, matched by identity in :func:`rebind`
CUDA_MATH: list[tuple[object, object]] = []
if _fastmath is not None:
    CUDA_MATH.append((_fastmath, cuda_fastmath))
    for _name, _replacement in _CUDA_MATH_BY_NAME.items():
        if hasattr(_fastmath, _name):
            CUDA_MATH.append((getattr(_fastmath, _name), _replacement))


def rebind(module, replacements=None, compile_copies: bool = True) -> dict:
    """Copies of the ``@njit`` functions defined in ``module``, in one shared
    globals dictionary where every object of ``replacements`` (default
    :data:`CUDA_MATH`) is swapped, by identity, for its CUDA variant.

    Returns that dictionary (name -> rebound function or original global).
    ``compile_copies=False`` gives plain Python functions (the CUDA simulator
    runs kernels as Python and cannot pass its array objects to a compiled
    CPU function).
    """
    pairs = CUDA_MATH if replacements is None else replacements
    namespace = dict(module.__dict__)
    for key, value in module.__dict__.items():
        for cpu_object, cuda_object in pairs:
            if value is cpu_object:
                namespace[key] = cuda_object
                break
    for key, value in module.__dict__.items():
        if isinstance(value, Dispatcher) and getattr(value.py_func, "__module__", None) == module.__name__:
            fn = value.py_func
            copy = _pytypes.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
            copy.__qualname__ = fn.__qualname__
            copy.__module__ = fn.__module__
            copy.__doc__ = fn.__doc__
            # inlined at Numba's IR level into the kernel: numba-cuda compiles a call to
            # a separate device function for the *current* GPU (cuda.compile_ptx(...,
            # cc=...) then needs a GPU); the kernels are compiled without fastmath, so
            # the inlined math keeps strict IEEE semantics.
            options = {k: v for k, v in value.targetoptions.items() if k != "nopython"}
            options["inline"] = "always"
            namespace[key] = njit(**options)(copy) if compile_copies else copy
    return namespace


_rebound: dict[str, dict] = {}


def _module_namespace(which: str) -> dict:
    ns = _rebound.get(which)
    if ns is None:
        if which == "points":
            # scalar functions: keep them compiled even under the simulator (exact
            # Numba float semantics: no Python OverflowError / ZeroDivisionError)
            ns = rebind(_points)
        else:
            ns = rebind(_softmax, compile_copies=not SIMULATOR)
        _rebound[which] = ns
    return ns


# ------------------------------------------------------------------ block reduction
def _block_reduce(buf, acc, found, partials):
    """Reduce ``acc`` (float64 sum) and ``found`` (OR of the flag bits) over the block
    in shared memory ``buf`` (2·blockDim float64: sums, then flags); thread 0 writes
    partials[block] and partials[gridDim + block]."""
    tid = cuda.threadIdx.x
    half = cuda.blockDim.x
    buf[tid] = acc
    buf[half + tid] = found
    cuda.syncthreads()
    step = half // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
            buf[half + tid] = int64(buf[half + tid]) | int64(buf[half + tid + step])
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        partials[cuda.blockIdx.x] = buf[0]
        partials[cuda.gridDim.x + cuda.blockIdx.x] = buf[half]


# An ``@njit`` function, not a ``cuda.jit(device=True)`` one: numba-cuda compiles a
# call to a CUDA device dispatcher for the *current* device, which needs a GPU even
# in ``cuda.compile_ptx(..., cc=...)``; an ``@njit`` function is compiled for the
# caller's target and cc.  The simulator needs the CUDA device function (it swaps
# in its fake ``cuda`` module for the call).
block_reduce = cuda.jit(device=True)(_block_reduce) if SIMULATOR else njit(inline="always")(_block_reduce)


# -------------------------------------------- elementwise kernels (generic bodies)
# ``value_grad`` / ``grad_hess`` are bound per term by ``specialise``.  Sample
# weights are one per row of ``m`` consecutive elements; ``w`` is empty when there
# are none.  ``bounds = (y_lo, y_hi, z_lo, z_hi)``; ``p`` the term's parameters.


def value_sum(y, z, w, m, p, bounds, scale, want_grad, grad, partials):
    """Σ wᵢ·l over all elements (partials); grad = scale·wᵢ·l′ when want_grad."""
    buf = cuda.shared.array(0, float64)
    n = z.shape[0]
    weighted = w.shape[0] > 0
    acc = 0.0
    found = 0
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        yy = float64(y[e])
        zz = float64(z[e])
        found |= domain_flags(yy, zz, bounds)
        value, derivative = value_grad(yy, zz, p)
        wi = w[e // m] if weighted else 1.0
        acc += wi * value
        if want_grad:
            grad[e] = scale * wi * derivative
    block_reduce(buf, acc, found, partials)


def grad_only(y, z, w, m, p, bounds, scale, grad, partials):
    """grad = scale·wᵢ·l′ (the value's math is dead code here and compiled away)."""
    buf = cuda.shared.array(0, float64)
    n = z.shape[0]
    weighted = w.shape[0] > 0
    found = 0
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        yy = float64(y[e])
        zz = float64(z[e])
        found |= domain_flags(yy, zz, bounds)
        wi = w[e // m] if weighted else 1.0
        grad[e] = scale * wi * value_grad(yy, zz, p)[1]
    block_reduce(buf, 0.0, found, partials)


def value_none(y, z, w, m, p, bounds, scale, out, want_grad, grad, partials):
    """out = scale·wᵢ·l per element, and grad = scale·wᵢ·l′ when want_grad."""
    buf = cuda.shared.array(0, float64)
    n = z.shape[0]
    weighted = w.shape[0] > 0
    found = 0
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        yy = float64(y[e])
        zz = float64(z[e])
        found |= domain_flags(yy, zz, bounds)
        value, derivative = value_grad(yy, zz, p)
        s = scale * (w[e // m] if weighted else 1.0)
        out[e] = s * value
        if want_grad:
            grad[e] = s * derivative
    block_reduce(buf, 0.0, found, partials)


def grad_and_hess(y, z, w, m, p, bounds, grad, hess, partials):
    """grad = wᵢ·l′, hess = wᵢ·l″ per element."""
    buf = cuda.shared.array(0, float64)
    n = z.shape[0]
    weighted = w.shape[0] > 0
    found = 0
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        yy = float64(y[e])
        zz = float64(z[e])
        found |= domain_flags(yy, zz, bounds)
        wi = w[e // m] if weighted else 1.0
        derivative, second = grad_hess(yy, zz, p)
        grad[e] = wi * derivative
        hess[e] = wi * second
    block_reduce(buf, 0.0, found, partials)


ELEMENTWISE = (value_sum, grad_only, value_none, grad_and_hess)


# ------------------------------------------------ softmax kernel (generic body)
def softmax_rows(target, z, w, cw, p, has_ignore, ignore_index, scale, write_values, out_value,
                 want_grad, grad, want_hess, hess, partials):
    """One thread per row: Σᵢ wᵢ·lᵢ (partials), out_value[i] = scale·wᵢ·lᵢ when
    ``write_values``, grad/hess rows = scale·wᵢ·l′ / scale·wᵢ·l″ when wanted; ``row``
    is the kind's row function of ``numbaloss._numba.softmax``."""
    buf = cuda.shared.array(0, float64)
    n = z.shape[0]
    weighted = w.shape[0] > 0
    acc = 0.0
    found = 0
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        wi = w[i] if weighted else 1.0
        loss, status = row(target, i, z, cw, p, has_ignore, ignore_index, scale * wi,
                           want_grad, grad, want_hess, hess)
        found |= status
        acc += wi * loss
        if write_values:
            out_value[i] = scale * wi * loss
    block_reduce(buf, acc, found, partials)


# ------------------------------------------------------------- specialisation
def specialise(kernel, tag: str, bound: dict):
    """A copy of the Python function ``kernel`` named ``<kernel>__<tag>`` whose globals
    also hold ``bound`` (the term's point functions or the kind's row function)."""
    name = f"{kernel.__name__}__{tag}"
    namespace = dict(kernel.__globals__)
    namespace.update(bound)
    fn = _pytypes.FunctionType(kernel.__code__, namespace, name, kernel.__defaults__)
    fn.__qualname__ = name
    fn.__module__ = kernel.__module__
    fn.__doc__ = kernel.__doc__
    return fn


def term_functions(term: str) -> dict:
    """The rebound point functions of one elementwise term (``grad_hess`` only when
    the term has one)."""
    ns = _module_namespace("points")
    bound = {"value_grad": ns[f"{term}_value_grad"], "domain_flags": _domain_flags}
    if f"{term}_grad_hess" in ns:
        bound["grad_hess"] = ns[f"{term}_grad_hess"]
    return bound


def elementwise_pyfuncs(term: str) -> dict:
    """{kernel name: specialised Python function} for one term (to ``cuda.jit`` or to
    ``cuda.compile_ptx``)."""
    bound = term_functions(term)
    return {k.__name__: specialise(k, term, bound) for k in ELEMENTWISE
            if k is not grad_and_hess or "grad_hess" in bound}


def softmax_pyfunc(kind: str):
    """The specialised softmax-row kernel of one kind, as a Python function."""
    ns = _module_namespace("softmax")
    return specialise(softmax_rows, kind, {"row": ns[kind]})


_compiled: dict = {}


def compiled(family: str, key: str, kernel_name: str):
    """The ``cuda.jit`` dispatcher of one specialised kernel, made once per
    (term or kind, kernel); it compiles once per argument signature (dtype)."""
    cache_key = (family, key, kernel_name)
    fn = _compiled.get(cache_key)
    if fn is None:
        if family == "elementwise":
            pyfuncs = elementwise_pyfuncs(key)
            for name, pyfunc in pyfuncs.items():
                _compiled[(family, key, name)] = cuda.jit(pyfunc)
        else:
            _compiled[cache_key] = cuda.jit(softmax_pyfunc(key))
        fn = _compiled[cache_key]
    return fn


# ------------------------------------------------------------- helper kernels
@cuda.jit
def sum_kernel(x, partials):
    """Σ x (float64) over a 1-D array, as block partials."""
    buf = cuda.shared.array(0, float64)
    acc = 0.0
    for e in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc += float64(x[e])
    block_reduce(buf, acc, 0, partials)


@cuda.jit
def dot_kernel(a, b, partials):
    """Σ a·b (float64) over two 1-D arrays, as block partials."""
    buf = cuda.shared.array(0, float64)
    acc = 0.0
    for e in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        acc += float64(a[e]) * float64(b[e])
    block_reduce(buf, acc, 0, partials)


@cuda.jit
def weighted_values(values, weights, out):
    """out = values·weights elementwise (``weights`` empty: out = values), with a cast."""
    weighted = weights.shape[0] > 0
    for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[e] = values[e] * (weights[e] if weighted else 1.0)


@cuda.jit
def label_weight_sum(labels, w, cw, has_ignore, ignore_index, partials):
    """Σᵢ wᵢ·c_{yᵢ} over the rows whose label is not ``ignore_index`` (PyTorch's
    weighted-mean divisor), flag BAD_LABEL for a label outside [0, K)."""
    buf = cuda.shared.array(0, float64)
    k = cw.shape[0]
    weighted = w.shape[0] > 0
    acc = 0.0
    found = 0
    for i in range(cuda.grid(1), labels.shape[0], cuda.gridsize(1)):
        label = labels[i]
        if has_ignore and label == ignore_index:
            continue
        if label < 0 or label >= k:
            found |= BAD_LABEL
            continue
        acc += cw[label] * (w[i] if weighted else 1.0)
    block_reduce(buf, acc, found, partials)


# Strided (any layout) to contiguous copies with a dtype cast, by number of axes;
# more axes are handled by the host looping over the first axis.
@cuda.jit
def copy1(src, dst):
    for e in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[e] = src[e]


@cuda.jit
def copy2(src, dst):
    n1 = src.shape[1]
    for e in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[e] = src[e // n1, e % n1]


@cuda.jit
def copy3(src, dst):
    n1 = src.shape[1]
    n2 = src.shape[2]
    for e in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        i = e // (n1 * n2)
        r = e - i * (n1 * n2)
        dst[e] = src[i, r // n2, r % n2]


COPY_KERNELS = {1: copy1, 2: copy2, 3: copy3}


@cuda.jit
def tile(src, dst):
    """dst[i] = src[i mod len(src)] (1-D): the benchmark's large inputs from a small draw."""
    n = src.shape[0]
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i % n]


def all_elementwise_terms() -> list[str]:
    """Every term that has point functions in ``points.py``, except the CPU loops'
    replacements for special parameter values (``numbaloss._term_variants``): the
    kernels here run the general terms."""
    cpu_only = {replacement for _, _, replacement in SPECIAL_CASES.values()}
    return sorted(name[: -len("_value_grad")] for name in dir(_points)
                  if name.endswith("_value_grad") and not name.startswith("_")
                  and name[: -len("_value_grad")] not in cpu_only)


def all_softmax_kinds() -> tuple:
    return tuple(_softmax.KINDS)


__all__ = [
    "CUDA_MATH", "ELEMENTWISE", "block_reduce", "compiled", "cuda_fastmath", "elementwise_pyfuncs",
    "rebind", "softmax_pyfunc", "specialise", "term_functions",
]

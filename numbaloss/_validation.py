"""Input checking and conversion shared by every loss and backend.

Every error names the argument, what was expected and what was received.
Checks that need the data itself (probabilities in [0, 1], labels in range) are
done inside the kernels in the same pass as the loss; the kernels report what
they found as bit flags and :func:`raise_domain_error` turns them into messages.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

REDUCTIONS = ("mean", "sum", "none")

# Bit flags the kernels return when a data value is outside its domain.
BAD_TARGET = 1
BAD_PREDICTION = 2
BAD_LABEL = 4

_NUMERIC_KINDS = "fiub"


def as_array(name: str, x) -> np.ndarray:
    """Convert an input to an ndarray, rejecting dtypes no loss can use.

    Float, integer and bool arrays are accepted (integers and bools are targets,
    labels or exact predictions); complex, object, string and time dtypes raise
    TypeError.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if x is None:
            raise TypeError(f"{name} must be an array, got None")
        if isinstance(x, (str, bytes, dict, set)):
            raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}")
        if is_device(x):  # kept on the device: a numba view of the same memory
            arr = _cuda().as_device_array(x, name)
        else:
            try:
                arr = np.asarray(x)
            except (ValueError, TypeError) as exc:
                # NumPy's wording varies by version: it stays in the chained exception
                raise TypeError(f"{name} could not be converted to a numeric array (numpy.asarray raised "
                                f"{type(exc).__name__}, e.g. for a ragged nested list), got "
                                f"{type(x).__name__}") from exc
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{name} must be a float, integer or bool array, got dtype {arr.dtype}")
    return arr


# ------------------------------------------------------------------ device arrays
# A device array (see ``is_device``) stays on the device: the helpers below take a
# NumPy array or a device array and do the same thing where the array lives (the
# device side is in ``numbaloss._cuda.backend``).  The host branch comes first and
# is what the host path always took.


def is_device(x) -> bool:
    """Whether ``x`` is a CUDA device array: a numba device array (also the
    simulator's, which wraps host memory), or an object exposing
    ``__cuda_array_interface__`` and no ``__array_interface__`` (CuPy arrays,
    PyTorch CUDA tensors)."""
    if x is None or isinstance(x, np.ndarray):
        return False
    if getattr(type(x), "__cuda_ndarray__", False):
        return True
    return hasattr(x, "__cuda_array_interface__") and not hasattr(x, "__array_interface__")


def any_device(arrays) -> bool:
    """Whether any of ``arrays`` (None entries allowed) is a device array."""
    return any(is_device(a) for a in arrays)


def _cuda():
    from . import _config

    return _config.load_backend("cuda")


def to_device(arr):
    """``arr`` on the device: device arrays as they are, NumPy arrays copied over."""
    return arr if arr is None or is_device(arr) else _cuda().to_device(arr)


def to_host(arr) -> np.ndarray:
    """A NumPy array of ``arr`` (device arrays copied back: error messages only)."""
    return _cuda().to_host(arr) if is_device(arr) else np.asarray(arr)


def contiguous(arr, dtype=None):
    """A C-contiguous array of ``dtype`` with ``arr``'s values (``arr`` itself when it
    already is one), where ``arr`` lives."""
    if isinstance(arr, np.ndarray):
        return np.ascontiguousarray(arr, dtype=dtype)
    return _cuda().contiguous(arr, dtype)


def empty(shape, dtype, on_device: bool):
    """An uninitialised array, on the device when ``on_device``."""
    return _cuda().empty(shape, dtype) if on_device else np.empty(shape, dtype=dtype)


def total(arr) -> float:
    """Σ arr as a Python float (summed on the device for a device array)."""
    return float(arr.sum()) if isinstance(arr, np.ndarray) else _cuda().total(arr)


def cast(arr, dtype):
    """``arr`` converted to ``dtype`` (a new array), where ``arr`` lives."""
    return arr.astype(dtype) if isinstance(arr, np.ndarray) else _cuda().contiguous(arr, dtype)


def copy_into(target, src) -> None:
    """target[...] = src with a dtype cast; either may be on the device."""
    if isinstance(target, np.ndarray) and isinstance(src, np.ndarray):
        target[...] = src
    else:
        _cuda().copy_into(target, src)


def compute_dtype(*arrays: np.ndarray) -> np.dtype:
    """The dtype a loss computes in: ``np.result_type`` of the float inputs.

    Integer and bool inputs do not promote it; float16 computes in float32; with
    no float input it is float64.
    """
    floats = [a.dtype for a in arrays if a is not None and a.dtype.kind == "f"]
    if not floats:
        return np.dtype(np.float64)
    dtype = np.result_type(*floats)
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype not in (np.float32, np.float64):  # longdouble: compute in float64
        return np.dtype(np.float64)
    return dtype


def result_dtype(*arrays: np.ndarray) -> np.dtype:
    """The dtype returned to the caller: float16 stays float16."""
    floats = [a.dtype for a in arrays if a is not None and a.dtype.kind == "f"]
    if floats and np.result_type(*floats) == np.float16:
        return np.dtype(np.float16)
    return compute_dtype(*arrays)


def flat(arr: np.ndarray, dtype=None) -> np.ndarray:
    """A contiguous 1-D view of ``arr`` (a copy only when it is not contiguous
    or not of ``dtype``)."""
    if not isinstance(arr, np.ndarray):
        return _cuda().flat(arr, dtype)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return np.ascontiguousarray(arr).reshape(-1)


def check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {name_a}.shape={a.shape} "
            f"and {name_b}.shape={b.shape}"
        )


def check_ndim(name: str, arr: np.ndarray, allowed: tuple[int, ...]) -> None:
    if arr.ndim not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")


def check_reduction(reduction) -> str:
    if not (isinstance(reduction, str) and reduction in REDUCTIONS):
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def sample_weights(sample_weight, n_rows: int, name_of_rows: str) -> np.ndarray | None:
    """Validate ``sample_weight`` of shape (n_rows,); return float64 contiguous or None
    (on the device for a device array)."""
    if sample_weight is None:
        return None
    w = as_array("sample_weight", sample_weight)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(
            f"sample_weight must have shape ({n_rows},), one weight per row of "
            f"{name_of_rows}, got shape {w.shape}"
        )
    return contiguous(w, np.float64)


def scalar(name: str, value, *, low=None, low_open=False, high=None, high_open=False) -> float:
    """A finite real number inside the given bounds, as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        op = "<" if high_open else "<="
        raise ValueError(f"{name} must be {op} {high}, got {value}")
    return value


def positive(name, value):
    return scalar(name, value, low=0.0, low_open=True)


def non_negative(name, value):
    return scalar(name, value, low=0.0)


def boolean(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def label_smoothing(name, value):
    return scalar(name, value, low=0.0, high=1.0)


def clip_eps(name, value):
    return scalar(name, value, low=0.0, low_open=True, high=0.5, high_open=True)


def class_vector(name: str, value, n_classes: int) -> np.ndarray:
    """Per-class weights: shape (n_classes,), finite, non-negative; float64."""
    arr = as_array(name, value)
    if arr.ndim != 1 or arr.shape[0] != n_classes:
        raise ValueError(
            f"{name} must have shape ({n_classes},), one value per class of y_pred's last axis, "
            f"got shape {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {arr}")
    return arr


def out_buffer(name: str, out, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Check a caller's gradient buffer: right shape and dtype, writeable, C-contiguous
    (a device buffer is checked on the device side and returned as a numba view)."""
    if not isinstance(out, np.ndarray):
        if is_device(out):
            return _cuda().out_buffer(name, out, shape, dtype)
        raise TypeError(f"{name} must be a NumPy or CUDA device array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {out.strides}")
    return out


def out_buffers(out, count: int) -> tuple:
    """Normalise ``out=`` to a tuple of ``count`` entries (each None or an array)."""
    if out is None:
        return (None,) * count
    if count == 1:
        if isinstance(out, tuple) and len(out) == 1:
            return out
        return (out,)
    if not isinstance(out, (tuple, list)) or len(out) != count:
        got = f"{type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        raise ValueError(f"out must be a tuple of {count} arrays (one per gradient), got a {got}")
    return tuple(out)


def _describe_out_of_range(arr: np.ndarray, low: float, high: float) -> str:
    a = to_host(arr)
    with np.errstate(invalid="ignore"):
        bad = a[(a < low) | (a > high)]
    if bad.size == 0:
        return ""
    return f"; found {bad.size} value(s) outside, e.g. {bad.reshape(-1)[0].item()!r}"


def raise_domain_error(flags: int, target_name, target, target_domain, pred_name, pred, pred_domain):
    """Turn kernel domain flags into the ValueError naming the argument."""
    if flags & BAD_TARGET:
        lo, hi = target_domain
        raise ValueError(
            f"{target_name} must lie in [{lo}, {hi}]" + _describe_out_of_range(target, lo, hi)
        )
    if flags & BAD_PREDICTION:
        lo, hi = pred_domain
        raise ValueError(
            f"{pred_name} must lie in [{lo}, {hi}] (probabilities; pass from_logits=True for "
            f"logits)" + _describe_out_of_range(pred, lo, hi)
        )


def raise_label_error(labels: np.ndarray, n_classes: int, ignore_index) -> None:
    lab = to_host(labels).reshape(-1)
    bad = (lab < 0) | (lab >= n_classes)
    if ignore_index is not None:
        bad &= lab != ignore_index
    example = lab[bad][0] if bad.any() else None
    raise ValueError(
        f"y_true labels must lie in [0, {n_classes}) (n_classes from y_pred's last axis)"
        + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
        + (f"; found {int(bad.sum())} outside, e.g. {example}" if example is not None else "")
    )


def exact_sum(values) -> float:
    """The correctly rounded float64 sum of ``values`` (``math.fsum``), ±inf when it is
    beyond the float64 range.

    ``math.fsum`` raises OverflowError when a partial sum of finite values overflows
    (1e308 + 1e308); scaling by a power of two is exact, so the sum is taken at 2⁻⁶⁴
    scale then and scaled back, which overflows to ±inf only when the sum itself does.
    """
    try:
        return math.fsum(values)
    except OverflowError:
        scale = 2.0**64
        with np.errstate(over="ignore"):
            return float(np.float64(math.fsum(np.asarray(values, dtype=np.float64) / scale)) * scale)


def nan_safe_divide(numerator: float, denominator: float) -> float:
    """numerator / denominator with 0/0 -> nan and x/0 -> ±inf, as NumPy floats do."""
    if denominator == 0:
        if numerator == 0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator)
    return numerator / denominator

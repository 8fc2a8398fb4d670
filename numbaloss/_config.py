"""Backend selection and thread count: the one place that knows which backends exist.

Nothing heavy is imported here: Numba (about 0.3 s to import) and numba.cuda are
imported on the first call that needs them, so ``import numbaloss`` stays cheap.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading

BACKENDS = ("numba", "cuda", "cython", "numpy")
_AUTO_ORDER = ("numba", "cython", "numpy")

_default_backend = os.environ.get("NUMBALOSS_BACKEND", "auto").strip().lower() or "auto"
_scoped_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "numbaloss_backend", default=None
)
_num_threads: int | None = None

# name -> loaded backend module, or the reason it could not be loaded
_loaded: dict[str, object] = {}
_unavailable: dict[str, str] = {}
_lock = threading.Lock()

_BACKEND_MODULES = {
    "numpy": "numbaloss._numpy_backend",
    "numba": "numbaloss._numba.backend",
    "cython": "numbaloss._cython_backend",
    "cuda": "numbaloss._cuda.backend",
}


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for by name and cannot run here."""


def _check_name(name: str, allow_auto: bool = True) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    valid = BACKENDS + (("auto",) if allow_auto else ())
    if key not in valid:
        raise ValueError(f"backend must be one of {valid}, got {name!r}")
    return key


def load_backend(name: str):
    """Return the backend module for ``name``, importing it on first use.

    Raises BackendUnavailableError naming what is missing.
    """
    module = _loaded.get(name)
    if module is not None:
        return module
    with _lock:
        module = _loaded.get(name)
        if module is not None:
            return module
        if name in _unavailable:
            raise BackendUnavailableError(_unavailable[name])
        try:
            module = importlib.import_module(_BACKEND_MODULES[name])
            module.check_available()
        except BackendUnavailableError as exc:
            _unavailable[name] = str(exc)
            raise
        except Exception as exc:  # a backend that fails to load is unavailable, never fatal
            reason = f"backend {name!r} is not available: {type(exc).__name__}: {exc}"
            _unavailable[name] = reason
            raise BackendUnavailableError(reason) from exc
        if _num_threads is not None and hasattr(module, "set_num_threads"):
            module.set_num_threads(_num_threads)
        _loaded[name] = module
        return module


def backend_status() -> dict[str, str]:
    """Map every backend name to "available" or the reason it is not."""
    status = {}
    for name in BACKENDS:
        try:
            load_backend(name)
            status[name] = "available"
        except BackendUnavailableError as exc:
            status[name] = str(exc)
    return status


def available_backends() -> list[str]:
    """The backends that work on this machine, in the order ``auto`` prefers them."""
    return [name for name, state in backend_status().items() if state == "available"]


def set_backend(name: str) -> None:
    """Set the process-wide default backend ("auto", "numba", "cuda", "cython", "numpy")."""
    global _default_backend
    key = _check_name(name)
    if key != "auto":
        load_backend(key)
    _default_backend = key


def get_backend() -> str:
    """The backend name in force for this context (may be "auto")."""
    scoped = _scoped_backend.get()
    return scoped if scoped is not None else _default_backend


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: use ``name`` as the default backend inside the ``with`` block.

    The setting is local to the current thread / asyncio task (a context variable).
    """
    key = _check_name(name)
    if key != "auto":
        load_backend(key)
    token = _scoped_backend.set(key)
    try:
        yield key
    finally:
        _scoped_backend.reset(token)


def resolve(requested: str | None, arrays, kernels: str, loss_name: str, on_device: bool | None = None) -> object:
    """The backend module for one call: the ``backend=`` argument, else the default.

    ``kernels`` names the family of loops the loss needs ("elementwise",
    "softmax_rows", "pairwise").  ``auto`` takes cuda for device arrays
    (``on_device``; when None, whether one of ``arrays`` is a device array,
    ``_validation.is_device``), else the first of numba, cython, numpy that loads
    and has those loops.  A backend named explicitly never falls back: it raises if
    it cannot run or has no loops for this loss.
    """
    name = _check_name(get_backend() if requested is None else requested)
    if name != "auto":
        module = load_backend(name)
        if not hasattr(module, kernels):
            raise BackendUnavailableError(f"backend {name!r} has no kernels for {loss_name}")
        return module
    if on_device is None:
        from ._validation import any_device

        on_device = any_device(arrays)
    if on_device:
        return resolve("cuda", arrays, kernels, loss_name)
    for candidate in _AUTO_ORDER:
        module = _loaded.get(candidate)
        if module is None:
            if candidate in _unavailable:
                continue
            try:
                module = load_backend(candidate)
            except BackendUnavailableError:
                continue
        if hasattr(module, kernels):
            return module
    raise BackendUnavailableError("no backend is available")  # numpy always loads


def set_num_threads(n: int) -> None:
    """Set the number of threads the parallel backends use (numba, cython)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    cpu = os.cpu_count() or 1
    if n > cpu:
        raise ValueError(f"number of threads must be at most the {cpu} CPUs here, got {n}")
    _num_threads = n
    for module in list(_loaded.values()):
        if hasattr(module, "set_num_threads"):
            module.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the parallel backends use."""
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("NUMBA_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1

"""``numbaloss info``: what this installation can run and where it keeps its caches."""

from __future__ import annotations

import importlib.metadata
import json
import platform

import numpy as np

from . import _config


def numba_cache_dir() -> str:
    """The folder Numba writes numbaloss's compiled kernels to: NUMBA_CACHE_DIR when
    set, else ``__pycache__`` next to the kernels, else (read-only install) Numba's
    per-user cache.  Asked of Numba's own cache locator, so it is the folder used."""
    try:
        from numba.core.caching import CompileResultCacheImpl

        from ._numba import fastmath
    except ImportError as exc:
        return f"none (numba is not importable: {exc})"
    try:
        # the cache implementation of an njit(cache=True) function picks the locator
        # (its private _locator) exactly as compiling the kernel does
        return CompileResultCacheImpl(fastmath.exp.py_func)._locator.get_cache_path()
    except (AttributeError, RuntimeError, TypeError) as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """Everything ``numbaloss info`` reports, as plain JSON-able values."""
    from . import __version__

    status = _config.backend_status()
    info = {
        "version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _installed_version("numba"),
        "backends": status,
        "default_backend": _config.get_backend(),
        "threads": _config.get_num_threads(),
        "numba_cache_dir": None,
        "cython_isa": None,
        "cython_openmp": None,
    }
    if status["numba"] == "available":
        info["numba_cache_dir"] = numba_cache_dir()
    if status["cython"] == "available":
        from . import _cython_backend

        info["cython_isa"] = _cython_backend.isa()
        info["cython_openmp"] = _cython_backend.openmp()
    return info


def _reason(name: str, state: str) -> str:
    prefix = f"backend {name!r} is not available: "
    return "not available: " + (state[len(prefix):] if state.startswith(prefix) else state)


def format_text(info: dict) -> str:
    lines = [f"numbaloss {info['version']} (Python {info['python']}, NumPy {info['numpy']}, "
             f"Numba {info['numba'] or 'not installed'})", "backends:"]
    for name, state in info["backends"].items():
        text = "available" if state == "available" else _reason(name, state)
        if name == "cython" and info["cython_isa"]:
            text += f" ({info['cython_isa']} loops, {'OpenMP' if info['cython_openmp'] else 'serial, no OpenMP'})"
        lines.append(f"  {name:7s} {text}")
    lines += [
        f"default backend: {info['default_backend']}"
        + (f" (the first available of {', '.join(_config._AUTO_ORDER)}; cuda for device arrays)"
           if info["default_backend"] == "auto" else ""),
        f"threads: {info['threads']}",
        f"numba cache: {info['numba_cache_dir'] or 'none (numba is not available)'}",
    ]
    return "\n".join(lines)


def run(args) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0


def add_parser(subcommands) -> None:
    p = subcommands.add_parser("info", help="version, backends (and why one is missing), threads, caches")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=run)

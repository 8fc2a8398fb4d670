"""The cuda backend's tests: skipped unless numba-cuda is installed and can run kernels
(a CUDA GPU, or the simulator: ``NUMBA_ENABLE_CUDASIM=1``, set before numba is
imported, so the simulator runs in its own pytest process).

Tests marked ``nodevice`` (PTX compilation for Hopper) need numba-cuda but no
device, and run whenever numba-cuda is installed; tests marked ``anywhere``
(``import numbaloss`` without numba-cuda) always run.

Every device test runs with small launches -- 32 threads per block, at most 2
blocks -- so that several blocks, the grid-stride loop and the cross-block
reduction are exercised on a few hundred elements (the simulator runs each
thread as a Python thread).
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))  # tests/cases.py

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")

try:
    from numba import cuda  # noqa: F401

    _reason_no_numba_cuda = None
except ImportError as exc:  # pragma: no cover
    _reason_no_numba_cuda = f"numba-cuda is not installed ({exc})"


def _device_reason():
    if _reason_no_numba_cuda:
        return _reason_no_numba_cuda
    import numbaloss._config as config

    try:
        config.load_backend("cuda")
    except config.BackendUnavailableError as exc:
        return str(exc)
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "nodevice: needs numba-cuda but no GPU or simulator")
    config.addinivalue_line("markers", "anywhere: needs neither numba-cuda nor a GPU")


def pytest_collection_modifyitems(config, items):
    here = pathlib.Path(__file__).parent
    mine = [item for item in items if here in pathlib.Path(str(item.fspath)).parents]
    if not mine:
        return
    device_reason = _device_reason()
    for item in mine:
        if item.get_closest_marker("anywhere"):
            continue
        if item.get_closest_marker("nodevice"):
            if _reason_no_numba_cuda:
                item.add_marker(pytest.mark.skip(reason=_reason_no_numba_cuda))
        elif device_reason:
            item.add_marker(pytest.mark.skip(reason=device_reason))


@pytest.fixture(autouse=True)
def _small_launches(request):
    """Small launches for every device test (restored afterwards)."""
    if request.node.get_closest_marker("nodevice") or request.node.get_closest_marker("anywhere") \
            or _device_reason():
        yield
        return
    import numbaloss._config as config

    module = config.load_backend("cuda")
    saved = module.THREADS_PER_BLOCK, module.MAX_BLOCKS
    module.THREADS_PER_BLOCK, module.MAX_BLOCKS = 32, 2
    try:
        yield
    finally:
        module.THREADS_PER_BLOCK, module.MAX_BLOCKS = saved


@pytest.fixture
def cuda_backend(_small_launches):
    """The cuda backend module (with the small launches of ``_small_launches``)."""
    import numbaloss._config as config

    return config.load_backend("cuda")

"""numbaloss: machine-learning losses with analytic gradients (and Hessians), on NumPy
arrays, without a deep-learning framework.

    >>> import numpy as np, numbaloss as nl
    >>> value, grad = nl.mse.value_and_grad(np.zeros(3), np.ones(3))

Every loss is an object with ``__call__`` (the value), ``grad``, ``value_and_grad``
and, for the pointwise ones, ``grad_hess``.  Backends: ``numba`` (default when
installed), ``cython``, ``cuda``, ``numpy`` (the float64 reference); see
:func:`available_backends`, :func:`set_backend`, :func:`use_backend`.
"""

from ._config import (
    BackendUnavailableError,
    available_backends,
    backend_status,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from ._registry import (
    LOSSES,
    arcface,
    batch_hard_triplet,
    bce,
    binary_cross_entropy,
    categorical_cross_entropy,
    categorical_focal,
    cce,
    cosface,
    cycle_consistency,
    focal,
    gan_discriminator,
    gan_generator,
    huber,
    info_nce,
    lsgan_discriminator,
    lsgan_generator,
    mse,
    nt_xent,
    supcon,
    triplet,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "LOSSES", "available_backends", "backend_status", "get_backend",
    "get_num_threads", "set_backend", "set_num_threads", "use_backend",
    *LOSSES, "bce", "cce",
]

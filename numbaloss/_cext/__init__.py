"""Compiled loops of the ``cython`` backend (the fallback when Numba is not installed).

The extension modules here are built by ``setup.py`` from the top-level ``_cext/``
folder, one per loop shape, mirroring ``numbaloss._numba``:

- ``elementwise`` (``_cext/elementwise.pyx``): the pointwise terms, over the point
  functions of ``_cext/_points.pxd`` (the mirror of ``numbaloss/_numba/points.py``)
  and the fast exp/log of ``_cext/_fastmath.pxd`` (the mirror of
  ``numbaloss/_numba/fastmath.py``); on x86-64 also ``elementwise_avx2`` and
  ``elementwise_avx512``, the same source compiled for wider vectors;
- ``softmax`` (``_cext/softmax.pyx``): the row-wise softmax kinds of
  ``numbaloss/_numba/softmax.py``;
- ``pairwise`` (``_cext/pairwise.pyx``): the embedding losses of
  ``numbaloss/_numba/pairwise.py``, drivers and per-block kernels (the similarity
  products are NumPy's BLAS; blocks are planned by ``numbaloss._pairwise_plan``);
  on x86-64 also ``pairwise_avx2`` and ``pairwise_avx512``.

A new loop shape is one more ``_cext/<shape>.pyx`` (setup.py compiles every
``_cext/*.pyx`` into ``numbaloss._cext.<shape>``, and into copies per instruction
set if it is listed in ``ISA_MODULES`` there) and one more function in
``numbaloss._cython_backend``.  Nothing here is public API: the loss objects reach
these modules through ``numbaloss._cython_backend``.
"""

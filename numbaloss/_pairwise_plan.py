"""Block planning and argument handling of the compiled embedding-loss backends
(``numbaloss._numba.pairwise``, ``numbaloss._cext.pairwise``), free of Numba so that
the Cython backend runs without it.

Both backends take their similarity products from BLAS on row blocks or tiles of
b anchors (memory O(N·b)); this module sizes those blocks, hands out views of one
flat block buffer, and normalises ``coef``, ``out`` and the labels the same way.
"""

from __future__ import annotations

import math

import numpy as np

from .reference.embedding import _label_codes


def coefficients(coef, n):
    """``coef`` as a contiguous float64 array of length n (all ones when None)."""
    if coef is None:
        return np.ones(n)
    return np.ascontiguousarray(np.broadcast_to(np.asarray(coef, dtype=np.float64), (n,)))


def grad_buffers(out, shapes, dtype):
    """The gradient arrays: new ones, or the caller's ``out`` buffers once checked."""
    if out is None:
        return tuple(np.empty(s, dtype=dtype) for s in shapes)
    out = tuple(out)
    if len(out) != len(shapes):
        raise ValueError(f"out: expected {len(shapes)} buffers, got {len(out)}")
    for buf, s in zip(out, shapes):
        if buf.shape != tuple(s) or buf.dtype != dtype or not buf.flags.c_contiguous:
            raise ValueError(f"out: need C-contiguous {np.dtype(dtype).name} buffers of shape "
                             f"{tuple(s)}, got {buf.dtype.name} {buf.shape}")
    return out


def label_codes(labels):
    """(int64 codes in [0, K), each sample's label count, K) — small non-negative
    integer labels are their own codes (bincount), others go through np.unique."""
    lab = np.asarray(labels).ravel()
    if lab.size and lab.dtype.kind in "iu":
        lo, hi = int(lab.min()), int(lab.max())
        if lo >= 0 and hi < 4 * lab.size + 64:
            codes = lab.astype(np.int64, copy=False)
            counts = np.bincount(codes)
            return codes, counts[codes], hi + 1
    if lab.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    codes, count = _label_codes(lab)
    return codes.astype(np.int64), count, int(codes.max()) + 1


def block_rows(n_rows, n_cols, itemsize, forced, block_bytes):
    """Anchors per row block: ``forced`` if given, else as many rows of n_cols
    entries as fit in ``block_bytes`` (at least 1, at most n_rows)."""
    if forced is not None:
        return max(1, min(int(forced), n_rows))
    return max(1, min(n_rows, block_bytes // max(1, n_cols * itemsize)))


def tile_edge(itemsize, forced, tile, block_bytes):
    """Edge T of the square tiles of the symmetric (NT-Xent, SupCon) path: ``forced``,
    else ``tile``, else the largest T with T² entries within ``block_bytes``."""
    if forced is not None:
        return max(1, int(forced))
    if tile is not None:
        return max(1, int(tile))
    return max(1, math.isqrt(block_bytes // itemsize))


def block_view(flat, rows, cols):
    """A C-contiguous (rows, cols) view of the start of a flat buffer."""
    return flat[:rows * cols].reshape(rows, cols)


def matmul_t(a, b, out):
    """out = a @ b.T through the general product.  NumPy sends x @ x.T (same buffer,
    square result) to syrk, which was ~1.6-2.6× slower than gemm here."""
    if (a.shape[0] == b.shape[0] and a.size
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]):
        b = b.copy()
    return np.matmul(a, b.T, out=out)


def target_cosines(X, W, labels, x_inv, w_inv, rows_per_chunk=4096):
    """cos θ_i = (x_i · w_{y_i}) / (‖x_i‖ ‖w_{y_i}‖) of each row's target class, in float64.

    ArcFace's margin goes through sin θ = √(1 − cos²θ), whose slope is unbounded at
    cos θ = ±1: the last-bit rounding of a float32 similarity block there (1e-7) moves
    the loss by ~1e-2 (s = 64).  The target entries are therefore recomputed apart
    from the block, in float64, for O(N·D) work next to the block's O(N·C·D).
    """
    out = np.empty(X.shape[0])
    for r0 in range(0, X.shape[0], rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, X.shape[0])
        y = labels[r0:r1]
        dots = np.einsum("ij,ij->i", X[r0:r1].astype(np.float64), W[y].astype(np.float64))
        out[r0:r1] = dots * x_inv[r0:r1] * w_inv[y]
    return out

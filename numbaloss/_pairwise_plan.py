"""Block planning, argument handling and the shared row-block drivers of the compiled
embedding-loss backends (``numbaloss._numba.pairwise``, ``numbaloss._cext.pairwise``),
free of Numba so that the Cython backend runs without it.

Both backends take their similarity products from BLAS on row blocks or tiles of
b anchors (memory O(N·b)); this module sizes those blocks, hands out views of one
flat block buffer, and normalises ``coef``, ``out`` and the labels the same way.
The InfoNCE and ArcFace/CosFace drivers are the same for both backends: they live
here and call the backend's kernels through a :class:`BlockKernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .reference.embedding import NORM_EPS, _label_codes, distance_scale, row_norms


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


# ---------------------------------------------------------------------------
# rows of huge norm
# ---------------------------------------------------------------------------

def repair_norms(x2d, norm):
    """In place: the norms that a float64 sum of squares overflowed (finite entries
    ≳ 1e154), recomputed as the reference computes them (``row_norms``)."""
    overflowed = np.flatnonzero(np.isinf(norm))
    if overflowed.size:
        norm[overflowed] = row_norms(x2d[overflowed].astype(np.float64))[:, 0]
    return overflowed


def product_safe(X, norm):
    """(X', norm', scale): rows whose products with other rows could overflow X's
    dtype (norm above √max / 4), multiplied by a power of two.

    Rows of norm above the limit become c_r·x_r with c_r = 2^−e, ‖c_r·x_r‖ ∈ [0.5, 1);
    X' is then a copy, norm' = c·norm and scale = c (1 on the other rows).  With no
    such row: (X, norm, None), no copy.  A power of two scales exactly, so cosine
    similarities of X' are those of X, and the gradient with respect to x_r is c_r
    times the one with respect to x'_r (:func:`unscale_rows`).
    """
    limit = math.sqrt(float(np.finfo(X.dtype).max)) / 4
    big = np.isfinite(norm) & (norm > limit)
    if not big.any():
        return X, norm, None
    scale = np.ones(norm.shape[0])
    scale[big] = np.ldexp(1.0, -np.frexp(norm[big])[1])
    scaled = np.array(X, order="C")
    scaled[big] = (X[big].astype(np.float64) * scale[big, None]).astype(X.dtype)
    return scaled, norm * scale, scale


def unscale_rows(g2d, scale):
    """In place: g_r ← c_r·g_r for the rows :func:`product_safe` scaled."""
    if scale is not None:
        rows = np.flatnonzero(scale != 1.0)
        g2d[rows] = (g2d[rows].astype(np.float64) * scale[rows, None]).astype(g2d.dtype)


# ---------------------------------------------------------------------------
# shared drivers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockKernels:
    """A backend's kernels, as the drivers below call them (``par``: run threaded)."""

    #: x2d → Σₖ x[r,k]² per row, float64
    sqnorms: Callable
    #: (x2d, g2d, inv, norm): g ← g − [‖x‖ ≥ 1e-12]·x·inv²·(x·g) in place
    project: Callable
    #: (n_rows, n_cols, itemsize, forced) → anchors per row block
    block_rows: Callable
    #: work (entries) → whether a kernel over it runs threaded
    use_threads: Callable
    #: (par, S, r0, rs, cs, wr, need_grad, losses): in-batch InfoNCE rows of a block
    nce_rows: Callable
    #: (par, S, r0, A, P, rs, cp, cs, wr, need_grad, losses, gpos): shared negatives
    nce_shared_rows: Callable
    #: (par, A, P, Q, inv_tau, cosine, coef, need_grad, losses, gA, gP, gQ): per-anchor negatives
    nce_paired: Callable
    #: (par, S, r0, lab, tcos, rx, cw, scale, mode, cos_m, sin_m, th, mm, margin, wr, need_grad, losses)
    margin_rows: Callable
    #: (par, S, r0, sq, lab, hp, hn): hardest positive / negative of each row of a block
    bh_select: Callable
    #: (par, X, hp, hn, margin, squared, coef, need_grad, losses, grad, cp, cn)
    bh_finish: Callable
    #: (X, hp, hn, cp, cn, grad): the selected rows' share of the gradient
    bh_scatter: Callable


def norms(kernels, x2d):
    """‖x_r‖ in float64 for the rows of a 2-D array, as the reference's ``row_norms``."""
    norm = np.sqrt(kernels.sqnorms(x2d))
    repair_norms(x2d, norm)
    return norm


def _cosine_rows(kernels, X):
    """(X', norm, inv, scale) for cosine similarity: norms of X, huge rows scaled."""
    X, norm, scale = product_safe(X, norms(kernels, X))
    return X, norm, 1.0 / np.maximum(norm, NORM_EPS), scale


def _plain_rows(X):
    n = X.shape[0]
    return X, np.ones(n), np.ones(n), None


def _products_accumulate(S, K, A_block, gA_block, gK, tmp, first):
    """g̃A_R = G̃_R·K and g̃K += G̃_Rᵀ·A_R for the row block R."""
    np.matmul(S, K, out=gA_block)
    if first:
        np.matmul(S.T, A_block, out=gK)
    else:
        np.matmul(S.T, A_block, out=tmp)
        gK += tmp


def batch_hard_triplet(kernels, embeddings, labels, *, margin=1.0, squared=False, coef=None,
                       need_grad=True, out=None, block_rows=None):
    """Batch-hard triplet loss; see :func:`numbaloss.reference.embedding.batch_hard_triplet`.

    Anchors without a positive or a negative get loss 0 (``batch_hard_valid_anchors``).
    The hardest pairs are selected on d² = ‖x_g‖² + ‖x_c‖² − 2 x_g·x_c from the block
    product (compute dtype) — of c·X where those could overflow the dtype (c a power
    of two, ``distance_scale``: the same order) — and their distances are then
    recomputed exactly from X (float64, rescaled where the squares overflow).
    """
    X = embeddings
    n = X.shape[0]
    dt = X.dtype
    coef = coefficients(coef, n)
    lab = label_codes(labels)[0]
    c = distance_scale(norms(kernels, X), dt)
    selection = X if c == 1.0 else (X.astype(np.float64) * c).astype(dt)
    sq = kernels.sqnorms(selection)
    hp = np.empty(n, np.int64)
    hn = np.empty(n, np.int64)
    b = kernels.block_rows(n, n, X.itemsize, block_rows)
    flat = np.empty(b * n, dt)
    par = kernels.use_threads(b * n)
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = block_view(flat, r1 - r0, n)
        matmul_t(selection[r0:r1], selection, S)
        kernels.bh_select(par, S, r0, sq, lab, hp, hn)
    del flat, selection
    losses = np.empty(n)
    cp = np.empty(n)
    cn = np.empty(n)
    grad = grad_buffers(out, [X.shape], dt)[0] if need_grad else np.empty((0, 0), dt)
    kernels.bh_finish(kernels.use_threads(X.size), X, hp, hn, float(margin), bool(squared), coef,
                      bool(need_grad), losses, grad, cp, cn)
    if not need_grad:
        return losses, None
    kernels.bh_scatter(X, hp, hn, cp, cn, grad)
    return losses, (grad,)


def info_nce(kernels, anchor, positive, negatives=None, *, temperature=0.1, similarity="cosine",
             coef=None, need_grad=True, out=None, block_rows=None):
    """InfoNCE; see :func:`numbaloss.reference.embedding.info_nce`.

    In-batch and shared negatives: row blocks of b anchors, S = A_R·Pᵀ (or A_R·Nᵀ),
    then G̃_R·P → g̃A_R and G̃_Rᵀ·A_R accumulated into g̃P (g̃N): 3 GEMMs.  Per-anchor
    negatives (N, M, D): one fused kernel per anchor (no GEMM to be had).
    """
    A, P = anchor, positive
    n = A.shape[0]
    dt = A.dtype
    coef = coefficients(coef, n)
    tau = float(temperature)
    cosine = similarity == "cosine"
    need_grad = bool(need_grad)
    if negatives is not None and negatives.ndim == 3:
        return _info_nce_paired(kernels, A, P, negatives, tau, cosine, coef, need_grad, out)
    losses = np.empty(n)

    A, a_norm, a_inv, a_scale = _cosine_rows(kernels, A) if cosine else _plain_rows(A)
    P, p_norm, p_inv, p_scale = _cosine_rows(kernels, P) if cosine else _plain_rows(P)
    rs = (a_inv / tau).astype(dt)
    wr = (coef / tau * a_inv).astype(dt)
    shapes = [A.shape, P.shape] + ([] if negatives is None else [negatives.shape])
    grads = grad_buffers(out, shapes, dt) if need_grad else None

    if negatives is None:
        K, k_norm, k_inv, k_scale = P, p_norm, p_inv, p_scale   # the columns: the other positives
    else:
        K, k_norm, k_inv, k_scale = _cosine_rows(kernels, negatives) if cosine else _plain_rows(negatives)
        cp = p_inv.astype(dt)
        gpos = np.empty(n, dt)
    cs = k_inv.astype(dt)
    n_cols = K.shape[0]
    b = kernels.block_rows(n, n_cols, A.itemsize, block_rows)
    flat = np.empty(b * n_cols, dt)
    par = kernels.use_threads(b * n_cols)
    if need_grad:
        gA = grads[0]
        gK = grads[1] if negatives is None else grads[2]
        gK.fill(0)
        tmp = np.empty(K.shape, dt) if n > b else None
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = block_view(flat, r1 - r0, n_cols)
        matmul_t(A[r0:r1], K, S)
        if negatives is None:
            kernels.nce_rows(par, S, r0, rs, cs, wr, need_grad, losses)
        else:
            kernels.nce_shared_rows(par, S, r0, A, P, rs, cp, cs, wr, need_grad, losses, gpos)
        if need_grad:
            _products_accumulate(S, K, A[r0:r1], gA[r0:r1], gK, tmp, r0 == 0)
    if not need_grad:
        return losses, None
    if negatives is not None:
        gP = grads[1]
        np.multiply(gpos[:, None], A, out=gP)
        gA += gpos[:, None] * P
    if cosine:
        inputs = [(A, a_norm, a_inv, a_scale), (P, p_norm, p_inv, p_scale)]
        if negatives is not None:
            inputs.append((K, k_norm, k_inv, k_scale))
        for g, (X, norm, inv, scale) in zip(grads, inputs):
            kernels.project(X, g, inv, norm)
            unscale_rows(g, scale)
    return losses, grads


def _info_nce_paired(kernels, A, P, Q, tau, cosine, coef, need_grad, out):
    """Per-anchor negatives Q (N, M, D).  The kernel normalises in float64 as it goes;
    float64 rows with entries ≳ 1e154 overflow its sums of squares, so when a loss
    comes out non-finite the rows of huge norm are scaled (:func:`product_safe`) and
    the kernel is run again."""
    n, dim = A.shape
    dt = A.dtype
    losses = np.empty(n)
    if need_grad:
        grads = grad_buffers(out, [A.shape, P.shape, Q.shape], dt)
        gA, gP, gQ = grads
    else:
        grads = None
        gA = gP = np.empty((0, 0), dt)
        gQ = np.empty((0, 0, 0), dt)
    par = kernels.use_threads(Q.size)
    kernels.nce_paired(par, A, P, Q, 1.0 / tau, cosine, coef, need_grad, losses, gA, gP, gQ)
    if not cosine or np.all(np.isfinite(losses)):
        return losses, grads
    Q2 = Q.reshape(Q.shape[0] * Q.shape[1], dim)
    (A, _, _, a_scale), (P, _, _, p_scale), (Q2, _, _, q_scale) = (
        _cosine_rows(kernels, X) for X in (A, P, Q2))
    if a_scale is None and p_scale is None and q_scale is None:
        return losses, grads       # not an overflow: NaN/inf in the data
    kernels.nce_paired(par, A, P, Q2.reshape(Q.shape), 1.0 / tau, cosine, coef, need_grad, losses,
                       gA, gP, gQ)
    if need_grad:
        for g, scale in ((gA, a_scale), (gP, p_scale), (gQ.reshape(-1, dim), q_scale)):
            unscale_rows(g, scale)
    return losses, grads


def margin_softmax(kernels, X, labels, W, scale, mode, cos_m, sin_m, th, mm, margin, coef,
                   need_grad, out, block_rows):
    """ArcFace (mode 0, 1 with easy margin) and CosFace (mode 2) over row blocks of b
    embeddings: S = X_R·Wᵀ, the fused margin + cross-entropy kernel, then G̃·W → g̃X_R
    and G̃ᵀ·X_R accumulated into g̃W (3 GEMMs of N·C·D)."""
    n = X.shape[0]
    n_classes = W.shape[0]
    dt = X.dtype
    need_grad = bool(need_grad)
    coef = coefficients(coef, n)
    lab = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    X, x_norm, x_inv, x_scale = _cosine_rows(kernels, X)
    W, w_norm, w_inv, w_scale = _cosine_rows(kernels, W)
    tcos = target_cosines(X, W, lab, x_inv, w_inv)
    rx = x_inv.astype(dt)
    cw = w_inv.astype(dt)
    wr = (coef * scale * x_inv).astype(dt)
    losses = np.empty(n)
    if need_grad:
        gX, gW = grad_buffers(out, [X.shape, W.shape], dt)
        gW.fill(0)
    b = kernels.block_rows(n, n_classes, X.itemsize, block_rows)
    flat = np.empty(b * n_classes, dt)
    par = kernels.use_threads(b * n_classes)
    tmp = np.empty(W.shape, dt) if (need_grad and n > b) else None
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = block_view(flat, r1 - r0, n_classes)
        matmul_t(X[r0:r1], W, S)
        kernels.margin_rows(par, S, r0, lab, tcos, rx, cw, scale, mode, cos_m, sin_m, th, mm, margin, wr,
                            need_grad, losses)
        if need_grad:
            _products_accumulate(S, W, X[r0:r1], gX[r0:r1], gW, tmp, r0 == 0)
    if not need_grad:
        return losses, None
    for g, Y, norm, inv, sc in ((gX, X, x_norm, x_inv, x_scale), (gW, W, w_norm, w_inv, w_scale)):
        kernels.project(Y, g, inv, norm)
        unscale_rows(g, sc)
    return losses, (gX, gW)


def arcface(kernels, embeddings, labels, weight, *, s=64.0, m=0.5, easy_margin=False, coef=None,
            need_grad=True, out=None, block_rows=None):
    """ArcFace; see :func:`numbaloss.reference.embedding.arcface` (:func:`margin_softmax`)."""
    m = float(m)
    return margin_softmax(kernels, embeddings, labels, weight, float(s), 1 if easy_margin else 0,
                          math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m) * m,
                          0.0, coef, need_grad, out, block_rows)


def cosface(kernels, embeddings, labels, weight, *, s=64.0, m=0.4, coef=None, need_grad=True,
            out=None, block_rows=None):
    """CosFace; see :func:`numbaloss.reference.embedding.cosface` (:func:`margin_softmax`)."""
    return margin_softmax(kernels, embeddings, labels, weight, float(s), 2, 1.0, 0.0, -1.0, 0.0,
                          float(m), coef, need_grad, out, block_rows)


# ---------------------------------------------------------------------------
# SupCon / NT-Xent: positives of rows that dwarf their class
# ---------------------------------------------------------------------------

def self_dominated_rows(norm, lab, n_classes, valid):
    """The anchors whose norm is above 10⁶ times the sum of the other norms of their
    class.  The kernels take Σ_{p∈P(r)} u_p as the class sum less u_r; for such a
    row (SupCon without normalisation, rows of very different norms) that difference
    cancels the other rows away, so its positives are summed directly instead
    (:func:`positive_sums`).  Rare: at most about one row per class."""
    class_norms = np.bincount(lab, weights=norm, minlength=n_classes)
    with np.errstate(invalid="ignore"):
        others = class_norms[lab] - norm
        return np.flatnonzero(valid & np.isfinite(norm) & (norm > 0) & (others < 1e-6 * norm))


def positive_sums(U, lab, rows, weights=None):
    """For each anchor r of ``rows``: Σ_{p∈P(r)} u_p, and with ``weights`` also
    Σ_{p∈P(r)} weights_p·u_p, in float64, summed over the other rows of r's class."""
    plain = np.empty((rows.size, U.shape[1]))
    weighted = np.empty_like(plain) if weights is not None else None
    for i, r in enumerate(rows):
        members = np.flatnonzero(lab == lab[r])
        members = members[members != r]
        rows_of_class = U[members].astype(np.float64)
        plain[i] = rows_of_class.sum(axis=0)
        if weights is not None:
            weighted[i] = weights[members] @ rows_of_class
    return plain, weighted

"""Numba CPU kernels of the embedding losses: triplet, batch_hard_triplet, info_nce,
nt_xent, arcface, cosface, supcon.

Same interface as :mod:`numbaloss.reference.embedding` (see there for the formulas)::

    losses, grads = fn(<inputs>, <parameters>, coef=None, need_grad=True,
                       out=None, block_rows=None)

except that the inputs must already be C-contiguous arrays of the compute dtype
(float32 or float64, computed natively; sums accumulate in float64).  ``losses`` is
float64; the gradients have the compute dtype.  ``out`` is an optional tuple of
preallocated C-contiguous gradient buffers (filled and returned).  ``block_rows``
overrides the block size (tests use it to force many blocks).

Design (DESIGN.md, "Pairwise losses")
-------------------------------------
* Similarities come from BLAS (``np.matmul`` with ``out=`` on row blocks or tiles;
  ``x @ x.T`` is sent to gemm with a copy, NumPy's syrk was slower).  InfoNCE and
  ArcFace/CosFace never materialise the normalised rows: the products are taken on
  the raw rows and the fused kernels scale entry (r, c) by inv_r·inv_c
  (inv = 1/max(‖x‖, 1e-12)); the gradient products too, with the scales folded into
  the coefficient matrix, which yields g̃ = inv·(dL/dx̂); the normalisation backward
  is then g = g̃ − [‖x‖ ≥ 1e-12]·x·inv²·(x·g̃), one O(N·D) pass.
* One fused ``prange`` kernel per block does scale, max shift, exp, log-sum-exp, the
  loss and the gradient coefficients in place in the similarity block, one row at a
  time while the row is in cache; one or two more products give the gradients.
* ``exp`` is branch-free range reduction + polynomial that LLVM vectorises
  (``fastmath.exp_to_float32`` for float32 data, ``fastmath.exp`` for float64 data);
  libm's ``exp`` is a scalar call here (no SVML) and cost 5-8x the whole kernel.
  Row sums use ``fastmath.reassoc_add`` (an ``fadd reassoc``) and row maxima
  ``llvm.maxnum nnan`` so those reductions vectorise while the rest keeps strict
  IEEE semantics (no fastmath).  Inner loops index 0-based 1-D views: an offset
  index keeps Numba's negative-index wraparound, and LLVM then leaves the loop scalar.
* Row blocks (InfoNCE, ArcFace/CosFace, batch-hard triplet): b = BLOCK_BYTES //
  (n_cols·itemsize) anchors per block (64 MiB: all of N = 4,096 at once; 256 rows at
  N = 65,536), S_R = A_R·Kᵀ, kernel, g̃A_R = G̃_R·K, g̃K += G̃_Rᵀ·A_R: 3 GEMMs, memory
  O(N·b).
* NT-Xent and SupCon use the symmetry of the logits l_gh = u_g·u_h/τ (u = inv·z, the
  N×D normalised rows, materialised once).  Tiles (I, J), I ≤ J, of T rows
  (T = √(BLOCK_BYTES/itemsize) = 4,096 in float32, see ``TILE``; memory O(T²) + O(N·D)):

  - products: an off-diagonal tile is one GEMM; a diagonal tile takes only the row
    strips from its diagonal blocks to the end of the row (``DIAG_STRIPS`` = 2
    strips: 3/4 of the GEMM), and its kernels read the strict upper triangle only.
  - pass 1, the log-sum-exp over A(r) = all rows but r: each entry counts for its
    row and, transposed, for its column.  A common shift M = max‖u‖²/τ bounds every
    logit (Cauchy-Schwarz) and every logit is ≥ −M, so when 2M ≤ 60 (float32; 600
    in float64) e = exp(l − M) loses no row's largest terms and one exp serves both
    sums (``_sum_tile_shifted``); otherwise (τ < 1/30 with normalised rows) rows and
    columns get their own online max (``_lse_tile``, two exps per entry).
  - pass 2: H[r,c] = w_r·σ_rc + w_c·σ_cr (= e·(α_r + α_c), α = w/Σe, with the shift),
    mirrored below the diagonal, then one GEMM G = H·U (a single tile is kept from
    pass 1; with several, each tile is recomputed and G_I += H·U_J, G_J += Hᵀ·U_I).

  So N = 4,096 in float32 costs 3/4 + 1 GEMM-equivalents (against 2 for Z·Zᵀ as a
  full product and its gradient product), one exp per pair and 3 BLAS calls plus 2
  parallel regions (pass 1 keeps e in the tile for pass 2).  Measured at N = 4,096,
  D = 128, float32, value and gradient, as a ratio to the two full products timed
  alternately in one process: on one thread (BLAS and Numba) 2 and 4 strips both
  1.10×, no strips 1.22×; with two threads on the 2-core machine under a load
  average of ~20 (other processes), 2 strips 1.31-1.65×, 4 strips 1.49-1.74×, no
  strips 1.29-1.80×: there every BLAS call and parallel region waits for a thread
  wake-up, and the two threads are no faster than one.
* The positives of SupCon/NT-Xent never enter the O(N²) loops: with class sums
  C_k = Σ_{label k} u and B_k = Σ_{label k} a·u, a = w/|P| (float64, O(N·D)), the
  positive logits' sum is u_r·(C_k − u_r)/τ and the positives' share of dL/du_r is
  −a_r(C_k − u_r) − (B_k − a_r u_r).
* Small problems run serial copies of the kernels (threads cost more than they give
  below ``SERIAL_BELOW`` block entries or ``SERIAL_ROWS_BELOW`` elements of an
  O(N·D) pass, and much more on a busy machine).

The ``Assumes`` sections of the reference docstrings list what the framework must
have validated; these kernels additionally assume C-contiguous float32/float64
inputs of one dtype and ``coef`` of the length of ``losses``.
"""

from __future__ import annotations

import math
import types as _pytypes

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import _pairwise_plan as plan
from . import fastmath
from .fastmath import reassoc_add as _rsum

from ..reference.embedding import (  # noqa: F401  (re-exported for the framework)
    NORM_EPS,
    SIN_EPS,
    batch_hard_valid_anchors,
    supcon_valid_anchors,
)

__all__ = [
    "triplet",
    "batch_hard_triplet",
    "info_nce",
    "nt_xent",
    "arcface",
    "cosface",
    "supcon",
    "supcon_valid_anchors",
    "batch_hard_valid_anchors",
]

# ---------------------------------------------------------------------------
# settings (module level so that tests and benchmarks can change them)
# ---------------------------------------------------------------------------

#: largest similarity block (bytes): the rows per block of InfoNCE, ArcFace/CosFace and
#: batch-hard triplet, and the default tile of NT-Xent/SupCon
BLOCK_BYTES = 64 << 20
#: force the rows per block / the tile edge (None: derived from BLOCK_BYTES / TILE)
BLOCK_ROWS = None
#: tile edge of NT-Xent / SupCon; None: the largest tile within BLOCK_BYTES,
#: √(BLOCK_BYTES/itemsize) = 4,096 in float32, 2,896 in float64
TILE = None
#: NT-Xent / SupCon: a diagonal tile's products are taken in this many row strips, each
#: from its diagonal block to the end of the row (fewer strips: fewer BLAS calls, more
#: of the products below the diagonal, which are not needed)
DIAG_STRIPS = 2
#: rows per chunk of the triplet kernel's dynamic schedule
TRIPLET_CHUNK_ROWS = 1024
#: blocks with fewer entries than this run the serial kernels
SERIAL_BELOW = 1 << 15
#: passes over the rows (norms, normalisation backward: a few operations per element)
#: with fewer elements than this run serial: at N·D = 4,096·128 one such pass takes
#: ~0.3 ms, and waking a second thread on a busy 2-core machine costs more
SERIAL_ROWS_BELOW = 1 << 21


# ---------------------------------------------------------------------------
# intrinsics and vectorisable scalar functions
# ---------------------------------------------------------------------------

@intrinsic
def _fmax(typingctx, a, b):
    """``llvm.maxnum`` with ``nnan nsz``: the larger of a and b, vectorised as a
    reduction.  Only used for the max shift of a log-sum-exp: a NaN there may or may
    not propagate, the NaN entry itself always does (through exp and the sum)."""
    if a != b or a not in (types.float32, types.float64):
        return None
    name = "llvm.maxnum.f32" if a == types.float32 else "llvm.maxnum.f64"

    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t]), name)
        return builder.call(fn, list(args), fastmath=("nnan", "nsz"))

    return a(a, a), codegen


def _fexp(x):  # pragma: no cover - replaced by the overload inside jitted code
    return math.exp(x)


@overload(_fexp)
def _fexp_overload(x):
    if x == types.float32:
        return lambda x: fastmath.exp_to_float32(x)
    if x == types.float64:
        return lambda x: fastmath.exp(x)
    return None


# ---------------------------------------------------------------------------
# kernels: each compiled twice, parallel (prange threads) and serial
# ---------------------------------------------------------------------------

class _Kernel:
    """A loop compiled as a parallel and as a serial Numba function.

    The serial copy is a new function object with its own name, so that Numba's
    on-disk cache (keyed by qualified name) keeps both.
    """

    def __init__(self, fn):
        self.parallel = njit(parallel=True, nogil=True, cache=True)(fn)
        serial_fn = _pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                          fn.__defaults__, fn.__closure__)
        serial_fn.__qualname__ = fn.__qualname__ + "_serial"
        serial_fn.__module__ = fn.__module__
        self.serial = njit(nogil=True, cache=True)(serial_fn)

    def __call__(self, parallel):
        return self.parallel if parallel else self.serial


def _use_threads(work):
    return work >= SERIAL_BELOW and numba.get_num_threads() > 1


def _row_threads(size):
    return size >= SERIAL_ROWS_BELOW and numba.get_num_threads() > 1


@_Kernel
def _sqnorms(x, out):
    """out[r] = Σₖ x[r,k]² in float64."""
    for r in prange(x.shape[0]):
        s = 0.0
        for k in range(x.shape[1]):
            v = np.float64(x[r, k])
            s = _rsum(s, v * v)
        out[r] = s


@_Kernel
def _norm_backward(x, g, inv, norm):
    """In place: g ← g − [‖x‖ ≥ 1e-12]·x·inv²·(x·g), for g = inv·dL/dx̂."""
    for r in prange(x.shape[0]):
        if norm[r] >= NORM_EPS:
            d = 0.0
            for k in range(x.shape[1]):
                d = _rsum(d, np.float64(x[r, k]) * np.float64(g[r, k]))
            f = d * inv[r] * inv[r]
            for k in range(x.shape[1]):
                g[r, k] = np.float64(g[r, k]) - f * np.float64(x[r, k])


# --- SupCon / NT-Xent -------------------------------------------------------
#
# Rows u = inv·z (z itself without normalisation), materialised in the compute dtype;
# logits l_gh = u_g·u_h/τ, taken from tiles (I, J), I ≤ J, of raw products S = U_I·U_Jᵀ.
# The logits are symmetric: a diagonal tile is read in its strict upper triangle only,
# an off-diagonal tile once for its rows (rows I) and once for its columns (rows J).
# The kernels are label-free: the positives enter the loss and the gradient only
# through class sums (O(N·D), see _class_sums / _con_finish).

#: largest span 2M of the logits for the common shift M of _sum_tile_shifted, by
#: itemsize: exp(l − M) ≥ e^(−2M) stays far above the underflow of the exp (float32
#: e^(−87), float64 e^(−708)), so that no row loses its largest terms
_SHIFT_SPAN = {4: 60.0, 8: 600.0}

#: rows per group of the column log-sum-exp: a group's tile rows are read twice (max,
#: then sums) while they are in cache
_GROUP = 16


@_Kernel
def _unit_rows(X, normalize, norm, U):
    """norm[r] = ‖X[r]‖ (float64); U[r] = X[r]/max(‖X[r]‖, 1e-12), or X[r]."""
    for r in prange(X.shape[0]):
        s = 0.0
        for k in range(X.shape[1]):
            v = np.float64(X[r, k])
            s = _rsum(s, v * v)
        nr = math.sqrt(s)
        norm[r] = nr
        f = 1.0 / max(nr, NORM_EPS) if normalize else 1.0
        for k in range(X.shape[1]):
            U[r, k] = np.float64(X[r, k]) * f


@_Kernel
def _lse_tile(S, diag, inv_tau, bounds, rmax, rsum, cmax, cnew, csum):
    """Pass 1 on tile (I, J) of raw products S, logits l = S·inv_tau: for each row r
    of I its max and Σ exp(l − max) over the tile (rmax[r], rsum[r]); for each chunk p
    of rows (bounds[p] ≤ r < bounds[p+1]) the same per column c, for the rows J
    (cmax[p, c], csum[p, c]; cnew is scratch).  A diagonal tile (``diag``) counts
    c > r only.  Rows go by groups of _GROUP: the group's maxima first, then its
    exps, one for the row sum and one for the column sum of each entry."""
    bj = S.shape[1]
    neg_inf = S.dtype.type(-np.inf)
    for p in prange(len(bounds) - 1):
        cm = cmax[p]
        cn = cnew[p]
        cs = csum[p]
        for c in range(bj):
            cm[c] = neg_inf
            cs[c] = 0.0
        for g0 in range(bounds[p], bounds[p + 1], _GROUP):
            g1 = min(g0 + _GROUP, bounds[p + 1])
            c_lo = g0 + 1 if diag else 0
            cmg = cm[c_lo:]
            cng = cn[c_lo:]
            csg = cs[c_lo:]
            for c in range(cng.shape[0]):
                cng[c] = cmg[c]
            for r in range(g0, g1):
                c0 = r + 1 if diag else 0
                row = S[r, c0:]
                cnr = cn[c0:]
                tm = neg_inf
                for c in range(row.shape[0]):
                    lv = row[c] * inv_tau
                    tm = _fmax(tm, lv)
                    cnr[c] = _fmax(cnr[c], lv)
                rmax[r] = tm
            for c in range(cng.shape[0]):   # the column sums, to the new maxima
                d = cmg[c] - cng[c]           # nan: -inf − -inf, no entry yet (sum 0)
                csg[c] = csg[c] * np.float64(_fexp(d if d == d else S.dtype.type(0.0)))
                cmg[c] = cng[c]
            for r in range(g0, g1):
                c0 = r + 1 if diag else 0
                row = S[r, c0:]
                cmr = cm[c0:]
                csr = cs[c0:]
                m = rmax[r]
                s = 0.0
                for c in range(row.shape[0]):
                    lv = row[c] * inv_tau
                    s = _rsum(s, np.float64(_fexp(lv - m)))
                    csr[c] = csr[c] + np.float64(_fexp(lv - cmr[c]))
                rsum[r] = s


@_Kernel
def _sum_tile_shifted(S, diag, inv_tau, shift, keep, bounds, rsum, csum):
    """Pass 1 with a common shift M ≥ every logit: rsum[r] = Σ_c e_rc and
    csum[p, c] = Σ_{r in chunk p} e_rc, e_rc = exp(l_rc − M), the row and the column
    sums from one exp per entry (``diag``: c > r only); ``keep``: S ← e (for pass 2)."""
    for p in prange(len(bounds) - 1):
        cs = csum[p]
        for c in range(cs.shape[0]):
            cs[c] = 0.0
        for r in range(bounds[p], bounds[p + 1]):
            c0 = r + 1 if diag else 0
            row = S[r, c0:]
            csr = cs[c0:]
            s = 0.0
            for c in range(row.shape[0]):
                e = _fexp(row[c] * inv_tau - shift)
                if keep:
                    row[c] = e
                s = _rsum(s, np.float64(e))
                csr[c] = csr[c] + np.float64(e)
            rsum[r] = s


@njit(nogil=True, cache=True)
def _merge_lse(m_run, s_run, m_new, s_new):
    """(m_run, s_run) ← the log-sum-exp statistics of both sets: m = max,
    s = Σ exp(· − m)."""
    for r in range(m_run.shape[0]):
        mo = m_run[r]
        mn = np.float64(m_new[r])
        m = mn if (mn > mo or mn != mn) else mo      # a NaN logit propagates
        if m == -np.inf:
            continue
        fo = math.exp(mo - m) if mo != -np.inf else 0.0
        fn = math.exp(mn - m) if mn != -np.inf else 0.0
        s_run[r] = s_run[r] * fo + s_new[r] * fn
        m_run[r] = m


@njit(nogil=True, cache=True)
def _merge_tile(gi, gj, rmax, rsum, cmax, csum, mx, ssum):
    """Fold pass 1's tile statistics into the running ones of rows gi… and gj…"""
    _merge_lse(mx[gi:gi + rmax.shape[0]], ssum[gi:gi + rmax.shape[0]], rmax, rsum)
    bj = cmax.shape[1]
    for p in range(cmax.shape[0]):
        _merge_lse(mx[gj:gj + bj], ssum[gj:gj + bj], cmax[p], csum[p])


@njit(inline="always", cache=True)
def _mirror_group(S, g0, g1):
    """Rows g0…g1 of a diagonal tile: zero the diagonal and copy each entry c > r to
    (c, r), block by block (h×h transposes touch h rows at a time)."""
    h = g1 - g0
    blk = S[g0:g1, g0:g1]
    for i in range(h):
        blk[i, i] = 0
        for j in range(i + 1, h):
            blk[j, i] = blk[i, j]
    for c0 in range(g1, S.shape[1], h):
        w = min(h, S.shape[1] - c0)
        src = S[g0:g1, c0:c0 + w]
        dst = S[c0:c0 + w, g0:g1]
        for j in range(w):
            for i in range(h):
                dst[j, i] = src[i, j]


@_Kernel
def _coef_tile(S, diag, inv_tau, bounds, lse_i, lse_j, w_i, w_j):
    """Pass 2 on tile (I, J): S ← H, H[r,c] = w_i[r]·σ_rc + w_j[c]·σ_cr with
    σ_rc = exp(l − lse_i[r]), σ_cr = exp(l − lse_j[c]) (l = l_rc = l_cr): the softmax
    part of the coefficients of both rows' gradients.  A diagonal tile computes c > r,
    mirrors it below the diagonal and zeroes the diagonal (H is then symmetric)."""
    for p in prange(len(bounds) - 1):
        for g0 in range(bounds[p], bounds[p + 1], _GROUP):
            g1 = min(g0 + _GROUP, bounds[p + 1])
            for r in range(g0, g1):
                c0 = r + 1 if diag else 0
                row = S[r, c0:]
                lj = lse_j[c0:]
                wj = w_j[c0:]
                li = lse_i[r]
                wi = w_i[r]
                for c in range(row.shape[0]):
                    lv = row[c] * inv_tau
                    row[c] = wi * _fexp(lv - li) + wj[c] * _fexp(lv - lj[c])
            if diag:
                _mirror_group(S, g0, g1)


@_Kernel
def _coef_tile_shifted(S, diag, inv_tau, shift, kept, bounds, alpha_i, alpha_j):
    """Pass 2 with a common shift M: S ← H, H[r,c] = e_rc·(α_i[r] + α_j[c]) with
    e_rc = exp(l_rc − M) (``kept``: S holds e from pass 1) and α = w/Σe
    (= w·exp(M − lse)): _coef_tile's H with one exp per entry, or none.  ``diag`` as
    in _coef_tile."""
    for p in prange(len(bounds) - 1):
        for g0 in range(bounds[p], bounds[p + 1], _GROUP):
            g1 = min(g0 + _GROUP, bounds[p + 1])
            for r in range(g0, g1):
                c0 = r + 1 if diag else 0
                row = S[r, c0:]
                aj = alpha_j[c0:]
                ai = alpha_i[r]
                if kept:
                    for c in range(row.shape[0]):
                        row[c] = row[c] * (ai + aj[c])
                else:
                    for c in range(row.shape[0]):
                        row[c] = _fexp(row[c] * inv_tau - shift) * (ai + aj[c])
            if diag:
                _mirror_group(S, g0, g1)


@njit(nogil=True, cache=True)
def _class_sums(U, lab, f, out):
    """out[lab[r]] += f[r]·U[r] (float64; serial: labels repeat)."""
    n, dim = U.shape
    for r in range(n):
        k = lab[r]
        fr = f[r]
        if fr != 0.0:
            for d in range(dim):
                out[k, d] += fr * np.float64(U[r, d])


@_Kernel
def _pos_logit_sums(U, lab, inv_tau, C, out):
    """out[r] = Σ_{p∈P(r)} l_rp = (u_r·C_{lab r} − ‖u_r‖²)/τ, C_k = Σ_{lab=k} u."""
    n, dim = U.shape
    for r in prange(n):
        k = lab[r]
        d = 0.0
        for j in range(dim):
            u = np.float64(U[r, j])
            d = _rsum(d, u * (C[k, j] - u))
        out[r] = d * inv_tau


@_Kernel
def _con_finish(U, G, lab, a, C, B, inv, norm, normalize, out):
    """out[r] = dL/dz_r from g = G[r] (softmax part of dL/du_r) plus the positives'
    part −a_r(C_k − u_r) − (B_k − a_r u_r) (k = lab[r], a = w/|P|, C_k = Σ u,
    B_k = Σ a·u over label k), through the normalisation: inv·(g − u(u·g))
    (inv·g where ‖z‖ < 1e-12), or g itself."""
    n, dim = U.shape
    for r in prange(n):
        k = lab[r]
        ar = a[r]
        d = 0.0
        if normalize and norm[r] >= NORM_EPS:
            for j in range(dim):
                u = np.float64(U[r, j])
                g = np.float64(G[r, j]) - ar * (C[k, j] - u) - (B[k, j] - ar * u)
                d = _rsum(d, u * g)
        f = inv[r] if normalize else 1.0
        for j in range(dim):
            u = np.float64(U[r, j])
            g = np.float64(G[r, j]) - ar * (C[k, j] - u) - (B[k, j] - ar * u)
            out[r, j] = f * (g - u * d)


# --- InfoNCE ----------------------------------------------------------------

@_Kernel
def _nce_rows(S, r0, rs, cs, wr, need_grad, loss):
    """In-batch InfoNCE, rows of S = A_R Pᵀ (raw); the target of row g is column g."""
    nb, n = S.shape
    neg_inf = S.dtype.type(-np.inf)
    for r in prange(nb):
        g = r0 + r
        rsg = rs[g]
        m = neg_inf
        for c in range(n):
            lv = S[r, c] * rsg * cs[c]
            S[r, c] = lv
            m = _fmax(m, lv)
        lpos = np.float64(S[r, g])
        s = 0.0
        for c in range(n):
            e = _fexp(S[r, c] - m)
            S[r, c] = e
            s = _rsum(s, np.float64(e))
        loss[g] = np.float64(m) + math.log(s) - lpos
        if need_grad:
            epos = np.float64(S[r, g])
            f = S.dtype.type(1.0 / s)
            w = wr[g]
            for c in range(n):
                S[r, c] = w * cs[c] * (S[r, c] * f)
            # σ − 1 = −(sum of the others)/s: no cancellation in float32
            S[r, g] = S.dtype.type(-np.float64(w * cs[g]) * ((s - epos) / s))


@_Kernel
def _nce_shared_rows(S, r0, A, P, rs, cp, cn, wr, need_grad, loss, gpos):
    """InfoNCE with shared negatives: rows of S = A_R Nᵀ (raw), positive logit aside.
    gpos[g] = wr_g·cp_g·(σ_pos − 1) (coefficient of p_g in g̃A_g and of a_g in g̃P_g)."""
    nb, n = S.shape
    dim = A.shape[1]
    for r in prange(nb):
        g = r0 + r
        rsg = rs[g]
        d = 0.0
        for k in range(dim):
            d = _rsum(d, np.float64(A[g, k]) * np.float64(P[g, k]))
        lpos = S.dtype.type(d * np.float64(rsg) * np.float64(cp[g]))
        m = lpos
        for c in range(n):
            lv = S[r, c] * rsg * cn[c]
            S[r, c] = lv
            m = _fmax(m, lv)
        epos = _fexp(lpos - m)
        s = np.float64(epos)
        for c in range(n):
            e = _fexp(S[r, c] - m)
            S[r, c] = e
            s = _rsum(s, np.float64(e))
        loss[g] = np.float64(m) + math.log(s) - np.float64(lpos)
        if need_grad:
            f = S.dtype.type(1.0 / s)
            w = wr[g]
            for c in range(n):
                S[r, c] = w * cn[c] * (S[r, c] * f)
            gpos[g] = -np.float64(w * cp[g]) * ((s - np.float64(epos)) / s)


@_Kernel
def _nce_paired(A, P, Ng, inv_tau, cosine, coef, need_grad, loss, gA, gP, gN):
    """InfoNCE with per-anchor negatives Ng (N, M, D): everything per anchor, in
    float64 (O(N·M·D), no product to hand to BLAS)."""
    n, dim = A.shape
    m_neg = Ng.shape[1]
    for i in prange(n):
        logit = np.empty(m_neg + 1)     # logit[0]: positive, logit[1 + j]: negative j
        nrm = np.empty(m_neg + 1)       # nrm[0]: ‖p‖, nrm[1 + j]: ‖n_j‖
        ga = np.empty(dim)
        na = 0.0
        dap = 0.0
        npp = 0.0
        for k in range(dim):
            a = np.float64(A[i, k])
            p = np.float64(P[i, k])
            na += a * a
            npp += p * p
            dap += a * p
        na = math.sqrt(na)
        nrm[0] = math.sqrt(npp)
        ia = 1.0 / max(na, NORM_EPS) if cosine else 1.0
        ip = 1.0 / max(nrm[0], NORM_EPS) if cosine else 1.0
        logit[0] = dap * ia * ip * inv_tau
        mx = logit[0]
        for j in range(m_neg):
            dn = 0.0
            nn = 0.0
            for k in range(dim):
                v = np.float64(Ng[i, j, k])
                dn += np.float64(A[i, k]) * v
                nn += v * v
            nrm[j + 1] = math.sqrt(nn)
            inj = 1.0 / max(nrm[j + 1], NORM_EPS) if cosine else 1.0
            logit[j + 1] = dn * ia * inj * inv_tau
            mx = max(mx, logit[j + 1])
        s = 0.0
        for j in range(m_neg + 1):
            s += math.exp(logit[j] - mx)
        lse = mx + math.log(s)
        loss[i] = lse - logit[0]
        if not need_grad:
            continue
        c = coef[i] * inv_tau
        # dL/dâ = gpos·p̂ + Σⱼ gⱼ·n̂ⱼ,  dL/dp̂ = gpos·â,  dL/dn̂ⱼ = gⱼ·â
        others = 0.0
        for j in range(1, m_neg + 1):
            others += math.exp(logit[j] - lse)
        gpos = -c * others                # c·(σ_pos − 1) without cancellation
        for k in range(dim):
            ga[k] = gpos * np.float64(P[i, k]) * ip
        for j in range(m_neg):
            inj = 1.0 / max(nrm[j + 1], NORM_EPS) if cosine else 1.0
            gj = c * math.exp(logit[j + 1] - lse)
            for k in range(dim):
                ga[k] += gj * np.float64(Ng[i, j, k]) * inj
            # through the normalisation of n_j (n̂ⱼ·â = logit / inv_tau)
            proj = logit[j + 1] / inv_tau if (cosine and nrm[j + 1] >= NORM_EPS) else 0.0
            for k in range(dim):
                gN[i, j, k] = gj * inj * (np.float64(A[i, k]) * ia
                                          - np.float64(Ng[i, j, k]) * inj * proj)
        # through the normalisation of p
        proj = logit[0] / inv_tau if (cosine and nrm[0] >= NORM_EPS) else 0.0
        for k in range(dim):
            gP[i, k] = gpos * ip * (np.float64(A[i, k]) * ia - np.float64(P[i, k]) * ip * proj)
        # through the normalisation of a
        d = 0.0
        if cosine and na >= NORM_EPS:
            for k in range(dim):
                d += np.float64(A[i, k]) * ia * ga[k]
        for k in range(dim):
            gA[i, k] = (ga[k] - np.float64(A[i, k]) * ia * d) * ia


# --- ArcFace / CosFace ------------------------------------------------------

@_Kernel
def _margin_rows(S, r0, lab, tcos, rx, cw, scale, mode, cos_m, sin_m, th, mm, margin, wr,
                 need_grad, loss):
    """Rows of S = X_R Wᵀ (raw): cos, the margin on the target, CE over scale·logits.
    mode 0: ArcFace, 1: ArcFace easy_margin, 2: CosFace (φ = cos − margin)."""
    nb, n = S.shape
    neg_inf = S.dtype.type(-np.inf)
    sc = S.dtype.type(scale)
    for r in prange(nb):
        g = r0 + r
        y = lab[g]
        rxg = rx[g]
        ct = tcos[g]                # cos θ of the target, in float64 (plan.target_cosines)
        m = neg_inf
        for c in range(n):
            lv = S[r, c] * rxg * cw[c] * sc
            S[r, c] = lv
            m = _fmax(m, lv)
        old = S[r, y]
        if mode == 2:
            phi = ct - margin
            dphi = 1.0
        else:
            sin = math.sqrt(max(1.0 - ct * ct, 0.0))
            phi = ct * cos_m - sin * sin_m
            dphi = cos_m + sin_m * ct / max(sin, SIN_EPS)
            use = ct > 0.0 if mode == 1 else ct > th
            if not use:
                phi = ct if mode == 1 else ct - mm
                dphi = 1.0
        lt = S.dtype.type(scale * phi)
        S[r, y] = lt
        if old >= m:                # the target was the max: take the max again
            m = neg_inf
            for c in range(n):
                m = _fmax(m, S[r, c])
        else:
            m = _fmax(m, lt)
        s = 0.0
        for c in range(n):
            e = _fexp(S[r, c] - m)
            S[r, c] = e
            s = _rsum(s, np.float64(e))
        loss[g] = np.float64(m) + math.log(s) - np.float64(lt)
        if need_grad:
            et = np.float64(S[r, y])
            f = S.dtype.type(1.0 / s)
            w = wr[g]
            for c in range(n):
                S[r, c] = w * cw[c] * (S[r, c] * f)
            S[r, y] = S.dtype.type(-np.float64(w * cw[y]) * ((s - et) / s) * dphi)


# --- batch-hard triplet -----------------------------------------------------

@_Kernel
def _bh_select(S, r0, sq, lab, hp, hn):
    """Rows of S = X_R Xᵀ: the hardest positive (largest d², c ≠ g) and negative
    (smallest d²), lowest index on ties.  (A vectorised max/min pass plus an index
    scan was slower than this single scalar pass.)"""
    nb, n = S.shape
    for r in prange(nb):
        g = r0 + r
        labg = lab[g]
        sqg = sq[g]
        best_p = -np.inf
        best_n = np.inf
        ip = -1
        ineg = -1
        for c in range(n):
            d2 = sqg + sq[c] - 2.0 * np.float64(S[r, c])
            # a NaN distance is the hardest (the first one wins), as NumPy's argmax
            # picks it, so that NaN in the embeddings propagates to the loss
            if lab[c] == labg:
                if c != g and (d2 > best_p or (d2 != d2 and best_p == best_p)):
                    best_p = d2
                    ip = c
            elif ineg < 0 or d2 < best_n or (d2 != d2 and best_n == best_n):
                best_n = d2
                ineg = c
        hp[g] = ip
        hn[g] = ineg


@njit(inline="always", cache=True)
def _rescaled_distance(X, g, j):
    """‖X[g] − X[j]‖ (float64) where the sum of squares overflowed or is NaN: scaled by
    the largest |difference| first (inf or NaN when that is)."""
    big = 0.0
    for k in range(X.shape[1]):
        a = abs(np.float64(X[g, k]) - np.float64(X[j, k]))
        if a > big or a != a:
            big = a
    if big == 0.0 or not math.isfinite(big):
        return big
    s = 0.0
    for k in range(X.shape[1]):
        v = (np.float64(X[g, k]) - np.float64(X[j, k])) / big
        s += v * v
    return big * math.sqrt(s)


@_Kernel
def _bh_finish(X, hp, hn, margin, squared, coef, need_grad, loss, grad, cp, cn):
    """Exact distances of the selected pairs, losses, the anchors' own gradient rows
    and the coefficients cp, cn of the scatter to the selected rows."""
    n, dim = X.shape
    for g in prange(n):
        ip = hp[g]
        ineg = hn[g]
        cp[g] = 0.0
        cn[g] = 0.0
        if ip < 0 or ineg < 0:
            loss[g] = 0.0
            if need_grad:
                for k in range(dim):
                    grad[g, k] = 0.0
            continue
        dp = 0.0
        dn = 0.0
        for k in range(dim):
            u = np.float64(X[g, k]) - np.float64(X[ip, k])
            v = np.float64(X[g, k]) - np.float64(X[ineg, k])
            dp += u * u
            dn += v * v
        if not squared:
            dp = math.sqrt(dp) if dp < math.inf else _rescaled_distance(X, g, ip)
            dn = math.sqrt(dn) if dn < math.inf else _rescaled_distance(X, g, ineg)
        arg = dp - dn + margin
        loss[g] = arg if (arg > 0.0 or arg != arg) else 0.0  # NaN propagates
        if need_grad:
            c = coef[g] if arg >= 0.0 else 0.0
            if squared:
                fp = 2.0 * c
                fn = 2.0 * c
            else:
                fp = c / dp if dp > 0.0 else 0.0
                fn = c / dn if dn > 0.0 else 0.0
            cp[g] = fp
            cn[g] = fn
            if fp == 0.0 and fn == 0.0:
                # (no 0·NaN: an anchor whose distance is NaN gets 0, as in the reference)
                for k in range(dim):
                    grad[g, k] = 0.0
                continue
            for k in range(dim):
                x = np.float64(X[g, k])
                grad[g, k] = fp * (x - np.float64(X[ip, k])) - fn * (x - np.float64(X[ineg, k]))


@njit(nogil=True, cache=True)
def _bh_scatter(X, hp, hn, cp, cn, grad):
    """The selected rows' share of the gradient (serial: rows may repeat)."""
    n, dim = X.shape
    for g in range(n):
        # anchors outside the hinge have both 0; an active one may have one 0 (its
        # distance 0 or inf) and still scatters it: 0·(x − x_i) is NaN where x_i is inf
        if cp[g] == 0.0 and cn[g] == 0.0:
            continue
        ip = hp[g]
        for k in range(dim):
            grad[ip, k] -= cp[g] * (np.float64(X[g, k]) - np.float64(X[ip, k]))
        ineg = hn[g]
        for k in range(dim):
            grad[ineg, k] += cn[g] * (np.float64(X[g, k]) - np.float64(X[ineg, k]))


# --- triplet ----------------------------------------------------------------

@njit(inline="always", cache=True)
def _dist(X, Y, i, eps, p, squared):
    """‖X[i] − Y[i] + eps‖_p (or its square with p = 2), in float64."""
    dim = X.shape[1]
    if squared or p == 2.0:
        s = 0.0
        for k in range(dim):
            v = np.float64(X[i, k]) - np.float64(Y[i, k]) + eps
            # in order, not _rsum: LLVM vectorises the parallel and the serial copy
            # of _triplet_rows differently, and a reassociated sum then differed in
            # the last bit with the thread count
            s += v * v
        if squared or s < math.inf:
            return s if squared else math.sqrt(s)
        # the squares overflowed (or a NaN): scaled by the largest |v|, as for general p
    if p == 1.0:
        s = 0.0
        for k in range(dim):
            s += abs(np.float64(X[i, k]) - np.float64(Y[i, k]) + eps)
        return s
    big = 0.0
    for k in range(dim):
        a = abs(np.float64(X[i, k]) - np.float64(Y[i, k]) + eps)
        if a > big or a != a:   # max() would skip a NaN; once NaN, big stays NaN
            big = a
    if math.isinf(p) or big == 0.0 or not math.isfinite(big):
        return big
    s = 0.0
    for k in range(dim):
        s += (abs(np.float64(X[i, k]) - np.float64(Y[i, k]) + eps) / big) ** p
    return big * s ** (1.0 / p)


@njit(inline="always", cache=True)
def _dist_grad_add(X, Y, i, eps, p, squared, d, factor, GX, GY):
    """GX[i] += factor·∇, GY[i] −= factor·∇ with ∇ = d‖v‖/dv at v = X[i] − Y[i] + eps."""
    dim = X.shape[1]
    if factor == 0.0:
        return
    if squared:
        for k in range(dim):
            t = factor * 2.0 * (np.float64(X[i, k]) - np.float64(Y[i, k]) + eps)
            GX[i, k] += t
            GY[i, k] -= t
        return
    if d == 0.0:
        return
    if math.isinf(p):
        first = 0
        big = -1.0
        for k in range(dim):
            a = abs(np.float64(X[i, k]) - np.float64(Y[i, k]) + eps)
            if a > big:
                big = a
                first = k
        v = np.float64(X[i, first]) - np.float64(Y[i, first]) + eps
        t = factor * (1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0))
        GX[i, first] += t
        GY[i, first] -= t
        return
    for k in range(dim):
        v = np.float64(X[i, k]) - np.float64(Y[i, k]) + eps
        if p == 2.0:
            t = v / d
        elif p == 1.0:
            t = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)
        elif v == 0.0:
            t = 0.0
        else:
            t = (abs(v) / d) ** (p - 1.0)
            t = t if v > 0.0 else -t
        GX[i, k] += factor * t
        GY[i, k] -= factor * t


@njit(inline="always", cache=True)
def _sign(v):
    return 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)


@_Kernel
def _triplet_rows(A, P, Q, margin, p, eps, swap, squared, coef, need_grad, loss, gA, gP, gQ):
    n, dim = A.shape
    # linear: d‖v‖/dv = f·v (squared: f = 2; p = 2: f = 1/‖v‖), sign: p = 1
    linear = squared or p == 2.0
    for i in prange(n):
        d_ap = _dist(A, P, i, eps, p, squared)
        d_an = _dist(A, Q, i, eps, p, squared)
        d_neg = d_an
        swapped = False
        if swap:
            d_pn = _dist(P, Q, i, eps, p, squared)
            if d_pn < d_an:
                swapped = True
                d_neg = d_pn
        arg = d_ap - d_neg + margin
        loss[i] = max(arg, 0.0)
        if not need_grad:
            continue
        c = coef[i] if arg >= 0.0 else 0.0
        if linear or p == 1.0:
            # one pass: ga = c(∇ap − ∇an), gp = −c∇ap, gn = c∇an (swapped: the
            # negative distance is d(p, n): ga = c∇ap, gp = −c(∇ap + ∇pn), gn = c∇pn)
            if squared:
                f_ap = 2.0 * c
                f_ng = 2.0 * c
            else:
                f_ap = c / d_ap if d_ap > 0.0 else 0.0
                f_ng = c / d_neg if d_neg > 0.0 else 0.0
            for k in range(dim):
                a = np.float64(A[i, k])
                pp = np.float64(P[i, k])
                q = np.float64(Q[i, k])
                v_ap = a - pp + eps
                v_ng = (pp if swapped else a) - q + eps
                if linear:
                    t_ap = f_ap * v_ap
                    t_ng = f_ng * v_ng
                else:
                    t_ap = c * _sign(v_ap)
                    t_ng = c * _sign(v_ng)
                if swapped:
                    gA[i, k] = t_ap
                    gP[i, k] = -t_ap - t_ng
                else:
                    gA[i, k] = t_ap - t_ng
                    gP[i, k] = -t_ap
                gQ[i, k] = t_ng
        else:
            for k in range(dim):
                gA[i, k] = 0.0
                gP[i, k] = 0.0
                gQ[i, k] = 0.0
            _dist_grad_add(A, P, i, eps, p, squared, d_ap, c, gA, gP)
            if swapped:
                _dist_grad_add(P, Q, i, eps, p, squared, d_neg, -c, gP, gQ)
            else:
                _dist_grad_add(A, Q, i, eps, p, squared, d_neg, -c, gA, gQ)


# ---------------------------------------------------------------------------
# Python drivers
# ---------------------------------------------------------------------------

def _row_sqnorms(x2d):
    sq = np.empty(x2d.shape[0])
    _sqnorms(_row_threads(x2d.size))(x2d, sq)
    return sq


def _project(x2d, g2d, inv, norm):
    if x2d.shape[0]:
        _norm_backward(_row_threads(x2d.size))(x2d, g2d, inv, norm)


def _block_rows(n_rows, n_cols, itemsize, block_rows):
    forced = BLOCK_ROWS if block_rows is None else block_rows
    return plan.block_rows(n_rows, n_cols, itemsize, forced, BLOCK_BYTES)


# --- triplet ----------------------------------------------------------------

def triplet(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False,
            squared=False, coef=None, need_grad=True, out=None):
    """Triplet margin loss; see :func:`numbaloss.reference.embedding.triplet`.

    Inputs (N, D) C-contiguous, one float dtype.  Grads (anchor, positive, negative).
    """
    A, P, Q = anchor, positive, negative
    shape = A.shape
    A2, P2, Q2 = (x.reshape(-1, shape[-1]) for x in (A, P, Q))
    n = A2.shape[0]
    coef = plan.coefficients(coef, n)
    losses = np.empty(n)
    if need_grad:
        grads = plan.grad_buffers(out, [shape] * 3, A.dtype)
        gA, gP, gQ = (g.reshape(n, shape[-1]) for g in grads)
    else:
        grads = None
        gA = gP = gQ = np.empty((0, 0), A.dtype)
    # rows handed out in chunks as threads ask (not split in halves up front): on a
    # busy machine a thread that is not running then holds up only its last chunk
    with numba.parallel_chunksize(TRIPLET_CHUNK_ROWS):
        _triplet_rows(_use_threads(A2.size))(A2, P2, Q2, float(margin), float(p), float(eps),
                                             bool(swap), bool(squared), coef, need_grad,
                                             losses, gA, gP, gQ)
    return losses, grads


# --- batch-hard triplet -----------------------------------------------------

def batch_hard_triplet(embeddings, labels, **kwargs):
    """Batch-hard triplet loss; see :func:`numbaloss.reference.embedding.batch_hard_triplet`
    (driver: :func:`numbaloss._pairwise_plan.batch_hard_triplet`)."""
    return plan.batch_hard_triplet(_KERNELS, embeddings, labels, **kwargs)


# --- InfoNCE ----------------------------------------------------------------

def info_nce(anchor, positive, negatives=None, **kwargs):
    """InfoNCE; see :func:`numbaloss.reference.embedding.info_nce` (driver:
    :func:`numbaloss._pairwise_plan.info_nce`)."""
    return plan.info_nce(_KERNELS, anchor, positive, negatives, **kwargs)


# --- SupCon / NT-Xent -------------------------------------------------------

def _chunk_bounds(n_rows, n_cols, diag, parts):
    """Row boundaries of at most ``parts`` chunks of about equal work, at multiples of
    _GROUP (a diagonal tile's row r has n_cols − r − 1 entries)."""
    starts = np.arange(0, n_rows, _GROUP)
    work = np.minimum(starts + _GROUP, n_rows) - starts
    if diag:
        work = work * np.maximum(n_cols - starts - _GROUP // 2, 1)
    cum = np.cumsum(work)
    cut = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts)
    return np.unique(np.concatenate(([0], starts[cut], [n_rows]))).astype(np.int64)


def _tile_products(UI, UJ, diag, S):
    """S = U_I·U_Jᵀ; on a diagonal tile only the DIAG_STRIPS row strips from the
    diagonal to the end of the row (k strips: (k + 1)/2k of the products)."""
    if not diag:
        plan.matmul_t(UI, UJ, S)
        return
    bi = UI.shape[0]
    step = max(_GROUP, -(-bi // DIAG_STRIPS))
    for s0 in range(0, bi, step):
        s1 = min(s0 + step, bi)
        plan.matmul_t(UI[s0:s1], UI[s0:], S[s0:s1, s0:])


class _Tile:
    """Tile (I, J) of the contrastive logits: rows gi… and gj… of U, its chunks."""

    def __init__(self, U, gi, gj, T, parts):
        n = U.shape[0]
        self.gi, self.gj = gi, gj
        self.UI = U[gi:min(gi + T, n)]
        self.UJ = U[gj:min(gj + T, n)]
        self.diag = gi == gj
        bi, bj = self.UI.shape[0], self.UJ.shape[0]
        self.bounds = _chunk_bounds(bi, bj, self.diag, parts)

    def products(self, flat):
        S = plan.block_view(flat, self.UI.shape[0], self.UJ.shape[0])
        _tile_products(self.UI, self.UJ, self.diag, S)
        return S


def _contrastive(views, n_samples, lab, n_classes, npos, kappa, tau, coef, normalize,
                 gviews, block_rows):
    """Shared driver of SupCon and NT-Xent.

    ``views``: V arrays (N, D) (view v holds the global rows v·N … v·N + N − 1; they
    may be strided); ``lab``: int64 label code in [0, n_classes) of each global row;
    ``npos``: |P(r)|; ``gviews``: the matching gradient arrays (filled) or None.
    Returns the losses (V·N,).
    """
    n_views = len(views)
    n = n_views * n_samples
    dim = views[0].shape[1]
    dt = views[0].dtype
    losses = np.zeros(n)
    need_grad = gviews is not None
    valid = npos > 0
    if n == 0 or not valid.any():
        if need_grad:
            for gv in gviews:
                gv[...] = 0
        return losses

    forced = BLOCK_ROWS if block_rows is None else block_rows
    if forced is not None:
        T = max(1, int(forced))
    else:
        T = TILE if TILE is not None else math.isqrt(BLOCK_BYTES // np.dtype(dt).itemsize)
        T = max(1, int(T))
    bt = min(T, n)
    par = _use_threads(bt * bt)
    parts = 4 * numba.get_num_threads() if par else 1
    inv_tau = 1.0 / tau

    U = np.empty((n, dim), dt)
    norm = np.empty(n)
    for v, X in enumerate(views):
        sl = slice(v * n_samples, (v + 1) * n_samples)
        _unit_rows(_row_threads(X.size))(X, normalize, norm[sl], U[sl])
        huge = plan.repair_norms(X, norm[sl])      # (float64 rows of entries ≳ 1e154)
        if normalize and huge.size:
            with np.errstate(invalid="ignore"):    # (rows holding ±inf: inf/inf, as the reference)
                U[sl][huge] = (X[huge].astype(np.float64) / norm[sl][huge, None]).astype(dt)

    # the positives: Σ_{p∈P(r)} l_rp from the class sums C_k = Σ_{lab=k} u
    C = np.zeros((n_classes, dim))
    _class_sums(U, lab, np.ones(n), C)
    psum = np.empty(n)
    _pos_logit_sums(_row_threads(U.size))(U, lab, inv_tau, C, psum)
    dominant = np.empty(0, np.int64) if normalize else plan.self_dominated_rows(norm, lab, n_classes, valid)
    if dominant.size:
        positives, _ = plan.positive_sums(U, lab, dominant)
        psum[dominant] = np.einsum("ij,ij->i", U[dominant].astype(np.float64), positives) * inv_tau

    # pass 1: the log-sum-exp over A(r) = all rows but r.  M = max‖u‖²/τ bounds every
    # logit (Cauchy-Schwarz), and every logit is ≥ −M: when 2M is within _SHIFT_SPAN,
    # exp(l − M) can neither overflow nor lose the row's largest terms, and one exp
    # per entry serves its row and its column; otherwise each row gets its own max.
    # (With the shift, pass 2 scales e by α = w/Σe ≤ max(w)·e^(2M): that must not
    # overflow either.)
    usq = norm * norm if not normalize else (norm / np.maximum(norm, NORM_EPS)) ** 2
    shift = dt.type(np.max(usq) * inv_tau)
    w = np.where(valid, coef * kappa * inv_tau, 0.0)
    shifted = (2.0 * float(shift) <= _SHIFT_SPAN[dt.itemsize]
               and np.max(w) * math.exp(2.0 * float(shift)) <= np.finfo(dt).max / 4)
    tiles = [_Tile(U, gi, gj, T, parts) for gi in range(0, n, T) for gj in range(gi, n, T)]
    single = len(tiles) == 1          # then pass 2 reuses pass 1's tile
    flat = np.empty(bt * bt, dt)
    rmax = np.empty(bt, dt)
    rsum = np.empty(bt)
    cmax = np.empty((parts, bt), dt)
    cnew = np.empty((parts, bt), dt)
    csum = np.empty((parts, bt))
    mx = np.full(n, float(shift) if shifted else -np.inf)
    ssum = np.zeros(n)
    for t in tiles:
        S = t.products(flat)
        bi, bj = S.shape
        p = len(t.bounds) - 1
        if shifted:
            _sum_tile_shifted(par)(S, t.diag, dt.type(inv_tau), shift, single and need_grad,
                                   t.bounds, rsum[:bi], csum[:p, :bj])
            ssum[t.gi:t.gi + bi] += rsum[:bi]
            ssum[t.gj:t.gj + bj] += csum[:p, :bj].sum(axis=0)
        else:
            _lse_tile(par)(S, t.diag, dt.type(inv_tau), t.bounds, rmax[:bi], rsum[:bi],
                           cmax[:p, :bj], cnew[:p, :bj], csum[:p, :bj])
            _merge_tile(t.gi, t.gj, rmax[:bi], rsum[:bi], cmax[:p, :bj], csum[:p, :bj], mx,
                        ssum)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = mx + np.log(ssum)
        losses[:] = np.where(valid, kappa * (lse - psum * np.where(valid, 1.0 / npos, 0.0)),
                             0.0)
    if not need_grad:
        return losses

    # pass 2: G = H·U, the softmax part of dL/du (tiles recomputed unless single)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (w / ssum).astype(dt)
    lse_t = lse.astype(dt)
    w_t = w.astype(dt)
    G = np.empty((n, dim), dt) if single else np.zeros((n, dim), dt)
    tmp = np.empty((bt, dim), dt)
    for t in tiles:
        S = plan.block_view(flat, t.UI.shape[0], t.UJ.shape[0]) if single else t.products(flat)
        bi, bj = S.shape
        gi, gj = t.gi, t.gj
        if shifted:
            _coef_tile_shifted(par)(S, t.diag, dt.type(inv_tau), shift, single, t.bounds,
                                    alpha[gi:gi + bi], alpha[gj:gj + bj])
        else:
            _coef_tile(par)(S, t.diag, dt.type(inv_tau), t.bounds, lse_t[gi:gi + bi],
                            lse_t[gj:gj + bj], w_t[gi:gi + bi], w_t[gj:gj + bj])
        if single:
            np.matmul(S, U, out=G)
            continue
        np.matmul(S, t.UJ, out=tmp[:bi])
        G[gi:gi + bi] += tmp[:bi]
        if not t.diag:
            np.matmul(S.T, t.UI, out=tmp[:bj])
            G[gj:gj + bj] += tmp[:bj]

    # the positives' part, −(w/|P|)·Σ_{p∈P(r)} u_p and its transpose, and the
    # normalisation backward, into the caller's (possibly strided) gradient views
    a = w * np.where(valid, 1.0 / np.maximum(npos, 1), 0.0)
    B = np.zeros((n_classes, dim))
    _class_sums(U, lab, a, B)
    inv = 1.0 / np.maximum(norm, NORM_EPS)
    for v, gv in enumerate(gviews):
        sl = slice(v * n_samples, (v + 1) * n_samples)
        _con_finish(_row_threads(gv.size))(U[sl], G[sl], lab[sl], a[sl], C, B, inv[sl],
                                           norm[sl], normalize, gv)
    if dominant.size:    # (no normalisation here: the gradient is the one w.r.t. u)
        positives, weighted = plan.positive_sums(U, lab, dominant, a)
        rows = G[dominant].astype(np.float64) - a[dominant, None] * positives - weighted
        for r, row in zip(dominant, rows):
            gviews[r // n_samples][r % n_samples] = row
    return losses


def nt_xent(z_i, z_j, *, temperature=0.5, coef=None, need_grad=True, out=None,
            block_rows=None):
    """NT-Xent (SimCLR); see :func:`numbaloss.reference.embedding.nt_xent`.

    Computed as SupCon with V = 2 views and no labels (each row's only positive is
    its pair), through the symmetric kernels.  Losses (2N,); grads (z_i, z_j).
    """
    n, dim = z_i.shape
    coef = plan.coefficients(coef, 2 * n)
    codes = np.arange(n, dtype=np.int64)
    lab = np.concatenate((codes, codes))
    npos = np.ones(2 * n, dtype=np.int64)
    grads = plan.grad_buffers(out, [z_i.shape, z_j.shape], z_i.dtype) if need_grad else None
    losses = _contrastive([z_i, z_j], n, lab, n, npos, 1.0, float(temperature), coef, True,
                          grads, block_rows)
    return losses, grads


def supcon(features, labels=None, *, temperature=0.07, base_temperature=None,
           normalize=True, coef=None, need_grad=True, out=None, block_rows=None):
    """Supervised contrastive loss; see :func:`numbaloss.reference.embedding.supcon`.

    features (N, V, D) or (N, D), C-contiguous; losses (N·V,) view-major; anchors
    without a positive get loss 0 (``supcon_valid_anchors``).
    """
    F = features
    F3 = F[:, None, :] if F.ndim == 2 else F
    n_samples, n_views, dim = F3.shape
    tau = float(temperature)
    tau_base = tau if base_temperature is None else float(base_temperature)
    coef = plan.coefficients(coef, n_samples * n_views)
    if labels is None:
        codes = np.arange(n_samples, dtype=np.int64)
        count = np.ones(n_samples, dtype=np.int64)
        n_classes = n_samples
    else:
        codes, count, n_classes = plan.label_codes(labels)
    lab = np.concatenate((codes,) * n_views)
    npos = np.concatenate((n_views * count - 1,) * n_views)
    views = [F3[:, v, :] for v in range(n_views)]
    if need_grad:
        (grad,) = plan.grad_buffers(out, [F.shape], F.dtype)
        G3 = grad[:, None, :] if F.ndim == 2 else grad
        gviews = [G3[:, v, :] for v in range(n_views)]
    else:
        grad, gviews = None, None
    losses = _contrastive(views, n_samples, lab, n_classes, npos, tau / tau_base, tau, coef,
                          bool(normalize), gviews, block_rows)
    return losses, ((grad,) if need_grad else None)


# --- ArcFace / CosFace ------------------------------------------------------

def arcface(embeddings, labels, weight, **kwargs):
    """ArcFace; see :func:`numbaloss.reference.embedding.arcface` (driver:
    :func:`numbaloss._pairwise_plan.margin_softmax`)."""
    return plan.arcface(_KERNELS, embeddings, labels, weight, **kwargs)


def cosface(embeddings, labels, weight, **kwargs):
    """CosFace; see :func:`numbaloss.reference.embedding.cosface` (driver:
    :func:`numbaloss._pairwise_plan.margin_softmax`)."""
    return plan.cosface(_KERNELS, embeddings, labels, weight, **kwargs)


_KERNELS = plan.BlockKernels(
    sqnorms=_row_sqnorms,
    project=_project,
    block_rows=_block_rows,
    use_threads=_use_threads,
    nce_rows=lambda par, *args: _nce_rows(par)(*args),
    nce_shared_rows=lambda par, *args: _nce_shared_rows(par)(*args),
    nce_paired=lambda par, *args: _nce_paired(par)(*args),
    margin_rows=lambda par, *args: _margin_rows(par)(*args),
    bh_select=lambda par, *args: _bh_select(par)(*args),
    bh_finish=lambda par, *args: _bh_finish(par)(*args),
    bh_scatter=_bh_scatter,
)

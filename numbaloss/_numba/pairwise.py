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
* Similarities come from BLAS (``np.matmul`` with ``out=`` on row blocks or tiles of
  the raw inputs; ``x @ x.T`` is sent to gemm with a copy, NumPy's syrk was slower).
  Cosine normalisation is never materialised: the products are taken on the raw rows
  and the fused kernels scale entry (r, c) by inv_r·inv_c (inv = 1/max(‖x‖, 1e-12)).
  The gradient products are taken on the raw rows too, with the scales folded into
  the coefficient matrix, which yields g̃ = inv·(dL/dx̂); the normalisation backward
  is then g = g̃ − [‖x‖ ≥ 1e-12]·x·inv²·(x·g̃), one O(N·D) pass.
* One fused ``prange`` kernel per block does scale, max shift, exp, log-sum-exp, the
  loss and the gradient coefficients in place in the similarity block, one row at a
  time while the row is in cache; one or two more products give the gradients.
* ``exp`` is a branch-free Cody-Waite + polynomial (Cephes) that LLVM vectorises, in
  float32 for float32 data (16 lanes with AVX-512) and float64 for float64 data:
  libm's ``exp`` is a scalar call here (no SVML) and cost 5-8x the whole kernel.  Row
  sums use an ``fadd reassoc`` intrinsic and row maxima ``llvm.maxnum nnan`` so those
  reductions vectorise while the rest keeps strict IEEE semantics (no fastmath).
* Row blocks (InfoNCE, ArcFace/CosFace, batch-hard triplet): b = BLOCK_BYTES //
  (n_cols·itemsize) anchors per block (64 MiB: all of N = 4,096 at once; 256 rows at
  N = 65,536), S_R = A_R·Kᵀ, kernel, g̃A_R = G̃_R·K, g̃K += G̃_Rᵀ·A_R: 3 GEMMs, memory
  O(N·b).
* NT-Xent and SupCon (Z·Zᵀ, symmetric) work on T×T tiles on and above the diagonal
  (T = √(BLOCK_BYTES/itemsize) = 4,096 in float32, see ``TILE``), in two passes.
  Pass 1: each tile's logits give the rows of I their online log-sum-exp row-wise
  and the rows of J theirs column-wise (half the similarity GEMM).  Pass 2 recomputes
  the tile and writes H_IJ = A_IJ + A_JIᵀ with A_rc = w_r·σ_rc (both exps from the
  one logit, l_rc = l_cr), then g̃_I += H_IJ·Z_J and g̃_J += H_IJᵀ·Z_I.  That is 2
  GEMM-equivalents and 2 exps per entry against 3 GEMMs and 1 exp with full row
  blocks (``SYMMETRIC = False`` keeps that path).  Measured at N = 4,096 (2N = 8,192
  rows), D = 128, float32, value and gradient:

  ==========================  ==========  ==========  ==========  ==========
  NT-Xent                     row blocks  T = 4,096   T = 2,048   T = 1,024
  one thread, CPU time        833 ms      835 ms      751 ms      697 ms
  two threads, busy machine   2.36 s      2.57 s      3.35 s      6.72 s
  value only, two threads     1.39 s      1.02 s      1.31 s      2.53 s
  ==========================  ==========  ==========  ==========  ==========

  Small tiles save GEMM work and stay in cache, but each tile costs a few BLAS calls
  and parallel regions whose thread wake-ups a busy 2-core machine punishes; the
  default, the largest tile within BLOCK_BYTES, ties with row blocks for the
  gradient and is faster for the value alone.  With n ≤ T there is a single tile,
  kept from pass 1 (no recompute), and a small single tile runs as one serial
  compiled call.  Memory O(T²) + O(N·D).
* The positives of SupCon/NT-Xent never enter the O(N²) loops: with class sums
  C_k = Σ_{label k} inv·z and B_k = Σ_{label k} w·z/|P| (float64, O(N·D)), the
  positive logits' sum is rs_r·(z_r·C_k − inv_r‖z_r‖²) and the positives' share of
  the gradient −(w_r/|P_r|)(C_k − inv_r z_r) − inv_r(B_k − (w_r/|P_r|) z_r).
* Small problems run serial copies of the kernels (threads cost more than they give
  below ``SERIAL_BELOW`` block entries, and much more on a busy machine).

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

from ..reference.embedding import (  # noqa: F401  (re-exported for the framework)
    NORM_EPS,
    SIN_EPS,
    _label_codes,
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
#: tile edge of the symmetric two-pass path (NT-Xent, SupCon); None: the largest tile
#: within BLOCK_BYTES, √(BLOCK_BYTES/itemsize) = 4,096 in float32, 2,896 in float64
#: (smaller tiles are faster on one thread or an idle machine: see the table above)
TILE = None
#: NT-Xent / SupCon beyond one tile: True → the symmetric tiles on and above the
#: diagonal; False → full row blocks of BLOCK_BYTES (S_R = Z_R·Zᵀ, 3 GEMMs, 1 exp per
#: entry, g̃ accumulated in an N·V×D buffer)
SYMMETRIC = True
#: blocks with fewer entries than this run the serial kernels
SERIAL_BELOW = 1 << 15


# ---------------------------------------------------------------------------
# intrinsics and vectorisable scalar functions
# ---------------------------------------------------------------------------

@intrinsic
def _i32_as_f32(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32 (LLVM ``bitcast``)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


@intrinsic
def _i64_as_f64(typingctx, i):
    """Reinterpret the bits of an int64 as a float64 (LLVM ``bitcast``)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(i), codegen


@intrinsic
def _radd(typingctx, a, b):
    """float64 ``a + b`` with LLVM ``reassoc nsz``: a vectorisable accumulator."""
    if a != types.float64 or b != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("reassoc", "nsz"))

    return types.float64(types.float64, types.float64), codegen


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


@njit(cache=True)
def _exp32(x):
    """e**x in float32 for x ≤ 88 (Cephes expf: Cody-Waite + degree-6 polynomial,
    ≤ 1 ulp); x < -87.33 (true result subnormal) gives 0, exp(-inf) = 0, nan → nan."""
    xc = x if x > np.float32(-87.5) else np.float32(-87.5)
    xc = xc if xc < np.float32(88.5) else np.float32(88.5)
    k = math.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))
    r = xc - k * np.float32(0.693359375)
    r = r - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    res = p * _i32_as_f32((np.int32(k) + np.int32(127)) << np.int32(23))
    res = np.float32(0.0) if x < np.float32(-87.33) else res
    return x if x != x else res


@njit(cache=True)
def _exp64(x):
    """e**x in float64 for x ≤ 709 (Cephes exp: Cody-Waite + Padé (2,3), ~1 ulp);
    x < -708.39 (true result subnormal) gives 0, exp(-inf) = 0, nan → nan."""
    xc = x if x > -708.5 else -708.5
    xc = xc if xc < 709.0 else 709.0
    k = math.floor(xc * 1.4426950408889634 + 0.5)
    r = xc - k * 6.93145751953125e-1
    r = r - k * 1.42860682030941723212e-6
    xx = r * r
    px = r * ((1.26177193074810590878e-4 * xx + 3.02994407707441961300e-2) * xx
              + 9.99999999999999999910e-1)
    q = (((3.00198505138664455042e-6 * xx + 2.52448340349684104192e-3) * xx
          + 2.27265548208155028766e-1) * xx + 2.00000000000000000009e0)
    y = 1.0 + 2.0 * (px / (q - px))
    res = y * _i64_as_f64((np.int64(k) + np.int64(1023)) << np.int64(52))
    res = 0.0 if x < -708.39 else res
    return x if x != x else res


def _fexp(x):  # pragma: no cover - replaced by the overload inside jitted code
    return math.exp(x)


@overload(_fexp)
def _fexp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
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


@_Kernel
def _sqnorms(x, out):
    """out[r] = Σₖ x[r,k]² in float64."""
    for r in prange(x.shape[0]):
        s = 0.0
        for k in range(x.shape[1]):
            v = np.float64(x[r, k])
            s = _radd(s, v * v)
        out[r] = s


@_Kernel
def _norm_backward(x, g, inv, norm):
    """In place: g ← g − [‖x‖ ≥ 1e-12]·x·inv²·(x·g), for g = inv·dL/dx̂."""
    for r in prange(x.shape[0]):
        if norm[r] >= NORM_EPS:
            d = 0.0
            for k in range(x.shape[1]):
                d = _radd(d, np.float64(x[r, k]) * np.float64(g[r, k]))
            f = d * inv[r] * inv[r]
            for k in range(x.shape[1]):
                g[r, k] = np.float64(g[r, k]) - f * np.float64(x[r, k])


# --- SupCon / NT-Xent -------------------------------------------------------
#
# Tiles (I, J), I ≤ J, of the raw products S = Z_I Z_Jᵀ; logits l = S·rs_r·cs_c with
# rs = inv/τ, cs = inv.  The kernels are label-free: the positives enter the loss and
# the gradient only through class sums (O(N·D), see _class_sums / _pos_grad).

@_Kernel
def _con_tile_rows(S, gi0, gj0, rs, cs, mx, ssum):
    """Pass 1, rows of tile (I, J) of raw products: the logits in place, and the
    online log-sum-exp (running max mx, sum ssum) of rows I; the diagonal r = c is
    left out (set to -inf)."""
    bi, bj = S.shape
    diag = gi0 == gj0
    neg_inf = S.dtype.type(-np.inf)
    for r in prange(bi):
        g = gi0 + r
        rsg = rs[g]
        tm = neg_inf
        if diag:                     # two loops around c = r, which is left out
            for c in range(r):
                lv = S[r, c] * rsg * cs[gj0 + c]
                S[r, c] = lv
                tm = _fmax(tm, lv)
            for c in range(r + 1, bj):
                lv = S[r, c] * rsg * cs[gj0 + c]
                S[r, c] = lv
                tm = _fmax(tm, lv)
            S[r, r] = neg_inf
        else:
            for c in range(bj):
                lv = S[r, c] * rsg * cs[gj0 + c]
                S[r, c] = lv
                tm = _fmax(tm, lv)
        mo = mx[g]
        mn = _fmax(mo, tm)
        if mn == neg_inf:            # nothing in this tile (a 1-row diagonal tile)
            continue
        s = 0.0
        for c in range(bj):
            s = _radd(s, np.float64(_fexp(S[r, c] - mn)))
        ssum[g] = ssum[g] * math.exp(np.float64(mo) - np.float64(mn)) + s
        mx[g] = mn


@_Kernel
def _con_tile_cols(S, gj0, mx, ssum, cmax, csum):
    """Pass 1, columns of an off-diagonal tile (logits already in S): the online
    log-sum-exp of rows J, by chunks of 64 columns (each thread reads row segments)."""
    bi, bj = S.shape
    CH = 64
    for k in prange((bj + CH - 1) // CH):
        c0 = k * CH
        width = min(CH, bj - c0)
        cm = cmax[c0:c0 + width]          # 0-based views: the loops below vectorise
        cs = csum[c0:c0 + width]
        m_old = mx[gj0 + c0:gj0 + c0 + width]
        for c in range(width):
            cm[c] = m_old[c]
            cs[c] = 0.0
        for r in range(bi):
            row = S[r, c0:c0 + width]
            for c in range(width):
                cm[c] = _fmax(cm[c], row[c])
        for r in range(bi):
            row = S[r, c0:c0 + width]
            for c in range(width):
                cs[c] = _radd(cs[c], np.float64(_fexp(row[c] - cm[c])))
        for c in range(width):
            h = gj0 + c0 + c
            ssum[h] = ssum[h] * math.exp(np.float64(mx[h]) - np.float64(cm[c])) + cs[c]
            mx[h] = cm[c]


@_Kernel
def _con_tile_grad(S, gi0, gj0, rs, cs, lse, wr, scaled):
    """Pass 2, tile (I, J) → H_IJ = A_IJ + A_JIᵀ in place, the softmax part of the
    coefficients: A[r,c] = wr_r·cs_c·exp(l_rc − lse_r), 0 on the diagonal.  S holds
    raw products, or logits when ``scaled`` (single tile kept from pass 1)."""
    bi, bj = S.shape
    zero = S.dtype.type(0.0)
    for r in prange(bi):
        g = gi0 + r
        rsg = rs[g]
        csg = cs[g]
        lg = lse[g]
        wg = wr[g]
        for c in range(bj):
            h = gj0 + c
            lv = S[r, c] if scaled else S[r, c] * rsg * cs[h]
            S[r, c] = wg * cs[h] * _fexp(lv - lg) + wr[h] * csg * _fexp(lv - lse[h])
        if gi0 == gj0:
            S[r, r] = zero


@_Kernel
def _con_rows(S, r0, rs, cs, wr, need_grad, mx, lse):
    """Full rows of S = Z_R Zᵀ (raw; row r is global row r0 + r, column c global row c):
    logits, the log-sum-exp over c ≠ g (into mx/lse) and, with ``need_grad``, the
    softmax part of the coefficients A[r,c] = wr_g·cs_c·σ_gc in place (A[r,g] = 0)."""
    nb, n = S.shape
    neg_inf = S.dtype.type(-np.inf)
    zero = S.dtype.type(0.0)
    for r in prange(nb):
        g = r0 + r
        rsg = rs[g]
        m = neg_inf
        for c in range(g):
            lv = S[r, c] * rsg * cs[c]
            S[r, c] = lv
            m = _fmax(m, lv)
        for c in range(g + 1, n):
            lv = S[r, c] * rsg * cs[c]
            S[r, c] = lv
            m = _fmax(m, lv)
        S[r, g] = neg_inf
        mx[g] = m
        if m == neg_inf:            # a single row: nothing to normalise over
            lse[g] = -np.inf
            if need_grad:
                for c in range(n):
                    S[r, c] = zero
            continue
        s = 0.0
        for c in range(n):
            e = _fexp(S[r, c] - m)
            S[r, c] = e
            s = _radd(s, np.float64(e))
        lse[g] = np.float64(m) + math.log(s)
        if need_grad:
            w = S.dtype.type(np.float64(wr[g]) / s)
            for c in range(n):
                S[r, c] = w * cs[c] * S[r, c]


@njit(nogil=True, cache=True)
def _class_sums(X, lab, f, out):
    """out[lab[r]] += f[r]·X[r] (float64; serial: labels repeat)."""
    n, dim = X.shape
    for r in range(n):
        k = lab[r]
        fr = f[r]
        if fr != 0.0:
            for d in range(dim):
                out[k, d] += fr * np.float64(X[r, d])


@_Kernel
def _pos_logit_sums(X, lab, rs, cs, sq, C, out):
    """out[r] = Σ_{p∈P(r)} l_rp = rs_r·(x_r·C_{lab r} − cs_r‖x_r‖²), C_k = Σ_{lab=k} cs·x."""
    n, dim = X.shape
    for r in prange(n):
        k = lab[r]
        d = 0.0
        for j in range(dim):
            d = _radd(d, np.float64(X[r, j]) * C[k, j])
        out[r] = rs[r] * (d - cs[r] * sq[r])


@_Kernel
def _pos_grad(X, lab, wrip, cs, C, B, G):
    """G_r += −wrip_r·(C_k − cs_r x_r) − cs_r·(B_k − wrip_r x_r), k = lab[r]: the
    positives' part of g̃ (C_k = Σ cs·x, B_k = Σ wrip·x over label k)."""
    n, dim = X.shape
    for r in prange(n):
        k = lab[r]
        a = wrip[r]
        c = cs[r]
        for j in range(dim):
            x = np.float64(X[r, j])
            G[r, j] = np.float64(G[r, j]) - a * (C[k, j] - c * x) - c * (B[k, j] - a * x)


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
            s = _radd(s, np.float64(e))
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
            d = _radd(d, np.float64(A[g, k]) * np.float64(P[g, k]))
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
            s = _radd(s, np.float64(e))
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
def _margin_rows(S, r0, lab, rx, cw, scale, mode, cos_m, sin_m, th, mm, margin, wr,
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
        ct = np.float64(S[r, y] * rxg * cw[y])     # cos θ of the target
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
            s = _radd(s, np.float64(e))
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
            elif d2 < best_n or (d2 != d2 and best_n == best_n):
                best_n = d2
                ineg = c
        hp[g] = ip
        hn[g] = ineg


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
            dp = math.sqrt(dp)
            dn = math.sqrt(dn)
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
            for k in range(dim):
                x = np.float64(X[g, k])
                grad[g, k] = fp * (x - np.float64(X[ip, k])) - fn * (x - np.float64(X[ineg, k]))


@njit(nogil=True, cache=True)
def _bh_scatter(X, hp, hn, cp, cn, grad):
    """The selected rows' share of the gradient (serial: rows may repeat)."""
    n, dim = X.shape
    for g in range(n):
        if cp[g] != 0.0:
            ip = hp[g]
            for k in range(dim):
                grad[ip, k] -= cp[g] * (np.float64(X[g, k]) - np.float64(X[ip, k]))
        if cn[g] != 0.0:
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
            s += v * v
        return s if squared else math.sqrt(s)
    if p == 1.0:
        s = 0.0
        for k in range(dim):
            s += abs(np.float64(X[i, k]) - np.float64(Y[i, k]) + eps)
        return s
    big = 0.0
    for k in range(dim):
        big = max(big, abs(np.float64(X[i, k]) - np.float64(Y[i, k]) + eps))
    if math.isinf(p) or big == 0.0:
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

def _coef(coef, n):
    if coef is None:
        return np.ones(n)
    return np.ascontiguousarray(np.broadcast_to(np.asarray(coef, dtype=np.float64), (n,)))


def _grad_buffers(out, shapes, dtype):
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


def _codes(labels):
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


def _norms(x2d):
    """(‖x_r‖, 1/max(‖x_r‖, 1e-12)) in float64 for the rows of a 2-D array."""
    sq = np.empty(x2d.shape[0])
    _sqnorms(_use_threads(x2d.size))(x2d, sq)
    norm = np.sqrt(sq)
    return norm, 1.0 / np.maximum(norm, NORM_EPS)


def _unit(n):
    return np.ones(n), np.ones(n)


def _project(x2d, g2d, inv, norm):
    if x2d.shape[0]:
        _norm_backward(_use_threads(x2d.size))(x2d, g2d, inv, norm)


def _block_rows(n_rows, n_cols, itemsize, block_rows):
    forced = BLOCK_ROWS if block_rows is None else block_rows
    if forced is not None:
        return max(1, min(int(forced), n_rows))
    return max(1, min(n_rows, BLOCK_BYTES // max(1, n_cols * itemsize)))


def _block_view(flat, rows, cols):
    """A C-contiguous (rows, cols) view of the start of a flat buffer."""
    return flat[:rows * cols].reshape(rows, cols)


def _matmul_t(a, b, out):
    """out = a @ b.T through the general product.  NumPy sends x @ x.T (same buffer,
    square result) to syrk, which was ~1.6-2.6× slower than gemm here."""
    if (a.shape[0] == b.shape[0] and a.size
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]):
        b = b.copy()
    return np.matmul(a, b.T, out=out)


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
    coef = _coef(coef, n)
    losses = np.empty(n)
    if need_grad:
        grads = _grad_buffers(out, [shape] * 3, A.dtype)
        gA, gP, gQ = (g.reshape(n, shape[-1]) for g in grads)
    else:
        grads = None
        gA = gP = gQ = np.empty((0, 0), A.dtype)
    _triplet_rows(_use_threads(A2.size))(A2, P2, Q2, float(margin), float(p), float(eps),
                                         bool(swap), bool(squared), coef, need_grad, losses,
                                         gA, gP, gQ)
    return losses, grads


# --- batch-hard triplet -----------------------------------------------------

def batch_hard_triplet(embeddings, labels, *, margin=1.0, squared=False, coef=None,
                       need_grad=True, out=None, block_rows=None):
    """Batch-hard triplet loss; see :func:`numbaloss.reference.embedding.batch_hard_triplet`.

    Anchors without a positive or a negative get loss 0 and must be left out of the
    mean (``batch_hard_valid_anchors``).  The hardest pairs are selected on
    d² = ‖x_g‖² + ‖x_c‖² − 2 x_g·x_c from the block product (compute dtype), then
    their distances are recomputed exactly (float64) for the loss and the gradient.
    """
    X = embeddings
    n, dim = X.shape
    coef = _coef(coef, n)
    lab = _codes(labels)[0]
    sq = np.empty(n)
    _sqnorms(_use_threads(X.size))(X, sq)
    hp = np.empty(n, np.int64)
    hn = np.empty(n, np.int64)
    b = _block_rows(n, n, X.itemsize, block_rows)
    flat = np.empty(b * n, X.dtype)
    par = _use_threads(b * n)
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = _block_view(flat, r1 - r0, n)
        _matmul_t(X[r0:r1], X, S)
        _bh_select(par)(S, r0, sq, lab, hp, hn)
    del flat
    losses = np.empty(n)
    cp = np.empty(n)
    cn = np.empty(n)
    if need_grad:
        (grad,) = _grad_buffers(out, [X.shape], X.dtype)
    else:
        grad = np.empty((0, 0), X.dtype)
    _bh_finish(_use_threads(X.size))(X, hp, hn, float(margin), bool(squared), coef, need_grad,
                                     losses, grad, cp, cn)
    if not need_grad:
        return losses, None
    _bh_scatter(X, hp, hn, cp, cn, grad)
    return losses, (grad,)


# --- InfoNCE ----------------------------------------------------------------

def info_nce(anchor, positive, negatives=None, *, temperature=0.1, similarity="cosine",
             coef=None, need_grad=True, out=None, block_rows=None):
    """InfoNCE; see :func:`numbaloss.reference.embedding.info_nce`.

    In-batch and shared negatives: row blocks of b anchors, S = A_R·Pᵀ (or A_R·Nᵀ),
    then G̃_R·P → g̃A_R and G̃_Rᵀ·A_R accumulated into g̃P (g̃N): 3 GEMMs.  Per-anchor
    negatives (N, M, D): one fused kernel per anchor (no GEMM to be had).
    """
    A, P = anchor, positive
    n, dim = A.shape
    dt = A.dtype
    coef = _coef(coef, n)
    tau = float(temperature)
    cosine = similarity == "cosine"
    losses = np.empty(n)

    if negatives is not None and negatives.ndim == 3:
        Q = negatives
        if need_grad:
            grads = _grad_buffers(out, [A.shape, P.shape, Q.shape], dt)
            gA, gP, gQ = grads
        else:
            grads = None
            gA = gP = np.empty((0, 0), dt)
            gQ = np.empty((0, 0, 0), dt)
        _nce_paired(_use_threads(Q.size))(A, P, Q, 1.0 / tau, cosine, coef, need_grad, losses,
                                          gA, gP, gQ)
        return losses, grads

    a_norm, a_inv = _norms(A) if cosine else _unit(n)
    p_norm, p_inv = _norms(P) if cosine else _unit(n)
    rs = (a_inv / tau).astype(dt)
    wr = (coef / tau * a_inv).astype(dt)
    shapes = [A.shape, P.shape] + ([] if negatives is None else [negatives.shape])
    if need_grad:
        grads = _grad_buffers(out, shapes, dt)
    else:
        grads = None

    if negatives is None:
        K = P                                   # the columns: the other positives
        k_norm, k_inv = p_norm, p_inv
    else:
        K = negatives
        k_norm, k_inv = _norms(K) if cosine else _unit(K.shape[0])
        cp = p_inv.astype(dt)
        gpos = np.empty(n, dt)
    cs = k_inv.astype(dt)
    n_cols = K.shape[0]
    b = _block_rows(n, n_cols, A.itemsize, block_rows)
    flat = np.empty(b * n_cols, dt)
    par = _use_threads(b * n_cols)
    if need_grad:
        gA = grads[0]
        gK = grads[1] if negatives is None else grads[2]
        gK.fill(0)
        tmp = np.empty(K.shape, dt) if n > b else None
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = _block_view(flat, r1 - r0, n_cols)
        _matmul_t(A[r0:r1], K, S)
        if negatives is None:
            _nce_rows(par)(S, r0, rs, cs, wr, need_grad, losses)
        else:
            _nce_shared_rows(par)(S, r0, A, P, rs, cp, cs, wr, need_grad, losses, gpos)
        if not need_grad:
            continue
        np.matmul(S, K, out=gA[r0:r1])
        if r0 == 0:
            np.matmul(S.T, A[r0:r1], out=gK)
        else:
            np.matmul(S.T, A[r0:r1], out=tmp)
            gK += tmp
    if not need_grad:
        return losses, None
    if negatives is not None:
        gP = grads[1]
        np.multiply(gpos[:, None], A, out=gP)
        gA += gpos[:, None] * P
    if cosine:
        _project(A, grads[0], a_inv, a_norm)
        _project(P, grads[1], p_inv, p_norm)
        if negatives is not None:
            _project(K, grads[2], k_inv, k_norm)
    return losses, grads


# --- SupCon / NT-Xent -------------------------------------------------------

# serial kernels as globals, for the compiled function below
_sqnorms_serial = _sqnorms.serial
_norm_backward_serial = _norm_backward.serial
_pos_logit_sums_serial = _pos_logit_sums.serial
_pos_grad_serial = _pos_grad.serial
_con_tile_rows_serial = _con_tile_rows.serial
_con_tile_grad_serial = _con_tile_grad.serial


@njit(nogil=True, cache=True)
def _contrastive_small(Z, lab, n_classes, npos, kappa, tau, coef, normalize, need_grad,
                       losses, G):
    """The whole single-tile computation in one serial compiled call (small N, where
    the Python-level steps of _contrastive cost more than the arithmetic)."""
    n, dim = Z.shape
    dt = Z.dtype
    sq = np.empty(n)
    _sqnorms_serial(Z, sq)
    norm = np.sqrt(sq)
    inv = np.ones(n)
    if normalize:
        for r in range(n):
            inv[r] = 1.0 / max(norm[r], NORM_EPS)
    rs = np.empty(n, dt)
    cs = np.empty(n, dt)
    wr = np.empty(n, dt)
    ipos = np.zeros(n)
    wrip = np.zeros(n)
    inv_tau = np.empty(n)
    for r in range(n):
        rs[r] = inv[r] / tau
        cs[r] = inv[r]
        inv_tau[r] = inv[r] / tau
        w = 0.0
        if npos[r] > 0:
            ipos[r] = 1.0 / npos[r]
            w = coef[r] * kappa / tau * inv[r]
            wrip[r] = w * ipos[r]
        wr[r] = w
    C = np.zeros((n_classes, dim))
    _class_sums(Z, lab, inv, C)
    psum = np.empty(n)
    _pos_logit_sums_serial(Z, lab, inv_tau, inv, sq, C, psum)
    S = np.dot(Z, Z.T)
    mx = np.full(n, -np.inf, dtype=dt)
    ssum = np.zeros(n)
    _con_tile_rows_serial(S, 0, 0, rs, cs, mx, ssum)
    lse = np.empty(n)
    lse_t = np.empty(n, dt)
    for r in range(n):
        lse[r] = np.float64(mx[r]) + math.log(ssum[r]) if ssum[r] > 0.0 else -np.inf
        lse_t[r] = lse[r]
        losses[r] = kappa * (lse[r] - psum[r] * ipos[r]) if npos[r] > 0 else 0.0
    if not need_grad:
        return
    _con_tile_grad_serial(S, 0, 0, rs, cs, lse_t, wr, True)
    np.dot(S, Z, G)
    B = np.zeros((n_classes, dim))
    _class_sums(Z, lab, wrip, B)
    _pos_grad_serial(Z, lab, wrip, inv, C, B, G)
    if normalize:
        _norm_backward_serial(Z, G, inv, norm)


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
    single = n <= T
    # parts: (rows, their global slice, their gradient); one contiguous part when the
    # whole problem is one tile (fewer calls for small N), else one part per view
    if single:
        Z = views[0] if n_views == 1 else np.concatenate(views, axis=0)
        Z = np.ascontiguousarray(Z)
        gZ = None
        if need_grad:
            gZ = gviews[0] if (n_views == 1 and gviews[0].flags.c_contiguous) else \
                np.empty((n, dim), dt)
        if not _use_threads(n * n):
            _contrastive_small(Z, lab, n_classes, npos, kappa, tau, coef, normalize, need_grad,
                               losses, gZ if need_grad else np.empty((0, 0), dt))
            if need_grad and gZ is not gviews[0]:
                for v, gv in enumerate(gviews):
                    gv[...] = gZ[v * n_samples:(v + 1) * n_samples]
            return losses
        parts = [(Z, slice(0, n), gZ)]
    else:
        parts = [(views[v], slice(v * n_samples, (v + 1) * n_samples),
                  gviews[v] if need_grad else None) for v in range(n_views)]

    sq = np.empty(n)
    for X, sl, _ in parts:
        _sqnorms(_use_threads(X.size))(X, sq[sl])
    norm = np.sqrt(sq)
    inv = 1.0 / np.maximum(norm, NORM_EPS) if normalize else np.ones(n)
    rs = (inv / tau).astype(dt)
    cs = inv.astype(dt)
    ipos = np.where(valid, 1.0 / np.maximum(npos, 1), 0.0)
    w64 = np.where(valid, coef * kappa / tau * inv, 0.0)
    wr = w64.astype(dt)

    # the positives: Σ_{p∈P(r)} l_rp from the class sums C_k = Σ_{lab=k} inv·z
    C = np.zeros((n_classes, dim))
    for X, sl, _ in parts:
        _class_sums(X, lab[sl], inv[sl], C)
    psum = np.empty(n)
    for X, sl, _ in parts:
        _pos_logit_sums(_use_threads(X.size))(X, lab[sl], inv[sl] / tau, inv[sl], sq[sl], C,
                                              psum[sl])

    # the log-sum-exp over A(r) and the softmax part of the gradient
    if single:
        _contrastive_tiles([(Z, 0, n, 0)], n, dim, dt, n, True, rs, cs, wr, psum, ipos, valid,
                           kappa, losses, gviews, gZ)
    elif SYMMETRIC:
        _contrastive_tiles(_blocks_of(views, n_samples, T), n, dim, dt, T, False, rs, cs, wr,
                           psum, ipos, valid, kappa, losses, gviews, None)
    else:
        _contrastive_rows(views, n_samples, n, dim, dt, rs, cs, wr, psum, ipos, valid, kappa,
                          losses, gviews, forced)
    if not need_grad:
        return losses
    # the positives' part: −(w/|P|)·Σ_{p∈P(r)} inv_p z_p and its transpose
    wrip = w64 * ipos
    B = np.zeros((n_classes, dim))
    for X, sl, _ in parts:
        _class_sums(X, lab[sl], wrip[sl], B)
    for X, sl, G in parts:
        _pos_grad(_use_threads(X.size))(X, lab[sl], wrip[sl], inv[sl], C, B, G)
        if normalize:
            _project(X, G, inv[sl], norm[sl])
    if single and gZ is not gviews[0]:
        for v, gv in enumerate(gviews):
            gv[...] = gZ[v * n_samples:(v + 1) * n_samples]
    return losses


def _blocks_of(views, n_samples, T):
    """(view array, i0, i1, global row of i0) for row blocks of ≤ T rows of each view."""
    return [(views[v], i0, min(i0 + T, n_samples), v * n_samples + i0)
            for v in range(len(views)) for i0 in range(0, n_samples, T)]


def _contrastive_tiles(blocks, n, dim, dt, T, single, rs, cs, wr, psum, ipos, valid, kappa,
                       losses, gviews, gZ):
    """The symmetric two-pass tile path (see the module docstring); fills ``losses``
    and adds the softmax part of g̃ to ``gviews`` (or writes it to ``gZ`` when the
    problem is a single tile)."""
    need_grad = gviews is not None
    n_samples = n // len(gviews) if need_grad else 0
    if single:
        Z = blocks[0][0]
    flat = np.empty(T * T, dt)
    mx = np.full(n, -np.inf, dtype=dt)
    ssum = np.zeros(n)
    par = _use_threads(T * T)
    if not single:
        cmax = np.empty(T, dt)
        csum = np.empty(T)
    for bi, (XI_all, i0, i1, gi) in enumerate(blocks):
        XI = XI_all[i0:i1]
        for XJ_all, j0, j1, gj in blocks[bi:]:
            S = _block_view(flat, i1 - i0, j1 - j0)
            _matmul_t(XI, XJ_all[j0:j1], S)
            _con_tile_rows(par)(S, gi, gj, rs, cs, mx, ssum)
            if gj != gi:
                _con_tile_cols(par)(S, gj, mx, ssum, cmax, csum)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = mx.astype(np.float64) + np.log(ssum)
        losses[:] = np.where(valid, kappa * (lse - psum * ipos), 0.0)
    if not need_grad:
        return

    lse_t = lse.astype(dt)
    if single:
        S = _block_view(flat, n, n)           # still the logits of pass 1
        _con_tile_grad(par)(S, 0, 0, rs, cs, lse_t, wr, True)
        np.matmul(S, Z, out=gZ)
    else:
        for gv in gviews:
            gv[...] = 0
        tmp = np.empty((T, dim), dt)
        for bi, (XI_all, i0, i1, gi) in enumerate(blocks):
            XI = XI_all[i0:i1]
            vi = gi // n_samples
            for XJ_all, j0, j1, gj in blocks[bi:]:
                XJ = XJ_all[j0:j1]
                S = _block_view(flat, i1 - i0, j1 - j0)
                _matmul_t(XI, XJ, S)
                _con_tile_grad(par)(S, gi, gj, rs, cs, lse_t, wr, False)
                t = tmp[:i1 - i0]
                np.matmul(S, XJ, out=t)
                gviews[vi][i0:i1] += t
                if gj != gi:
                    t = tmp[:j1 - j0]
                    np.matmul(S.T, XI, out=t)
                    gviews[gj // n_samples][j0:j1] += t


def _contrastive_rows(views, n_samples, n, dim, dt, rs, cs, wr, psum, ipos, valid, kappa,
                      losses, gviews, forced):
    """Full row blocks: S_R = Z_R·Zᵀ, the row kernel, g̃_R += G̃_R·Z, g̃ += G̃_Rᵀ·Z_R.
    Fills ``losses`` and writes the softmax part of g̃ into ``gviews``."""
    need_grad = gviews is not None
    Z = views[0] if len(views) == 1 else np.concatenate(views, axis=0)
    Z = np.ascontiguousarray(Z)
    b = _block_rows(n, n, np.dtype(dt).itemsize, forced)
    flat = np.empty(b * n, dt)
    mx = np.empty(n, dt)
    lse = np.empty(n)
    par = _use_threads(b * n)
    if need_grad:
        gZ = np.zeros((n, dim), dt)
        tmp = np.empty((n, dim), dt)
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = _block_view(flat, r1 - r0, n)
        _matmul_t(Z[r0:r1], Z, S)
        _con_rows(par)(S, r0, rs, cs, wr, need_grad, mx, lse)
        if need_grad:
            t = tmp[:r1 - r0]
            np.matmul(S, Z, out=t)
            gZ[r0:r1] += t
            np.matmul(S.T, Z[r0:r1], out=tmp)
            gZ += tmp
    with np.errstate(invalid="ignore"):
        losses[:] = np.where(valid, kappa * (lse - psum * ipos), 0.0)
    if need_grad:
        for v, gv in enumerate(gviews):
            gv[...] = gZ[v * n_samples:(v + 1) * n_samples]


def nt_xent(z_i, z_j, *, temperature=0.5, coef=None, need_grad=True, out=None,
            block_rows=None):
    """NT-Xent (SimCLR); see :func:`numbaloss.reference.embedding.nt_xent`.

    Computed as SupCon with V = 2 views and no labels (each row's only positive is
    its pair), through the symmetric kernels.  Losses (2N,); grads (z_i, z_j).
    """
    n, dim = z_i.shape
    coef = _coef(coef, 2 * n)
    codes = np.arange(n, dtype=np.int64)
    lab = np.concatenate((codes, codes))
    npos = np.ones(2 * n, dtype=np.int64)
    grads = _grad_buffers(out, [z_i.shape, z_j.shape], z_i.dtype) if need_grad else None
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
    coef = _coef(coef, n_samples * n_views)
    if labels is None:
        codes = np.arange(n_samples, dtype=np.int64)
        count = np.ones(n_samples, dtype=np.int64)
        n_classes = n_samples
    else:
        codes, count, n_classes = _codes(labels)
    lab = np.concatenate((codes,) * n_views)
    npos = np.concatenate((n_views * count - 1,) * n_views)
    views = [F3[:, v, :] for v in range(n_views)]
    if need_grad:
        (grad,) = _grad_buffers(out, [F.shape], F.dtype)
        G3 = grad[:, None, :] if F.ndim == 2 else grad
        gviews = [G3[:, v, :] for v in range(n_views)]
    else:
        grad, gviews = None, None
    losses = _contrastive(views, n_samples, lab, n_classes, npos, tau / tau_base, tau, coef,
                          bool(normalize), gviews, block_rows)
    return losses, ((grad,) if need_grad else None)


# --- ArcFace / CosFace ------------------------------------------------------

def _margin_softmax(X, labels, W, scale, mode, cos_m, sin_m, th, mm, margin, coef,
                    need_grad, out, block_rows):
    n, dim = X.shape
    n_classes = W.shape[0]
    dt = X.dtype
    coef = _coef(coef, n)
    lab = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    x_norm, x_inv = _norms(X)
    w_norm, w_inv = _norms(W)
    rx = x_inv.astype(dt)
    cw = w_inv.astype(dt)
    wr = (coef * scale * x_inv).astype(dt)
    losses = np.empty(n)
    if need_grad:
        gX, gW = _grad_buffers(out, [X.shape, W.shape], dt)
        gW.fill(0)
    b = _block_rows(n, n_classes, X.itemsize, block_rows)
    flat = np.empty(b * n_classes, dt)
    par = _use_threads(b * n_classes)
    tmp = np.empty(W.shape, dt) if (need_grad and n > b) else None
    for r0 in range(0, n, b):
        r1 = min(r0 + b, n)
        S = _block_view(flat, r1 - r0, n_classes)
        _matmul_t(X[r0:r1], W, S)
        _margin_rows(par)(S, r0, lab, rx, cw, scale, mode, cos_m, sin_m, th, mm, margin, wr,
                          need_grad, losses)
        if not need_grad:
            continue
        np.matmul(S, W, out=gX[r0:r1])
        if r0 == 0:
            np.matmul(S.T, X[r0:r1], out=gW)
        else:
            np.matmul(S.T, X[r0:r1], out=tmp)
            gW += tmp
    if not need_grad:
        return losses, None
    _project(X, gX, x_inv, x_norm)
    _project(W, gW, w_inv, w_norm)
    return losses, (gX, gW)


def arcface(embeddings, labels, weight, *, s=64.0, m=0.5, easy_margin=False, coef=None,
            need_grad=True, out=None, block_rows=None):
    """ArcFace; see :func:`numbaloss.reference.embedding.arcface`.

    Row blocks of b embeddings: S = X_R·Wᵀ, fused margin + CE kernel, G̃·W → g̃X_R and
    G̃ᵀ·X_R accumulated into g̃W (3 GEMMs of N·C·D).
    """
    m = float(m)
    return _margin_softmax(embeddings, labels, weight, float(s), 1 if easy_margin else 0,
                           math.cos(m), math.sin(m), math.cos(math.pi - m),
                           math.sin(math.pi - m) * m, 0.0, coef, need_grad, out, block_rows)


def cosface(embeddings, labels, weight, *, s=64.0, m=0.4, coef=None, need_grad=True,
            out=None, block_rows=None):
    """CosFace; see :func:`numbaloss.reference.embedding.cosface`."""
    return _margin_softmax(embeddings, labels, weight, float(s), 2, 1.0, 0.0, -1.0, 0.0,
                           float(m), coef, need_grad, out, block_rows)

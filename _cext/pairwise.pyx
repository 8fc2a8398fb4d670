# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython kernels and drivers of the embedding losses: triplet, batch_hard_triplet,
info_nce, nt_xent, arcface, cosface, supcon — the mirror of
``numbaloss/_numba/pairwise.py``, with its interface::

    losses, grads = fn(<inputs>, <parameters>, coef=None, need_grad=True,
                       out=None, block_rows=None)

(C-contiguous float32/float64 inputs of one dtype; ``losses`` float64, gradients of
the compute dtype; see that module and ``numbaloss.reference.embedding`` for the
formulas).  The same plan: NumPy's BLAS (``np.matmul`` with ``out=``) takes the
similarity products of row blocks or tiles, one fused kernel per block does scale,
max shift, exp, log-sum-exp and the gradient coefficients in place, and one or two
more products give the gradients; memory O(N·b) for blocks of b rows
(``numbaloss._pairwise_plan`` sizes them).  NT-Xent and SupCon work on T×T tiles
of Z·Zᵀ on and above the diagonal, in two passes over one contiguous copy of the
rows of all views (O(N·D)): pass 1 gives the rows of tile (I, J) their online
log-sum-exp row-wise and the rows of J theirs column-wise; pass 2 recomputes the
tile, turns it into the coefficients of both triangles (A_IJ + A_JIᵀ, two exps from
one logit) and adds them to g̃_I and g̃_J with two products.  The positives enter
through class sums (O(N·D)), never through the O(N²) loops.

Kernels are ``def`` functions over fused float32/float64 memoryviews (the Python
drivers below call them once per block); their rows run in OpenMP ``prange`` loops
without the GIL on ``set_num_threads`` threads, or on one when ``par`` is false
(blocks under ``SERIAL_BELOW`` entries, as in the Numba module).  Sums accumulate in
float64, in eight interleaved lanes (a fixed order, so results do not depend on the
thread count) that the compiler can vectorise without reassociating; row maxima the
same way.  ``exp`` over the similarity blocks is branch-free and table-free so that
the loops vectorise: Cephes' float32 ``expf`` for float32 data (the algorithm and
constants of the Numba module's ``_exp32``, with floor taken by the magic-number
rounding instead of a libm call) and ``_fastmath.exp`` for float64 data.
"""

from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, NAN, exp, fabs, isfinite, isinf, log, pow, sqrt
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy

from cython cimport floating

from _common cimport NUMBALOSS_HAVE_OPENMP, numbaloss_omp_max_threads
from _fastmath cimport exp as _exp64

import math

import numpy as np

from numbaloss import _pairwise_plan as _plan
from numbaloss._pairwise_plan import block_rows as _plan_block_rows
from numbaloss._pairwise_plan import block_view as _block_view
from numbaloss._pairwise_plan import coefficients as _coef
from numbaloss._pairwise_plan import grad_buffers as _grad_buffers
from numbaloss._pairwise_plan import label_codes as _codes
from numbaloss._pairwise_plan import matmul_t as _matmul_t
from numbaloss._pairwise_plan import tile_edge as _tile_edge
from numbaloss.reference.embedding import NORM_EPS, SIN_EPS

#: bumped whenever the interface of the drivers changes (the backend checks it)
API_VERSION = 1
OPENMP = bool(NUMBALOSS_HAVE_OPENMP)

# settings (module level so that tests and benchmarks can change them; the meaning
# of the Numba module's settings of the same names)
#: largest similarity block (bytes): rows per block of InfoNCE, ArcFace/CosFace and
#: batch-hard triplet; the tile of NT-Xent/SupCon is √(BLOCK_BYTES/itemsize)
BLOCK_BYTES = 64 << 20
#: force the rows per block / the tile edge (None: derived from BLOCK_BYTES / TILE)
BLOCK_ROWS = None
#: tile edge of NT-Xent / SupCon (None: the largest within BLOCK_BYTES)
TILE = None
#: blocks with fewer entries than this run on one thread
SERIAL_BELOW = 1 << 15
#: passes over the rows (norms, normalisation backward, the positives' terms: a few
#: operations per element) with fewer elements than this run on one thread
SERIAL_ROWS_BELOW = 1 << 21

cdef double _NORM_EPS = NORM_EPS
cdef double _SIN_EPS = SIN_EPS
cdef int _threads = 1


def set_num_threads(int n):
    """Threads of the kernels of blocks at or above SERIAL_BELOW entries."""
    global _threads
    _threads = max(1, n)


def max_threads():
    """OpenMP's default team size here (OMP_NUM_THREADS or the CPUs); 1 without OpenMP."""
    return numbaloss_omp_max_threads()


def _use_threads(work):
    return work >= SERIAL_BELOW and _threads > 1


def _row_threads(size):
    return size >= SERIAL_ROWS_BELOW and _threads > 1


cdef inline int _team(bint par) noexcept nogil:
    return _threads if par else 1


# ---------------------------------------------------------------------------
# vectorisable scalar functions and row reductions
# ---------------------------------------------------------------------------

cdef inline float _exp32(float x) noexcept nogil:
    """e**x in float32 for x ≤ 88 (Cephes expf: Cody-Waite + degree-6 polynomial,
    ≤ 1 ulp); x < -87.33 (true result subnormal) gives 0, exp(-inf) = 0, nan → nan."""
    cdef float xc = x if x > <float>-87.5 else <float>-87.5
    xc = xc if xc < <float>88.5 else <float>88.5
    cdef float t = xc * <float>1.4426950408889634 + <float>0.5
    # floor(t) for |t| < 2**22: round to nearest by adding and taking away 1.5·2**23
    cdef float nearest = (t + <float>12582912.0) - <float>12582912.0
    cdef float k = nearest - (<float>1.0 if nearest > t else <float>0.0)
    cdef float r = xc - k * <float>0.693359375
    r = r - k * <float>-2.12194440e-4
    cdef float p = <float>1.9875691500e-4
    p = p * r + <float>1.3981999507e-3
    p = p * r + <float>8.3334519073e-3
    p = p * r + <float>4.1665795894e-2
    p = p * r + <float>1.6666665459e-1
    p = p * r + <float>5.0000001201e-1
    p = p * r * r + r + <float>1.0
    cdef int32_t bits = (<int32_t>k + 127) << 23
    cdef float two_k
    memcpy(&two_k, &bits, 4)
    cdef float res = p * two_k
    res = <float>0.0 if x < <float>-87.33 else res
    return x if x != x else res


cdef inline floating _fexp(floating x) noexcept nogil:
    if floating is float:
        return _exp32(x)
    else:
        return _exp64(x)


cdef inline floating _fmax(floating a, floating b) noexcept nogil:
    """The larger of a and b (b when a is nan): one max instruction."""
    return a if a > b else b


cdef inline floating _row_max(const floating* x, Py_ssize_t n, floating init) noexcept nogil:
    """max(init, x[0], …, x[n-1]) in eight interleaved lanes; nan entries are passed
    over (they reach the result through the exp and the sum)."""
    cdef floating lane[8]
    cdef Py_ssize_t c, j, n8 = n - n % 8
    for j in range(8):
        lane[j] = init
    for c in range(0, n8, 8):
        for j in range(8):
            lane[j] = _fmax(x[c + j], lane[j])
    for c in range(n8, n):
        lane[0] = _fmax(x[c], lane[0])
    for j in range(1, 8):
        lane[0] = _fmax(lane[j], lane[0])
    return lane[0]


cdef inline double _row_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Σ x[c] in float64, in eight interleaved lanes."""
    cdef double lane[8]
    cdef Py_ssize_t c, j, n8 = n - n % 8
    for j in range(8):
        lane[j] = 0.0
    for c in range(0, n8, 8):
        for j in range(8):
            lane[j] += <double>x[c + j]
    for c in range(n8, n):
        lane[0] += <double>x[c]
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]))


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """Σ a[k]·b[k] in float64, in eight interleaved lanes."""
    cdef double lane[8]
    cdef Py_ssize_t c, j, n8 = n - n % 8
    for j in range(8):
        lane[j] = 0.0
    for c in range(0, n8, 8):
        for j in range(8):
            lane[j] += <double>a[c + j] * <double>b[c + j]
    for c in range(n8, n):
        lane[0] += <double>a[c] * <double>b[c]
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]))


cdef inline double _exp_store_sum(floating* x, Py_ssize_t n, floating shift) noexcept nogil:
    """x[c] ← e**(x[c] − shift) in place; returns their sum in float64."""
    cdef Py_ssize_t c
    for c in range(n):
        x[c] = _fexp(x[c] - shift)
    return _row_sum(x, n)


cdef enum:
    #: entries per piece of _exp_sum (its stack buffer)
    _PIECE = 512


cdef inline double _exp_sum(const floating* x, Py_ssize_t n, floating shift) noexcept nogil:
    """Σ e**(x[c] − shift) in float64, x left as it is (through a stack buffer, so
    that the exp loop has no reduction in it and vectorises)."""
    cdef floating buf[_PIECE]
    cdef Py_ssize_t c0 = 0, c, width
    cdef double total = 0.0
    while c0 < n:
        width = min(<Py_ssize_t>_PIECE, n - c0)
        for c in range(width):
            buf[c] = _fexp(x[c0 + c] - shift)
        total += _row_sum(buf, width)
        c0 += width
    return total


cdef inline void _scale_row(floating* row, Py_ssize_t n, floating rs, const floating* cs) noexcept nogil:
    """row[c] ← row[c]·rs·cs[c] (raw products to logits)."""
    cdef Py_ssize_t c
    for c in range(n):
        row[c] = row[c] * rs * cs[c]


# ---------------------------------------------------------------------------
# norms
# ---------------------------------------------------------------------------

def _sqnorms(const floating[:, ::1] x, double[::1] out, bint par):
    """out[r] = Σₖ x[r,k]² in float64."""
    cdef Py_ssize_t n = x.shape[0], dim = x.shape[1], r
    for r in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        out[r] = _dot(&x[r, 0], &x[r, 0], dim)


def _norm_backward(const floating[:, ::1] x, floating[:, ::1] g, const double[::1] inv,
                   const double[::1] norm, bint par):
    """In place: g ← g − [‖x‖ ≥ 1e-12]·x·inv²·(x·g), for g = inv·dL/dx̂."""
    cdef Py_ssize_t n = x.shape[0], dim = x.shape[1], r
    for r in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        if norm[r] >= _NORM_EPS:
            _norm_backward_row(&x[r, 0], &g[r, 0], dim, inv[r])


cdef inline void _norm_backward_row(const floating* x, floating* g, Py_ssize_t dim,
                                    double inv) noexcept nogil:
    cdef double f = _dot(x, <const floating*>g, dim) * inv * inv
    cdef Py_ssize_t k
    for k in range(dim):
        g[k] = <floating>(<double>g[k] - f * <double>x[k])


def _row_sqnorms(x2d):
    sq = np.empty(x2d.shape[0])
    _sqnorms(x2d, sq, _row_threads(x2d.size))
    return sq


def _project(x2d, g2d, inv, norm):
    if x2d.shape[0]:
        _norm_backward(x2d, g2d, inv, norm, _row_threads(x2d.size))


# ---------------------------------------------------------------------------
# SupCon / NT-Xent: tiles (I, J), I ≤ J, of the raw products S = Z_I Z_Jᵀ; logits
# l = S·rs_r·cs_c with rs = inv/τ, cs = inv.  The kernels are label-free: with the
# class sums C_k = Σ_{lab=k} inv·z and B_k = Σ_{lab=k} w·z/|P| (float64), the
# positive logits' sum is rs_r·(z_r·C_k − inv_r‖z_r‖²) and the positives' share of
# the gradient −(w_r/|P_r|)(C_k − inv_r z_r) − inv_r(B_k − (w_r/|P_r|) z_r).
# ---------------------------------------------------------------------------

def _con_tile_rows(floating[:, ::1] S, Py_ssize_t gi0, Py_ssize_t gj0, const floating[::1] rs,
                   const floating[::1] cs, floating[::1] mx, double[::1] ssum, bint par):
    """Pass 1, rows of tile (I, J) of raw products: the logits in place, and the
    online log-sum-exp (running max mx, sum ssum) of rows I; the diagonal r = c is
    left out (set to -inf)."""
    cdef Py_ssize_t bi = S.shape[0], bj = S.shape[1], r
    cdef bint diag = gi0 == gj0
    for r in prange(bi, nogil=True, num_threads=_team(par), schedule="static"):
        _con_tile_row(&S[r, 0], bj, r if diag else -1, rs[gi0 + r], &cs[gj0], &mx[gi0 + r],
                      &ssum[gi0 + r])


cdef inline void _con_tile_row(floating* row, Py_ssize_t bj, Py_ssize_t diag_col, floating rsg,
                               const floating* csj, floating* mx, double* ssum) noexcept nogil:
    cdef floating mo = mx[0], mn
    _scale_row(row, bj, rsg, csj)
    if diag_col >= 0:
        row[diag_col] = -INFINITY
    mn = _fmax(_row_max(row, bj, <floating>-INFINITY), mo)
    if mn == -INFINITY:            # nothing in this tile (a 1-row diagonal tile)
        return
    ssum[0] = ssum[0] * exp(<double>mo - <double>mn) + _exp_sum(row, bj, mn)
    mx[0] = mn


def _con_tile_cols(const floating[:, ::1] S, Py_ssize_t gj0, floating[::1] mx, double[::1] ssum,
                   floating[::1] cmax, double[::1] csum, bint par):
    """Pass 1, columns of an off-diagonal tile (logits already in S): the online
    log-sum-exp of rows J, by chunks of 64 columns (each thread reads row segments)."""
    cdef Py_ssize_t bi = S.shape[0], bj = S.shape[1], k
    cdef Py_ssize_t n_chunks = (bj + 63) // 64
    for k in prange(n_chunks, nogil=True, num_threads=_team(par), schedule="static"):
        _con_cols_chunk(&S[0, 0], bi, bj, k * 64, min(64, bj - k * 64), &mx[gj0], &ssum[gj0],
                        &cmax[0], &csum[0])


cdef inline void _con_cols_chunk(const floating* S, Py_ssize_t bi, Py_ssize_t bj, Py_ssize_t c0,
                                 Py_ssize_t width, floating* mx, double* ssum, floating* cmax,
                                 double* csum) noexcept nogil:
    cdef floating* cm = cmax + c0
    cdef double* cs = csum + c0
    cdef const floating* row
    cdef Py_ssize_t r, c
    for c in range(width):
        cm[c] = mx[c0 + c]
        cs[c] = 0.0
    for r in range(bi):
        row = S + r * bj + c0
        for c in range(width):
            cm[c] = _fmax(row[c], cm[c])
    for r in range(bi):
        row = S + r * bj + c0
        for c in range(width):
            cs[c] += <double>_fexp(row[c] - cm[c])
    for c in range(width):
        ssum[c0 + c] = ssum[c0 + c] * exp(<double>mx[c0 + c] - <double>cm[c]) + cs[c]
        mx[c0 + c] = cm[c]


def _con_tile_grad(floating[:, ::1] S, Py_ssize_t gi0, Py_ssize_t gj0, const floating[::1] rs,
                   const floating[::1] cs, const floating[::1] lse, const floating[::1] wr,
                   bint scaled, bint par):
    """Pass 2, tile (I, J) → H_IJ = A_IJ + A_JIᵀ in place, the softmax part of the
    coefficients: A[r,c] = wr_r·cs_c·exp(l_rc − lse_r), 0 on the diagonal.  S holds
    raw products, or logits when ``scaled`` (single tile kept from pass 1)."""
    cdef Py_ssize_t bi = S.shape[0], bj = S.shape[1], r
    cdef bint diag = gi0 == gj0
    for r in prange(bi, nogil=True, num_threads=_team(par), schedule="static"):
        _con_grad_row(&S[r, 0], bj, gi0 + r, &cs[gj0], &lse[gj0], &wr[gj0], rs[gi0 + r], cs[gi0 + r],
                      lse[gi0 + r], wr[gi0 + r], scaled)
        if diag:
            S[r, r] = 0.0


cdef inline void _con_grad_row(floating* row, Py_ssize_t bj, Py_ssize_t g, const floating* csj,
                               const floating* lsej, const floating* wrj, floating rsg, floating csg,
                               floating lg, floating wg, bint scaled) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating lv
    if not scaled:
        _scale_row(row, bj, rsg, csj)
    for c in range(bj):
        lv = row[c]
        row[c] = wg * csj[c] * _fexp(lv - lg) + wrj[c] * csg * _fexp(lv - lsej[c])


def _class_sums(const floating[:, ::1] X, const int64_t[::1] lab, const double[::1] f, double[:, ::1] out):
    """out[lab[r]] += f[r]·X[r] (float64; serial: labels repeat)."""
    cdef Py_ssize_t n = X.shape[0], dim = X.shape[1], r, d
    cdef int64_t k
    cdef double fr
    with nogil:
        for r in range(n):
            k = lab[r]
            fr = f[r]
            if fr != 0.0:
                for d in range(dim):
                    out[k, d] += fr * <double>X[r, d]


def _pos_logit_sums(const floating[:, ::1] X, const int64_t[::1] lab, const double[::1] rs,
                    const double[::1] cs, const double[::1] sq, const double[:, ::1] C, double[::1] out,
                    bint par):
    """out[r] = Σ_{p∈P(r)} l_rp = rs_r·(x_r·C_{lab r} − cs_r‖x_r‖²), C_k = Σ_{lab=k} cs·x."""
    cdef Py_ssize_t n = X.shape[0], dim = X.shape[1], r
    for r in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        out[r] = rs[r] * (_dot_mixed(&X[r, 0], &C[lab[r], 0], dim) - cs[r] * sq[r])


cdef inline double _dot_mixed(const floating* x, const double* c, Py_ssize_t dim) noexcept nogil:
    cdef double lane[4]
    cdef Py_ssize_t k, j, n4 = dim - dim % 4
    for j in range(4):
        lane[j] = 0.0
    for k in range(0, n4, 4):
        for j in range(4):
            lane[j] += <double>x[k + j] * c[k + j]
    for k in range(n4, dim):
        lane[0] += <double>x[k] * c[k]
    return (lane[0] + lane[2]) + (lane[1] + lane[3])


def _pos_grad(const floating[:, ::1] X, const int64_t[::1] lab, const double[::1] wrip,
              const double[::1] cs, const double[:, ::1] C, const double[:, ::1] B, floating[:, ::1] G,
              bint par):
    """G_r += −wrip_r·(C_k − cs_r x_r) − cs_r·(B_k − wrip_r x_r), k = lab[r]: the
    positives' part of g̃ (C_k = Σ cs·x, B_k = Σ wrip·x over label k)."""
    cdef Py_ssize_t n = X.shape[0], dim = X.shape[1], r
    for r in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        _pos_grad_row(&X[r, 0], &G[r, 0], &C[lab[r], 0], &B[lab[r], 0], dim, wrip[r], cs[r])


cdef inline void _pos_grad_row(const floating* x, floating* g, const double* c_k, const double* b_k,
                               Py_ssize_t dim, double a, double c) noexcept nogil:
    cdef Py_ssize_t j
    cdef double v
    for j in range(dim):
        v = <double>x[j]
        g[j] = <floating>(<double>g[j] - a * (c_k[j] - c * v) - c * (b_k[j] - a * v))


# ---------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------

def _nce_rows(floating[:, ::1] S, Py_ssize_t r0, const floating[::1] rs, const floating[::1] cs,
              const floating[::1] wr, bint need_grad, double[::1] loss, bint par):
    """In-batch InfoNCE, rows of S = A_R Pᵀ (raw); the target of row g is column g."""
    cdef Py_ssize_t nb = S.shape[0], n = S.shape[1], r
    for r in prange(nb, nogil=True, num_threads=_team(par), schedule="static"):
        loss[r0 + r] = _nce_row(&S[r, 0], n, r0 + r, rs[r0 + r], &cs[0], wr[r0 + r], need_grad)


cdef inline double _nce_row(floating* row, Py_ssize_t n, Py_ssize_t g, floating rsg, const floating* cs,
                            floating w, bint need_grad) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating m, f
    cdef double lpos, s, epos
    _scale_row(row, n, rsg, cs)
    m = _row_max(row, n, <floating>-INFINITY)
    lpos = row[g]
    s = _exp_store_sum(row, n, m)
    if need_grad:
        epos = row[g]
        f = <floating>(1.0 / s)
        for c in range(n):
            row[c] = w * cs[c] * (row[c] * f)
        # σ − 1 = −(sum of the others)/s: no cancellation in float32
        row[g] = <floating>(-<double>(w * cs[g]) * ((s - epos) / s))
    return <double>m + log(s) - lpos


def _nce_shared_rows(floating[:, ::1] S, Py_ssize_t r0, const floating[:, ::1] A, const floating[:, ::1] P,
                     const floating[::1] rs, const floating[::1] cp, const floating[::1] cn,
                     const floating[::1] wr, bint need_grad, double[::1] loss, floating[::1] gpos, bint par):
    """InfoNCE with shared negatives: rows of S = A_R Nᵀ (raw), positive logit aside.
    gpos[g] = wr_g·cp_g·(σ_pos − 1) (coefficient of p_g in g̃A_g and of a_g in g̃P_g)."""
    cdef Py_ssize_t nb = S.shape[0], n = S.shape[1], dim = A.shape[1], r
    for r in prange(nb, nogil=True, num_threads=_team(par), schedule="static"):
        loss[r0 + r] = _nce_shared_row(&S[r, 0], n, &A[r0 + r, 0], &P[r0 + r, 0], dim, rs[r0 + r],
                                       cp[r0 + r], &cn[0], wr[r0 + r], need_grad, &gpos[r0 + r])


cdef inline double _nce_shared_row(floating* row, Py_ssize_t n, const floating* a, const floating* p,
                                   Py_ssize_t dim, floating rsg, floating cpg, const floating* cn,
                                   floating w, bint need_grad, floating* gpos) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating lpos = <floating>(_dot(a, p, dim) * <double>rsg * <double>cpg)
    cdef floating m, epos, f
    cdef double s
    _scale_row(row, n, rsg, cn)
    m = _row_max(row, n, lpos)
    epos = _fexp(lpos - m)
    s = <double>epos + _exp_store_sum(row, n, m)
    if need_grad:
        f = <floating>(1.0 / s)
        for c in range(n):
            row[c] = w * cn[c] * (row[c] * f)
        gpos[0] = <floating>(-<double>(w * cpg) * ((s - <double>epos) / s))
    return <double>m + log(s) - <double>lpos


def _nce_paired(const floating[:, ::1] A, const floating[:, ::1] P, const floating[:, :, ::1] Ng,
                double inv_tau, bint cosine, const double[::1] coef, bint need_grad, double[::1] loss,
                floating[:, ::1] gA, floating[:, ::1] gP, floating[:, :, ::1] gN, double[:, ::1] scratch,
                bint par):
    """InfoNCE with per-anchor negatives Ng (N, M, D): everything per anchor, in
    float64 (O(N·M·D), no product to hand to BLAS).  ``scratch``: one row of
    2(M + 1) + D float64 per thread."""
    cdef Py_ssize_t n = A.shape[0], dim = A.shape[1], m_neg = Ng.shape[1], i
    for i in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        loss[i] = _nce_paired_row(&A[i, 0], &P[i, 0], &Ng[i, 0, 0], dim, m_neg, inv_tau, cosine,
                                  coef[i], need_grad, &gA[i, 0] if need_grad else NULL,
                                  &gP[i, 0] if need_grad else NULL,
                                  &gN[i, 0, 0] if need_grad else NULL, &scratch[threadid(), 0])


cdef inline double _nce_paired_row(const floating* a, const floating* p, const floating* ng, Py_ssize_t dim,
                                   Py_ssize_t m_neg, double inv_tau, bint cosine, double coef,
                                   bint need_grad, floating* ga_out, floating* gp_out, floating* gn_out,
                                   double* scratch) noexcept nogil:
    cdef double* logit = scratch              # logit[0]: positive, logit[1 + j]: negative j
    cdef double* nrm = scratch + m_neg + 1    # nrm[0]: ‖p‖, nrm[1 + j]: ‖n_j‖
    cdef double* ga = scratch + 2 * (m_neg + 1)
    cdef double na = 0.0, dap = 0.0, npp = 0.0, av, pv, v, dn, nn, ia, ip, inj, mx, s, lse, loss
    cdef double c, others, gpos, gj, proj, d
    cdef Py_ssize_t k, j
    for k in range(dim):
        av = a[k]
        pv = p[k]
        na += av * av
        npp += pv * pv
        dap += av * pv
    na = sqrt(na)
    nrm[0] = sqrt(npp)
    ia = 1.0 / max(na, _NORM_EPS) if cosine else 1.0
    ip = 1.0 / max(nrm[0], _NORM_EPS) if cosine else 1.0
    logit[0] = dap * ia * ip * inv_tau
    mx = logit[0]
    for j in range(m_neg):
        dn = 0.0
        nn = 0.0
        for k in range(dim):
            v = ng[j * dim + k]
            dn += <double>a[k] * v
            nn += v * v
        nrm[j + 1] = sqrt(nn)
        inj = 1.0 / max(nrm[j + 1], _NORM_EPS) if cosine else 1.0
        logit[j + 1] = dn * ia * inj * inv_tau
        mx = max(mx, logit[j + 1])
    s = 0.0
    for j in range(m_neg + 1):
        s += exp(logit[j] - mx)
    lse = mx + log(s)
    loss = lse - logit[0]
    if not need_grad:
        return loss
    c = coef * inv_tau
    # dL/dâ = gpos·p̂ + Σⱼ gⱼ·n̂ⱼ,  dL/dp̂ = gpos·â,  dL/dn̂ⱼ = gⱼ·â
    others = 0.0
    for j in range(1, m_neg + 1):
        others += exp(logit[j] - lse)
    gpos = -c * others                        # c·(σ_pos − 1) without cancellation
    for k in range(dim):
        ga[k] = gpos * <double>p[k] * ip
    for j in range(m_neg):
        inj = 1.0 / max(nrm[j + 1], _NORM_EPS) if cosine else 1.0
        gj = c * exp(logit[j + 1] - lse)
        for k in range(dim):
            ga[k] += gj * <double>ng[j * dim + k] * inj
        # through the normalisation of n_j (n̂ⱼ·â = logit / inv_tau)
        proj = logit[j + 1] / inv_tau if (cosine and nrm[j + 1] >= _NORM_EPS) else 0.0
        for k in range(dim):
            gn_out[j * dim + k] = <floating>(gj * inj * (<double>a[k] * ia - <double>ng[j * dim + k] * inj * proj))
    # through the normalisation of p
    proj = logit[0] / inv_tau if (cosine and nrm[0] >= _NORM_EPS) else 0.0
    for k in range(dim):
        gp_out[k] = <floating>(gpos * ip * (<double>a[k] * ia - <double>p[k] * ip * proj))
    # through the normalisation of a
    d = 0.0
    if cosine and na >= _NORM_EPS:
        for k in range(dim):
            d += <double>a[k] * ia * ga[k]
    for k in range(dim):
        ga_out[k] = <floating>((ga[k] - <double>a[k] * ia * d) * ia)
    return loss


# ---------------------------------------------------------------------------
# ArcFace / CosFace
# ---------------------------------------------------------------------------

def _margin_rows(floating[:, ::1] S, Py_ssize_t r0, const int64_t[::1] lab, const double[::1] tcos,
                 const floating[::1] rx,
                 const floating[::1] cw, double scale, int mode, double cos_m, double sin_m, double th,
                 double mm, double margin, const floating[::1] wr, bint need_grad, double[::1] loss,
                 bint par):
    """Rows of S = X_R Wᵀ (raw): cos, the margin on the target, CE over scale·logits.
    mode 0: ArcFace, 1: ArcFace easy_margin, 2: CosFace (φ = cos − margin)."""
    cdef Py_ssize_t nb = S.shape[0], n = S.shape[1], r
    for r in prange(nb, nogil=True, num_threads=_team(par), schedule="static"):
        loss[r0 + r] = _margin_row(&S[r, 0], n, lab[r0 + r], tcos[r0 + r], rx[r0 + r], &cw[0], scale,
                                   mode, cos_m,
                                   sin_m, th, mm, margin, wr[r0 + r], need_grad)


cdef inline double _margin_row(floating* row, Py_ssize_t n, int64_t y, double ct, floating rxg,
                               const floating* cw,
                               double scale, int mode, double cos_m, double sin_m, double th, double mm,
                               double margin, floating w, bint need_grad) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating sc = <floating>scale, m, old, lt, f
    cdef double phi, dphi, sin, s, et
    cdef bint use
    for c in range(n):
        row[c] = row[c] * rxg * cw[c] * sc
    m = _row_max(row, n, <floating>-INFINITY)
    old = row[y]
    if mode == 2:
        phi = ct - margin
        dphi = 1.0
    else:
        sin = sqrt(max(1.0 - ct * ct, 0.0))
        phi = ct * cos_m - sin * sin_m
        dphi = cos_m + sin_m * ct / max(sin, _SIN_EPS)
        use = ct > 0.0 if mode == 1 else ct > th
        if not use:
            phi = ct if mode == 1 else ct - mm
            dphi = 1.0
    lt = <floating>(scale * phi)
    row[y] = lt
    if old >= m:                  # the target was the max: take the max again
        m = _row_max(row, n, <floating>-INFINITY)
    else:
        m = _fmax(m, lt)
    s = _exp_store_sum(row, n, m)
    if need_grad:
        et = row[y]
        f = <floating>(1.0 / s)
        for c in range(n):
            row[c] = w * cw[c] * (row[c] * f)
        row[y] = <floating>(-<double>(w * cw[y]) * ((s - et) / s) * dphi)
    return <double>m + log(s) - <double>lt


# ---------------------------------------------------------------------------
# batch-hard triplet
# ---------------------------------------------------------------------------

def _bh_select(const floating[:, ::1] S, Py_ssize_t r0, const double[::1] sq, const int64_t[::1] lab,
               int64_t[::1] hp, int64_t[::1] hn, bint par):
    """Rows of S = X_R Xᵀ: the hardest positive (largest d², c ≠ g) and negative
    (smallest d²), lowest index on ties."""
    cdef Py_ssize_t nb = S.shape[0], n = S.shape[1], r
    for r in prange(nb, nogil=True, num_threads=_team(par), schedule="static"):
        _bh_select_row(&S[r, 0], n, r0 + r, &sq[0], &lab[0], &hp[r0 + r], &hn[r0 + r])


cdef inline void _bh_select_row(const floating* row, Py_ssize_t n, Py_ssize_t g, const double* sq,
                                const int64_t* lab, int64_t* hp, int64_t* hn) noexcept nogil:
    cdef int64_t labg = lab[g]
    cdef double sqg = sq[g], d2, best_p = -INFINITY, best_n = INFINITY
    cdef Py_ssize_t ip = -1, ineg = -1, c
    for c in range(n):
        d2 = sqg + sq[c] - 2.0 * <double>row[c]
        # a NaN distance is the hardest (the first one wins), as NumPy's argmax picks
        # it, so that NaN in the embeddings propagates to the loss
        if lab[c] == labg:
            if c != g and (d2 > best_p or (d2 != d2 and best_p == best_p)):
                best_p = d2
                ip = c
        elif ineg < 0 or d2 < best_n or (d2 != d2 and best_n == best_n):
            best_n = d2
            ineg = c
    hp[0] = ip
    hn[0] = ineg


def _bh_finish(const floating[:, ::1] X, const int64_t[::1] hp, const int64_t[::1] hn, double margin,
               bint squared, const double[::1] coef, bint need_grad, double[::1] loss, floating[:, ::1] grad,
               double[::1] cp, double[::1] cn, bint par):
    """Exact distances of the selected pairs, losses, the anchors' own gradient rows
    and the coefficients cp, cn of the scatter to the selected rows."""
    cdef Py_ssize_t n = X.shape[0], dim = X.shape[1], g
    for g in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        loss[g] = _bh_finish_row(&X[0, 0], dim, g, hp[g], hn[g], margin, squared, coef[g], need_grad,
                                 &grad[g, 0] if need_grad else NULL, &cp[g], &cn[g])


cdef inline double _rescaled_distance(const floating* x, const floating* y, Py_ssize_t dim) noexcept nogil:
    """‖x − y‖ (float64) where the sum of squares overflowed or is NaN: scaled by the
    largest |difference| first (inf or NaN when that is)."""
    cdef double big = 0.0, a, s = 0.0, v
    cdef Py_ssize_t k
    for k in range(dim):
        a = fabs(<double>x[k] - <double>y[k])
        if a > big or a != a:
            big = a
    if big == 0.0 or not isfinite(big):
        return big
    for k in range(dim):
        v = (<double>x[k] - <double>y[k]) / big
        s += v * v
    return big * sqrt(s)


cdef inline double _bh_finish_row(const floating* X, Py_ssize_t dim, Py_ssize_t g, int64_t ip, int64_t ineg,
                                  double margin, bint squared, double coef, bint need_grad, floating* grad,
                                  double* cp, double* cn) noexcept nogil:
    cdef const floating* x = X + g * dim
    cdef const floating* xp
    cdef const floating* xn
    cdef double dp = 0.0, dn = 0.0, u, v, arg, c, fp, fn
    cdef Py_ssize_t k
    cp[0] = 0.0
    cn[0] = 0.0
    if ip < 0 or ineg < 0:
        if need_grad:
            for k in range(dim):
                grad[k] = 0.0
        return 0.0
    xp = X + ip * dim
    xn = X + ineg * dim
    for k in range(dim):
        u = <double>x[k] - <double>xp[k]
        v = <double>x[k] - <double>xn[k]
        dp += u * u
        dn += v * v
    if not squared:
        dp = sqrt(dp) if dp < INFINITY else _rescaled_distance(x, xp, dim)
        dn = sqrt(dn) if dn < INFINITY else _rescaled_distance(x, xn, dim)
    arg = dp - dn + margin
    if need_grad:
        c = coef if arg >= 0.0 else 0.0
        if squared:
            fp = 2.0 * c
            fn = 2.0 * c
        else:
            fp = c / dp if dp > 0.0 else 0.0
            fn = c / dn if dn > 0.0 else 0.0
        cp[0] = fp
        cn[0] = fn
        if fp == 0.0 and fn == 0.0:
            # (no 0·NaN: an anchor whose distance is NaN gets 0, as in the reference)
            for k in range(dim):
                grad[k] = 0.0
        else:
            for k in range(dim):
                grad[k] = <floating>(fp * (<double>x[k] - <double>xp[k]) - fn * (<double>x[k] - <double>xn[k]))
    return arg if (arg > 0.0 or arg != arg) else 0.0  # NaN propagates


def _bh_scatter(const floating[:, ::1] X, const int64_t[::1] hp, const int64_t[::1] hn,
                const double[::1] cp, const double[::1] cn, floating[:, ::1] grad):
    """The selected rows' share of the gradient (serial: rows may repeat)."""
    cdef Py_ssize_t n = X.shape[0], dim = X.shape[1], g, k
    cdef int64_t i
    with nogil:
        for g in range(n):
            # anchors outside the hinge have both 0; an active one may have one 0 (its
            # distance 0 or inf) and still scatters it: 0·(x − x_i) is NaN where x_i is inf
            if cp[g] == 0.0 and cn[g] == 0.0:
                continue
            i = hp[g]
            for k in range(dim):
                grad[i, k] = <floating>(<double>grad[i, k] - cp[g] * (<double>X[g, k] - <double>X[i, k]))
            i = hn[g]
            for k in range(dim):
                grad[i, k] = <floating>(<double>grad[i, k] + cn[g] * (<double>X[g, k] - <double>X[i, k]))


# ---------------------------------------------------------------------------
# triplet
# ---------------------------------------------------------------------------

cdef inline double _sign(double v) noexcept nogil:
    return 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)


cdef inline double _sum_diff(const floating* x, const floating* y, Py_ssize_t dim, double eps,
                             bint square) noexcept nogil:
    """Σ v[k]² (``square``) or Σ |v[k]| for v = x − y + eps, in float64, eight
    interleaved lanes."""
    cdef double lane[8]
    cdef double v
    cdef Py_ssize_t c, j, n8 = dim - dim % 8
    for j in range(8):
        lane[j] = 0.0
    for c in range(0, n8, 8):
        for j in range(8):
            v = <double>x[c + j] - <double>y[c + j] + eps
            lane[j] += v * v if square else fabs(v)
    for c in range(n8, dim):
        v = <double>x[c] - <double>y[c] + eps
        lane[0] += v * v if square else fabs(v)
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]))


cdef inline double _dist(const floating* x, const floating* y, Py_ssize_t dim, double eps, double p,
                         bint squared) noexcept nogil:
    """‖x − y + eps‖_p (or its square with p = 2), in float64."""
    cdef double s = 0.0, big = 0.0, a
    cdef Py_ssize_t k
    if squared or p == 2.0:
        s = _sum_diff(x, y, dim, eps, True)
        if squared or s < INFINITY:
            return s if squared else sqrt(s)
        # the squares overflowed (or a NaN): scaled by the largest |v|, as for general p
        s = 0.0
    if p == 1.0:
        return _sum_diff(x, y, dim, eps, False)
    for k in range(dim):
        a = fabs(<double>x[k] - <double>y[k] + eps)
        if a > big or a != a:   # max() would skip a NaN; once NaN, big stays NaN
            big = a
    if isinf(p) or big == 0.0 or not isfinite(big):
        return big
    for k in range(dim):
        s += pow(fabs(<double>x[k] - <double>y[k] + eps) / big, p)
    return big * pow(s, 1.0 / p)


cdef inline void _dist_grad_add(const floating* x, const floating* y, Py_ssize_t dim, double eps, double p,
                                bint squared, double d, double factor, double* gx, double* gy) noexcept nogil:
    """gx += factor·∇, gy −= factor·∇ with ∇ = d‖v‖/dv at v = x − y + eps."""
    cdef Py_ssize_t k, first = 0
    cdef double t, v, a, big = -1.0
    if factor == 0.0:
        return
    if squared:
        for k in range(dim):
            t = factor * 2.0 * (<double>x[k] - <double>y[k] + eps)
            gx[k] += t
            gy[k] -= t
        return
    if d == 0.0:
        return
    if isinf(p):
        for k in range(dim):
            a = fabs(<double>x[k] - <double>y[k] + eps)
            if a > big:
                big = a
                first = k
        t = factor * _sign(<double>x[first] - <double>y[first] + eps)
        gx[first] += t
        gy[first] -= t
        return
    for k in range(dim):
        v = <double>x[k] - <double>y[k] + eps
        if p == 2.0:
            t = v / d
        elif p == 1.0:
            t = _sign(v)
        elif v == 0.0:
            t = 0.0
        else:
            t = pow(fabs(v) / d, p - 1.0)
            t = t if v > 0.0 else -t
        gx[k] += factor * t
        gy[k] -= factor * t


def _triplet_rows(const floating[:, ::1] A, const floating[:, ::1] P, const floating[:, ::1] Q, double margin,
                  double p, double eps, bint swap, bint squared, const double[::1] coef, bint need_grad,
                  double[::1] loss, floating[:, ::1] gA, floating[:, ::1] gP, floating[:, ::1] gQ,
                  double[:, ::1] scratch, bint par):
    """``scratch``: 3·D float64 per thread (the general p-norm gradient)."""
    cdef Py_ssize_t n = A.shape[0], dim = A.shape[1], i
    for i in prange(n, nogil=True, num_threads=_team(par), schedule="static"):
        loss[i] = _triplet_row(&A[i, 0], &P[i, 0], &Q[i, 0], dim, margin, p, eps, swap, squared, coef[i],
                               need_grad, &gA[i, 0] if need_grad else NULL, &gP[i, 0] if need_grad else NULL,
                               &gQ[i, 0] if need_grad else NULL, &scratch[threadid(), 0])


cdef inline double _triplet_row(const floating* a, const floating* pp, const floating* q, Py_ssize_t dim,
                                double margin, double p, double eps, bint swap, bint squared, double coef,
                                bint need_grad, floating* ga, floating* gp, floating* gq,
                                double* scratch) noexcept nogil:
    # linear: d‖v‖/dv = f·v (squared: f = 2; p = 2: f = 1/‖v‖), sign: p = 1
    cdef bint linear = squared or p == 2.0
    cdef double d_ap = _dist(a, pp, dim, eps, p, squared)
    cdef double d_an = _dist(a, q, dim, eps, p, squared)
    cdef double d_neg = d_an, d_pn, arg, c, f_ap, f_ng, v_ap, v_ng, t_ap, t_ng
    cdef bint swapped = False
    cdef Py_ssize_t k
    if swap:
        d_pn = _dist(pp, q, dim, eps, p, squared)
        if d_pn < d_an:
            swapped = True
            d_neg = d_pn
    arg = d_ap - d_neg + margin
    if not need_grad:
        return 0.0 if arg < 0.0 else arg
    c = coef if arg >= 0.0 else 0.0
    if linear or p == 1.0:
        # one pass: ga = c(∇ap − ∇an), gp = −c∇ap, gn = c∇an (swapped: the negative
        # distance is d(p, n): ga = c∇ap, gp = −c(∇ap + ∇pn), gn = c∇pn)
        if squared:
            f_ap = 2.0 * c
            f_ng = 2.0 * c
        else:
            f_ap = c / d_ap if d_ap > 0.0 else 0.0
            f_ng = c / d_neg if d_neg > 0.0 else 0.0
        # (a loop per case: a branch on swapped inside would keep it scalar)
        if swapped:
            for k in range(dim):
                v_ap = <double>a[k] - <double>pp[k] + eps
                v_ng = <double>pp[k] - <double>q[k] + eps
                t_ap = f_ap * v_ap if linear else c * _sign(v_ap)
                t_ng = f_ng * v_ng if linear else c * _sign(v_ng)
                ga[k] = <floating>t_ap
                gp[k] = <floating>(-t_ap - t_ng)
                gq[k] = <floating>t_ng
        else:
            for k in range(dim):
                v_ap = <double>a[k] - <double>pp[k] + eps
                v_ng = <double>a[k] - <double>q[k] + eps
                t_ap = f_ap * v_ap if linear else c * _sign(v_ap)
                t_ng = f_ng * v_ng if linear else c * _sign(v_ng)
                ga[k] = <floating>(t_ap - t_ng)
                gp[k] = <floating>(-t_ap)
                gq[k] = <floating>t_ng
    else:
        for k in range(3 * dim):
            scratch[k] = 0.0
        _dist_grad_add(a, pp, dim, eps, p, squared, d_ap, c, scratch, scratch + dim)
        if swapped:
            _dist_grad_add(pp, q, dim, eps, p, squared, d_neg, -c, scratch + dim, scratch + 2 * dim)
        else:
            _dist_grad_add(a, q, dim, eps, p, squared, d_neg, -c, scratch, scratch + 2 * dim)
        for k in range(dim):
            ga[k] = <floating>scratch[k]
            gp[k] = <floating>scratch[dim + k]
            gq[k] = <floating>scratch[2 * dim + k]
    return 0.0 if arg < 0.0 else arg


# ---------------------------------------------------------------------------
# Python drivers: BLAS products on row blocks / tiles, the kernels above per block
# ---------------------------------------------------------------------------

def _block_rows(n_rows, n_cols, itemsize, block_rows):
    return _plan_block_rows(n_rows, n_cols, itemsize, BLOCK_ROWS if block_rows is None else block_rows,
                            BLOCK_BYTES)


def _scratch(per_thread):
    """Per-thread float64 rows for the kernels that need a work area."""
    return np.empty((max(_threads, 1), max(per_thread, 1)))


def triplet(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False,
            squared=False, coef=None, need_grad=True, out=None):
    """Triplet margin loss; see :func:`numbaloss.reference.embedding.triplet`.

    Inputs (…, D) C-contiguous, one float dtype.  Grads (anchor, positive, negative).
    """
    shape = anchor.shape
    dim = shape[len(shape) - 1]  # (no negative indices: this module is compiled with wraparound=False)
    A2, P2, Q2 = (x.reshape(-1, dim) for x in (anchor, positive, negative))
    n = A2.shape[0]
    coef = _coef(coef, n)
    losses = np.empty(n)
    if need_grad:
        grads = _grad_buffers(out, [shape] * 3, anchor.dtype)
        gA, gP, gQ = (g.reshape(n, dim) for g in grads)
    else:
        grads = None
        gA = gP = gQ = np.empty((0, 0), anchor.dtype)
    _triplet_rows(A2, P2, Q2, float(margin), float(p), float(eps), bool(swap), bool(squared), coef,
                  bool(need_grad), losses, gA, gP, gQ, _scratch(3 * dim), _use_threads(A2.size))
    return losses, grads


def batch_hard_triplet(embeddings, labels, **kwargs):
    """Batch-hard triplet loss; see :func:`numbaloss.reference.embedding.batch_hard_triplet`
    (driver: :func:`numbaloss._pairwise_plan.batch_hard_triplet`)."""
    return _plan.batch_hard_triplet(_KERNELS, embeddings, labels, **kwargs)


def info_nce(anchor, positive, negatives=None, **kwargs):
    """InfoNCE; see :func:`numbaloss.reference.embedding.info_nce` (driver:
    :func:`numbaloss._pairwise_plan.info_nce`)."""
    return _plan.info_nce(_KERNELS, anchor, positive, negatives, **kwargs)


# --- SupCon / NT-Xent -------------------------------------------------------

def _contrastive(Z, lab, n_classes, npos, kappa, tau, coef, normalize, gZ, block_rows):
    """Shared driver of SupCon and NT-Xent over the rows Z (n, D) of all views
    (C-contiguous; row v·N + i is view v of sample i).

    ``lab``: int64 label code in [0, n_classes) of each row; ``npos``: |P(r)|; ``gZ``:
    the (n, D) gradient buffer (filled) or None.  Returns the losses (n,).
    """
    n, dim = Z.shape
    dt = Z.dtype
    losses = np.zeros(n)
    need_grad = gZ is not None
    valid = npos > 0
    if n == 0 or not valid.any():
        if need_grad:
            gZ[...] = 0
        return losses
    T = _tile_edge(Z.itemsize, BLOCK_ROWS if block_rows is None else block_rows, TILE, BLOCK_BYTES)
    par_rows = _row_threads(Z.size)
    sq = np.empty(n)
    _sqnorms(Z, sq, par_rows)
    norm = np.sqrt(sq)
    z_scale = None
    if normalize:
        # rows of huge norm are scaled by powers of two, so that Z·Zᵀ cannot overflow
        _plan.repair_norms(Z, norm)
        Z, norm, z_scale = _plan.product_safe(Z, norm)
        if z_scale is not None:
            _sqnorms(Z, sq, par_rows)
    inv = 1.0 / np.maximum(norm, NORM_EPS) if normalize else np.ones(n)
    rs = (inv / tau).astype(dt)
    cs = inv.astype(dt)
    ipos = np.where(valid, 1.0 / np.maximum(npos, 1), 0.0)
    w64 = np.where(valid, coef * kappa / tau * inv, 0.0)
    wr = w64.astype(dt)

    # the positives: Σ_{p∈P(r)} l_rp from the class sums C_k = Σ_{lab=k} inv·z
    C = np.zeros((n_classes, dim))
    _class_sums(Z, lab, inv, C)
    psum = np.empty(n)
    _pos_logit_sums(Z, lab, inv / tau, inv, sq, C, psum, par_rows)
    dominant = np.empty(0, np.int64) if normalize else _plan.self_dominated_rows(norm, lab, n_classes, valid)
    if dominant.size:
        positives, _ = _plan.positive_sums(Z, lab, dominant)
        psum[dominant] = np.einsum("ij,ij->i", Z[dominant].astype(np.float64), positives) / tau

    # the log-sum-exp over A(r) and the softmax part of the gradient
    _contrastive_tiles(Z, T, rs, cs, wr, psum, ipos, valid, kappa, losses, gZ)
    if not need_grad:
        return losses
    # the positives' part: −(w/|P|)·Σ_{p∈P(r)} inv_p z_p and its transpose
    wrip = w64 * ipos
    B = np.zeros((n_classes, dim))
    _class_sums(Z, lab, wrip, B)
    softmax_part = gZ[dominant].astype(np.float64)
    _pos_grad(Z, lab, wrip, inv, C, B, gZ, par_rows)
    if dominant.size:    # (no normalisation here)
        positives, weighted = _plan.positive_sums(Z, lab, dominant, wrip)
        gZ[dominant] = softmax_part - wrip[dominant, None] * positives - weighted
    if normalize:
        _project(Z, gZ, inv, norm)
        _plan.unscale_rows(gZ, z_scale)
    return losses


def _contrastive_tiles(Z, T, rs, cs, wr, psum, ipos, valid, kappa, losses, gZ):
    """The symmetric two-pass tile path (see the module docstring): fills ``losses``
    and writes the softmax part of g̃ into ``gZ`` (when given).  With n ≤ T there is
    one tile, whose logits pass 2 reuses."""
    n, dim = Z.shape
    dt = Z.dtype
    single = n <= T
    edge = min(T, n)
    flat = np.empty(edge * edge, dt)
    mx = np.full(n, -np.inf, dtype=dt)
    ssum = np.zeros(n)
    par = _use_threads(edge * edge)
    cmax = np.empty(edge, dt)
    csum = np.empty(edge)
    starts = range(0, n, T)
    for i0 in starts:
        i1 = min(i0 + T, n)
        for j0 in range(i0, n, T):
            j1 = min(j0 + T, n)
            S = _block_view(flat, i1 - i0, j1 - j0)
            _matmul_t(Z[i0:i1], Z[j0:j1], S)
            _con_tile_rows(S, i0, j0, rs, cs, mx, ssum, par)
            if j0 != i0:
                _con_tile_cols(S, j0, mx, ssum, cmax, csum, par)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = mx.astype(np.float64) + np.log(ssum)
        losses[:] = np.where(valid, kappa * (lse - psum * ipos), 0.0)
    if gZ is None:
        return

    lse_t = lse.astype(dt)
    if single:
        S = _block_view(flat, n, n)           # still the logits of pass 1
        _con_tile_grad(S, 0, 0, rs, cs, lse_t, wr, True, par)
        np.matmul(S, Z, out=gZ)
        return
    gZ[...] = 0
    tmp = np.empty((T, dim), dt)
    for i0 in starts:
        i1 = min(i0 + T, n)
        ZI = Z[i0:i1]
        for j0 in range(i0, n, T):
            j1 = min(j0 + T, n)
            ZJ = Z[j0:j1]
            S = _block_view(flat, i1 - i0, j1 - j0)
            _matmul_t(ZI, ZJ, S)
            _con_tile_grad(S, i0, j0, rs, cs, lse_t, wr, False, par)
            t = tmp[:i1 - i0]
            np.matmul(S, ZJ, out=t)
            gZ[i0:i1] += t
            if j0 != i0:
                t = tmp[:j1 - j0]
                np.matmul(S.T, ZI, out=t)
                gZ[j0:j1] += t


def nt_xent(z_i, z_j, *, temperature=0.5, coef=None, need_grad=True, out=None, block_rows=None):
    """NT-Xent (SimCLR); see :func:`numbaloss.reference.embedding.nt_xent`.

    Computed as SupCon with V = 2 views and no labels (each row's only positive is
    its pair).  Losses (2N,); grads (z_i, z_j).
    """
    n, dim = z_i.shape
    coef = _coef(coef, 2 * n)
    codes = np.arange(n, dtype=np.int64)
    lab = np.concatenate((codes, codes))
    npos = np.ones(2 * n, dtype=np.int64)
    Z = np.concatenate((z_i, z_j))
    gZ = np.empty(Z.shape, Z.dtype) if need_grad else None
    losses = _contrastive(Z, lab, n, npos, 1.0, float(temperature), coef, True, gZ, block_rows)
    if not need_grad:
        return losses, None
    if out is None:
        return losses, (gZ[:n], gZ[n:])
    grads = _grad_buffers(out, [z_i.shape, z_j.shape], z_i.dtype)
    grads[0][...] = gZ[:n]
    grads[1][...] = gZ[n:]
    return losses, grads


def supcon(features, labels=None, *, temperature=0.07, base_temperature=None,
           normalize=True, coef=None, need_grad=True, out=None, block_rows=None):
    """Supervised contrastive loss; see :func:`numbaloss.reference.embedding.supcon`.

    features (N, V, D) or (N, D), C-contiguous; losses (N·V,) view-major; anchors
    without a positive get loss 0 (``supcon_valid_anchors``).
    """
    F3 = features[:, None, :] if features.ndim == 2 else features
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
    lab = np.tile(codes, n_views)
    npos = np.tile(n_views * count - 1, n_views)
    # the rows of all views, view-major, as one contiguous array
    Z = features if n_views == 1 else np.ascontiguousarray(F3.transpose(1, 0, 2))
    Z = Z.reshape(n_samples * n_views, dim)   # explicit shape: -1 is ambiguous when dim = 0
    grad = gZ = None
    if need_grad:
        (grad,) = _grad_buffers(out, [features.shape], features.dtype)
        gZ = grad.reshape(n_samples, dim) if n_views == 1 else np.empty(Z.shape, Z.dtype)
    losses = _contrastive(Z, lab, n_classes, npos, tau / tau_base, tau, coef, bool(normalize), gZ,
                          block_rows)
    if not need_grad:
        return losses, None
    if n_views > 1:
        grad[...] = gZ.reshape(n_views, n_samples, dim).transpose(1, 0, 2)
    return losses, (grad,)


# --- ArcFace / CosFace ------------------------------------------------------

def arcface(embeddings, labels, weight, **kwargs):
    """ArcFace; see :func:`numbaloss.reference.embedding.arcface` (driver:
    :func:`numbaloss._pairwise_plan.margin_softmax`)."""
    return _plan.arcface(_KERNELS, embeddings, labels, weight, **kwargs)


def cosface(embeddings, labels, weight, **kwargs):
    """CosFace; see :func:`numbaloss.reference.embedding.cosface` (driver:
    :func:`numbaloss._pairwise_plan.margin_softmax`)."""
    return _plan.cosface(_KERNELS, embeddings, labels, weight, **kwargs)


def _nce_paired_threads(par, A, P, Q, *args):
    _nce_paired(A, P, Q, *args, _scratch(2 * (Q.shape[1] + 1) + A.shape[1]), par)


_KERNELS = _plan.BlockKernels(
    sqnorms=_row_sqnorms,
    project=_project,
    block_rows=_block_rows,
    use_threads=_use_threads,
    nce_rows=lambda par, *args: _nce_rows(*args, par),
    nce_shared_rows=lambda par, *args: _nce_shared_rows(*args, par),
    nce_paired=_nce_paired_threads,
    margin_rows=lambda par, *args: _margin_rows(*args, par),
    bh_select=lambda par, *args: _bh_select(*args, par),
    bh_finish=lambda par, *args: _bh_finish(*args, par),
    bh_scatter=_bh_scatter,
)

"""CUDA kernels of the embedding losses: triplet, batch_hard_triplet, info_nce, nt_xent,
arcface, cosface, supcon.

Same interface and answers as :mod:`numbaloss.reference.embedding` (see there for the
formulas)::

    losses, grads = fn(<inputs>, <parameters>, coef=..., need_grad=...)

with every array a numba device array: inputs C-contiguous of the compute dtype
(float32 or float64; labels integers), ``coef`` float64 of the length of ``losses``.
``losses`` is float64; the gradients have the compute dtype.  Sums accumulate in
float64.  ``numbaloss._cuda.backend.pairwise`` moves the arrays.

Structure (the row blocks of the CPU backend, ``numbaloss._numba.pairwise``)
----------------------------------------------------------------------------
* Cosine similarity: the rows are normalised once into a unit copy U (compute dtype)
  and their norms kept (float64); the gradient w.r.t. U is accumulated in float64 and
  :func:`normalize_backward` maps it back through x ↦ x / max(‖x‖, 1e-12).
* Softmax losses (InfoNCE, NT-Xent, SupCon, ArcFace, CosFace): rows of anchors in
  blocks of b, with b·M·8 bytes ≤ :data:`BLOCK_BYTES` (M columns), so device memory
  is O(N·D + b·M).  Per block:

  1. S = U_R·Kᵀ (b × M, float64) with :func:`product`, our tiled shared-memory
     matrix product (no cuBLAS);
  2. :func:`softmax_rows` — one thread block per row: max, Σexp and the target
     logits by block reductions in shared memory, the row's loss, and S overwritten
     in place with G = dL/dS;
  3. g̃U_R += G·K and g̃K += Gᵀ·U_R, both with :func:`product`.

  One row kernel serves all five losses; what differs is the target of a row
  (:data:`TARGET_DIAGONAL` column r, :data:`TARGET_EXTRA` a per-row positive logit
  outside S, :data:`TARGET_LABEL` column yᵣ with the ArcFace/CosFace margin,
  :data:`TARGET_CODES` every other row of the same class) and whether column r is
  left out of the denominator.
* Batch-hard triplet: S = X_R·Xᵀ gives d² = ‖x_r‖² + ‖x_c‖² − 2x_r·x_c, a row kernel
  picks the hardest positive and negative (block reductions of (value, index)), and
  a per-anchor kernel recomputes their distances exactly and scatters the gradient
  with atomic adds.
* Triplet: one thread per triplet (no product to share).

Launches use ``backend.THREADS_PER_BLOCK`` threads: row kernels one block per row,
products square tiles of edge 2^⌊log₂(threads)/2⌋ (16 for 256 threads), elementwise
kernels grid-stride loops.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64, njit

from ..reference.embedding import NORM_EPS, SIN_EPS, distance_scale
from . import backend as _b
from . import kernels as _k

#: largest similarity block in bytes (float64): rows per block = BLOCK_BYTES // (8·M)
BLOCK_BYTES = 256 << 20
#: force the rows per block (tests: several blocks on tiny inputs); None: from BLOCK_BYTES
BLOCK_ROWS: int | None = None

TARGET_DIAGONAL = 0   # InfoNCE with in-batch negatives: row r's target is column r
TARGET_EXTRA = 1      # InfoNCE with given negatives: the target is the positive logit aᵣ·pᵣ
TARGET_LABEL = 2      # ArcFace / CosFace: column yᵣ, through the margin function
TARGET_CODES = 3      # NT-Xent / SupCon: every other row of the same class, mean of their logits

MARGIN_NONE = 0
MARGIN_ARCFACE = 1
MARGIN_ARCFACE_EASY = 2
MARGIN_COSFACE = 3

# Device functions: inlined ``@njit`` functions on a GPU (compiled for the kernel's
# target and cc, see ``kernels.block_reduce``); CUDA device functions under the
# simulator, which swaps its per-thread ``cuda`` module into them.
device_function = cuda.jit(device=True) if _k.SIMULATOR else njit(inline="always")


# ------------------------------------------------------------ block reductions
@device_function
def block_sum(buf, x):
    """Σ x over the threads of the block (every thread gets it); ``buf`` is shared
    memory of blockDim float64."""
    tid = cuda.threadIdx.x
    cuda.syncthreads()  # the previous reduction's result has been read
    buf[tid] = x
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    return buf[0]


@device_function
def block_max(buf, x):
    """max x over the threads of the block (NaN-ignoring like ``max``), to every thread."""
    tid = cuda.threadIdx.x
    cuda.syncthreads()
    buf[tid] = x
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] = max(buf[tid], buf[tid + step])
        cuda.syncthreads()
        step //= 2
    return buf[0]


@device_function
def block_pick(buf, value, index, largest):
    """(value, index) of the largest (``largest``) or smallest value over the block,
    the lowest index on ties; index −1 marks "none".  ``buf``: 2·blockDim float64."""
    tid = cuda.threadIdx.x
    half = cuda.blockDim.x
    cuda.syncthreads()
    buf[tid] = value
    buf[half + tid] = index
    cuda.syncthreads()
    step = half // 2
    while step > 0:
        if tid < step:
            j_other = int64(buf[half + tid + step])
            if j_other >= 0:
                j_mine = int64(buf[half + tid])
                v_other = buf[tid + step]
                v_mine = buf[tid]
                better = v_other > v_mine if largest else v_other < v_mine
                if j_mine < 0 or better or (v_other == v_mine and j_other < j_mine):
                    buf[tid] = v_other
                    buf[half + tid] = j_other
        cuda.syncthreads()
        step //= 2
    return buf[0], int64(buf[half])


# ------------------------------------------------------------ the matrix product
@cuda.jit
def product(X, x_off, x_trans, Y, y_off, y_trans, n_i, n_j, n_k, C, c_off, accumulate):
    """C[c_off + i, j] (+)= Σₖ X̃[i, k]·Ỹ[k, j] for i < n_i, j < n_j, in float64, with
    X̃[i, k] = X[x_off + i, k] (``x_trans``: X[x_off + k, i]) and Ỹ[k, j] =
    Y[y_off + k, j] (``y_trans``: Y[j, y_off + k]).

    Square blocks of t × t threads, t = blockDim.x; each block computes t × t tiles of
    C (grid-stride over tiles), staging t × t tiles of X̃ and Ỹ in shared memory
    (2·t² float64, dynamic)."""
    buf = cuda.shared.array(0, float64)
    t = cuda.blockDim.x
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    y_tile = t * t
    for ti in range(cuda.blockIdx.y * t, n_i, cuda.gridDim.y * t):
        for tj in range(cuda.blockIdx.x * t, n_j, cuda.gridDim.x * t):
            i = ti + ty
            j = tj + tx
            acc = 0.0
            for k0 in range(0, n_k, t):
                # tiles: X̃ at buf[i·t + k], Ỹ at buf[t² + k·t + j]; consecutive threads
                # (tx) read consecutive addresses of X and Y, transposed or not
                if x_trans:
                    x = 0.0
                    if ti + tx < n_i and k0 + ty < n_k:
                        x = float64(X[x_off + k0 + ty, ti + tx])
                    buf[tx * t + ty] = x
                else:
                    x = 0.0
                    if i < n_i and k0 + tx < n_k:
                        x = float64(X[x_off + i, k0 + tx])
                    buf[ty * t + tx] = x
                if y_trans:
                    y = 0.0
                    if tj + ty < n_j and k0 + tx < n_k:
                        y = float64(Y[tj + ty, y_off + k0 + tx])
                    buf[y_tile + tx * t + ty] = y
                else:
                    y = 0.0
                    if k0 + ty < n_k and j < n_j:
                        y = float64(Y[y_off + k0 + ty, j])
                    buf[y_tile + ty * t + tx] = y
                cuda.syncthreads()
                for kk in range(t):
                    acc += buf[ty * t + kk] * buf[y_tile + kk * t + tx]
                cuda.syncthreads()
            if i < n_i and j < n_j:
                if accumulate:
                    C[c_off + i, j] += acc
                else:
                    C[c_off + i, j] = acc


# ------------------------------------------------------------ the softmax rows
@device_function
def margin_target(c, mode, margin):
    """(φ(cos θ), dφ/d cos θ) of the target logit; ``margin`` = (cos m, sin m,
    cos(π − m), m·sin(π − m), m).  See ``reference.embedding.arcface``/``cosface``."""
    if mode == MARGIN_COSFACE:
        return c - margin[4], 1.0
    sin = math.sqrt(max(1.0 - c * c, 0.0))
    phi = c * margin[0] - sin * margin[1]
    dphi = margin[0] + margin[1] * c / max(sin, SIN_EPS)
    if mode == MARGIN_ARCFACE_EASY:
        if c > 0.0:
            return phi, dphi
        return c, 1.0
    if c > margin[2]:
        return phi, dphi
    return c - margin[3], 1.0


@device_function
def logit_of(s, is_target, margin_mode, scale, margin):
    """(logit, d logit / d s) of a similarity s."""
    if is_target and margin_mode != MARGIN_NONE:
        phi, dphi = margin_target(s, margin_mode, margin)
        return scale * phi, scale * dphi
    return scale * s, scale


@device_function
def row_code(labels, has_labels, n_samples, c):
    """Class of row c of the stacked views (row c is view c // N of sample c mod N)."""
    sample = c % n_samples
    return int64(labels[sample]) if has_labels else int64(sample)


@cuda.jit
def softmax_rows(S, r0, scale, target_mode, labels, has_labels, n_samples, extra, exclude_self,
                 margin_mode, margin, factor, coef, need_grad, loss, g_extra):
    """Cross-entropy rows of a similarity block: row i of S is anchor r = r0 + i.

    logits ℓᵣ꜀ = scale·Sᵢ꜀ (the margin function at the label column), with column r
    left out when ``exclude_self``, and scale·extra[r] appended for TARGET_EXTRA::

        loss[r] = factor·(log Σ꜀ exp ℓᵣ꜀ − mean of the target logits)

    With ``need_grad``, Sᵢ꜀ := coef[r]·factor·(softmax꜀ − t꜀)·dℓᵣ꜀/dSᵢ꜀ (t꜀ the
    target weight, 1/|P| on each of |P| targets) and g_extra[r] the same for the
    extra logit.  TARGET_CODES rows without a positive get loss 0 and G = 0.
    One block per row (grid-stride), shared memory: blockDim float64."""
    buf = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_cols = S.shape[1]
    for i in range(cuda.blockIdx.x, S.shape[0], cuda.gridDim.x):
        r = r0 + i
        target = -1
        if target_mode == TARGET_DIAGONAL:
            target = r
        elif target_mode == TARGET_LABEL:
            target = int64(labels[r])
        code = row_code(labels, has_labels, n_samples, r) if target_mode == TARGET_CODES else 0
        extra_logit = scale * extra[r] if target_mode == TARGET_EXTRA else -math.inf
        mx = extra_logit
        for c in range(tid, n_cols, nt):
            if not (exclude_self and c == r):
                mx = max(mx, logit_of(S[i, c], c == target, margin_mode, scale, margin)[0])
        mx = block_max(buf, mx)
        shift = mx if math.isfinite(mx) else 0.0
        total = 0.0
        target_sum = 0.0
        count = 0.0
        for c in range(tid, n_cols, nt):
            if exclude_self and c == r:
                continue
            lg = logit_of(S[i, c], c == target, margin_mode, scale, margin)[0]
            total += math.exp(lg - shift)
            if target_mode == TARGET_CODES:
                if row_code(labels, has_labels, n_samples, c) == code:
                    target_sum += lg
                    count += 1.0
            elif c == target:
                target_sum += lg
                count += 1.0
        total = block_sum(buf, total)
        target_sum = block_sum(buf, target_sum)
        count = block_sum(buf, count)
        if target_mode == TARGET_EXTRA:
            total += math.exp(extra_logit - shift)
            target_sum = extra_logit
            count = 1.0
        lse = shift + math.log(total)
        has_target = count > 0.0
        if tid == 0:
            loss[r] = factor * (lse - target_sum / count) if has_target else 0.0
        if need_grad:
            w = coef[r] * factor if has_target else 0.0
            t_weight = 1.0 / count if has_target else 0.0
            for c in range(tid, n_cols, nt):
                if exclude_self and c == r:
                    S[i, c] = 0.0
                    continue
                lg, dlg = logit_of(S[i, c], c == target, margin_mode, scale, margin)
                if target_mode == TARGET_CODES:
                    is_t = row_code(labels, has_labels, n_samples, c) == code
                else:
                    is_t = c == target
                S[i, c] = w * (math.exp(lg - lse) - (t_weight if is_t else 0.0)) * dlg
            if target_mode == TARGET_EXTRA and tid == 0:
                g_extra[r] = w * (math.exp(extra_logit - lse) - 1.0) * scale


# ------------------------------------------------------------ batch-hard triplet
@cuda.jit
def hardest_pairs(S, r0, sq, labels, hard_pos, hard_neg):
    """Row i of S = X_R·Xᵀ is anchor r = r0 + i: hard_pos[r] = the farthest other row
    of the same label, hard_neg[r] = the nearest row of another label, on
    d² = ‖x_r‖² + ‖x_c‖² − 2Sᵢ꜀ (−1: none).  One block per row, shared memory
    2·blockDim float64."""
    buf = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(cuda.blockIdx.x, S.shape[0], cuda.gridDim.x):
        r = r0 + i
        lab = labels[r]
        best_p = -math.inf
        idx_p = -1
        best_n = math.inf
        idx_n = -1
        for c in range(tid, S.shape[1], nt):  # ascending c: strict comparisons keep the first
            d2 = sq[r] + sq[c] - 2.0 * S[i, c]
            if labels[c] == lab:
                if c != r and (idx_p < 0 or d2 > best_p):
                    best_p = d2
                    idx_p = c
            elif idx_n < 0 or d2 < best_n:
                best_n = d2
                idx_n = c
        idx_p = block_pick(buf, best_p, idx_p, True)[1]
        idx_n = block_pick(buf, best_n, idx_n, False)[1]
        if tid == 0:
            hard_pos[r] = idx_p
            hard_neg[r] = idx_n


@device_function
def rescaled_distance(X, g, j):
    """‖X[g] − X[j]‖ (float64) where the sum of squares overflowed or is NaN: scaled by
    the largest |difference| first (inf or NaN when that is)."""
    big = 0.0
    for k in range(X.shape[1]):
        a = abs(float64(X[g, k]) - float64(X[j, k]))
        if a > big or a != a:
            big = a
    if big == 0.0 or not math.isfinite(big):
        return big
    s = 0.0
    for k in range(X.shape[1]):
        v = (float64(X[g, k]) - float64(X[j, k])) / big
        s += v * v
    return big * math.sqrt(s)


@cuda.jit
def batch_hard_finish(X, hard_pos, hard_neg, margin, squared, coef, need_grad, loss, grad):
    """Per anchor: exact distances to its hardest pair, the loss, and the gradient
    scattered into ``grad`` (float64, zeroed) with atomic adds."""
    dim = X.shape[1]
    for r in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        hp = hard_pos[r]
        hn = hard_neg[r]
        if hp < 0 or hn < 0:
            loss[r] = 0.0
            continue
        d_p = 0.0
        d_n = 0.0
        for k in range(dim):
            xr = float64(X[r, k])
            u = xr - float64(X[hp, k])
            d_p += u * u
            u = xr - float64(X[hn, k])
            d_n += u * u
        if not squared:
            d_p = math.sqrt(d_p) if d_p < math.inf else rescaled_distance(X, r, hp)
            d_n = math.sqrt(d_n) if d_n < math.inf else rescaled_distance(X, r, hn)
        arg = d_p - d_n + margin
        loss[r] = max(arg, 0.0)
        if not need_grad or not arg >= 0.0:   # (a NaN distance passes 0, as in the reference)
            continue
        c = coef[r]
        if squared:
            f_p = 2.0 * c
            f_n = 2.0 * c
        else:
            f_p = c / d_p if d_p > 0.0 else 0.0
            f_n = c / d_n if d_n > 0.0 else 0.0
        for k in range(dim):
            xr = float64(X[r, k])
            g_p = f_p * (xr - float64(X[hp, k]))
            g_n = f_n * (xr - float64(X[hn, k]))
            cuda.atomic.add(grad, (r, k), g_p - g_n)
            cuda.atomic.add(grad, (hp, k), -g_p)
            cuda.atomic.add(grad, (hn, k), g_n)


# ------------------------------------------------------------ triplet
@device_function
def triplet_distance(X, Y, i, eps, p, squared):
    """‖X[i] − Y[i] + eps‖_p in float64 (its square with ``squared``); p = ∞ is the
    largest |vₖ|, other p are scaled by it so that a large p cannot overflow."""
    dim = X.shape[1]
    if squared or p == 2.0:
        s = 0.0
        for k in range(dim):
            v = float64(X[i, k]) - float64(Y[i, k]) + eps
            s += v * v
        if squared or s < math.inf:
            return s if squared else math.sqrt(s)
        # the squares overflowed (or a NaN): scaled by the largest |v|, as for general p
    if p == 1.0:
        s = 0.0
        for k in range(dim):
            s += abs(float64(X[i, k]) - float64(Y[i, k]) + eps)
        return s
    big = 0.0
    for k in range(dim):
        a = abs(float64(X[i, k]) - float64(Y[i, k]) + eps)
        if a > big or a != a:   # max() would skip a NaN; once NaN, big stays NaN
            big = a
    if math.isinf(p) or big == 0.0 or not math.isfinite(big):
        return big
    s = 0.0
    for k in range(dim):
        s += (abs(float64(X[i, k]) - float64(Y[i, k]) + eps) / big) ** p
    return big * s ** (1.0 / p)


@device_function
def triplet_distance_grad_add(X, Y, i, eps, p, squared, d, factor, GX, GY):
    """GX[i] += factor·∇, GY[i] −= factor·∇, ∇ = d‖v‖_p/dv at v = X[i] − Y[i] + eps
    (d = ‖v‖_p): sign(v)|v|^(p−1)/d^(p−1), 0 at d = 0; p = ∞: the sign at the first
    largest |vₖ|; squared: 2v."""
    dim = X.shape[1]
    if factor == 0.0 or (d == 0.0 and not squared):
        return
    if math.isinf(p) and not squared:
        first = 0
        big = -1.0
        for k in range(dim):
            a = abs(float64(X[i, k]) - float64(Y[i, k]) + eps)
            if a > big:
                big = a
                first = k
        v = float64(X[i, first]) - float64(Y[i, first]) + eps
        t = factor * (1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0))
        GX[i, first] += t
        GY[i, first] -= t
        return
    for k in range(dim):
        v = float64(X[i, k]) - float64(Y[i, k]) + eps
        if squared:
            t = 2.0 * v
        elif p == 2.0:
            t = v / d
        elif p == 1.0 or v == 0.0:
            t = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)
        else:
            t = (abs(v) / d) ** (p - 1.0)
            t = t if v > 0.0 else -t
        GX[i, k] += factor * t
        GY[i, k] -= factor * t


@cuda.jit
def triplet_rows(A, P, Q, margin, p, eps, swap, squared, coef, need_grad, loss, gA, gP, gQ):
    """One thread per triplet (grid-stride): loss[i] and, with ``need_grad``, rows i of
    gA, gP, gQ (float64, zeroed) = the gradient of coef[i]·loss[i]."""
    for i in range(cuda.grid(1), A.shape[0], cuda.gridsize(1)):
        d_ap = triplet_distance(A, P, i, eps, p, squared)
        d_neg = triplet_distance(A, Q, i, eps, p, squared)
        swapped = False
        if swap:
            d_pn = triplet_distance(P, Q, i, eps, p, squared)
            if d_pn < d_neg:
                swapped = True
                d_neg = d_pn
        arg = d_ap - d_neg + margin
        loss[i] = max(arg, 0.0)
        if need_grad and arg >= 0.0:
            triplet_distance_grad_add(A, P, i, eps, p, squared, d_ap, coef[i], gA, gP)
            if swapped:
                triplet_distance_grad_add(P, Q, i, eps, p, squared, d_neg, -coef[i], gP, gQ)
            else:
                triplet_distance_grad_add(A, Q, i, eps, p, squared, d_neg, -coef[i], gA, gQ)


# ------------------------------------------------------------ row-wise helpers
@device_function
def row_norm(X, r):
    """‖X[r]‖ in float64, as the reference's ``row_norms``: a row of finite entries
    whose sum of squares overflows (≳ 1e154) is scaled by its largest |x| first."""
    s = 0.0
    for k in range(X.shape[1]):
        x = float64(X[r, k])
        s += x * x
    if not s == math.inf:
        return math.sqrt(s)
    big = 0.0
    for k in range(X.shape[1]):
        big = max(big, abs(float64(X[r, k])))
    if big == math.inf:
        return big
    s = 0.0
    for k in range(X.shape[1]):
        x = float64(X[r, k]) / big
        s += x * x
    return big * math.sqrt(s)


@cuda.jit
def normalize_rows(X, U, norms):
    """U[r] = X[r] / max(‖X[r]‖, 1e-12), norms[r] = ‖X[r]‖ (float64); one thread a row."""
    for r in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        norm = row_norm(X, r)
        norms[r] = norm
        inv = 1.0 / max(norm, NORM_EPS)
        for k in range(X.shape[1]):
            U[r, k] = float64(X[r, k]) * inv


@cuda.jit
def normalize_backward(X, norms, G, out):
    """out[r] = dL/dX[r] from G[r] = dL/dU[r], U = X / max(‖X‖, 1e-12):
    (G − U(U·G))/‖X‖ for ‖X‖ ≥ 1e-12, G/1e-12 below; one thread a row."""
    for r in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        norm = norms[r]
        if norm < NORM_EPS:
            for k in range(X.shape[1]):
                out[r, k] = G[r, k] / NORM_EPS
            continue
        inv = 1.0 / norm
        dot = 0.0
        for k in range(X.shape[1]):
            dot += float64(X[r, k]) * inv * G[r, k]
        for k in range(X.shape[1]):
            out[r, k] = (G[r, k] - float64(X[r, k]) * inv * dot) * inv


@cuda.jit
def row_dots(A, B, out):
    """out[r] = A[r]·B[r] in float64."""
    for r in range(cuda.grid(1), A.shape[0], cuda.gridsize(1)):
        s = 0.0
        for k in range(A.shape[1]):
            s += float64(A[r, k]) * float64(B[r, k])
        out[r] = s


@cuda.jit
def add_scaled_rows(G, factors, B):
    """G[r, k] += factors[r]·B[r, k] (grid-stride over the elements)."""
    dim = G.shape[1]
    for e in range(cuda.grid(1), G.shape[0] * dim, cuda.gridsize(1)):
        r = e // dim
        k = e - r * dim
        G[r, k] += factors[r] * float64(B[r, k])


@cuda.jit
def multiply_rows(G, factors, out):
    """out[r, k] = factors[r]·G[r, k] (grid-stride over the elements; out may be G)."""
    dim = G.shape[1]
    for e in range(cuda.grid(1), G.shape[0] * dim, cuda.gridsize(1)):
        r = e // dim
        k = e - r * dim
        out[r, k] = factors[r] * float64(G[r, k])


@cuda.jit
def row_norms(X, out):
    """out[r] = ‖X[r]‖ (``row_norm``); one thread a row."""
    for r in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        out[r] = row_norm(X, r)


@cuda.jit
def paired_logits(A, Q, r0, S):
    """S[i, m] = A[r0 + i]·Q[r0 + i, m] (per-anchor negatives (N, M, D))."""
    m_count = S.shape[1]
    for e in range(cuda.grid(1), S.shape[0] * m_count, cuda.gridsize(1)):
        i = e // m_count
        m = e - i * m_count
        s = 0.0
        for k in range(A.shape[1]):
            s += float64(A[r0 + i, k]) * float64(Q[r0 + i, m, k])
        S[i, m] = s


@cuda.jit
def paired_grad_anchor(G, Q, r0, gA):
    """gA[r0 + i, k] += Σₘ G[i, m]·Q[r0 + i, m, k]."""
    dim = gA.shape[1]
    for e in range(cuda.grid(1), G.shape[0] * dim, cuda.gridsize(1)):
        i = e // dim
        k = e - i * dim
        s = 0.0
        for m in range(G.shape[1]):
            s += G[i, m] * float64(Q[r0 + i, m, k])
        gA[r0 + i, k] += s


@cuda.jit
def paired_grad_negatives(G, A, r0, gQ):
    """gQ[r0 + i, m, k] += G[i, m]·A[r0 + i, k]."""
    m_count = G.shape[1]
    dim = A.shape[1]
    for e in range(cuda.grid(1), G.shape[0] * m_count * dim, cuda.gridsize(1)):
        i = e // (m_count * dim)
        rest = e - i * (m_count * dim)
        m = rest // dim
        k = rest - m * dim
        gQ[r0 + i, m, k] += G[i, m] * float64(A[r0 + i, k])


@cuda.jit
def views_to_rows(F, Z):
    """Z[v·N + i] = F[i, v] (SupCon's view-major rows of (N, V, D) features)."""
    n, views, dim = F.shape
    for e in range(cuda.grid(1), n * views * dim, cuda.gridsize(1)):
        row = e // dim
        k = e - row * dim
        v = row // n
        i = row - v * n
        Z[row, k] = F[i, v, k]


@cuda.jit
def rows_to_views(G, out):
    """out[i, v] = G[v·N + i] (the inverse of ``views_to_rows``, with a dtype cast)."""
    n, views, dim = out.shape
    for e in range(cuda.grid(1), n * views * dim, cuda.gridsize(1)):
        row = e // dim
        k = e - row * dim
        v = row // n
        i = row - v * n
        out[i, v, k] = G[row, k]


@cuda.jit
def zero(x):
    """x[:] = 0 (1-D)."""
    for e in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[e] = 0


#: every ``cuda.jit`` kernel of this module by name (the PTX tests compile each)
KERNELS = {
    "product": product, "softmax_rows": softmax_rows, "hardest_pairs": hardest_pairs,
    "batch_hard_finish": batch_hard_finish, "normalize_rows": normalize_rows,
    "normalize_backward": normalize_backward, "row_dots": row_dots, "add_scaled_rows": add_scaled_rows,
    "paired_logits": paired_logits, "paired_grad_anchor": paired_grad_anchor,
    "paired_grad_negatives": paired_grad_negatives, "views_to_rows": views_to_rows,
    "rows_to_views": rows_to_views, "zero": zero, "triplet_rows": triplet_rows,
    "multiply_rows": multiply_rows, "row_norms": row_norms,
}


# ============================================================ launching
def tile_edge() -> int:
    """Edge t of the product's square thread blocks: the largest power of two with
    t² ≤ THREADS_PER_BLOCK (16 for 256 threads, 4 for 32)."""
    tpb = _b._threads_per_block()
    return 1 << ((tpb.bit_length() - 1) // 2)


def matmul(X, x_off, x_trans, Y, y_off, y_trans, n_i, n_j, n_k, C, c_off, accumulate) -> None:
    """Launch :func:`product` (arguments as there) over the tiles of C."""
    if n_i == 0 or n_j == 0:
        return
    t = tile_edge()
    cap = _b.MAX_BLOCKS if _b.MAX_BLOCKS is not None else 65535
    grid = (min(-(-n_j // t), cap), min(-(-n_i // t), cap))
    product[grid, (t, t), 0, 2 * t * t * 8](X, x_off, x_trans, Y, y_off, y_trans, n_i, n_j, n_k,
                                            C, c_off, accumulate)


def _launch(kernel, n: int, *args) -> None:
    """A grid-stride launch over n items."""
    if n:
        blocks, tpb = _b.launch_config(n)
        kernel[blocks, tpb](*args)


def _launch_rows(kernel, n_rows: int, shared_per_thread: int, *args) -> None:
    """One thread block per row (grid-stride over rows), shared_per_thread float64
    of dynamic shared memory per thread."""
    if n_rows:
        tpb = _b._threads_per_block()
        blocks = min(n_rows, _b.launch_config(n_rows * tpb)[0])
        kernel[blocks, tpb, 0, shared_per_thread * tpb * 8](*args)


def _zeros(shape):
    """A float64 device array of zeros."""
    out = _b.empty(shape, np.float64)
    _launch(zero, out.size, out.reshape(out.size))
    return out


def _dummy(dtype, ndim=1):
    """A small placeholder for a kernel argument that the call does not use."""
    return _b.empty((1,) * ndim, dtype)


def _block_rows(n_rows: int, n_cols: int) -> int:
    if BLOCK_ROWS is not None:
        return max(1, min(int(BLOCK_ROWS), n_rows))
    return max(1, min(n_rows, BLOCK_BYTES // max(1, 8 * n_cols)))


def _unit_rows(X):
    """(X with unit rows, ‖rows‖ float64) of a 2-D device array."""
    U = _b.empty(X.shape, X.dtype)
    norms = _b.empty(X.shape[0], np.float64)
    _launch(normalize_rows, X.shape[0], X, U, norms)
    return U, norms


def _backward(X, norms, G, cosine):
    """dL/dX (X's dtype) from G = dL/dU (float64), U the unit rows of X when
    ``cosine``, else X itself."""
    out = _b.empty(X.shape, X.dtype)
    if cosine:
        _launch(normalize_backward, X.shape[0], X, norms, G, out)
    else:
        _b.copy_into(out, G)
    return out


def _softmax_blocks(A, K, coef, need_grad, loss, gA, gK, *, scale, target_mode, labels=None,
                    n_samples=1, extra=None, g_extra=None, exclude_self=False,
                    margin_mode=MARGIN_NONE, margin=(0.0,) * 5, factor=1.0) -> None:
    """Row blocks of S = A_R·Kᵀ through :func:`softmax_rows`; with ``need_grad``
    gA[R] += G·K and gK += Gᵀ·A_R (float64 accumulators, zeroed by the caller)."""
    n, dim = A.shape
    m = K.shape[0]
    if n == 0:
        return
    has_labels = labels is not None
    labels = labels if has_labels else _dummy(np.int64)
    extra = extra if extra is not None else _dummy(np.float64)
    g_extra = g_extra if g_extra is not None else _dummy(np.float64)
    b = _block_rows(n, m)
    block = _b.empty((b, m), np.float64)
    for r0 in range(0, n, b):
        rows = min(b, n - r0)
        S = block[:rows]
        matmul(A, r0, False, K, 0, True, rows, m, dim, S, 0, False)
        _launch_rows(softmax_rows, rows, 1, S, r0, float(scale), target_mode, labels, has_labels,
                     int(n_samples), extra, exclude_self, margin_mode, margin, float(factor), coef,
                     need_grad, loss, g_extra)
        if need_grad:
            matmul(S, 0, False, K, 0, False, rows, dim, m, gA, r0, True)
            matmul(S, 0, True, A, r0, False, m, dim, rows, gK, 0, True)


# ============================================================ the losses
def info_nce(anchor, positive, negatives=None, *, temperature=0.1, similarity="cosine", coef,
             need_grad):
    """InfoNCE; see ``numbaloss.reference.embedding.info_nce``."""
    A, P, Q = anchor, positive, negatives
    n, dim = A.shape
    cosine = similarity == "cosine"
    scale = 1.0 / float(temperature)
    Ua, norm_a = _unit_rows(A) if cosine else (A, None)
    Up, norm_p = _unit_rows(P) if cosine else (P, None)
    loss = _b.empty(n, np.float64)
    grad_shape = (n, dim) if need_grad else (1, 1)
    gA, gP = _zeros(grad_shape), _zeros(grad_shape)
    if Q is None:
        _softmax_blocks(Ua, Up, coef, need_grad, loss, gA, gP, scale=scale, target_mode=TARGET_DIAGONAL)
        if not need_grad:
            return loss, None
        return loss, (_backward(A, norm_a, gA, cosine), _backward(P, norm_p, gP, cosine))
    Q2 = Q.reshape(Q.shape[0] * (Q.shape[1] if Q.ndim == 3 else 1), dim)  # rows of negatives
    Uq2, norm_q = _unit_rows(Q2) if cosine else (Q2, None)
    gQ2 = _zeros(Q2.shape if need_grad else (1, 1))
    positive_logits = _b.empty(n, np.float64)
    _launch(row_dots, n, Ua, Up, positive_logits)
    g_positive = _b.empty(n, np.float64)
    if Q.ndim == 2:  # negatives shared by every anchor: row blocks of A_R·Nᵀ
        _softmax_blocks(Ua, Uq2, coef, need_grad, loss, gA, gQ2, scale=scale, target_mode=TARGET_EXTRA,
                        extra=positive_logits, g_extra=g_positive)
    elif n:  # per-anchor negatives: logits and gradients row by row, no product to share
        m = Q.shape[1]
        Uq = Uq2.reshape(n, m, dim)
        gQ = gQ2.reshape(n, m, dim) if need_grad else _dummy(np.float64, 3)
        b = _block_rows(n, m)
        block = _b.empty((b, m), np.float64)
        no_labels = _dummy(np.int64)
        for r0 in range(0, n, b):
            rows = min(b, n - r0)
            S = block[:rows]
            _launch(paired_logits, rows * m, Ua, Uq, r0, S)
            _launch_rows(softmax_rows, rows, 1, S, r0, scale, TARGET_EXTRA, no_labels, False, 1,
                         positive_logits, False, MARGIN_NONE, (0.0,) * 5, 1.0, coef, need_grad, loss,
                         g_positive)
            if need_grad:
                _launch(paired_grad_anchor, rows * dim, S, Uq, r0, gA)
                _launch(paired_grad_negatives, rows * m * dim, S, Ua, r0, gQ)
    if not need_grad:
        return loss, None
    # the positive logit aᵣ·pᵣ: its share of the gradients, row by row
    _launch(add_scaled_rows, n * dim, gA, g_positive, Up)
    _launch(add_scaled_rows, n * dim, gP, g_positive, Ua)
    grad_q = _backward(Q2, norm_q, gQ2, cosine).reshape(Q.shape)
    return loss, (_backward(A, norm_a, gA, cosine), _backward(P, norm_p, gP, cosine), grad_q)


def nt_xent(z_i, z_j, *, temperature=0.5, coef, need_grad):
    """NT-Xent; see ``numbaloss.reference.embedding.nt_xent``: the two views stacked
    (2N rows), row r's positive its pair r ± N, i.e. the rows of the same code r mod N."""
    n, dim = z_i.shape
    U = _b.empty((2 * n, dim), z_i.dtype)
    norms = _b.empty(2 * n, np.float64)
    _launch(normalize_rows, n, z_i, U[:n], norms[:n])
    _launch(normalize_rows, n, z_j, U[n:], norms[n:])
    loss = _b.empty(2 * n, np.float64)
    gU = _zeros((2 * n, dim) if need_grad else (1, 1))
    _softmax_blocks(U, U, coef, need_grad, loss, gU, gU, scale=1.0 / float(temperature),
                    target_mode=TARGET_CODES, n_samples=n, exclude_self=True)
    if not need_grad:
        return loss, None
    return loss, (_backward(z_i, norms[:n], gU[:n], True), _backward(z_j, norms[n:], gU[n:], True))


def supcon(features, labels=None, *, temperature=0.07, base_temperature=None, normalize=True, coef,
           need_grad):
    """SupCon; see ``numbaloss.reference.embedding.supcon``: rows view-major, row r's
    positives the other rows of its sample's label (its own sample without labels)."""
    n = features.shape[0]
    dim = features.shape[-1]
    if features.ndim == 3:
        Z = _b.empty((features.shape[1] * n, dim), features.dtype)
        _launch(views_to_rows, Z.size, features, Z)
    else:
        Z = features
    U, norms = _unit_rows(Z) if normalize else (Z, None)
    tau = float(temperature)
    tau_base = tau if base_temperature is None else float(base_temperature)
    loss = _b.empty(Z.shape[0], np.float64)
    gU = _zeros(Z.shape if need_grad else (1, 1))
    _softmax_blocks(U, U, coef, need_grad, loss, gU, gU, scale=1.0 / tau, target_mode=TARGET_CODES,
                    labels=labels, n_samples=n, exclude_self=True, factor=tau / tau_base)
    if not need_grad:
        return loss, None
    gZ = _backward(Z, norms, gU, normalize)
    if features.ndim == 3:
        grad = _b.empty(features.shape, features.dtype)
        _launch(rows_to_views, grad.size, gZ, grad)
        return loss, (grad,)
    return loss, (gZ,)


def _margin_softmax(X, labels, W, scale, margin_mode, margin, coef, need_grad):
    n, dim = X.shape
    Ux, norm_x = _unit_rows(X)
    Uw, norm_w = _unit_rows(W)
    loss = _b.empty(n, np.float64)
    gX = _zeros((n, dim) if need_grad else (1, 1))
    gW = _zeros(W.shape if need_grad else (1, 1))
    _softmax_blocks(Ux, Uw, coef, need_grad, loss, gX, gW, scale=scale, target_mode=TARGET_LABEL,
                    labels=labels, margin_mode=margin_mode, margin=margin)
    if not need_grad:
        return loss, None
    return loss, (_backward(X, norm_x, gX, True), _backward(W, norm_w, gW, True))


def arcface(embeddings, labels, weight, *, s=64.0, m=0.5, easy_margin=False, coef, need_grad):
    """ArcFace; see ``numbaloss.reference.embedding.arcface``."""
    m = float(m)
    margin = (math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m) * m, m)
    mode = MARGIN_ARCFACE_EASY if easy_margin else MARGIN_ARCFACE
    return _margin_softmax(embeddings, labels, weight, float(s), mode, margin, coef, need_grad)


def cosface(embeddings, labels, weight, *, s=64.0, m=0.4, coef, need_grad):
    """CosFace; see ``numbaloss.reference.embedding.cosface``."""
    margin = (0.0, 0.0, 0.0, 0.0, float(m))
    return _margin_softmax(embeddings, labels, weight, float(s), MARGIN_COSFACE, margin, coef, need_grad)


def batch_hard_triplet(embeddings, labels, *, margin=1.0, squared=False, coef, need_grad):
    """Batch-hard triplet; see ``numbaloss.reference.embedding.batch_hard_triplet``."""
    X = embeddings
    n, dim = X.shape
    # the selection compares distances: on c·X where their squares would overflow
    # (float64 entries ≳ 1e154), c a power of two (``distance_scale``), as on the CPU
    norms = _b.empty(n, np.float64)
    _launch(row_norms, n, X, norms)
    c = distance_scale(_b.to_host(norms), np.float64)
    selection = X
    if c != 1.0:
        selection = _b.empty(X.shape, X.dtype)
        _launch(multiply_rows, X.size, X, _b.to_device(np.full(n, c)), selection)
    sq = _b.empty(n, np.float64)
    _launch(row_dots, n, selection, selection, sq)
    hard_pos = _b.empty(n, np.int64)
    hard_neg = _b.empty(n, np.int64)
    b = _block_rows(n, n)
    block = _b.empty((b, n), np.float64)
    for r0 in range(0, n, b):
        rows = min(b, n - r0)
        S = block[:rows]
        matmul(selection, r0, False, selection, 0, True, rows, n, dim, S, 0, False)
        _launch_rows(hardest_pairs, rows, 2, S, r0, sq, labels, hard_pos, hard_neg)
    loss = _b.empty(n, np.float64)
    grad = _zeros((n, dim) if need_grad else (1, 1))
    _launch(batch_hard_finish, n, X, hard_pos, hard_neg, float(margin), bool(squared), coef, need_grad,
            loss, grad)
    if not need_grad:
        return loss, None
    out = _b.empty(X.shape, X.dtype)
    _b.copy_into(out, grad)
    return loss, (out,)


def triplet(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False, squared=False,
            coef, need_grad):
    """Triplet margin loss; see ``numbaloss.reference.embedding.triplet``."""
    n, dim = anchor.shape
    loss = _b.empty(n, np.float64)
    grads = [_zeros((n, dim) if need_grad else (1, 1)) for _ in range(3)]
    _launch(triplet_rows, n, anchor, positive, negative, float(margin), float(p), float(eps),
            bool(swap), bool(squared), coef, need_grad, loss, *grads)
    if not need_grad:
        return loss, None
    outs = []
    for g in grads:
        out = _b.empty(anchor.shape, anchor.dtype)
        _b.copy_into(out, g)
        outs.append(out)
    return loss, tuple(outs)

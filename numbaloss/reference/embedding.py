"""Float64 NumPy reference of the embedding (metric-learning / contrastive) losses.

This module is the oracle of the tests and the ``numpy`` backend of

    triplet, batch_hard_triplet, info_nce, nt_xent, arcface, cosface, supcon

(SPEC items 7 and 9-12).  It is written for clarity: every function converts its
inputs to float64, follows the formula of its docstring literally (normalised
vectors are materialised, log-softmax is taken with a max shift), and works in row
blocks of ``_ROWS`` anchors only so that it still runs at N = 2,048 in the tests.

Common interface
----------------
::

    losses, grads = fn(<inputs, positional>, <parameters as keywords>,
                       coef=None, need_grad=True)

* ``losses``: float64 per-sample losses, (N,) — (2N,) for ``nt_xent`` and (N·V,)
  in view-major order (row v·N + i is view v of sample i) for ``supcon``.
* ``coef``: float64 weights of the same length as ``losses`` (default: all ones).
  ``grads`` is the gradient of Σᵢ coefᵢ·lossesᵢ; the framework passes
  coef = wᵢ/Σw for a weighted mean, 1/N for a mean, wᵢ or 1 for a sum.
* ``grads``: tuple of float64 gradients, in the order of the differentiable inputs
  and with their shapes; ``None`` when ``need_grad=False``.

Validation is the framework's job; each function lists under "Assumes" what it
relies on.  ``supcon_valid_anchors`` and ``batch_hard_valid_anchors`` tell which
anchors count in a mean (the others have loss 0 and must get coef 0).

Cosine similarity normalises a row as x / max(‖x‖₂, 1e-12) (PyTorch
``F.normalize``); its gradient is (g − u(u·g)) / ‖x‖ for ‖x‖ ≥ 1e-12 and
g / 1e-12 below (the clamp is then constant), u = x / max(‖x‖, 1e-12).
"""

from __future__ import annotations

import math

import numpy as np

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

#: F.normalize's clamp of the norm
NORM_EPS = 1e-12
#: ArcFace: the gradient uses sin θ clamped from below at this value
SIN_EPS = 1e-7
#: anchors per row block (memory O(_ROWS · N))
_ROWS = 256


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _coef(coef, n):
    if coef is None:
        return np.ones(n)
    return np.broadcast_to(_f64(coef), (n,))


def _blocks(n, rows=_ROWS):
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def row_norms(x):
    """‖x‖₂ along the last axis (keepdims), finite whenever it is representable.

    A row of finite entries whose sum of squares overflows float64 (entries ≳ 1e154)
    is divided by its largest magnitude first, as LAPACK's nrm2 does; rows holding
    ±inf or NaN keep the plain formula's inf / NaN.
    """
    with np.errstate(over="ignore"):
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    overflowed = np.isinf(norm) & np.all(np.isfinite(x), axis=-1, keepdims=True)
    if np.any(overflowed):
        top = np.where(overflowed, np.max(np.abs(x), axis=-1, keepdims=True), 1.0)
        norm = np.where(overflowed, top * np.sqrt(np.sum((x / top) ** 2, axis=-1, keepdims=True)), norm)
    return norm


def distance_scale(norms, dtype):
    """1 while squared distances between rows, up to (‖a‖ + ‖b‖)² for the largest
    finite row norm, fit in ``dtype``; else the power of two c that brings that norm
    just below √max / 2 — no further, so that small rows keep their squares.
    Distances of c·x are c times those of x, exactly, in the same order."""
    top = float(np.max(norms[np.isfinite(norms)], initial=0.0))
    limit = math.sqrt(float(np.finfo(dtype).max)) / 2
    if top <= limit:
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(limit)[1]) - 1 - int(np.frexp(top)[1])))


def _normalize(x):
    """(x / max(‖x‖, 1e-12), ‖x‖) along the last axis."""
    norm = row_norms(x)
    return x / np.maximum(norm, NORM_EPS), norm


def _normalize_backward(u, norm, g_u):
    """Gradient w.r.t. x of a function of u = x / max(‖x‖, 1e-12), given g_u."""
    projected = (g_u - u * np.sum(u * g_u, axis=-1, keepdims=True)) / np.maximum(norm, NORM_EPS)
    return np.where(norm >= NORM_EPS, projected, g_u / NORM_EPS)


def _logsumexp_rows(z):
    """log Σⱼ exp(zᵢⱼ) per row, with a max shift; entries -inf are left out."""
    m = np.max(z, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]


def _label_codes(labels):
    """Labels → (codes in [0, K), count of each sample's label)."""
    _, codes, counts = np.unique(np.asarray(labels).ravel(), return_inverse=True,
                                 return_counts=True)
    codes = codes.reshape(-1)
    return codes, counts[codes]


def supcon_valid_anchors(labels, n_samples, n_views):
    """Boolean mask (n_samples·n_views,), view-major: the SupCon anchors with a positive.

    Anchor (v, i) has |P| = n_views·(number of samples with label yᵢ) − 1 positives;
    with ``labels=None`` each sample is its own class, so |P| = n_views − 1.
    """
    if n_samples == 0:
        return np.zeros(0, dtype=bool)
    if labels is None:
        per_sample = np.full(n_samples, n_views > 1)
    else:
        _, count = _label_codes(labels)
        per_sample = n_views * count - 1 > 0
    return np.tile(per_sample, n_views)


def batch_hard_valid_anchors(labels):
    """Boolean mask (N,): anchors with at least one positive (another sample of the
    same label) and at least one negative (a sample of another label)."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        return np.zeros(0, dtype=bool)
    _, count = _label_codes(labels)
    return (count >= 2) & (count < labels.size)


# ---------------------------------------------------------------------------
# triplet
# ---------------------------------------------------------------------------

def _pnorm(v, p):
    """‖v‖_p along the last axis, scaled by max|v| so that large p cannot overflow."""
    a = np.abs(v)
    if p == 2.0:
        return row_norms(a)[..., 0]
    if p == 1.0:
        return np.sum(a, axis=-1)
    big = np.max(a, axis=-1)
    if math.isinf(p):
        return big
    safe = np.where(big > 0, big, 1.0)[..., None]
    return big * np.sum((a / safe) ** p, axis=-1) ** (1.0 / p)


def _pnorm_grad(v, norm, p):
    """d‖v‖_p / dv = sign(v) |v|^(p-1) / ‖v‖_p^(p-1); 0 where ‖v‖ = 0."""
    norm = norm[..., None]
    safe = np.where(norm > 0, norm, 1.0)
    if math.isinf(p):
        a = np.abs(v)
        first = np.argmax(a, axis=-1)
        g = np.zeros_like(v)
        np.put_along_axis(g, first[..., None],
                          np.take_along_axis(np.sign(v), first[..., None], axis=-1), axis=-1)
    elif p == 1.0:
        g = np.sign(v)
    else:
        a = np.abs(v)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(a > 0, np.sign(v) * (a / safe) ** (p - 1.0), 0.0)
    return np.where(norm > 0, g, 0.0)


def triplet(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False,
            squared=False, coef=None, need_grad=True):
    """Triplet margin loss (Schroff et al. 2015, FaceNet; PyTorch ``triplet_margin_loss``).

    Per triplet i, with d(u, v) = ‖u − v + eps‖_p over the last axis::

        lᵢ = max(d(aᵢ, pᵢ) − d(aᵢ, nᵢ) + margin, 0)

    ``swap=True`` (Balntas et al. 2016, PyTorch semantics) replaces d(aᵢ, nᵢ) by
    min(d(aᵢ, nᵢ), d(pᵢ, nᵢ)) (a tie keeps d(aᵢ, nᵢ)).  ``squared=True`` uses
    d(u, v) = ‖u − v + eps‖₂² (FaceNet).

    Gradient: d‖v‖_p/dv = sign(v)|v|^(p−1)/‖v‖_p^(p−1) (0 at ‖v‖ = 0; p = ∞: the
    sign at the first largest |vₖ|); d‖v‖₂²/dv = 2v (0 at zero distance).  The hinge
    passes the gradient where its argument is ≥ 0 (as PyTorch's ``clamp_min``).

    Inputs (N, D) each (leading axes are samples; the last axis is D).
    Grads: (anchor, positive, negative).

    Assumes: the three inputs have the same shape; margin ≥ 0; p > 0 (may be inf);
    ``squared`` only with p = 2.
    """
    a, pos, neg = _f64(anchor), _f64(positive), _f64(negative)
    shape = a.shape
    a, pos, neg = (x.reshape(-1, shape[-1]) for x in (a, pos, neg))
    n = a.shape[0]
    coef = _coef(coef, n)
    p = float(p)
    v_ap = a - pos + eps
    v_an = a - neg + eps
    v_pn = pos - neg + eps
    if squared:
        d_ap, d_an, d_pn = (np.sum(v * v, axis=-1) for v in (v_ap, v_an, v_pn))
    else:
        d_ap, d_an, d_pn = (_pnorm(v, p) for v in (v_ap, v_an, v_pn))
    swapped = (d_pn < d_an) if swap else np.zeros(n, dtype=bool)
    d_neg = np.where(swapped, d_pn, d_an)
    arg = d_ap - d_neg + margin
    losses = np.maximum(arg, 0.0)
    if not need_grad:
        return losses, None
    if squared:
        g_ap, g_an, g_pn = 2.0 * v_ap, 2.0 * v_an, 2.0 * v_pn
    else:
        g_ap, g_an, g_pn = (_pnorm_grad(v, d, p)
                            for v, d in ((v_ap, d_ap), (v_an, d_an), (v_pn, d_pn)))
    c = np.where(arg >= 0.0, coef, 0.0)[:, None]
    sw = swapped[:, None]
    g_an = np.where(sw, 0.0, g_an)
    g_pn = np.where(sw, g_pn, 0.0)
    ga = c * (g_ap - g_an)
    gp = c * (-g_ap - g_pn)
    gn = c * (g_an + g_pn)
    return losses, tuple(g.reshape(shape) for g in (ga, gp, gn))


# ---------------------------------------------------------------------------
# batch-hard triplet
# ---------------------------------------------------------------------------

def batch_hard_triplet(embeddings, labels, *, margin=1.0, squared=False, coef=None,
                       need_grad=True):
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the
    Triplet Loss for Person Re-Identification").

    Euclidean distances dᵢⱼ = ‖xᵢ − xⱼ‖₂ (``squared=True``: ‖xᵢ − xⱼ‖₂²).  For each
    anchor i, the hardest positive is the farthest sample of the same label
    (j ≠ i) and the hardest negative the nearest sample of another label::

        lᵢ = max(max_{j: yⱼ = yᵢ, j ≠ i} dᵢⱼ − min_{k: yₖ ≠ yᵢ} dᵢₖ + margin, 0)

    Anchors without a positive or without a negative contribute 0 and are left out of
    the mean (see ``batch_hard_valid_anchors``; the framework gives them coef 0).
    Ties pick the lowest index.  The gradient flows through the two selected pairs
    only; d‖u‖/du = u/‖u‖ with 0 at ‖u‖ = 0 (coincident embeddings); the hinge passes
    the gradient where its argument is ≥ 0.

    Inputs: embeddings (N, D), labels (N,) (any values that can be compared).
    Grads: (embeddings,).

    Assumes: embeddings 2-D, labels of length N, margin ≥ 0.
    """
    x = _f64(embeddings)
    labels = np.asarray(labels).ravel()
    n = x.shape[0]
    coef = _coef(coef, n)
    hard_pos = np.full(n, -1)
    hard_neg = np.full(n, -1)
    # the selection only compares distances: it is made on x scaled by a power of two
    # where squared distances would overflow (embeddings ≳ 1e154)
    selection = x * distance_scale(row_norms(x)[:, 0], np.float64)
    for blk in _blocks(n, 64):
        diff = selection[blk, None, :] - selection[None, :, :]
        dist2 = np.sum(diff * diff, axis=-1)
        same = labels[blk, None] == labels[None, :]
        rows = np.arange(blk.start, blk.stop)
        pos_mask = same.copy()
        pos_mask[np.arange(len(rows)), rows] = False
        neg_mask = ~same
        pos_d = np.where(pos_mask, dist2, -np.inf)
        neg_d = np.where(neg_mask, dist2, np.inf)
        hard_pos[blk] = np.where(pos_mask.any(axis=1), np.argmax(pos_d, axis=1), -1)
        nearest = np.argmin(neg_d, axis=1)
        # all negatives at distance inf: argmin's index 0 may be a positive; the first
        # negative is the nearest then
        nearest = np.where(neg_mask[np.arange(len(rows)), nearest], nearest, np.argmax(neg_mask, axis=1))
        hard_neg[blk] = np.where(neg_mask.any(axis=1), nearest, -1)
    valid = (hard_pos >= 0) & (hard_neg >= 0)
    u_p = x - x[np.maximum(hard_pos, 0)]
    u_n = x - x[np.maximum(hard_neg, 0)]
    if squared:
        d_p, d_n = np.sum(u_p * u_p, axis=1), np.sum(u_n * u_n, axis=1)
    else:
        d_p, d_n = row_norms(u_p)[:, 0], row_norms(u_n)[:, 0]
    arg = d_p - d_n + margin
    losses = np.where(valid, np.maximum(arg, 0.0), 0.0)
    if not need_grad:
        return losses, None
    if squared:
        g_p, g_n = 2.0 * u_p, 2.0 * u_n
    else:
        g_p = np.where(d_p[:, None] > 0, u_p / np.where(d_p > 0, d_p, 1.0)[:, None], 0.0)
        g_n = np.where(d_n[:, None] > 0, u_n / np.where(d_n > 0, d_n, 1.0)[:, None], 0.0)
    c = np.where(valid & (arg >= 0.0), coef, 0.0)[:, None]
    # an anchor outside the hinge (or with a NaN distance) passes exactly 0, not 0·NaN
    g_p, g_n = np.where(c != 0.0, c * g_p, 0.0), np.where(c != 0.0, c * g_n, 0.0)
    grad = g_p - g_n
    np.add.at(grad, np.maximum(hard_pos, 0), -g_p)
    np.add.at(grad, np.maximum(hard_neg, 0), g_n)
    return losses, (grad,)


# ---------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------

def info_nce(anchor, positive, negatives=None, *, temperature=0.1, similarity="cosine",
             coef=None, need_grad=True):
    """InfoNCE (van den Oord et al. 2018, "Representation Learning with Contrastive
    Predictive Coding"; the ``info-nce-pytorch`` package).

    With s(u, v) = û·v̂ (``"cosine"``, rows L2-normalised) or u·v (``"dot"``) and
    τ = ``temperature``, per anchor i::

        lᵢ = −log( exp(s(aᵢ,pᵢ)/τ) / (exp(s(aᵢ,pᵢ)/τ) + Σₖ exp(s(aᵢ,nₖ)/τ)) )

    * ``negatives=None``: in-batch negatives, the other rows of ``positive``: logits
      A·Pᵀ/τ, row i's target is column i (cross-entropy over N columns).
    * ``negatives`` (M, D): shared by every anchor ("unpaired"): logits
      [aᵢ·pᵢ, aᵢ·Nᵀ]/τ, target column 0.
    * ``negatives`` (N, M, D): per anchor ("paired"): logits [aᵢ·pᵢ, aᵢ·nᵢₖ]/τ.

    With σ the softmax of a row, d lᵢ / d logitᵢⱼ = σᵢⱼ − [j is the target].

    Inputs: anchor (N, D), positive (N, D), negatives None/(M, D)/(N, M, D).
    Grads: (anchor, positive) or (anchor, positive, negatives).

    Assumes: anchor and positive of the same shape (N, D); negatives with the same D
    (and the same N when 3-D); temperature > 0; similarity in {"cosine", "dot"}.
    """
    a, p = _f64(anchor), _f64(positive)
    n = a.shape[0]
    coef = _coef(coef, n)
    tau = float(temperature)
    cosine = similarity == "cosine"
    neg = None if negatives is None else _f64(negatives)
    if cosine:
        a_u, a_norm = _normalize(a)
        p_u, p_norm = _normalize(p)
        if neg is not None:
            n_u, n_norm = _normalize(neg)
    else:
        a_u, p_u = a, p
        n_u = neg
    losses = np.empty(n)
    g_a = np.zeros_like(a_u) if need_grad else None
    g_p = np.zeros_like(p_u) if need_grad else None
    g_n = np.zeros_like(n_u) if (need_grad and neg is not None) else None

    for blk in _blocks(n):
        rows = np.arange(blk.start, blk.stop)
        c = coef[blk][:, None]
        if neg is None:
            logits = a_u[blk] @ p_u.T / tau                     # (b, N)
            target = np.zeros_like(logits)
            target[np.arange(len(rows)), rows] = 1.0
        else:
            pos_logit = np.sum(a_u[blk] * p_u[blk], axis=1, keepdims=True) / tau
            if neg.ndim == 2:
                neg_logit = a_u[blk] @ n_u.T / tau              # (b, M)
            else:
                neg_logit = np.einsum("bd,bmd->bm", a_u[blk], n_u[blk]) / tau
            logits = np.concatenate([pos_logit, neg_logit], axis=1)
            target = np.zeros_like(logits)
            target[:, 0] = 1.0
        lse = _logsumexp_rows(logits)
        losses[blk] = lse - np.sum(target * logits, axis=1)
        if not need_grad:
            continue
        d_logits = c * (np.exp(logits - lse[:, None]) - target) / tau
        if neg is None:
            g_a[blk] += d_logits @ p_u
            g_p += d_logits.T @ a_u[blk]
        else:
            d_pos, d_neg = d_logits[:, :1], d_logits[:, 1:]
            g_a[blk] += d_pos * p_u[blk]
            g_p[blk] += d_pos * a_u[blk]
            if neg.ndim == 2:
                g_a[blk] += d_neg @ n_u
                g_n += d_neg.T @ a_u[blk]
            else:
                g_a[blk] += np.einsum("bm,bmd->bd", d_neg, n_u[blk])
                g_n[blk] += d_neg[:, :, None] * a_u[blk][:, None, :]
    if not need_grad:
        return losses, None
    if cosine:
        g_a = _normalize_backward(a_u, a_norm, g_a)
        g_p = _normalize_backward(p_u, p_norm, g_p)
        if neg is not None:
            g_n = _normalize_backward(n_u, n_norm, g_n)
    grads = (g_a, g_p) if neg is None else (g_a, g_p, g_n)
    return losses, grads


# ---------------------------------------------------------------------------
# NT-Xent
# ---------------------------------------------------------------------------

def nt_xent(z_i, z_j, *, temperature=0.5, coef=None, need_grad=True):
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et
    al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

    z = concat(z_i, z_j) (2N rows), ẑ = z / max(‖z‖, 1e-12), sᵣ꜀ = ẑᵣ·ẑ꜀/τ.  Row r's
    positive is its pair π(r) = r ± N; the denominator runs over the 2N − 1 rows
    other than r::

        lᵣ = −log( exp(s_{r,π(r)}) / Σ_{c ≠ r} exp(sᵣ꜀) ),    r = 0 … 2N−1

    The mean over the 2N rows is SimCLR's loss.

    Inputs: z_i, z_j (N, D).  Losses (2N,).  Grads: (z_i, z_j).

    Assumes: z_i and z_j of the same shape (N, D); temperature > 0.
    """
    zi, zj = _f64(z_i), _f64(z_j)
    n = zi.shape[0]
    z = np.concatenate([zi, zj], axis=0)
    rows_total = 2 * n
    coef = _coef(coef, rows_total)
    tau = float(temperature)
    u, norm = _normalize(z)
    pair = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    losses = np.empty(rows_total)
    g_u = np.zeros_like(u) if need_grad else None
    for blk in _blocks(rows_total):
        rows = np.arange(blk.start, blk.stop)
        b = np.arange(len(rows))
        logits = u[blk] @ u.T / tau
        logits[b, rows] = -np.inf                     # the denominator skips r itself
        lse = _logsumexp_rows(logits)
        losses[blk] = lse - logits[b, pair[rows]]
        if not need_grad:
            continue
        target = np.zeros_like(logits)
        target[b, pair[rows]] = 1.0
        d_logits = coef[blk][:, None] * (np.exp(logits - lse[:, None]) - target) / tau
        # s = u uᵀ/τ: row r of the block depends on u_r (rows) and on every u_c (columns)
        g_u[blk] += d_logits @ u
        g_u += d_logits.T @ u[blk]
    if not need_grad:
        return losses, None
    g = _normalize_backward(u, norm, g_u)
    return losses, (g[:n], g[n:])


# ---------------------------------------------------------------------------
# ArcFace / CosFace
# ---------------------------------------------------------------------------

def _margin_softmax(embeddings, labels, weight, s, target_fn, coef, need_grad):
    """Cross-entropy over s·[cos θᵢⱼ with the target column replaced by φ(cos θᵢ_yᵢ)]."""
    x, w = _f64(embeddings), _f64(weight)
    labels = np.asarray(labels).ravel().astype(np.int64)
    n = x.shape[0]
    coef = _coef(coef, n)
    x_u, x_norm = _normalize(x)
    w_u, w_norm = _normalize(w)
    losses = np.empty(n)
    g_x = np.zeros_like(x_u) if need_grad else None
    g_w = np.zeros_like(w_u) if need_grad else None
    for blk in _blocks(n):
        b = np.arange(blk.stop - blk.start)
        y = labels[blk]
        cos = x_u[blk] @ w_u.T                         # (b, C)
        phi, dphi = target_fn(cos[b, y])
        logits = s * cos
        logits[b, y] = s * phi
        lse = _logsumexp_rows(logits)
        losses[blk] = lse - s * phi
        if not need_grad:
            continue
        d_logits = np.exp(logits - lse[:, None])
        d_logits[b, y] -= 1.0
        d_cos = coef[blk][:, None] * s * d_logits
        d_cos[b, y] *= dphi                            # chain rule through φ(cos θ)
        g_x[blk] += d_cos @ w_u
        g_w += d_cos.T @ x_u[blk]
    if not need_grad:
        return losses, None
    return losses, (_normalize_backward(x_u, x_norm, g_x),
                    _normalize_backward(w_u, w_norm, g_w))


def arcface(embeddings, labels, weight, *, s=64.0, m=0.5, easy_margin=False, coef=None,
            need_grad=True):
    """ArcFace, additive angular margin (Deng et al. 2019, "ArcFace: Additive Angular
    Margin Loss for Deep Face Recognition"; InsightFace ``ArcFace``).

    cos θᵢⱼ = x̂ᵢ·ŵⱼ with x̂ = normalise(x), ŵ = normalise(W) (W is (C, D)).  The
    target logit is φ = cos(θ + m) = cos θ·cos m − sin θ·sin m, sin θ =
    √max(1 − cos²θ, 0), with InsightFace's fallback::

        φ = cos(θ + m)          if cos θ > cos(π − m)  else  cos θ − m·sin m
        easy_margin: φ = cos(θ + m) if cos θ > 0 else cos θ

        lᵢ = −log softmax(s·[cos θᵢ₁, …, φᵢ (at yᵢ), …, cos θᵢ_C])_{yᵢ}

    dφ/d cos θ = cos m + sin m · cos θ / max(sin θ, 1e-7) on the cos(θ + m) branch,
    1 on the fallbacks.

    Inputs: embeddings (N, D), labels (N,) int, weight (C, D).
    Grads: (embeddings, weight).

    Assumes: labels integers in [0, C); s > 0; m ≥ 0; D of embeddings == D of weight.
    """
    cos_m, sin_m = math.cos(m), math.sin(m)
    th = math.cos(math.pi - m)
    mm = math.sin(math.pi - m) * m

    def target(c):
        sin = np.sqrt(np.maximum(1.0 - c * c, 0.0))
        phi_m = c * cos_m - sin * sin_m
        dphi_m = cos_m + sin_m * c / np.maximum(sin, SIN_EPS)
        if easy_margin:
            use = c > 0.0
            return np.where(use, phi_m, c), np.where(use, dphi_m, 1.0)
        use = c > th
        return np.where(use, phi_m, c - mm), np.where(use, dphi_m, 1.0)

    return _margin_softmax(embeddings, labels, weight, float(s), target, coef, need_grad)


def cosface(embeddings, labels, weight, *, s=64.0, m=0.4, coef=None, need_grad=True):
    """CosFace, additive cosine margin (Wang et al. 2018, "CosFace: Large Margin
    Cosine Loss for Deep Face Recognition"; InsightFace ``CosFace``).

    As ``arcface`` with the target logit φ = cos θ − m (dφ/d cos θ = 1)::

        lᵢ = −log softmax(s·[cos θᵢ₁, …, cos θᵢ_yᵢ − m, …, cos θᵢ_C])_{yᵢ}

    Inputs: embeddings (N, D), labels (N,) int, weight (C, D).
    Grads: (embeddings, weight).

    Assumes: labels integers in [0, C); s > 0; m ≥ 0; D of embeddings == D of weight.
    """
    def target(c):
        return c - m, np.ones_like(c)

    return _margin_softmax(embeddings, labels, weight, float(s), target, coef, need_grad)


# ---------------------------------------------------------------------------
# SupCon
# ---------------------------------------------------------------------------

def supcon(features, labels=None, *, temperature=0.07, base_temperature=None,
           normalize=True, coef=None, need_grad=True):
    """Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive
    Learning"; the authors' reference ``SupConLoss``, contrast_mode "all").

    features (N, V, D) (V views) or (N, D) (V = 1) are flattened view-major:
    row r = v·N + i is view v of sample i.  zᵣ is the row (L2-normalised if
    ``normalize``), sᵣ꜀ = zᵣ·z꜀/τ.  A(r) = all rows except r; P(r) = rows of the
    same label except r (``labels=None``: each sample is its own class, so P(r) are
    the other views of the same sample)::

        lᵣ = −(τ/τ_base) · (1/|P(r)|) · Σ_{p∈P(r)} log( exp(s_rp) / Σ_{a∈A(r)} exp(s_ra) )

    τ_base = ``base_temperature`` (default τ).  Anchors with P(r) = ∅ have lᵣ = 0 and
    are left out of the mean (see ``supcon_valid_anchors``); if no anchor has a
    positive, every loss and the gradient are 0 (pytorch-metric-learning).

    Losses (N·V,) view-major.  Grads: (features,) in the input's shape.

    Assumes: features 2-D or 3-D; labels None or (N,) (any comparable values);
    temperature > 0, base_temperature > 0 when given.
    """
    f = _f64(features)
    squeeze = f.ndim == 2
    if squeeze:
        f = f[:, None, :]
    n_samples, n_views, dim = f.shape
    rows_total = n_samples * n_views
    coef = _coef(coef, rows_total)
    tau = float(temperature)
    tau_base = tau if base_temperature is None else float(base_temperature)
    z = f.transpose(1, 0, 2).reshape(rows_total, dim)            # view-major rows
    if normalize:
        u, norm = _normalize(z)
    else:
        u = z
    sample_labels = np.arange(n_samples) if labels is None else np.asarray(labels).ravel()
    row_labels = np.tile(sample_labels, n_views)
    valid = supcon_valid_anchors(labels, n_samples, n_views)
    losses = np.zeros(rows_total)
    g_u = np.zeros_like(u) if need_grad else None
    if valid.any():
        for blk in _blocks(rows_total):
            rows = np.arange(blk.start, blk.stop)
            b = np.arange(len(rows))
            logits = u[blk] @ u.T / tau
            logits_mask = np.ones_like(logits, dtype=bool)
            logits_mask[b, rows] = False                           # A(r): not r itself
            pos_mask = (row_labels[blk, None] == row_labels[None, :]) & logits_mask
            n_pos = pos_mask.sum(axis=1)
            log_prob = logits - _logsumexp_rows(np.where(logits_mask, logits, -np.inf))[:, None]
            safe_n_pos = np.maximum(n_pos, 1)
            mean_log_prob_pos = np.sum(np.where(pos_mask, log_prob, 0.0), axis=1) / safe_n_pos
            losses[blk] = np.where(n_pos > 0, -(tau / tau_base) * mean_log_prob_pos, 0.0)
            if not need_grad:
                continue
            softmax = np.where(logits_mask, np.exp(log_prob), 0.0)
            w = np.where(n_pos > 0, coef[blk] * (tau / tau_base), 0.0)[:, None]
            d_logits = w * (softmax - pos_mask / safe_n_pos[:, None]) / tau
            g_u[blk] += d_logits @ u
            g_u += d_logits.T @ u[blk]
    if not need_grad:
        return losses, None
    g_z = _normalize_backward(u, norm, g_u) if normalize else g_u
    grad = g_z.reshape(n_views, n_samples, dim).transpose(1, 0, 2)
    if squeeze:
        grad = grad[:, 0, :]
    return losses, (grad,)

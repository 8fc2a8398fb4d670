"""The table of losses: every public loss, its inputs, parameters and domains.

Tests, the demo and the docs iterate over :data:`LOSSES`, so a loss added here
shows up everywhere.  Each entry says which elementwise term (or softmax row
kind) computes it; the math of a term lives in ``numbaloss.reference`` (the
oracle) and ``numbaloss._numba.points`` (the compiled point functions).
"""

from __future__ import annotations

import difflib

import numpy as np

from . import _validation as v
from ._losses import ANY, UNIT, PairwiseLoss, Param, PointwiseLoss, SoftmaxLoss, Term, TwoTermLoss

# ------------------------------------------------------------------ parameter checks


def _optional_non_negative(name, value):
    return None if value is None else v.non_negative(name, value)


def _optional_unit(name, value):
    return None if value is None else v.scalar(name, value, low=0.0, high=1.0)


def _finite(name, value):
    return v.scalar(name, value)


def _optional_class_vector(name, value):
    if value is None or np.isscalar(value):
        return value if value is None else v.non_negative(name, value)
    return v.as_array(name, value)


_INT64 = np.iinfo(np.int64)


def _optional_int(name, value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer or None, got {value!r}")
    value = int(value)
    if not _INT64.min <= value <= _INT64.max:  # the loops compare it with int64 labels
        raise ValueError(f"{name} must fit in int64 [{_INT64.min}, {_INT64.max}], got {value}")
    return value


# --------------------------------------------------------- example inputs per kind


def _draw(rng, kind, shape, dtype):
    """Synthetic values of one kind: "real" (normal), "unit" (probabilities away
    from 0 and 1), "binary" (0/1 targets), "labels" (ints over the last axis of shape)."""
    if kind == "real":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "unit":
        return rng.uniform(0.02, 0.98, shape).astype(dtype)
    if kind == "binary":
        return (rng.random(shape) < 0.4).astype(dtype)
    if kind == "labels":
        return rng.integers(0, shape[-1], shape[:-1])
    raise ValueError(kind)


def _example(*kinds):
    """An example function drawing one array per input kind, all of one shape
    (a kind "labels" drops the last axis)."""
    return lambda rng, shape, dtype: tuple(_draw(rng, kind, shape, dtype) for kind in kinds)


FROM_LOGITS = Param("from_logits", False, v.boolean)
EPS = Param("eps", 1e-7, v.clip_eps)


def _probability_or_logit(from_logits: bool):
    return ANY if from_logits else UNIT


# -------------------------------------------------------------------- the losses

mse = PointwiseLoss(
    "mse", ("y_true", "y_pred"), (),
    """Mean squared error.

    l = (y_pred − y_true)²; mean over all elements.  Gradient 2(y_pred − y_true)/n,
    Hessian 2.  Same numbers as PyTorch ``mse_loss``.
    """,
    lambda p: Term("squared_error"),
    example=_example("real", "real"),
)

binary_cross_entropy = PointwiseLoss(
    "binary_cross_entropy", ("y_true", "y_pred"),
    (FROM_LOGITS, Param("pos_weight", None, _optional_non_negative),
     Param("label_smoothing", 0.0, v.label_smoothing), EPS),
    """Binary cross-entropy, on probabilities (default) or logits (``from_logits=True``).

    l = −[w₊·y·log p + (1 − y)·log(1 − p)], targets y ∈ [0, 1] (soft allowed),
    smoothed y ← y(1 − ε) + ε/2; p = σ(z) in log-sigmoid form for logits, or
    p = clip(y_pred, eps, 1 − eps) for probabilities.  ``pos_weight`` w₊ (scalar)
    weighs the positive term as in PyTorch ``binary_cross_entropy_with_logits``.
    Gradient w.r.t. the logit: (w₊y + 1 − y)σ(z) − w₊y.
    """,
    lambda p: Term(
        "bce_logits" if p["from_logits"] else "bce_probs",
        (1.0 if p["pos_weight"] is None else p["pos_weight"], p["label_smoothing"])
        + (() if p["from_logits"] else (p["eps"],)),
        UNIT, _probability_or_logit(p["from_logits"]),
    ),
    example=_example("binary", "unit"),
)

huber = PointwiseLoss(
    "huber", ("y_true", "y_pred"), (Param("delta", 1.0, v.positive),),
    """Huber loss (Huber 1964), PyTorch ``huber_loss``.

    l = ½r² if |r| ≤ δ else δ(|r| − ½δ), r = y_pred − y_true; gradient r or δ·sign(r).
    """,
    lambda p: Term("huber", (p["delta"],)),
    example=_example("real", "real"),
)


def _focal_term(p):
    alpha = p["alpha"]
    alphas = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    if p["from_logits"]:
        return Term("focal_logits", alphas + (p["gamma"],), UNIT, ANY)
    return Term("focal_probs", alphas + (p["gamma"], p["eps"]), UNIT, UNIT)


focal = PointwiseLoss(
    "focal", ("y_true", "y_pred"),
    (Param("alpha", 0.25, _optional_unit), Param("gamma", 2.0, v.non_negative), FROM_LOGITS, EPS),
    """Binary / multi-label focal loss (Lin et al. 2017, "Focal Loss for Dense Object
    Detection"), torchvision ``sigmoid_focal_loss``.

    p_t = p·y + (1 − p)(1 − y), α_t = α·y + (1 − α)(1 − y),
    FL = α_t (1 − p_t)^γ · BCE(y, p); ``alpha=None`` disables α_t.  (1 − p_t)^γ is
    computed in log space: value and gradient are finite for every γ ≥ 0 at
    saturated logits.
    """,
    _focal_term,
    example=_example("binary", "unit"),
)


def _cce_setup(p, n_classes, target_kind):
    cw = p["class_weight"]
    class_weight = np.ones(n_classes) if cw is None else v.class_vector("class_weight", cw, n_classes)
    link = "logits" if p["from_logits"] else "probs"
    params = (p["label_smoothing"], float(class_weight.sum()), p["eps"])
    ignore = p["ignore_index"] if target_kind == "labels" else None
    label_weighted = cw is not None or ignore is not None
    return f"cce_{link}", params, class_weight, ignore, label_weighted


categorical_cross_entropy = SoftmaxLoss(
    "categorical_cross_entropy",
    (FROM_LOGITS, Param("label_smoothing", 0.0, v.label_smoothing),
     Param("class_weight", None, _optional_class_vector), Param("ignore_index", None, _optional_int),
     EPS),
    """Categorical cross-entropy over the last axis, PyTorch ``cross_entropy`` semantics.

    ``y_true``: integer labels (y_pred's shape without the class axis) or one-hot /
    soft rows (y_pred's shape).  Smoothed targets t ← t(1 − ε) + ε/K; per row
    l = −Σⱼ cⱼ tⱼ log pⱼ with p = softmax(z) (``from_logits=True``, log-sum-exp) or
    p = clip(y_pred, eps, 1 − eps) (never renormalised).  Mean over rows; with
    integer labels and ``class_weight`` c the mean divides by Σᵢ c_{yᵢ}, and rows with
    ``ignore_index`` are left out of sum and count.  Logit gradient pⱼS − cⱼtⱼ.
    """,
    _cce_setup,
    example=_example("labels", "unit"),
)


def _categorical_focal_setup(p, n_classes, target_kind):
    alpha = p["alpha"]
    if alpha is None:
        alphas = np.ones(n_classes)
    elif np.isscalar(alpha):
        alphas = np.full(n_classes, float(alpha))
    else:
        alphas = v.class_vector("alpha", alpha, n_classes)
    link = "logits" if p["from_logits"] else "probs"
    return f"focal_{link}", (p["gamma"], p["eps"]), alphas, None, False


categorical_focal = SoftmaxLoss(
    "categorical_focal",
    (Param("alpha", None, _optional_class_vector), Param("gamma", 2.0, v.non_negative), FROM_LOGITS, EPS),
    """Softmax focal loss (Lin et al. 2017), Keras ``CategoricalFocalCrossentropy``.

    Per row −Σⱼ αⱼ tⱼ (1 − pⱼ)^γ log pⱼ with integer or one-hot/soft targets t;
    ``alpha`` a scalar, a per-class vector, or None (αⱼ = 1).  With logits, log pⱼ and
    log(1 − pⱼ) are taken in log space, so value and gradient stay finite for every
    γ ≥ 0 at saturated logits.  Mean over rows.
    """,
    _categorical_focal_setup,
    example=_example("labels", "unit"),
)

cycle_consistency = TwoTermLoss(
    "cycle_consistency", ("x", "x_cycled", "y", "y_cycled"), (Param("weight", 1.0, v.non_negative),),
    """CycleGAN cycle-consistency loss (Zhu et al. 2017).

    weight·(mean|x_cycled − x| + mean|y_cycled − y|), x_cycled = F(G(x)),
    y_cycled = G(F(y)).  Gradients w.r.t. (x_cycled, y_cycled); subgradient 0 where
    equal.  ``reduction="none"`` returns the two per-element arrays, each times weight.
    """,
    lambda p: ((Term("absolute_error"), p["weight"]), (Term("absolute_error"), p["weight"])),
    pairs=((0, 1), (2, 3)),
    example=_example("real", "real", "real", "real"),
)

lsgan_discriminator = TwoTermLoss(
    "lsgan_discriminator", ("d_real", "d_fake"), (Param("a", 0.0, _finite), Param("b", 1.0, _finite)),
    """Least-squares GAN discriminator loss (Mao et al. 2017).

    ½·mean((d_real − b)²) + ½·mean((d_fake − a)²); gradients w.r.t. (d_real, d_fake).
    """,
    lambda p: ((Term("squared_error_to_constant", (p["b"],)), 0.5),
               (Term("squared_error_to_constant", (p["a"],)), 0.5)),
    pairs=((None, 0), (None, 1)),
    example=_example("real", "real"),
)

lsgan_generator = PointwiseLoss(
    "lsgan_generator", ("d_fake",), (Param("c", 1.0, _finite),),
    """Least-squares GAN generator loss (Mao et al. 2017): ½·mean((d_fake − c)²).""",
    lambda p: Term("squared_error_to_constant", (p["c"],)),
    factor=0.5, has_hessian=False, example=_example("real"),
)


def _gan_term(target, from_logits, eps):
    if from_logits:
        return Term("bce_logits_to_constant", (target,))
    return Term("bce_probs_to_constant", (target, eps), ANY, UNIT)


gan_discriminator = TwoTermLoss(
    "gan_discriminator", ("d_real", "d_fake"), (FROM_LOGITS, EPS),
    """GAN discriminator loss (Goodfellow et al. 2014).

    −½·mean(log D(x)) − ½·mean(log(1 − D(G(z)))) on discriminator outputs in (0, 1)
    (clipped to [eps, 1 − eps]), or on logits with ``from_logits=True`` (log-sigmoid
    form).  Gradients w.r.t. (d_real, d_fake).
    """,
    lambda p: ((_gan_term(1.0, p["from_logits"], p["eps"]), 0.5),
               (_gan_term(0.0, p["from_logits"], p["eps"]), 0.5)),
    pairs=((None, 0), (None, 1)),
    example=_example("unit", "unit"),
)

gan_generator = PointwiseLoss(
    "gan_generator", ("d_fake",), (FROM_LOGITS, EPS),
    """Non-saturating GAN generator loss (Goodfellow et al. 2014): −½·mean(log D(G(z))).""",
    lambda p: _gan_term(1.0, p["from_logits"], p["eps"]),
    factor=0.5, has_hessian=False, example=_example("unit"),
)

# ----------------------------------------------------- embedding / contrastive


def _matrix(name, a):
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {a.shape}")
    return a


def _labels_for(name, labels, rows_name, n, n_classes=None):
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one label per row of {rows_name}, "
                         f"got shape {labels.shape}")
    if n_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)]
        raise ValueError(
            f"{name} must lie in [0, {n_classes}) (classes from weight's first axis); "
            f"found {bad.size} outside, e.g. {bad[0]}"
        )
    return labels


def _validate_triplet(arrays, p):
    anchor, positive, negative = (_matrix(n, a) for n, a in zip(("anchor", "positive", "negative"), arrays))
    v.check_same_shape("anchor", anchor, "positive", positive)
    v.check_same_shape("anchor", anchor, "negative", negative)
    if anchor.shape[1] == 0:  # the distance loops need D ≥ 1
        raise ValueError(f"anchor, positive and negative must have at least one feature (D ≥ 1), "
                         f"got shape {anchor.shape}")
    if p["squared"] and p["p"] != 2.0:
        raise ValueError(f"squared=True needs p=2 (the squared Euclidean distance), got p={p['p']}")
    return arrays, anchor.shape[0]


def _example_embeddings(count):
    return lambda rng, shape, dtype: tuple(rng.standard_normal(shape).astype(dtype) for _ in range(count))


triplet = PairwiseLoss(
    "triplet", ("anchor", "positive", "negative"),
    (Param("margin", 1.0, v.non_negative), Param("p", 2.0, v.positive), Param("eps", 1e-6, v.non_negative),
     Param("swap", False, v.boolean), Param("squared", False, v.boolean)),
    """Triplet margin loss (Schroff et al. 2015), PyTorch ``triplet_margin_loss``.

    lᵢ = max(d(aᵢ, pᵢ) − d(aᵢ, nᵢ) + margin, 0), d(u, v) = ‖u − v + eps‖_p over the
    last axis; ``swap`` uses min(d(a, n), d(p, n)) (Balntas et al. 2016);
    ``squared`` uses ‖u − v + eps‖₂² (FaceNet, p = 2 only).  Inputs (N, D);
    gradients w.r.t. (anchor, positive, negative).
    """,
    differentiable=(0, 1, 2), validate=_validate_triplet, example=_example_embeddings(3),
    has_sample_weight=True,
)


def _validate_batch_hard(arrays, p):
    embeddings, labels = arrays
    _matrix("embeddings", embeddings)
    _labels_for("labels", labels, "embeddings", embeddings.shape[0])
    return arrays, embeddings.shape[0]


def _batch_hard_valid(inputs, n):
    from .reference.embedding import batch_hard_valid_anchors

    return batch_hard_valid_anchors(inputs[1])


batch_hard_triplet = PairwiseLoss(
    "batch_hard_triplet", ("embeddings", "labels"),
    (Param("margin", 1.0, v.non_negative), Param("squared", False, v.boolean)),
    """Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss").

    For each anchor, its farthest positive and nearest negative in the batch
    (Euclidean, or squared with ``squared``): lᵢ = max(d⁺ᵢ − d⁻ᵢ + margin, 0).  Anchors
    without a positive or a negative contribute 0 and are left out of the mean.
    """,
    differentiable=(0,), validate=_validate_batch_hard, valid=_batch_hard_valid,
    integer_inputs=("labels",),
    example=lambda rng, shape, dtype: (rng.standard_normal(shape).astype(dtype),
                                       rng.permutation(np.arange(shape[0]) % max(2, shape[0] // 3))),
)


def _similarity(name, value):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be the string 'cosine' or 'dot', got {type(value).__name__}")
    if value not in ("cosine", "dot"):
        raise ValueError(f"{name} must be 'cosine' or 'dot', got {value!r}")
    return value


def _validate_info_nce(arrays, p):
    anchor, positive, negatives = arrays
    _matrix("anchor", anchor)
    v.check_same_shape("anchor", anchor, "positive", positive)
    if negatives is not None:
        if negatives.ndim == 2:
            if negatives.shape[1] != anchor.shape[1]:
                raise ValueError(f"negatives (M, D) must have D={anchor.shape[1]} like anchor, "
                                 f"got shape {negatives.shape}")
        elif negatives.ndim == 3:
            if negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
                raise ValueError(f"negatives (N, M, D) must have N={anchor.shape[0]} and "
                                 f"D={anchor.shape[1]}, got shape {negatives.shape}")
        else:
            raise ValueError(f"negatives must be (M, D) or (N, M, D), got shape {negatives.shape}")
    return arrays, anchor.shape[0]


info_nce = PairwiseLoss(
    "info_nce", ("anchor", "positive", "negatives"),
    (Param("temperature", 0.1, v.positive), Param("similarity", "cosine", _similarity)),
    """InfoNCE (van den Oord et al. 2018), as the ``info-nce-pytorch`` package.

    lᵢ = −log(e^{s(aᵢ,pᵢ)/τ} / (e^{s(aᵢ,pᵢ)/τ} + Σₖ e^{s(aᵢ,nₖ)/τ})).  ``negatives=None``:
    the other rows of ``positive`` (logits A·Pᵀ/τ, target i for row i); (M, D): shared
    by all anchors; (N, M, D): per anchor.  ``similarity``: "cosine" (rows
    L2-normalised) or "dot".  Gradients w.r.t. (anchor, positive[, negatives]).
    """,
    differentiable=(0, 1, 2), validate=_validate_info_nce, optional_inputs=("negatives",),
    raw_products=lambda p: p["similarity"] == "dot",
    example=lambda rng, shape, dtype: tuple(rng.standard_normal(shape).astype(dtype) for _ in range(2)),
)


def _validate_nt_xent(arrays, p):
    z_i, z_j = arrays
    _matrix("z_i", z_i)
    v.check_same_shape("z_i", z_i, "z_j", z_j)
    return arrays, 2 * z_i.shape[0]


nt_xent = PairwiseLoss(
    "nt_xent", ("z_i", "z_j"), (Param("temperature", 0.5, v.positive),),
    """NT-Xent, the SimCLR loss (Chen et al. 2020).

    z = concat(z_i, z_j) (2N rows), L2-normalised; for each row the positive is its
    pair and the denominator runs over the 2N − 1 other rows; mean over 2N.
    Gradients w.r.t. (z_i, z_j).  ``reduction="none"`` gives the 2N row losses.
    """,
    differentiable=(0, 1), validate=_validate_nt_xent, example=_example_embeddings(2),
)


def _validate_margin_softmax(arrays, p):
    embeddings, labels, weight = arrays
    _matrix("embeddings", embeddings)
    _matrix("weight", weight)
    if weight.shape[1] != embeddings.shape[1]:
        raise ValueError(f"weight (C, D) must have D={embeddings.shape[1]} like embeddings, "
                         f"got shape {weight.shape}")
    _labels_for("labels", labels, "embeddings", embeddings.shape[0], weight.shape[0])
    return arrays, embeddings.shape[0]


def _example_margin_softmax(rng, shape, dtype):
    n, d = shape
    classes = max(2, n // 2)
    return (rng.standard_normal((n, d)).astype(dtype), rng.integers(0, classes, n),
            rng.standard_normal((classes, d)).astype(dtype))


arcface = PairwiseLoss(
    "arcface", ("embeddings", "labels", "weight"),
    (Param("s", 64.0, v.positive), Param("m", 0.5, v.non_negative), Param("easy_margin", False, v.boolean)),
    """ArcFace (Deng et al. 2019), the InsightFace formulation.

    cos θ = normalise(x)·normalise(W)ᵀ (W is (C, D)); the target logit is cos(θ + m),
    falling back to cos θ − m·sin m when cos θ ≤ cos(π − m) (``easy_margin``: cos θ
    when cos θ ≤ 0); cross-entropy over s·logits.  sin θ = √max(1 − cos²θ, 0), the
    gradient clamps sin θ ≥ 1e-7.  Gradients w.r.t. (embeddings, weight).
    """,
    differentiable=(0, 2), validate=_validate_margin_softmax, integer_inputs=("labels",),
    example=_example_margin_softmax, has_sample_weight=True,
)

cosface = PairwiseLoss(
    "cosface", ("embeddings", "labels", "weight"),
    (Param("s", 64.0, v.positive), Param("m", 0.4, v.non_negative)),
    """CosFace / large-margin cosine loss (Wang et al. 2018): as ArcFace with the target
    logit cos θ − m.  Gradients w.r.t. (embeddings, weight).
    """,
    differentiable=(0, 2), validate=_validate_margin_softmax, integer_inputs=("labels",),
    example=_example_margin_softmax, has_sample_weight=True,
)


def _validate_supcon(arrays, p):
    features, labels = arrays
    if features.ndim not in (2, 3):
        raise ValueError(f"features must be (N, D) or (N, V, D), got shape {features.shape}")
    if features.ndim == 3 and features.shape[1] == 0:  # the blocked loops need V ≥ 1
        raise ValueError(f"features (N, V, D) must have at least one view (V ≥ 1), got shape {features.shape}")
    if labels is not None:
        _labels_for("labels", labels, "features", features.shape[0])
    views = features.shape[1] if features.ndim == 3 else 1
    return arrays, features.shape[0] * views


def _supcon_valid(inputs, n):
    from .reference.embedding import supcon_valid_anchors

    features, labels = inputs
    views = features.shape[1] if features.ndim == 3 else 1
    return supcon_valid_anchors(labels, features.shape[0], views)


def _optional_positive(name, value):
    return None if value is None else v.positive(name, value)


supcon = PairwiseLoss(
    "supcon", ("features", "labels"),
    (Param("temperature", 0.07, v.positive), Param("base_temperature", None, _optional_positive),
     Param("normalize", True, v.boolean)),
    """Supervised contrastive loss (Khosla et al. 2020), the authors' reference ("all").

    features (N, V, D) or (N, D), rows view-major (v·N + i); P(i) = rows with the same
    label except i (``labels=None``: the other views of the same sample), A(i) = all
    rows except i: lᵢ = −(τ/τ_base)·(1/|P(i)|)·Σ_{p∈P(i)} log softmax_{A(i)}(zᵢ·z/τ)_p.
    Anchors with no positive contribute 0 and are left out of the mean; with none at
    all the loss is 0 with a zero gradient.  Gradient w.r.t. ``features``.
    """,
    differentiable=(0,), validate=_validate_supcon, valid=_supcon_valid, integer_inputs=("labels",),
    raw_products=lambda p: not p["normalize"],
    optional_inputs=("labels",),
    example=lambda rng, shape, dtype: (rng.standard_normal((shape[0], 2, shape[1])).astype(dtype),
                                       rng.integers(0, max(1, shape[0] // 2), shape[0])),
)

bce = binary_cross_entropy
cce = categorical_cross_entropy

#: every public loss by name (aliases are not repeated here)
LOSSES = {
    loss.name: loss
    for loss in (
        mse, binary_cross_entropy, categorical_cross_entropy, huber, focal, categorical_focal,
        cycle_consistency, lsgan_discriminator, lsgan_generator, gan_discriminator, gan_generator,
        triplet, batch_hard_triplet, info_nce, nt_xent, arcface, cosface, supcon,
    )
}
ALIASES = {"bce": "binary_cross_entropy", "cce": "categorical_cross_entropy"}


def get_loss(loss):
    """The loss object for a registered name or alias; a loss object is returned as is."""
    if not isinstance(loss, str):
        return loss
    key = ALIASES.get(loss, loss)
    if key in LOSSES:
        return LOSSES[key]
    close = difflib.get_close_matches(loss, list(LOSSES) + list(ALIASES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown loss {loss!r}{hint} (the losses: {', '.join(LOSSES)}; "
                     f"aliases: {', '.join(ALIASES)})")

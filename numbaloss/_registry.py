"""The table of losses: every public loss, its inputs, parameters and domains.

Tests, the demo and the docs iterate over :data:`LOSSES`, so a loss added here
shows up everywhere.  Each entry says which elementwise term (or softmax row
kind) computes it; the math of a term lives in ``numbaloss.reference`` (the
oracle) and ``numbaloss._numba.points`` (the compiled point functions).
"""

from __future__ import annotations

import numpy as np

from . import _validation as v
from ._losses import ANY, UNIT, Param, PointwiseLoss, SoftmaxLoss, Term, TwoTermLoss

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


def _optional_int(name, value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer or None, got {value!r}")
    return int(value)


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

bce = binary_cross_entropy
cce = categorical_cross_entropy

#: every public loss by name (aliases are not repeated here)
LOSSES = {
    loss.name: loss
    for loss in (
        mse, binary_cross_entropy, categorical_cross_entropy, huber, focal, categorical_focal,
        cycle_consistency, lsgan_discriminator, lsgan_generator, gan_discriminator, gan_generator,
    )
}
ALIASES = {"bce": "binary_cross_entropy", "cce": "categorical_cross_entropy"}

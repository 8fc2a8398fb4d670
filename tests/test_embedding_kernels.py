"""The embedding losses' kernels: the Numba module against the float64 reference, the
reference against central finite differences, edge cases, block boundaries and peak
memory.  Both modules are imported directly (no framework involved)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numbaloss._numba import pairwise as nb
from numbaloss.reference import embedding as ref

# ---------------------------------------------------------------------------
# cases: loss name → builder of (inputs, number of losses), indices of the
# differentiable inputs, parameter variants
# ---------------------------------------------------------------------------


def _labels(rng, n, n_classes):
    return rng.integers(0, n_classes, n)


def _triplet_inputs(rng, n, d):
    return [rng.standard_normal((n, d)) for _ in range(3)], n


def _batch_hard_inputs(rng, n, d):
    return [rng.standard_normal((n, d)), _labels(rng, n, max(1, n // 3))], n


def _nce_inputs(rng, n, d):
    return [rng.standard_normal((n, d)), rng.standard_normal((n, d))], n


def _nce_shared_inputs(rng, n, d):
    return [rng.standard_normal((n, d)), rng.standard_normal((n, d)),
            rng.standard_normal((n + 3, d))], n


def _nce_paired_inputs(rng, n, d):
    return [rng.standard_normal((n, d)), rng.standard_normal((n, d)),
            rng.standard_normal((n, 5, d))], n


def _nt_xent_inputs(rng, n, d):
    return [rng.standard_normal((n, d)), rng.standard_normal((n, d))], 2 * n


def _margin_inputs(rng, n, d):
    c = 11
    return [rng.standard_normal((n, d)), _labels(rng, n, c), rng.standard_normal((c, d))], n


def _supcon_inputs(rng, n, d):
    return [rng.standard_normal((n, 3, d)), _labels(rng, n, max(1, n // 2))], 3 * n


def _supcon2d_inputs(rng, n, d):
    return [rng.standard_normal((n, d)), _labels(rng, n, max(1, n // 3))], n


def _supcon_nolabel_inputs(rng, n, d):
    return [rng.standard_normal((n, 2, d)), None], 2 * n


#: name → (function name, input builder, differentiable input indices, variants, blocked)
CASES = {
    "triplet": ("triplet", _triplet_inputs, [0, 1, 2], [
        {}, {"p": 1.0}, {"p": 3.0}, {"p": math.inf}, {"swap": True}, {"squared": True},
        {"margin": 0.0, "p": 1.5, "swap": True}, {"eps": 0.0, "margin": 0.5}], False),
    "batch_hard_triplet": ("batch_hard_triplet", _batch_hard_inputs, [0], [
        {}, {"squared": True}, {"margin": 0.2}], True),
    "info_nce": ("info_nce", _nce_inputs, [0, 1], [
        {}, {"similarity": "dot", "temperature": 2.0}, {"temperature": 0.5}], True),
    "info_nce_shared": ("info_nce", _nce_shared_inputs, [0, 1, 2], [
        {}, {"similarity": "dot", "temperature": 2.0}], True),
    "info_nce_paired": ("info_nce", _nce_paired_inputs, [0, 1, 2], [
        {}, {"similarity": "dot", "temperature": 2.0}], False),
    "nt_xent": ("nt_xent", _nt_xent_inputs, [0, 1], [{}, {"temperature": 0.1}], True),
    "arcface": ("arcface", _margin_inputs, [0, 2], [
        {"s": 8.0}, {"s": 8.0, "easy_margin": True}, {"s": 4.0, "m": 2.0}, {}], True),
    "cosface": ("cosface", _margin_inputs, [0, 2], [{"s": 8.0}, {}], True),
    "supcon": ("supcon", _supcon_inputs, [0], [
        {}, {"temperature": 0.5, "base_temperature": 0.3},
        {"normalize": False, "temperature": 4.0}], True),
    "supcon_2d": ("supcon", _supcon2d_inputs, [0], [{"temperature": 0.5}], True),
    "supcon_nolabels": ("supcon", _supcon_nolabel_inputs, [0], [{"temperature": 0.5}], True),
}

ALL_VARIANTS = [(case, i) for case, spec in CASES.items() for i in range(len(spec[3]))]


def _variant_id(cv):
    case, i = cv
    return f"{case}-{i}"


def _cast(inputs, dtype):
    """Float inputs → C-contiguous ``dtype`` (labels unchanged)."""
    return [np.ascontiguousarray(x, dtype=dtype)
            if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x for x in inputs]


def _call(module, case, inputs, params, **kw):
    fn = getattr(module, CASES[case][0])
    return fn(*inputs, **params, **kw)


def assert_close(actual, expected, rtol, what=""):
    """|actual − expected| ≤ rtol·(|expected| + max(1e-2·max|expected|, 1)), elementwise.

    The second term is an absolute tolerance relative to the array's scale, and at
    least rtol (1 is the natural scale of these losses and gradients with coef ~ 1):
    entries that cancel to ~0 cannot keep a relative accuracy."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if expected.size == 0:
        return
    scale = np.max(np.abs(expected))
    tol = rtol * (np.abs(expected) + max(1e-2 * scale, 1.0))
    err = np.abs(actual - expected)
    bad = ~(err <= tol)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} off, max err "
                           f"{np.max(err):.3g} (scale {scale:.3g})")


RTOL = {np.float64: 1e-10, np.float32: 2e-4}


def compare(case, params, inputs, dtype, rng, **kw):
    """Numba vs reference on ``inputs`` rounded to ``dtype``: losses and all grads."""
    inputs = _cast(inputs, dtype)
    n_losses = _call(ref, case, inputs, params, need_grad=False)[0].shape[0]
    coef = rng.uniform(0.25, 1.5, n_losses)
    l_ref, g_ref = _call(ref, case, inputs, params, coef=coef)
    l_nb, g_nb = _call(nb, case, inputs, params, coef=coef, **kw)
    rtol = RTOL[dtype]
    assert l_nb.dtype == np.float64
    assert_close(l_nb, l_ref, rtol, "losses")
    assert len(g_nb) == len(g_ref)
    for k, (a, b) in enumerate(zip(g_nb, g_ref)):
        assert a.dtype == dtype, (k, a.dtype)
        assert_close(a, b, rtol, f"grad {k}")
    l_v, g_v = _call(nb, case, inputs, params, coef=coef, need_grad=False, **kw)
    assert g_v is None
    assert_close(l_v, l_nb, rtol, "value-only losses")
    return l_nb, g_nb


# ---------------------------------------------------------------------------
# Numba vs reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case_variant", ALL_VARIANTS, ids=_variant_id)
def test_numba_matches_reference(case_variant, dtype):
    case, i = case_variant
    _, build, _, variants, blocked = CASES[case]
    rng = np.random.default_rng(1000 + i)
    inputs, _ = build(rng, 23, 7)
    compare(case, variants[i], inputs, dtype, rng)
    if blocked:        # many blocks / tiles, N not a multiple of the block size
        for rows in (1, 4, 9):
            compare(case, variants[i], inputs, dtype, rng, block_rows=rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("strips", [1, 2, 7])
def test_contrastive_diagonal_strips(dtype, strips, monkeypatch):
    """NT-Xent / SupCon with the diagonal tiles' products in 1, 2 or 7 row strips (the
    entries below the strips are never written: they must never be read)."""
    monkeypatch.setattr(nb, "DIAG_STRIPS", strips)
    rng = np.random.default_rng(4)
    for case in ("nt_xent", "supcon", "supcon_2d", "supcon_nolabels"):
        for i, params in enumerate(CASES[case][3]):
            inputs, _ = CASES[case][1](rng, 17, 5)
            for rows in (9, None):
                compare(case, params, inputs, dtype, rng, block_rows=rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_contrastive_shifted_and_per_row_max_agree(dtype, monkeypatch):
    """The common shift (one exp per entry) and the per-row maxima give the same
    losses and gradients, on one tile and on many (weights too large for the shifted
    form, or a zero span, select the per-row form)."""
    rng = np.random.default_rng(16)
    z = _cast([rng.standard_normal((40, 6)), rng.standard_normal((40, 6))], dtype)
    for rows in (None, 7):
        l1, g1 = nb.nt_xent(*z, temperature=0.2, block_rows=rows)
        monkeypatch.setattr(nb, "_SHIFT_SPAN", {4: 0.0, 8: 0.0})
        l2, g2 = nb.nt_xent(*z, temperature=0.2, block_rows=rows)
        monkeypatch.undo()
        assert_close(l1, l2, RTOL[dtype])
        for a, b in zip(g1, g2):
            assert_close(a, b, RTOL[dtype])
    coef = np.full(80, 1e12)                   # max(w)·e^(2M) > float32's range /4
    compare("nt_xent", {"temperature": 1 / 30}, z, dtype, rng)
    l_nb, g_nb = nb.nt_xent(*z, temperature=1 / 30, coef=coef)
    l_ref, g_ref = ref.nt_xent(*z, temperature=1 / 30, coef=coef)
    assert_close(l_nb, l_ref, RTOL[dtype])
    for a, b in zip(g_nb, g_ref):
        assert_close(a / 1e12, b / 1e12, RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_module_level_block_setting(dtype, monkeypatch):
    rng = np.random.default_rng(5)
    monkeypatch.setattr(nb, "BLOCK_ROWS", 6)
    for case in ("info_nce", "nt_xent", "supcon", "arcface", "batch_hard_triplet",
                 "info_nce_shared"):
        inputs, _ = CASES[case][1](rng, 20, 5)
        compare(case, CASES[case][3][0], inputs, dtype, rng)


@pytest.mark.slow
def test_default_blocks_at_larger_n(monkeypatch):
    """The default block logic with several row blocks and tiles: N = 1,100 with a
    smaller BLOCK_BYTES (the code paths of N in the tens of thousands)."""
    rng = np.random.default_rng(7)
    monkeypatch.setattr(nb, "BLOCK_BYTES", 1100 * 8 * 300)   # tiles of 574 in float64
    n, d = 1100, 16
    for case in ("info_nce", "nt_xent", "supcon_2d", "batch_hard_triplet"):
        inputs, _ = CASES[case][1](rng, n, d)
        compare(case, CASES[case][3][0], inputs, np.float64, rng)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((700, d))
    compare("arcface", {}, [x, rng.integers(0, 700, n), w], np.float32, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_single_tile_threaded(dtype):
    """2N or N·V between the serial limit and the tile edge: one tile, threaded kernels."""
    rng = np.random.default_rng(8)
    assert 300 * 300 >= nb.SERIAL_BELOW and 300 ** 2 * 8 <= nb.BLOCK_BYTES
    compare("nt_xent", {}, [rng.standard_normal((150, 6)), rng.standard_normal((150, 6))],
            dtype, rng)
    compare("supcon", {}, [rng.standard_normal((100, 3, 6)), rng.integers(0, 9, 100)], dtype, rng)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case_variant=st.sampled_from(ALL_VARIANTS), n=st.integers(1, 40), d=st.integers(1, 16),
       seed=st.integers(0, 2**31 - 1), rows=st.sampled_from([None, 1, 2, 3, 5, 8, 13]),
       f32=st.booleans())
def test_hypothesis_shapes(case_variant, n, d, seed, rows, f32):
    case, i = case_variant
    _, build, _, variants, blocked = CASES[case]
    rng = np.random.default_rng(seed)
    if case == "arcface":
        # D = 1 means cos θ = ±1, and in D = 2 random angles come close to it: there
        # √(1 − cos²θ) makes the gradient ill-conditioned (test_arcface_cos_plus_minus_one)
        d = max(d, 4)
    inputs, _ = build(rng, n, d)
    # float32 selection of the hardest pairs may differ from float64 on near-ties
    dtype = np.float32 if (f32 and case != "batch_hard_triplet") else np.float64
    kw = {"block_rows": rows} if blocked else {}
    compare(case, variants[i], inputs, dtype, rng, **kw)


# ---------------------------------------------------------------------------
# the reference against finite differences
# ---------------------------------------------------------------------------

def _fd_grad(case, params, inputs, index, coef, h=1e-6):
    x = inputs[index]
    num = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        vals = []
        for step in (h, -h):
            xs = x.copy()
            xs[k] += step
            args = list(inputs)
            args[index] = xs
            vals.append(coef @ _call(ref, case, args, params, need_grad=False)[0])
        num[k] = (vals[0] - vals[1]) / (2 * h)
    return num


@pytest.mark.parametrize("case_variant", ALL_VARIANTS, ids=_variant_id)
def test_reference_matches_finite_differences(case_variant):
    case, i = case_variant
    _, build, diff, variants, _ = CASES[case]
    params = variants[i]
    rng = np.random.default_rng(2000 + i)
    inputs, n_losses = build(rng, 6, 4)
    if case == "triplet":        # keep the hinge active and away from its kink
        params = {"margin": 5.0, **{k: v for k, v in params.items() if k != "margin"}}
    if case == "batch_hard_triplet":
        inputs[1] = np.array([0, 0, 1, 1, 2, 2])
        params = {**params, "margin": 5.0}
    coef = rng.uniform(0.25, 1.5, n_losses)
    _, grads = _call(ref, case, inputs, params, coef=coef)
    for g, index in zip(grads, diff):
        num = _fd_grad(case, params, inputs, index, coef)
        assert_close(g, num, 1e-6, f"input {index}")


# ---------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------

def _finite(losses, grads):
    assert np.all(np.isfinite(losses))
    for g in grads:
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_low_temperature_is_finite(dtype):
    rng = np.random.default_rng(3)
    n, d = 30, 8
    a, p = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    for rows in (None, 7):
        kw = {"block_rows": rows}
        for fn, args in ((nb.info_nce, (a, p)), (nb.info_nce, (a, p, rng.standard_normal((9, d)))),
                         (nb.nt_xent, (a, p)),
                         (nb.supcon, (rng.standard_normal((n, 2, d)), rng.integers(0, 4, n)))):
            args = _cast(list(args), dtype)
            _finite(*fn(*args, temperature=0.01, **kw))
    # agreement with the reference at τ = 0.01 in float64
    if dtype == np.float64:
        compare("nt_xent", {"temperature": 0.01}, [a, p], dtype, rng, block_rows=7)
        compare("supcon", {"temperature": 0.01}, [rng.standard_normal((n, 2, d)),
                                                  rng.integers(0, 4, n)], dtype, rng)
        compare("info_nce", {"temperature": 0.01}, [a, p], dtype, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("easy", [False, True])
def test_arcface_cos_plus_minus_one(dtype, easy):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 6))
    x = np.stack([w[0] * 3.0, -w[1] * 2.0, w[2], rng.standard_normal(6)])
    y = np.array([0, 1, 2, 3])
    xs, ws = _cast([x, w], dtype)
    l_nb, g_nb = nb.arcface(xs, y, ws, easy_margin=easy)
    l_ref, g_ref = ref.arcface(xs, y, ws, easy_margin=easy)
    _finite(l_nb, g_nb)
    _finite(l_ref, g_ref)
    # sin θ = √(1 − cos²θ) is ill-conditioned at cos θ = ±1: a rounding of cos θ by
    # 1 ulp moves sin θ by √ulp, hence the looser tolerances
    assert_close(l_nb, l_ref, 1e-6 if dtype == np.float64 else 2e-3, "losses")
    if dtype == np.float64:
        # the clamped sin θ makes dφ/dcos ~ 5e6 at cos θ = 1: the component along x̂
        # cancels in the normalisation backward, leaving rounding noise of that size
        for a, b in zip(g_nb, g_ref):
            assert_close(a, b, 1e-6, "grads")
    l_c, g_c = nb.cosface(xs, y, ws)
    _finite(l_c, g_c)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_triplet_zero_distance(dtype):
    x = np.random.default_rng(5).standard_normal((4, 3)).astype(dtype)
    for params in ({}, {"p": 1.0}, {"p": 3.0}, {"p": math.inf}, {"swap": True}):
        losses, grads = nb.triplet(x, x, x, **params)
        _finite(losses, grads)
        l_ref, g_ref = ref.triplet(x, x, x, **params)
        assert_close(losses, l_ref, RTOL[dtype])
        for a, b in zip(grads, g_ref):
            assert_close(a, b, RTOL[dtype])
    for eps in (0.0, 1e-6):
        for params in ({"squared": True, "eps": eps}, {"eps": eps}):
            losses, grads = nb.triplet(x, x, x, **params)
            _finite(losses, grads)
            np.testing.assert_allclose(losses, 1.0, rtol=1e-6)
    # squared, zero distance: the gradient is 0
    losses, grads = nb.triplet(x, x, x, squared=True, eps=0.0)
    for g in grads:
        assert not np.any(g)
    losses, grads = nb.triplet(x, x, x, eps=0.0)   # p = 2 at ‖v‖ = 0: gradient 0
    for g in grads:
        assert not np.any(g)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_zero_rows_are_finite(dtype):
    rng = np.random.default_rng(6)
    a, p = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    a[2] = 0.0
    p[4] = 0.0
    w = rng.standard_normal((5, 4))
    w[1] = 0.0
    f = rng.standard_normal((6, 2, 4))
    f[3, 1] = 0.0
    cases = [("info_nce", [a, p], {}), ("info_nce_shared", [a, p, p[::-1].copy()], {}),
             ("info_nce_paired", [a, p, np.stack([p, a, p], axis=1)], {}),
             ("nt_xent", [a, p], {}), ("arcface", [a, np.arange(6) % 5, w], {}),
             ("supcon", [f, np.array([0, 1, 0, 1, 2, 2])], {})]
    for case, inputs, params in cases:
        l_nb, g_nb = _call(nb, case, _cast(inputs, dtype), params)
        _finite(l_nb, g_nb)
        if dtype == np.float64:
            compare(case, params, inputs, dtype, rng)


@pytest.mark.parametrize("rows", [None, 2])
def test_supcon_without_positives(rows):
    rng = np.random.default_rng(8)
    f = rng.standard_normal((5, 4)).astype(np.float32)
    for labels in (None, np.arange(5)):
        losses, (g,) = nb.supcon(f, labels, block_rows=rows)
        assert not np.any(losses) and not np.any(g) and g.shape == f.shape
        losses, (g,) = ref.supcon(f, labels)
        assert not np.any(losses) and not np.any(g)
        assert not nb.supcon_valid_anchors(labels, 5, 1).any()
    # some anchors without positives: they get loss 0 and count as invalid
    labels = np.array([0, 0, 1, 2, 2])
    losses, _ = nb.supcon(f, labels, block_rows=rows)
    valid = nb.supcon_valid_anchors(labels, 5, 1)
    np.testing.assert_array_equal(valid, [True, True, False, True, True])
    assert losses[2] == 0.0 and np.all(losses[valid] > 0)
    compare("supcon_2d", {}, [f, labels], np.float32, rng, block_rows=rows)
    # view-major order of the mask
    np.testing.assert_array_equal(ref.supcon_valid_anchors(labels, 5, 2), np.ones(10, bool))
    np.testing.assert_array_equal(ref.supcon_valid_anchors(None, 3, 2), np.ones(6, bool))


def test_batch_hard_valid_anchors_and_degenerate_batches():
    rng = np.random.default_rng(9)
    labels = np.array([3, 3, 7, 1, 1, 1])
    np.testing.assert_array_equal(ref.batch_hard_valid_anchors(labels),
                                  [True, True, False, True, True, True])
    x = rng.standard_normal((6, 3))
    losses, _ = nb.batch_hard_triplet(x, labels)
    assert losses[2] == 0.0
    compare("batch_hard_triplet", {}, [x, labels], np.float64, rng)
    for labels in (np.zeros(6, int), np.arange(6)):      # no negative / no positive
        losses, (g,) = nb.batch_hard_triplet(x, labels)
        assert not np.any(losses) and not np.any(g)
        assert not ref.batch_hard_valid_anchors(labels).any()
    # coincident positives: zero distance, finite gradient
    x2 = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.5, 0.1]])
    losses, grads = nb.batch_hard_triplet(x2, np.array([0, 0, 1, 1]), margin=1.0)
    _finite(losses, grads)
    compare("batch_hard_triplet", {}, [x2, np.array([0, 0, 1, 1])], np.float64, rng)


def test_single_sample_and_empty():
    rng = np.random.default_rng(10)
    for dtype in (np.float32, np.float64):
        one = _cast([rng.standard_normal((1, 3)), rng.standard_normal((1, 3))], dtype)
        l, (gi, gj) = nb.nt_xent(*one)
        np.testing.assert_allclose(l, 0.0, atol=1e-7)      # one pair: the positive is all
        _finite(l, (gi, gj))
        l, g = nb.info_nce(*one)
        np.testing.assert_allclose(l, 0.0, atol=1e-7)
        empty = np.zeros((0, 3), dtype)
        for fn, args in ((nb.info_nce, (empty, empty)), (nb.nt_xent, (empty, empty)),
                         (nb.triplet, (empty, empty, empty)),
                         (nb.supcon, (np.zeros((0, 2, 3), dtype),)),
                         (nb.batch_hard_triplet, (empty, np.zeros(0, int))),
                         (nb.arcface, (empty, np.zeros(0, int), np.ones((4, 3), dtype)))):
            losses, grads = fn(*args)
            assert losses.shape[0] == 0
            for g, x in zip(grads, [a for a in args if a.dtype.kind == "f"]):
                assert g.shape == x.shape and not np.any(g)


def test_nt_xent_is_supcon_with_two_views():
    rng = np.random.default_rng(11)
    zi, zj = rng.standard_normal((9, 5)), rng.standard_normal((9, 5))
    for rows in (None, 4):
        l1, (gi, gj) = nb.nt_xent(zi, zj, temperature=0.3, block_rows=rows)
        l2, (g,) = nb.supcon(np.stack([zi, zj], axis=1), None, temperature=0.3, block_rows=rows)
        assert_close(l1, l2, 1e-12)
        assert_close(gi, g[:, 0], 1e-12)
        assert_close(gj, g[:, 1], 1e-12)


@pytest.mark.parametrize("case", ["triplet", "info_nce", "info_nce_paired", "nt_xent",
                                  "arcface", "supcon", "batch_hard_triplet"])
def test_out_buffers_are_filled_and_returned(case):
    rng = np.random.default_rng(12)
    inputs, _ = CASES[case][1](rng, 8, 3)
    inputs = _cast(inputs, np.float32)
    params = CASES[case][3][0]
    _, grads = _call(nb, case, inputs, params)
    bufs = tuple(np.full_like(g, np.nan) for g in grads)
    _, got = _call(nb, case, inputs, params, out=bufs)
    assert all(a is b for a, b in zip(got, bufs))
    for a, b in zip(got, grads):
        np.testing.assert_array_equal(a, b)


def test_nan_propagates():
    rng = np.random.default_rng(13)
    a, p = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    a[1, 2] = np.nan
    for fn, args in ((nb.info_nce, (a, p)), (nb.nt_xent, (a, p)), (nb.triplet, (a, p, p)),
                     (nb.supcon, (np.stack([a, p], 1), None))):
        losses, _ = fn(*args)
        assert np.isnan(losses).any()


def test_inputs_are_not_modified():
    rng = np.random.default_rng(14)
    for case in CASES:
        inputs, _ = CASES[case][1](rng, 7, 3)
        inputs = _cast(inputs, np.float32)
        copies = [None if x is None else x.copy() for x in inputs]
        kw = {"block_rows": 2} if CASES[case][4] else {}
        _call(nb, case, inputs, CASES[case][3][0], **kw)
        for x, c in zip(inputs, copies):
            if x is not None:
                np.testing.assert_array_equal(x, c)


@pytest.mark.slow
def test_reference_runs_at_n_2048():
    rng = np.random.default_rng(15)
    n, d = 2048, 32
    a, p = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    l_ref, g_ref = ref.nt_xent(a, p)
    l_nb, g_nb = nb.nt_xent(a, p)     # 2N = 4,096 > 2,896 (float64 tile edge): 3 tiles
    assert_close(l_nb, l_ref, 1e-10)
    for x, y in zip(g_nb, g_ref):
        assert_close(x, y, 1e-10)


# ---------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from numbaloss._numba import pairwise as nb
    rng = np.random.default_rng(0)
    small = rng.standard_normal((64, 8)).astype(np.float32)
    nb.info_nce(small, small)                      # compile (or load) outside the window
    n, d = 16384, 64
    a = rng.standard_normal((n, d)).astype(np.float32)
    p = rng.standard_normal((n, d)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    losses, grads = nb.info_nce(a, p)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": after - before, "seconds": seconds,
                      "finite": bool(np.isfinite(losses).all())}))
""")


@pytest.mark.slow
def test_info_nce_peak_memory_is_blockwise():
    """In-batch InfoNCE at N = 16,384, D = 64, float32: the N×N logits would be 1 GiB;
    the row blocks keep the peak RSS growth far below it."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"]
    full_matrix_kib = 16384 * 16384 * 4 // 1024
    assert result["growth_kib"] < full_matrix_kib // 4, result

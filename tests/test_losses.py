"""Every registered loss × variant × backend × dtype × reduction against the float64
reference, and the reference's gradients and Hessians against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import numbaloss as nl
from numbaloss._validation import exact_sum
from cases import (BACKENDS, COMPILED, DTYPES, PAIRWISE, REDUCTIONS, SOFTMAX, all_cases, case_id,
                   grad_inputs, make_case, require, rows_of)

CASES = all_cases()


def tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_close(actual, expected, dtype, gemm=False):
    """``gemm``: the float32 kernel computes similarities with a float32 matrix
    product, whose rounding error scales with the largest entry, not each one."""
    for a, e in zip(as_tuple(actual), as_tuple(expected)):
        a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
        tol = tolerance(dtype)
        if gemm and dtype == np.float32:
            tol = dict(rtol=1e-4, atol=1e-5 * max(1.0, float(np.max(np.abs(e), initial=0.0))))
        np.testing.assert_allclose(a, e, **tol)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_backend_matches_reference(case, dtype, reduction, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(len(name) * 7 + len(params))
    for dense in ([False, True] if name in SOFTMAX else [False]):
        inputs, kwargs = make_case(name, params, rng, dtype=dtype, dense=dense)
        value, grad = loss.value_and_grad(*inputs, reduction=reduction, backend=backend, **kwargs)
        ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, backend="numpy", **kwargs)
        assert_close(value, ref_value, dtype, gemm=name in PAIRWISE)
        assert_close(grad, ref_grad, dtype, gemm=name in PAIRWISE)
        for g, i in zip(as_tuple(grad), grad_inputs(loss, inputs)):
            assert g.dtype == dtype and g.shape == inputs[i].shape
        if reduction == "none":
            for val in as_tuple(value):
                assert val.dtype == dtype
        else:
            assert isinstance(value, np.float64)
        # the three entry points agree
        assert_close(loss(*inputs, reduction=reduction, backend=backend, **kwargs), value, np.float64)
        assert_close(loss.grad(*inputs, reduction=reduction, backend=backend, **kwargs), grad, np.float64)


def numeric_gradient(f, x, h=1e-6):
    """Central finite differences of the scalar f at x (float64)."""
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    for k in range(flat.size):
        keep = flat[k]
        step = h * max(1.0, abs(keep))
        flat[k] = keep + step
        up = f(x)
        flat[k] = keep - step
        down = f(x)
        flat[k] = keep
        grad.reshape(-1)[k] = (up - down) / (2 * step)
    return grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradient_matches_finite_differences(case, reduction, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(3)
    inputs, kwargs = make_case(name, params, rng, shape=(4, 3))
    weights = {}
    if loss.has_sample_weight:
        weights["sample_weight"] = rng.uniform(0.5, 2.0, rows_of(inputs, name))
    grads = as_tuple(loss.grad(*inputs, reduction=reduction, backend=backend, **weights, **kwargs))
    for g, i in zip(grads, grad_inputs(loss, inputs)):
        x = inputs[i].copy()

        def value_at(point, i=i):
            args = list(inputs)
            args[i] = point
            return loss(*args, reduction=reduction, backend=backend, **weights, **kwargs)

        np.testing.assert_allclose(g, numeric_gradient(value_at, x), rtol=1e-5, atol=1e-7)


HESSIAN_CASES = [c for c in CASES if nl.LOSSES[c[0]].has_hessian]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HESSIAN_CASES, ids=case_id)
def test_grad_hess(case, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(5)
    inputs, kwargs = make_case(name, params, rng, shape=(4, 3))
    w = rng.uniform(0.5, 2.0, 4)
    grad, hess = loss.grad_hess(*inputs, sample_weight=w, backend=backend, **kwargs)
    # the gradient of grad_hess is the per-element gradient of the weighted sum
    np.testing.assert_allclose(grad, loss.grad(*inputs, reduction="sum", sample_weight=w, backend=backend,
                                               **kwargs), rtol=1e-12, atol=1e-14)
    # its Hessian is the derivative of that gradient (diagonal for softmax losses)
    z = inputs[1].copy()
    numeric = np.zeros_like(z)
    for k in range(z.size):
        keep = z.flat[k]
        step = 1e-6 * max(1.0, abs(keep))
        z.flat[k] = keep + step
        up = loss.grad(inputs[0], z, reduction="sum", sample_weight=w, backend=backend, **kwargs).flat[k]
        z.flat[k] = keep - step
        down = loss.grad(inputs[0], z, reduction="sum", sample_weight=w, backend=backend, **kwargs).flat[k]
        z.flat[k] = keep
        numeric.flat[k] = (up - down) / (2 * step)
    np.testing.assert_allclose(hess, numeric, rtol=1e-5, atol=1e-6)
    ref = loss.grad_hess(*inputs, sample_weight=w, backend="numpy", **kwargs)
    assert_close((grad, hess), ref, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [c for c in CASES if nl.LOSSES[c[0]].has_sample_weight], ids=case_id)
def test_sample_weight_definition(case, backend):
    """weighted sum = Σᵢ wᵢ Σⱼ lᵢⱼ, weighted mean = that / (m Σᵢ wᵢ); "none" returns wᵢ lᵢⱼ."""
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(11)
    inputs, kwargs = make_case(name, params, rng, shape=(6, 4))
    w = rng.uniform(0.0, 3.0, 6)
    plain = loss(*inputs, reduction="none", backend=backend, **kwargs)
    weighted = loss(*inputs, reduction="none", sample_weight=w, backend=backend, **kwargs)
    w_b = w.reshape((6,) + (1,) * (plain.ndim - 1))
    np.testing.assert_allclose(weighted, w_b * plain, rtol=1e-12)
    total = loss(*inputs, reduction="sum", sample_weight=w, backend=backend, **kwargs)
    np.testing.assert_allclose(total, np.sum(w_b * plain), rtol=1e-12)
    if name in SOFTMAX and ("class_weight" in kwargs or "ignore_index" in kwargs):
        return  # mean divides by Σ wᵢ c_{yᵢ}: checked against PyTorch's numbers in test_peers
    m = plain.size // 6
    mean = loss(*inputs, sample_weight=w, backend=backend, **kwargs)
    np.testing.assert_allclose(mean, np.sum(w_b * plain) / (m * w.sum()), rtol=1e-12)
    ones = loss(*inputs, sample_weight=np.ones(6), backend=backend, **kwargs)
    np.testing.assert_allclose(ones, loss(*inputs, backend=backend, **kwargs), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_total_weight_gives_nan_mean(backend):
    y, z = np.zeros((3, 2)), np.ones((3, 2))
    value, grad = nl.mse.value_and_grad(y, z, sample_weight=np.zeros(3), backend=backend)
    assert np.isnan(value) and np.all(np.isnan(grad))
    assert nl.mse(y, z, sample_weight=np.zeros(3), reduction="sum", backend=backend) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_beyond_float64_range_is_inf_not_an_error(backend):
    """Finite losses whose sum overflows float64 give inf (the reference's exact sum
    used to raise OverflowError); a sum that comes back into range stays exact."""
    y, z = np.zeros(2), np.array([-1.2e154, 1.3e154])
    assert nl.mse(y, z, reduction="sum", backend=backend) == np.inf
    assert nl.mse(y, z, backend=backend) == np.inf
    values = np.array([1e308, 1e308, -1e308])
    assert exact_sum(values) == 1e308
    assert exact_sum(np.array([1e308, 1e308])) == np.inf
    assert exact_sum(np.array([-1e308, -1e308])) == -np.inf


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parallel_path_matches_reference(case, backend):
    """Inputs above the parallel threshold, with weights: chunk and row boundaries."""
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(17)
    shape = (20_011, 7) if name in SOFTMAX else (30_011, 7)
    if name in PAIRWISE:
        shape = (1_100, 24)  # several row blocks; the reference is O(N²)
    inputs, kwargs = make_case(name, params, rng, shape=shape, dtype=np.float32)
    weights = {"sample_weight": rng.uniform(0, 2, shape[0])} if loss.has_sample_weight else {}
    value, grad = loss.value_and_grad(*inputs, backend=backend, **weights, **kwargs)
    ref_value, ref_grad = loss.value_and_grad(*inputs, backend="numpy", **weights, **kwargs)
    if name in PAIRWISE:
        assert_close((value,) + as_tuple(grad), (ref_value,) + as_tuple(ref_grad), np.float32, gemm=True)
        return
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(as_tuple(grad), as_tuple(ref_grad)):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-12)


def _huge_embedding_cases(rng, dtype):
    """(name, inputs, kwargs, indices of the embedding inputs) for the losses whose
    value does not change when a row is scaled (cosine similarity), and batch-hard."""
    def emb(*shape):
        return rng.standard_normal(shape)
    labels = np.array([0, 1, 0, 1, 2, 2])
    return [
        ("nt_xent", [emb(6, 4), emb(6, 4)], {}, (0, 1)),
        ("supcon", [emb(6, 4), labels], {}, (0,)),
        ("supcon", [emb(6, 2, 4), labels], {}, (0,)),
        ("info_nce", [emb(6, 4), emb(6, 4)], {}, (0, 1)),
        ("info_nce", [emb(6, 4), emb(6, 4), emb(9, 4)], {}, (0, 1, 2)),
        ("info_nce", [emb(6, 4), emb(6, 4), emb(6, 3, 4)], {}, (0, 1, 2)),
        ("arcface", [emb(6, 4), np.array([0, 1, 2, 3, 4, 0]), emb(5, 4)], {}, (0, 2)),
        ("cosface", [emb(6, 4), np.array([0, 1, 2, 3, 4, 0]), emb(5, 4)], {}, (0, 2)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embeddings_of_huge_norm(dtype, backend):
    """Rows whose squares overflow the dtype (≥ 2^70 in float32, 2^520 in float64):
    cosine similarity does not see a row's scale, so the losses equal those of the
    rows scaled back and the gradients are 2^−k times theirs (powers of two scale
    exactly); batch-hard distances scale with the rows."""
    rng = np.random.default_rng(7)
    k = 70 if dtype == np.float32 else 520
    for name, inputs, kwargs, embeddings in _huge_embedding_cases(rng, dtype):
        loss = nl.LOSSES[name]
        plain = [np.asarray(a, dtype) if i in embeddings else a for i, a in enumerate(inputs)]
        huge = [a.copy() for a in plain]
        for i in embeddings:
            flat = huge[i].reshape(-1, huge[i].shape[-1])
            flat[1::2] = np.ldexp(flat[1::2], k)   # every other row
        value, grads = loss.value_and_grad(*plain, backend=backend, reduction="sum", **kwargs)
        big_value, big_grads = loss.value_and_grad(*huge, backend=backend, reduction="sum", **kwargs)
        np.testing.assert_allclose(big_value, value, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                   err_msg=f"{name} on {backend}")
        for i, g, big_g in zip(embeddings, as_tuple(grads), as_tuple(big_grads)):
            expected = g.astype(np.float64).reshape(-1, g.shape[-1])
            expected[1::2] = np.ldexp(expected[1::2], -k)
            got = big_g.astype(np.float64).reshape(expected.shape)
            assert np.all(np.isfinite(got)), f"{name} on {backend}: input {i}"
            # (per row: the rows' gradients differ by 2^k in size)
            row_size = np.abs(expected).max(axis=1, keepdims=True)
            tol = 1e-4 if dtype == np.float32 else 1e-12
            assert np.all(np.abs(got - expected) <= tol * row_size), f"{name} input {i} on {backend}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_hard_with_huge_distances(dtype, squared, backend):
    """loss(2^k·X, margin·2^(pk)) = 2^(pk)·loss(X, margin) (p = 2 when squared): the
    same pairs are selected, though squared distances overflow the dtype."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5)).astype(dtype)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    k = (40 if squared else 70) if dtype == np.float32 else (300 if squared else 520)
    p = 2 if squared else 1
    loss = nl.batch_hard_triplet
    value, grad = loss.value_and_grad(x, labels, margin=0.5, squared=squared, backend=backend,
                                      reduction="none")
    big_value, big_grad = loss.value_and_grad(np.ldexp(x, k), labels, margin=float(np.ldexp(0.5, p * k)),
                                              squared=squared, backend=backend, reduction="none")
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.ldexp(big_value.astype(np.float64), -p * k), value, rtol=rtol)
    np.testing.assert_allclose(np.ldexp(big_grad.astype(np.float64), -(p - 1) * k), grad, rtol=rtol,
                               atol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_dot_products_beyond_float32(backend):
    """Dot-product similarities (info_nce "dot", supcon without normalisation) of
    float32 rows whose products exceed float32 are computed in float64, as the
    reference computes them; the results stay float32."""
    rng = np.random.default_rng(5)
    a, p = rng.standard_normal((2, 4, 3)).astype(np.float32)
    p[1] = -3e38
    for loss, inputs, kwargs in [(nl.info_nce, (a, p), dict(similarity="dot", temperature=0.5)),
                                 (nl.supcon, (np.concatenate([a, p]), np.array([0, 1, 2, 3] * 2)),
                                  dict(normalize=False, temperature=0.5))]:
        value, grad = loss.value_and_grad(*inputs, backend=backend, reduction="sum", **kwargs)
        ref_value, ref_grad = loss.value_and_grad(*inputs, backend="numpy", reduction="sum", **kwargs)
        np.testing.assert_allclose(value, ref_value, rtol=1e-6, atol=1e-6)
        for g, r in zip(as_tuple(grad), as_tuple(ref_grad)):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_triplet_with_huge_distances(dtype, backend):
    """loss(2^k·(a, p, n), margin·2^k) = 2^k·loss(a, p, n, margin) with p = 2, where
    the squares of the differences overflow float64; the gradients are equal."""
    rng = np.random.default_rng(4)
    a, p, n = rng.standard_normal((3, 6, 5)).astype(dtype)
    k = 100 if dtype == np.float32 else 520
    big = [np.ldexp(x, k) for x in (a, p, n)]
    value, grads = nl.triplet.value_and_grad(a, p, n, margin=0.5, eps=0.0, backend=backend, reduction="none")
    big_value, big_grads = nl.triplet.value_and_grad(*big, margin=float(np.ldexp(0.5, k)), eps=0.0,
                                                     backend=backend, reduction="none")
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.ldexp(big_value.astype(np.float64), -k), value, rtol=rtol)
    for g, big_g in zip(grads, big_grads):
        np.testing.assert_allclose(big_g, g, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ratio", [1e7, 1e30])
def test_supcon_without_normalisation_and_a_dominant_row(ratio, backend):
    """A row whose norm dwarfs the rest of its class: its positive logits and the
    positives' share of its gradient are summed directly, not as its class sum less
    itself (which cancels the other rows away)."""
    rng = np.random.default_rng(6)
    features = rng.standard_normal((8, 3))
    features[5] *= ratio
    labels = np.array([0, 1, 2, 3] * 2)
    value, grad = nl.supcon.value_and_grad(features, labels, normalize=False, temperature=0.5,
                                           backend=backend, reduction="none")
    ref_value, ref_grad = nl.supcon.value_and_grad(features, labels, normalize=False, temperature=0.5,
                                                   backend="numpy", reduction="none")
    np.testing.assert_allclose(value, ref_value, rtol=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-9 * np.abs(ref_grad).max())

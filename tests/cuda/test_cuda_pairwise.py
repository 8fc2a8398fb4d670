"""The embedding losses on the cuda backend against the float64 reference: every
variant × dtype, with row blocks of 3 anchors, 32 threads per block (4 × 4 product
tiles) and at most 2 blocks per launch, so that several row blocks, partly filled
tiles, grid-stride loops and block reductions over rows longer than one thread's
share are all exercised on tiny inputs; then reductions, entry points, edge cases and
device arrays through the public API."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import numbaloss as nl
from cases import DTYPES, all_cases, case_id, make_case, rows_of
from test_cuda_backend import device_pointer

PAIRWISE_CASES = [c for c in all_cases() if nl.LOSSES[c[0]].family == "pairwise"]
#: 6 anchors of dimension 5: two row blocks of 3, two 4-wide tiles along D
SHAPE = (6, 5)


def tolerance(dtype):
    return dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def assert_close(actual, expected, dtype):
    for a, e in zip(as_tuple(actual), as_tuple(expected)):
        np.testing.assert_allclose(host(a).astype(np.float64), np.asarray(e, dtype=np.float64),
                                   **tolerance(dtype))


def is_device(x):
    return bool(getattr(type(x), "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


@pytest.fixture(autouse=True)
def row_blocks_of_three(monkeypatch, _small_launches):
    from numbaloss._cuda import pairwise

    monkeypatch.setattr(pairwise, "BLOCK_ROWS", 3)
    assert pairwise.tile_edge() == 4
    return pairwise


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PAIRWISE_CASES, ids=case_id)
def test_matches_reference(case, dtype):
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(len(name) * 7 + len(params))
    inputs, kwargs = make_case(name, params, rng, shape=SHAPE, dtype=dtype)
    value, grad = loss.value_and_grad(*inputs, backend="cuda", **kwargs)
    ref_value, ref_grad = loss.value_and_grad(*inputs, backend="numpy", **kwargs)
    assert isinstance(value, np.float64)
    assert_close(value, ref_value, dtype)
    assert_close(grad, ref_grad, dtype)
    for g, r in zip(grad, ref_grad):
        assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == r.shape


@pytest.mark.parametrize("case", [("info_nce", {"negatives": "per_anchor"}), ("batch_hard_triplet", {})],
                         ids=case_id)
def test_reductions_weights_and_entry_points(case):
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(3)
    inputs, kwargs = make_case(name, params, rng, shape=SHAPE, dtype=np.float32)
    if loss.has_sample_weight:
        kwargs["sample_weight"] = rng.uniform(0.2, 2.0, rows_of(inputs, name))
    for reduction in ("none", "sum"):
        value, grad = loss.value_and_grad(*inputs, reduction=reduction, backend="cuda", **kwargs)
        ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, backend="numpy", **kwargs)
        assert_close(value, ref_value, np.float32)
        assert_close(grad, ref_grad, np.float32)
    assert_close(loss(*inputs, backend="cuda", **kwargs), loss(*inputs, backend="numpy", **kwargs), np.float32)
    assert_close(loss.grad(*inputs, backend="cuda", **kwargs), loss.grad(*inputs, backend="numpy", **kwargs),
                 np.float32)


def test_one_row_block_and_full_tiles(row_blocks_of_three, monkeypatch):
    """Rows per block from BLOCK_BYTES (all 8 anchors in one block), D a multiple of
    the tile edge."""
    monkeypatch.setattr(row_blocks_of_three, "BLOCK_ROWS", None)
    rng = np.random.default_rng(4)
    a, p = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    assert_close(nl.info_nce.value_and_grad(a, p, backend="cuda"),
                 nl.info_nce.value_and_grad(a, p, backend="numpy"), np.float64)


def test_zero_rows_and_no_positive():
    rng = np.random.default_rng(5)
    # a zero embedding: the 1e-12 clamp of the cosine normalisation
    z_i, z_j = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    z_i[1] = 0.0
    assert_close(nl.nt_xent.value_and_grad(z_i, z_j, backend="cuda"),
                 nl.nt_xent.value_and_grad(z_i, z_j, backend="numpy"), np.float64)
    # SupCon without any positive: loss and gradient 0; batch-hard without a negative: 0
    features = rng.standard_normal((4, 1, 3))
    value, grad = nl.supcon.value_and_grad(features, np.arange(4), backend="cuda")
    assert value == 0.0 and not grad.any()
    value, grad = nl.batch_hard_triplet.value_and_grad(features[:, 0], np.zeros(4, np.int64), backend="cuda")
    assert value == 0.0 and not grad.any()


def test_empty_batch():
    e = np.zeros((0, 3))
    assert np.isnan(nl.info_nce(e, e, backend="cuda"))
    value, grads = nl.nt_xent.value_and_grad(e, e, reduction="sum", backend="cuda")
    assert value == 0.0 and all(g.shape == (0, 3) for g in grads)


# ------------------------------------------------------------------ device arrays
@pytest.mark.parametrize("case", [("info_nce", {"negatives": "shared"}), ("arcface", {}), ("triplet", {})],
                         ids=case_id)
def test_device_arrays_in_device_arrays_out(case):
    name, params = case
    loss = nl.LOSSES[name]
    inputs, kwargs = make_case(name, params, np.random.default_rng(6), shape=SHAPE, dtype=np.float32)
    device_inputs = [cuda.to_device(a) for a in inputs]
    for reduction in ("mean", "none"):
        value, grad = loss.value_and_grad(*device_inputs, reduction=reduction, **kwargs)  # auto: cuda
        ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, backend="numpy", **kwargs)
        assert all(is_device(g) for g in grad)
        assert is_device(value) if reduction == "none" else isinstance(value, np.float64)
        assert_close(value, ref_value, np.float32)
        assert_close(grad, ref_grad, np.float32)


def test_device_out_buffer_receives_the_gradient():
    rng = np.random.default_rng(7)
    z_i, z_j = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    outs = (cuda.device_array(SHAPE, np.float32), cuda.device_array(SHAPE, np.float32))
    addresses = [device_pointer(o) for o in outs]
    _, grads = nl.nt_xent.value_and_grad(cuda.to_device(z_i), cuda.to_device(z_j), out=outs)
    assert grads[0] is outs[0] and grads[1] is outs[1]
    assert [device_pointer(g) for g in grads] == addresses
    assert_close(grads, nl.nt_xent.grad(z_i, z_j, backend="numpy"), np.float32)


def test_embeddings_of_huge_norm():
    """float64 rows whose squares overflow (2^520): the cosine losses, batch-hard and
    triplet give the reference's results (norms as LAPACK's nrm2, distances scaled)."""
    rng = np.random.default_rng(8)
    labels = np.array([0, 1, 0, 1, 2, 2])
    x = rng.standard_normal((6, 4))
    huge = x.copy()
    huge[1::2] = np.ldexp(huge[1::2], 520)
    w = rng.standard_normal((3, 4))
    calls = [(nl.nt_xent, (huge, rng.standard_normal((6, 4))), {}),
             (nl.supcon, (huge, labels), {}),
             (nl.info_nce, (huge, rng.standard_normal((6, 4))), {}),
             (nl.arcface, (huge, labels, w), {}),
             (nl.batch_hard_triplet, (huge, labels), {}),
             (nl.batch_hard_triplet, (huge, labels), {"squared": True}),
             (nl.triplet, (huge, x, rng.standard_normal((6, 4))), {})]
    for loss, inputs, kwargs in calls:
        value, grads = loss.value_and_grad(*inputs, backend="cuda", reduction="none", **kwargs)
        ref_value, ref_grads = loss.value_and_grad(*inputs, backend="numpy", reduction="none", **kwargs)
        np.testing.assert_allclose(host(value), ref_value, rtol=1e-9, err_msg=loss.name)
        for g, r in zip(as_tuple(grads), as_tuple(ref_grads)):
            # (rows differ by 2^520 in size: compare each row to its own size)
            size = np.abs(r).max(axis=-1, keepdims=True)
            assert np.all(np.abs(host(g) - r) <= 1e-9 * size + 1e-300), loss.name

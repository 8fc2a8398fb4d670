"""The cuda backend against the float64 reference: every elementwise and softmax loss
× variant × dtype × reduction, grad_hess, domain errors, empty input, several blocks,
and device arrays used in place (backend level, and through the public API).  The
embedding losses are in test_cuda_pairwise.py."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import numbaloss as nl
from cases import DTYPES, REDUCTIONS, SOFTMAX, all_cases, case_id, make_case, rows_of

#: the elementwise and softmax families (the pairwise ones: test_cuda_pairwise.py)
CASES = [c for c in all_cases() if nl.LOSSES[c[0]].family in ("pointwise", "two_term", "softmax")]
HESSIAN_CASES = [c for c in CASES if nl.LOSSES[c[0]].has_hessian]


def tolerance(dtype):
    # float64: libdevice's exp/log on a GPU may differ from the CPU's libm by an ulp
    return dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def host(x):
    """NumPy copy of a result (device arrays are copied back)."""
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return np.asarray(x)


def assert_close(actual, expected, dtype):
    for a, e in zip(as_tuple(actual), as_tuple(expected)):
        np.testing.assert_allclose(host(a).astype(np.float64), np.asarray(e, dtype=np.float64),
                                   **tolerance(dtype))


def shape_for(name):
    # more than 32 elements / rows: two blocks of 32 threads
    return (40, 3) if name in SOFTMAX else (9, 5)


def same_memory(a, b):
    """Whether two device arrays view the same memory."""
    if hasattr(a, "__cuda_array_interface__"):
        return a.__cuda_array_interface__["data"][0] == b.__cuda_array_interface__["data"][0]
    return np.shares_memory(a._ary, b._ary)  # the simulator's arrays wrap NumPy arrays


def device_pointer(x):
    """The device address of an array's data (a simulator array: its host buffer's)."""
    if hasattr(x, "__cuda_array_interface__"):
        return x.__cuda_array_interface__["data"][0]
    return x._ary.__array_interface__["data"][0]


def is_device(x):
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(type(x), "__cuda_ndarray__", False))


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, dtype, reduction):
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(len(name) * 13 + len(params))
    for dense in ([False, True] if name in SOFTMAX else [False]):
        inputs, kwargs = make_case(name, params, rng, shape=shape_for(name), dtype=dtype, dense=dense)
        if loss.has_sample_weight:
            kwargs["sample_weight"] = rng.uniform(0.2, 2.0, rows_of(inputs, name))
        value, grad = loss.value_and_grad(*inputs, reduction=reduction, backend="cuda", **kwargs)
        ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, backend="numpy", **kwargs)
        assert_close(value, ref_value, dtype)
        assert_close(grad, ref_grad, dtype)
        for g, i in zip(as_tuple(grad), loss.differentiable):
            assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == inputs[i].shape
        if reduction == "none":
            for val in as_tuple(value):
                assert isinstance(val, np.ndarray) and val.dtype == dtype
        else:
            assert isinstance(value, np.float64)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_entry_points_agree(case):
    name, params = case
    loss = nl.LOSSES[name]
    inputs, kwargs = make_case(name, params, np.random.default_rng(1), shape=shape_for(name))
    value, grad = loss.value_and_grad(*inputs, backend="cuda", **kwargs)
    assert_close(loss(*inputs, backend="cuda", **kwargs), value, np.float64)
    assert_close(loss.grad(*inputs, backend="cuda", **kwargs), grad, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", HESSIAN_CASES, ids=case_id)
def test_grad_hess_matches_reference(case, dtype):
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(5)
    for dense in ([False, True] if name in SOFTMAX else [False]):
        inputs, kwargs = make_case(name, params, rng, shape=shape_for(name), dtype=dtype, dense=dense)
        w = rng.uniform(0.5, 2.0, rows_of(inputs, name))
        grad, hess = loss.grad_hess(*inputs, sample_weight=w, backend="cuda", **kwargs)
        ref = loss.grad_hess(*inputs, sample_weight=w, backend="numpy", **kwargs)
        assert_close((grad, hess), ref, dtype)
        assert grad.dtype == hess.dtype == dtype


# ------------------------------------------------------------------ launches and reductions
@pytest.mark.parametrize("name, params, shape", [
    ("mse", {}, (250, 8)),
    ("focal", {"from_logits": True, "gamma": 0.5}, (125, 16)),
    ("categorical_cross_entropy", {"from_logits": True, "label_smoothing": 0.1}, (700, 3)),
])
def test_many_elements_per_thread(name, params, shape, cuda_backend):
    """2000 elements on 2 blocks of 32 threads: ~31 grid-stride iterations per thread,
    two block partials, weights over rows of several elements."""
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(7)
    inputs, kwargs = make_case(name, params, rng, shape=shape)
    w = rng.uniform(0.0, 2.0, shape[0])
    for reduction in ("mean", "sum"):
        value, grad = loss.value_and_grad(*inputs, reduction=reduction, sample_weight=w, backend="cuda", **kwargs)
        ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, sample_weight=w,
                                                  backend="numpy", **kwargs)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert cuda_backend.launch_config(2000) == (2, 32)


def test_launch_config(cuda_backend, monkeypatch):
    assert cuda_backend.launch_config(1) == (1, 32)
    assert cuda_backend.launch_config(33) == (2, 32)
    monkeypatch.setattr(cuda_backend, "MAX_BLOCKS", None)
    blocks, tpb = cuda_backend.launch_config(10**9)
    assert tpb == 32 and blocks >= 64  # 2048 // 32 blocks per multiprocessor
    monkeypatch.setattr(cuda_backend, "THREADS_PER_BLOCK", 48)
    with pytest.raises(ValueError, match="power of two"):
        nl.mse(np.zeros(3), np.ones(3), backend="cuda")


def test_flags_from_any_block():
    """A bad value in the last element (second block) is reported."""
    y = np.full(60, 0.5)
    z = np.full(60, 0.5)
    z[-1] = 1.5
    with pytest.raises(ValueError, match="y_pred must lie in"):
        nl.bce(y, z, backend="cuda")
    y[-1], z[-1] = 2.0, 0.5
    with pytest.raises(ValueError, match="y_true must lie in"):
        nl.bce.grad(y, z, backend="cuda")
    labels = np.zeros(40, dtype=np.int64)
    labels[-1] = 3
    with pytest.raises(ValueError, match="labels must lie in"):
        nl.cce(labels, np.full((40, 3), 1 / 3), backend="cuda")
    with pytest.raises(ValueError, match="labels must lie in"):
        nl.cce(labels, np.zeros((40, 3)), from_logits=True, class_weight=np.ones(3), backend="cuda")
    dense = np.full((40, 3), 1 / 3)
    dense[-1, 0] = -0.5
    with pytest.raises(ValueError, match="y_true must lie in"):
        nl.categorical_focal(dense, np.full((40, 3), 1 / 3), backend="cuda")


def test_nan_propagates():
    y, z = np.zeros(40), np.ones(40)
    z[37] = np.nan
    value, grad = nl.mse.value_and_grad(y, z, backend="cuda")
    assert np.isnan(value) and np.isnan(grad[37]) and np.isfinite(np.delete(grad, 37)).all()


def test_extreme_logits_stay_finite():
    z = np.array([-1e30, -50.0, 0.0, 50.0, 1e30] * 8)
    y = (np.arange(40) % 2).astype(np.float64)
    for loss, kw in ((nl.bce, {}), (nl.focal, {"gamma": 0.5})):
        value, grad = loss.value_and_grad(y, z, from_logits=True, backend="cuda", **kw)
        ref_value, ref_grad = loss.value_and_grad(y, z, from_logits=True, backend="numpy", **kw)
        assert np.isfinite(value) and np.isfinite(grad).all()
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-300)


def test_empty_input():
    e = np.zeros((0, 3))
    assert np.isnan(nl.mse(e, e, backend="cuda"))
    assert nl.mse(e, e, reduction="sum", backend="cuda") == 0.0
    assert nl.mse(e, e, reduction="none", backend="cuda").shape == (0, 3)
    assert nl.mse.grad(e, e, backend="cuda").shape == (0, 3)
    assert np.isnan(nl.cce(np.zeros(0, dtype=np.int64), e, backend="cuda"))
    assert nl.cce(np.zeros(0, dtype=np.int64), e, reduction="none", backend="cuda").shape == (0,)


def test_cuda_has_every_family_of_the_numba_backend():
    numba_backend = nl._config.load_backend("numba")
    cuda_backend = nl._config.load_backend("cuda")
    for loop in ("elementwise", "softmax_rows", "pairwise"):
        assert hasattr(numba_backend, loop) and hasattr(cuda_backend, loop)
    assert {loss.family for loss in nl.LOSSES.values()} <= set(cuda_backend.FAMILIES)


def test_check_available_names_the_reason(cuda_backend, monkeypatch):
    monkeypatch.setattr(cuda_backend.cuda, "is_available", lambda: False)
    with pytest.raises(nl.BackendUnavailableError, match="backend 'cuda' is not available: numba.cuda.is_available"):
        cuda_backend.check_available()


# ------------------------------------------------------------------ device arrays, backend level
BOUNDS_ANY = (-np.inf, np.inf, -np.inf, np.inf)


def test_backend_elementwise_device_arrays_in_place(cuda_backend):
    rng = np.random.default_rng(3)
    n, m = 120, 4
    y = (rng.random(n) < 0.4).astype(np.float32)
    z = (3 * rng.standard_normal(n)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, n // m)
    params, scale = (2.0, 0.1), 1.0 / n
    ref = nl._config.load_backend("numpy")
    expected = {}
    for mode in ("sum", "grad", "none", "grad_hess"):
        g, v, h = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
        total, flags = ref.elementwise("bce_logits", params, BOUNDS_ANY, y, z, w, m, mode, scale,
                                       v if mode == "none" else None, g, h if mode == "grad_hess" else None)
        expected[mode] = total, g, v, h
    y_d, z_d, w_d = cuda.to_device(y), cuda.to_device(z), cuda.to_device(w)
    for mode in ("sum", "grad", "none", "grad_hess"):
        g_d = cuda.device_array(n, np.float32)
        v_d = cuda.device_array(n, np.float32) if mode == "none" else None
        h_d = cuda.device_array(n, np.float32) if mode == "grad_hess" else None
        total, flags = _without_copies(cuda_backend, lambda: cuda_backend.elementwise(
            "bce_logits", params, BOUNDS_ANY, y_d, z_d, w_d, m, mode, scale, v_d, g_d, h_d))
        e_total, e_g, e_v, e_h = expected[mode]
        assert flags == 0
        np.testing.assert_allclose(total, e_total, rtol=1e-12)
        np.testing.assert_allclose(g_d.copy_to_host(), e_g, rtol=2e-6, atol=1e-9)
        if v_d is not None:
            np.testing.assert_allclose(v_d.copy_to_host(), e_v, rtol=2e-6, atol=1e-9)
        if h_d is not None:
            np.testing.assert_allclose(h_d.copy_to_host(), e_h, rtol=2e-6, atol=1e-9)


def _without_copies(module, call):
    """Run ``call`` with every copy of an input or output forbidden: no input reaches
    the backend as a host array, no device copy kernel runs, no output is a host
    temporary (small constant parameters, the class weights, may be copied)."""
    saved = module._device_input, module._copy_flat, module._Output.finish

    def forbidden(*args, **kwargs):
        raise AssertionError("an input or output was copied")

    def device_input(a):
        if a is not None and not module.is_device_array(a):
            forbidden()
        return saved[0](a)

    def finish(self):
        if self.host is not None:
            forbidden()

    module._device_input, module._copy_flat, module._Output.finish = device_input, forbidden, finish
    try:
        return call()
    finally:
        module._device_input, module._copy_flat, module._Output.finish = saved


def test_backend_softmax_device_arrays_in_place(cuda_backend):
    rng = np.random.default_rng(4)
    n, k = 50, 4
    labels = rng.integers(0, k, n)
    labels[::7] = 1
    z = (2 * rng.standard_normal((n, k))).astype(np.float64)
    w = rng.uniform(0.5, 2.0, n)
    cw = rng.uniform(0.5, 2.0, k)
    params = (0.1, float(cw.sum()), 1e-7)
    ref = nl._config.load_backend("numpy")
    g = np.empty((n, k))
    e_total, _ = ref.softmax_rows("cce_logits_labels", params, labels, z, w, cw, 1, "sum", 0.5, None, g, None)
    y_d, z_d, w_d, cw_d = (cuda.to_device(a) for a in (labels, z, w, cw))
    g_d = cuda.device_array((n, k), np.float64)
    total, flags = _without_copies(cuda_backend, lambda: cuda_backend.softmax_rows(
        "cce_logits_labels", params, y_d, z_d, w_d, cw_d, 1, "sum", 0.5, None, g_d, None))
    assert flags == 0
    np.testing.assert_allclose(total, e_total, rtol=1e-12)
    np.testing.assert_allclose(g_d.copy_to_host(), g, rtol=1e-10, atol=1e-14)
    # the label divisor of the weighted mean, on the device
    denominator, bad = cuda_backend.label_denominator(y_d, w_d, cw, 1, k)
    keep = labels != 1
    np.testing.assert_allclose(denominator, np.sum(cw[labels[keep]] * w[keep]), rtol=1e-12)
    assert not bad
    assert cuda_backend.label_denominator(cuda.to_device(np.array([0, 5])), None, cw, None, k)[1]


def test_device_helpers(cuda_backend):
    a = np.arange(60, dtype=np.float64).reshape(3, 4, 5)
    d = cuda.to_device(a)
    for view, expected in ((d[:, ::2, 1:], a[:, ::2, 1:]), (d[::-1], a[::-1]), (d[1], a[1]), (d[:, 2, ::3], a[:, 2, ::3])):
        out = cuda_backend.flat(view, np.float32)
        assert out.dtype == np.float32 and out.shape == (expected.size,)
        np.testing.assert_array_equal(out.copy_to_host(), expected.reshape(-1).astype(np.float32))
    four = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    np.testing.assert_array_equal(cuda_backend.to_host(cuda.to_device(four)[:, ::2, :, 1:]), four[:, ::2, :, 1:])
    assert same_memory(cuda_backend.contiguous(d), d)
    np.testing.assert_allclose(cuda_backend.total(cuda.to_device(np.linspace(0, 1, 101))), 50.5)
    target = cuda.device_array(10, np.float16)
    cuda_backend.copy_into(target, cuda.to_device(np.linspace(0, 1, 10, dtype=np.float32)))
    np.testing.assert_array_equal(target.copy_to_host(), np.linspace(0, 1, 10, dtype=np.float32).astype(np.float16))
    with pytest.raises(ValueError, match="must have shape"):
        cuda_backend.out_buffer("out", cuda.device_array(4), (5,), np.float64)
    with pytest.raises(ValueError, match="must have dtype"):
        cuda_backend.out_buffer("out", cuda.device_array(5, np.float32), (5,), np.float64)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda_backend.out_buffer("out", cuda.device_array(10)[::2], (5,), np.float64)


# ------------------------------------------------------------------ device arrays, public API
DEVICE_CASES = [
    ("mse", {}), ("binary_cross_entropy", {"from_logits": True, "pos_weight": 2.0}), ("huber", {"delta": 0.3}),
    ("focal", {"from_logits": True}), ("cycle_consistency", {"weight": 2.0}), ("gan_generator", {}),
    ("categorical_cross_entropy", {"from_logits": True, "class_weight": "random", "ignore_index": 1}),
    ("categorical_focal", {"alpha": "random"}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", DEVICE_CASES, ids=case_id)
def test_public_api_device_arrays(case, reduction):
    """Device inputs (and sample weights) stay on the device; results come back as
    device arrays, the reduced value as a float64."""
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(9)
    inputs, kwargs = make_case(name, params, rng, shape=shape_for(name), dtype=np.float32)
    if loss.has_sample_weight:
        kwargs["sample_weight"] = rng.uniform(0.5, 2.0, rows_of(inputs, name))
    ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, backend="numpy", **kwargs)
    device_kwargs = dict(kwargs)
    if "sample_weight" in kwargs:
        device_kwargs["sample_weight"] = cuda.to_device(kwargs["sample_weight"])
    device_inputs = [cuda.to_device(a) for a in inputs]
    value, grad = loss.value_and_grad(*device_inputs, reduction=reduction, **device_kwargs)  # auto: cuda
    assert all(is_device(g) for g in as_tuple(grad))
    if reduction == "none":
        assert all(is_device(val) for val in as_tuple(value))
    else:
        assert isinstance(value, np.float64)
    assert_close(value, ref_value, np.float32)
    assert_close(grad, ref_grad, np.float32)
    if loss.has_hessian and reduction == "none":
        gh = loss.grad_hess(*device_inputs, backend="cuda", **device_kwargs)
        assert all(is_device(a) for a in gh)
        assert_close(gh, loss.grad_hess(*inputs, backend="numpy", **kwargs), np.float32)


def test_out_device_buffer_is_written_in_place_without_copies(cuda_backend):
    rng = np.random.default_rng(2)
    y, z = rng.standard_normal((9, 5)).astype(np.float32), rng.standard_normal((9, 5)).astype(np.float32)
    y_d, z_d = cuda.to_device(y), cuda.to_device(z)
    out = cuda.device_array((9, 5), np.float32)
    address = device_pointer(out)
    value, grad = _without_copies(cuda_backend, lambda: nl.mse.value_and_grad(y_d, z_d, out=out))
    assert grad is out and device_pointer(grad) == address
    np.testing.assert_allclose(out.copy_to_host(), nl.mse.grad(y, z, backend="numpy"), rtol=1e-6)
    np.testing.assert_allclose(value, nl.mse(y, z, backend="numpy"), rtol=1e-12)
    labels = rng.integers(0, 5, 9)
    labels_d = cuda.to_device(labels)
    out = cuda.device_array((9, 5), np.float32)
    address = device_pointer(out)
    grad = _without_copies(cuda_backend, lambda: nl.cce.grad(labels_d, z_d, from_logits=True,
                                                              out=out, backend="cuda"))
    assert grad is out and device_pointer(grad) == address
    np.testing.assert_allclose(out.copy_to_host(), nl.cce.grad(labels, z, from_logits=True, backend="numpy"),
                               rtol=2e-6, atol=1e-8)


def test_public_api_device_views_and_float16():
    rng = np.random.default_rng(8)
    y, z = rng.standard_normal((10, 6)), rng.standard_normal((10, 6))
    y_d, z_d = cuda.to_device(y), cuda.to_device(z)
    # non-contiguous views: flattened on the device
    value, grad = nl.huber.value_and_grad(y_d[::2, 1:], z_d[::2, 1:])
    ref_value, ref_grad = nl.huber.value_and_grad(y[::2, 1:], z[::2, 1:], backend="numpy")
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(host(grad), ref_grad, rtol=1e-12)
    # float16 in, float16 out (computed in float32)
    y16, z16 = y.astype(np.float16), z.astype(np.float16)
    g16 = nl.mse.grad(cuda.to_device(y16), cuda.to_device(z16))
    assert g16.dtype == np.float16 and is_device(g16)
    np.testing.assert_allclose(host(g16), nl.mse.grad(y16, z16, backend="numpy"), rtol=1e-3)
    out16 = cuda.device_array((10, 6), np.float16)
    assert nl.mse.grad(cuda.to_device(y16), cuda.to_device(z16), out=out16) is out16
    np.testing.assert_array_equal(host(out16), host(g16))
    # host targets with device predictions: results on the device
    assert is_device(nl.mse.grad(y, z_d))
    # host inputs with a device out= buffer: auto takes cuda, the gradient lands in out
    out = cuda.device_array((10, 6), np.float64)
    assert nl.mse.grad(y, z, out=out) is out
    np.testing.assert_allclose(host(out), nl.mse.grad(y, z, backend="numpy"), rtol=1e-12)
    # a CPU backend named with device arrays: a clear error, never a crash
    with pytest.raises(TypeError, match="backend='cuda'"):
        nl.mse(y_d, z_d, backend="numpy")
    with pytest.raises(TypeError, match="backend='cuda'"):
        nl.mse(y, z, sample_weight=cuda.to_device(np.ones(10)), backend="numpy")
    with pytest.raises(TypeError, match="backend='cuda'"):
        nl.mse.grad(y, z, out=out, backend="numpy")
    with pytest.raises(ValueError, match="y_pred must lie in"):
        nl.bce(cuda.to_device(np.full(40, 0.5)), cuda.to_device(np.full(40, 1.5)))


def test_torch_tensors_if_available():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs PyTorch with CUDA")
    rng = np.random.default_rng(0)
    y, z = rng.random((64, 10)).astype(np.float32), rng.random((64, 10)).astype(np.float32)
    yt, zt = torch.from_numpy(y).cuda(), torch.from_numpy(z).cuda()
    out = torch.empty_like(zt)
    value, grad = nl.mse.value_and_grad(yt, zt, out=out)
    assert grad is out
    np.testing.assert_allclose(out.cpu().numpy(), nl.mse.grad(y, z, backend="numpy"), rtol=1e-6)
    np.testing.assert_allclose(value, nl.mse(y, z, backend="numpy"), rtol=1e-12)

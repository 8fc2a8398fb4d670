"""The conventions common to every loss: dtypes, layouts, out=, empty input, NaN,
extreme inputs, bad input, backend selection and threads."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbaloss as nl
from cases import BACKENDS, PAIRWISE, SOFTMAX, all_cases, case_id, grad_inputs, make_case, require, supports

CASES = all_cases()


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


# ------------------------------------------------------------------ dtypes and layouts
@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_rules(backend):
    rng = np.random.default_rng(0)
    y32, z32 = rng.random(10).astype(np.float32), rng.random(10).astype(np.float32)
    assert nl.mse.grad(y32, z32, backend=backend).dtype == np.float32
    assert nl.mse.grad(y32.astype(np.float64), z32, backend=backend).dtype == np.float64
    # integer and bool targets do not promote
    assert nl.bce.grad((y32 > 0.5), z32, backend=backend).dtype == np.float32
    assert nl.mse.grad(np.arange(10), z32, backend=backend).dtype == np.float32
    # no float input: float64
    assert nl.mse.grad(np.arange(10), np.arange(10)[::-1], backend=backend).dtype == np.float64
    # float16 is computed in float32 and returned as float16
    g16 = nl.mse.grad(y32.astype(np.float16), z32.astype(np.float16), backend=backend)
    assert g16.dtype == np.float16
    np.testing.assert_allclose(g16, nl.mse.grad(y32.astype(np.float16).astype(np.float32),
                                                 z32.astype(np.float16).astype(np.float32),
                                                 backend=backend), rtol=1e-3)
    none16 = nl.mse(y32.astype(np.float16), z32.astype(np.float16), reduction="none", backend=backend)
    assert none16.dtype == np.float16
    assert isinstance(nl.mse(y32, z32, backend=backend), np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_views_readonly_and_inputs_untouched(case, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(1)
    inputs, kwargs = make_case(name, params, rng, shape=(8, 6))
    expected = loss.value_and_grad(*inputs, backend=backend, **kwargs)
    # non-contiguous views (every other row, Fortran order) and read-only arrays
    views = []
    for a in inputs:
        big = np.repeat(a, 2, axis=0)[::2]
        fortran = np.asfortranarray(big)
        fortran.flags.writeable = False
        views.append(fortran)
    copies = [v.copy() for v in views]
    got = loss.value_and_grad(*views, backend=backend, **kwargs)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
    for g, e in zip(as_tuple(got[1]), as_tuple(expected[1])):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)
    for v, c in zip(views, copies):
        np.testing.assert_array_equal(v, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_out_buffers_are_filled_and_returned(case, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(2)
    inputs, kwargs = make_case(name, params, rng, shape=(5, 4), dtype=np.float32)
    expected = as_tuple(loss.grad(*inputs, backend=backend, **kwargs))
    outs = tuple(np.full(inputs[i].shape, np.nan, dtype=np.float32) for i in grad_inputs(loss, inputs))
    got = loss.grad(*inputs, backend=backend, out=outs if len(outs) > 1 else outs[0], **kwargs)
    for g, o, e in zip(as_tuple(got), outs, expected):
        assert g is o
        np.testing.assert_array_equal(o, e)
    value, got = loss.value_and_grad(*inputs, backend=backend, out=outs if len(outs) > 1 else outs[0], **kwargs)
    assert as_tuple(got)[0] is outs[0]
    with pytest.raises(ValueError, match="out"):
        bad = np.empty((1, 1), dtype=np.float32)
        loss.grad(*inputs, backend=backend, out=bad if len(outs) == 1 else (bad,) * len(outs), **kwargs)
    with pytest.raises(ValueError, match="dtype"):
        wrong = tuple(np.empty(inputs[i].shape, np.float64) for i in grad_inputs(loss, inputs))
        loss.grad(*inputs, backend=backend, out=wrong if len(wrong) > 1 else wrong[0], **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_empty_input(case, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(3)
    inputs, kwargs = make_case(name, params, rng, shape=(0, 3))
    assert np.isnan(loss(*inputs, backend=backend, **kwargs))
    assert loss(*inputs, reduction="sum", backend=backend, **kwargs) == 0.0
    for part in as_tuple(loss(*inputs, reduction="none", backend=backend, **kwargs)):
        assert part.size == 0
    for g, i in zip(as_tuple(loss.grad(*inputs, backend=backend, **kwargs)), grad_inputs(loss, inputs)):
        assert g.shape == inputs[i].shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nan_propagates(case, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(4)
    inputs, kwargs = make_case(name, params, rng, shape=(4, 3))
    inputs = list(inputs)
    z = inputs[loss.differentiable[0]].copy()
    z[1, 1] = np.nan
    inputs[loss.differentiable[0]] = z
    value, grad = loss.value_and_grad(*inputs, backend=backend, **kwargs)
    assert np.isnan(value)
    if name not in PAIRWISE:  # a hinge or a mining step may route around a NaN row
        assert np.isnan(as_tuple(grad)[0][1, 1])


# -------------------------------------------------------------------- extreme inputs
LOGIT_CASES = [c for c in CASES if c[1].get("from_logits")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,big", [(np.float32, 1e4), (np.float32, 3e38), (np.float64, 1e30)])
@pytest.mark.parametrize("case", LOGIT_CASES, ids=case_id)
def test_extreme_logits_stay_finite_and_correct(case, dtype, big, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(5)
    inputs, kwargs = make_case(name, params, rng, shape=(6, 4), dtype=dtype)
    inputs = list(inputs)
    for i in loss.differentiable:
        signs = np.where(rng.random(inputs[i].shape) < 0.5, -1.0, 1.0)
        inputs[i] = (signs * big).astype(dtype)
        inputs[i][0, 0] = dtype(big / 3)
    value, grad = loss.value_and_grad(*inputs, backend=backend, **kwargs)
    ref_value, ref_grad = loss.value_and_grad(*inputs, backend="numpy", **kwargs)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, r in zip(as_tuple(grad), as_tuple(ref_grad)):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-30)
    if loss.has_hessian:
        for part in loss.grad_hess(*inputs, backend=backend, **kwargs):
            if kwargs.get("gamma", 2.0) >= 1.0 or name != "categorical_focal":
                assert np.all(np.isfinite(part))


PROB_CASES = [c for c in CASES if "from_logits" in nl.LOSSES[c[0]].params and not c[1].get("from_logits")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", PROB_CASES, ids=case_id)
def test_probabilities_at_zero_and_one(case, backend):
    name, params = case
    require(backend, name)
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(6)
    inputs, kwargs = make_case(name, params, rng, shape=(6, 4))
    inputs = list(inputs)
    for i in loss.differentiable:
        inputs[i] = (rng.random(inputs[i].shape) < 0.5).astype(np.float64)
    value, grad = loss.value_and_grad(*inputs, backend=backend, **kwargs)
    assert np.isfinite(value)
    for g in as_tuple(grad):
        assert np.all(np.isfinite(g))


def test_focal_small_gamma_saturated_is_finite():
    z = np.array([-1e30, -50.0, 0.0, 50.0, 1e30])
    for y in (np.zeros(5), np.ones(5), np.full(5, 0.3)):
        for backend in BACKENDS:
            value, grad = nl.focal.value_and_grad(y, z, from_logits=True, gamma=0.3, backend=backend)
            assert np.isfinite(value) and np.all(np.isfinite(grad))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_named_errors(backend):
    y, z = np.zeros((4, 3)), np.full((4, 3), 0.5)
    with pytest.raises(ValueError, match=r"y_true and y_pred must have the same shape.*\(4, 3\).*\(4, 2\)"):
        nl.mse(y, z[:, :2], backend=backend)
    with pytest.raises(ValueError, match="y_pred must lie in"):
        nl.bce(y, z + 1.0, backend=backend)
    with pytest.raises(ValueError, match="y_true must lie in"):
        nl.bce(y - 1.0, z, backend=backend)
    with pytest.raises(ValueError, match="y_true must lie in"):
        nl.focal(y + 2.0, z, from_logits=True, backend=backend)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*found 1 outside, e\.g\. 7"):
        nl.cce(np.array([0, 1, 7, 2]), z, backend=backend)
    with pytest.raises(ValueError, match="labels must lie"):
        nl.cce(np.array([0, -1, 1, 2]), z, from_logits=True, backend=backend)
    with pytest.raises(ValueError, match="labels must lie"):
        nl.cce(np.array([0, 5, 1, 2]), z, from_logits=True, class_weight=np.ones(3), backend=backend)
    # the ignored label may be outside the class range
    nl.cce(np.array([0, -100, 1, 2]), z, from_logits=True, ignore_index=-100, backend=backend)
    with pytest.raises(ValueError, match="categorical_focal|labels must lie"):
        nl.categorical_focal(np.array([0, 3, 1, 2]), z, backend=backend)
    with pytest.raises(ValueError, match=r"y_true must have the shape of y_pred"):
        nl.cce(np.zeros(5, dtype=int), z, backend=backend)
    with pytest.raises(TypeError, match="must be integers"):
        nl.cce(np.zeros(4), z, backend=backend)
    with pytest.raises(ValueError, match="class_weight must have shape"):
        nl.cce(np.zeros(4, dtype=int), z, class_weight=np.ones(4), backend=backend)
    with pytest.raises(ValueError, match="delta must be > 0"):
        nl.huber(y, z, delta=0.0, backend=backend)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        nl.focal(y, z, gamma=-1.0, backend=backend)
    with pytest.raises(ValueError, match="alpha must be <= 1"):
        nl.focal(y, z, alpha=1.5, backend=backend)
    with pytest.raises(ValueError, match="label_smoothing"):
        nl.bce(y, z, label_smoothing=1.5, backend=backend)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        nl.cycle_consistency(y, z, y, z, weight=-1.0, backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        nl.mse(y, z, reduction="avg", backend=backend)
    with pytest.raises(TypeError, match="unexpected keyword"):
        nl.mse(y, z, delta=1.0, backend=backend)
    with pytest.raises(TypeError, match="takes 2 positional inputs"):
        nl.mse(y, backend=backend)
    with pytest.raises(TypeError, match="y_pred must be a float, integer or bool array"):
        nl.mse(y, z.astype(complex), backend=backend)
    with pytest.raises(TypeError, match="y_true must be"):
        nl.mse(np.array(["a"] * 12).reshape(4, 3), z, backend=backend)
    with pytest.raises(TypeError, match="must be an array"):
        nl.mse(None, z, backend=backend)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        nl.mse(y, z, sample_weight=np.ones(3), backend=backend)
    with pytest.raises(TypeError, match="does not take sample_weight"):
        nl.cycle_consistency(y, z, y, z, sample_weight=np.ones(4), backend=backend)
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        nl.bce(y, z, from_logits="yes", backend=backend)
    with pytest.raises(ValueError, match="must be finite"):
        nl.huber(y, z, delta=np.inf, backend=backend)
    # uint64 labels beyond int64 stay out of range (a cast would wrap them negative);
    # any integer label dtype gives the int64 labels' results
    huge = np.array([0, 1, 2**64 - 2**31, 2], dtype=np.uint64)
    for entry in (nl.cce, nl.cce.grad, nl.cce.grad_hess):
        with pytest.raises(ValueError, match="labels must lie"):
            entry(huge, z, from_logits=True, ignore_index=-1, backend=backend)
    labels = np.array([0, 1, 2, 2])
    for dtype in (np.uint8, np.int16, np.uint64):
        np.testing.assert_array_equal(nl.cce.grad(labels.astype(dtype), z, from_logits=True, ignore_index=1,
                                                  backend=backend),
                                      nl.cce.grad(labels, z, from_logits=True, ignore_index=1, backend=backend))
    with pytest.raises(TypeError, match="similarity must be the string"):
        nl.info_nce(z, z, similarity=np.array(["cosine"]), backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        nl.mse(y, z, reduction=np.array(["mean", "sum"]), backend=backend)


def test_backend_errors():
    y = np.zeros(3)
    with pytest.raises(ValueError, match="backend must be one of"):
        nl.mse(y, y, backend="torch")
    if "cuda" not in nl.available_backends():
        with pytest.raises(nl.BackendUnavailableError, match="cuda"):
            nl.mse(y, y, backend="cuda")
        with pytest.raises(nl.BackendUnavailableError):
            nl.set_backend("cuda")


# -------------------------------------------------------------- backend selection
def test_set_and_use_backend():
    y = np.zeros(3)
    assert nl.get_backend() == "auto"
    assert "numpy" in nl.available_backends()
    try:
        nl.set_backend("numpy")
        assert nl.get_backend() == "numpy"
        with nl.use_backend("auto"):
            assert nl.get_backend() == "auto"
        assert nl.get_backend() == "numpy"
        assert nl.mse(y, y) == 0.0
    finally:
        nl.set_backend("auto")


def _run(code, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_environment_variable_sets_default():
    out = _run("import numbaloss as nl; print(nl.get_backend())", {"NUMBALOSS_BACKEND": "numpy"})
    assert out.stdout.strip() == "numpy", out.stderr


def test_import_is_light_and_numba_is_loaded_on_first_use():
    out = _run("import sys, numbaloss; print('numba' in sys.modules)")
    assert out.stdout.strip() == "False", out.stderr


def test_works_without_numba(tmp_path):
    """A Python where importing numba fails still imports numbaloss and computes."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numba' or name.startswith('numba.'):\n"
        "            raise ImportError('numba blocked for this test')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    code = ("import numpy as np, numbaloss as nl; b = nl.available_backends(); assert 'numba' not in b, b; "
            "print(nl.mse(np.zeros(3), np.ones(3)), nl.cce(np.array([0, 1]), np.eye(2), from_logits=True))")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "1.0"
    blocked = _run("import numpy as np, numbaloss as nl; nl.mse(np.zeros(2), np.zeros(2), backend='numba')", env)
    assert "BackendUnavailableError" in blocked.stderr and "numba" in blocked.stderr


def test_threads():
    default = nl.get_num_threads()
    assert default >= 1
    try:
        nl.set_num_threads(1)
        assert nl.get_num_threads() == 1
        rng = np.random.default_rng(0)
        y, z = rng.random(1_500_000), rng.random(1_500_000)  # above the threading threshold
        labels, logits = rng.integers(0, 10, 150_000), rng.standard_normal((150_000, 10))
        one = nl.mse.value_and_grad(y, z), nl.cce.value_and_grad(labels, logits, from_logits=True)
        nl.set_num_threads(max(2, default))
        many = nl.mse.value_and_grad(y, z), nl.cce.value_and_grad(labels, logits, from_logits=True)
        # the summation order does not depend on the thread count: bit-identical results
        for a, b in zip(one, many):
            assert a[0] == b[0]
            np.testing.assert_array_equal(a[1], b[1])
    finally:
        nl.set_num_threads(default)
    with pytest.raises(ValueError, match="positive integer"):
        nl.set_num_threads(0)


# ------------------------------------------------------------------------- hypothesis
@settings(max_examples=60, deadline=None)
@given(
    case=st.sampled_from(CASES),
    rows=st.integers(0, 9),
    cols=st.integers(1, 6),
    extra_axis=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_match_reference(case, rows, cols, extra_axis, dtype, reduction, seed):
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(seed)
    shape = (rows, 2, cols) if extra_axis and name not in PAIRWISE else (rows, cols)
    inputs, kwargs = make_case(name, params, rng, shape=shape, dtype=dtype)
    weights = {}
    if loss.has_sample_weight and rows and not (extra_axis and name in SOFTMAX):
        weights["sample_weight"] = rng.uniform(0, 2, rows)
    for backend in BACKENDS:
        if not supports(backend, name):
            continue
        value, grad = loss.value_and_grad(*inputs, reduction=reduction, backend=backend, **weights, **kwargs)
        ref_value, ref_grad = loss.value_and_grad(*inputs, reduction=reduction, backend="numpy", **weights,
                                                  **kwargs)
        for a, b in zip(as_tuple(value) + as_tuple(grad), as_tuple(ref_value) + as_tuple(ref_grad)):
            tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)
            if name in PAIRWISE:
                # matrix products: rounding relative to the largest entry; and at cos θ = ±1
                # (D = 1) ArcFace's gradient goes through 1/max(sin θ, 1e-7), which scales
                # the last bit of cos θ up to ~1e-8 absolute
                scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
                tol = dict(rtol=1e-9, atol=1e-7 * scale) if dtype == np.float64 else \
                    dict(rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_allclose(a, b, **tol)

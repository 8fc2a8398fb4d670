"""The ``cython`` backend: parity with ``numba`` on every registered loss and variant,
its determinism, its compiled copies, the block paths of its embedding losses, and
the fallback it exists for — a Python where Numba cannot be imported
(tests/test_losses.py is run there in a subprocess).

Skipped where the extension is not built (``pip install -e .`` or ``python setup.py
build_ext --inplace`` builds it), unless ``NUMBALOSS_REQUIRE_CYTHON=1`` is set: then
a missing extension fails the run (for CI, so that a broken build cannot pass as a
skip).  Parity tests need Numba and are skipped without it.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numbaloss as nl
from cases import PAIRWISE, SOFTMAX, all_cases, case_id, make_case, rows_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = all_cases()
PAIRWISE_CASES = [case for case in CASES if case[0] in PAIRWISE]

_status = nl.backend_status()
if _status["cython"] != "available":
    if os.environ.get("NUMBALOSS_REQUIRE_CYTHON") == "1":
        raise RuntimeError(f"NUMBALOSS_REQUIRE_CYTHON=1 but {_status['cython']}")
    pytest.skip(_status["cython"], allow_module_level=True)

HAVE_NUMBA = _status["numba"] == "available"
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason=f"parity needs numba: {_status['numba']}")

from numbaloss import _cython_backend  # noqa: E402  (importable: the backend is available)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def tolerance(dtype, kind=None):
    """numba and cython agree to rounding: their exp/log differ by fused multiply-adds
    (where one copy has FMA and the other not) and their float64 sums are added in
    different orders; float32 outputs are one rounding of the same float64 number.
    The float32 embedding losses round in float32 along the way (logits, exps, the
    gradient coefficients) and sum them in float32 matrix products, whose error
    scales with the largest entry: there the backends agree to a few dozen float32
    ulps of the array's scale (measured: up to 5e-7 of it).  The float32 softmax rows
    with integer labels take their exps in float32 on both (exp_to_float32, about one
    ulp), and the baseline cython copy, without fused multiply-adds, rounds that
    polynomial differently: there they agree to two float32 ulps of the array's scale."""
    if dtype == np.float64:
        return dict(rtol=1e-11, atol=1e-13)
    if kind == "pairwise":
        return dict(rtol=2e-6, atol=4e-6)
    if kind == "softmax":
        return dict(rtol=1e-6, atol=2.5e-7)
    return dict(rtol=1e-6, atol=1e-9)


def assert_parity(actual, expected, dtype, what, kind=None):
    for a, e in zip(as_tuple(actual), as_tuple(expected)):
        a = np.asarray(a)
        e = np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, what
        scale = max(1.0, float(np.max(np.abs(e.astype(np.float64)), initial=0.0)))
        tol = tolerance(dtype, kind)
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, err_msg=what)


def _weights(loss, inputs, name, rng):
    if not loss.has_sample_weight:
        return {}
    return {"sample_weight": rng.uniform(0.2, 2.0, rows_of(inputs, name))}


# ---------------------------------------------------------------- numba parity
@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_numba(case, dtype):
    """value_and_grad for every reduction, with and without sample weights, and grad_hess."""
    name, params = case
    loss = nl.LOSSES[name]
    kind = "pairwise" if name in PAIRWISE else "softmax" if name in SOFTMAX else None
    rng = np.random.default_rng(101)
    for dense in ([False, True] if name in SOFTMAX else [False]):
        inputs, kwargs = make_case(name, params, rng, shape=(37, 6), dtype=dtype, dense=dense)
        weighted = _weights(loss, inputs, name, rng)
        for weights in [{}] + ([weighted] if weighted else []):
            for reduction in ("mean", "sum", "none"):
                what = f"{name} {kwargs} dense={dense} {reduction} weighted={bool(weights)}"
                got = loss.value_and_grad(*inputs, reduction=reduction, backend="cython", **weights, **kwargs)
                want = loss.value_and_grad(*inputs, reduction=reduction, backend="numba", **weights, **kwargs)
                assert_parity(got[0], want[0], dtype, what + " value", kind)
                assert_parity(got[1], want[1], dtype, what + " grad", kind)
            if loss.has_hessian:
                got = loss.grad_hess(*inputs, backend="cython", **weights, **kwargs)
                want = loss.grad_hess(*inputs, backend="numba", **weights, **kwargs)
                assert_parity(got, want, dtype, f"{name} {kwargs} dense={dense} grad_hess", kind)


@needs_numba
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_numba_above_parallel_threshold(case):
    """Inputs over the parallel threshold (both backends run threads), with weights."""
    name, params = case
    loss = nl.LOSSES[name]
    pairwise = name in PAIRWISE
    rng = np.random.default_rng(7)
    # 540k elements: over both thresholds, rows across chunk boundaries; embedding
    # losses: blocks of 300² similarities, over SERIAL_BELOW of both backends
    shape = (300, 16) if pairwise else (60_001, 9)
    inputs, kwargs = make_case(name, params, rng, shape=shape, dtype=np.float32)
    weights = _weights(loss, inputs, name, rng)
    got = loss.value_and_grad(*inputs, backend="cython", **weights, **kwargs)
    want = loss.value_and_grad(*inputs, backend="numba", **weights, **kwargs)
    kind = "pairwise" if pairwise else "softmax" if name in SOFTMAX else None
    # float32 softmax rows: the exps are float32 (exp_to_float32), whose rounding
    # differs between copies with and without fused multiply-adds, so the float64
    # values agree to float32 rounding only
    value_dtype = np.float32 if kind else np.float64
    assert_parity(got[0], want[0], value_dtype, f"{name} {kwargs} value", kind)
    assert_parity(got[1], want[1], np.float32, f"{name} {kwargs} grad", kind)
    if loss.has_hessian:
        got = loss.grad_hess(*inputs, backend="cython", **weights, **kwargs)
        want = loss.grad_hess(*inputs, backend="numba", **weights, **kwargs)
        assert_parity(got, want, np.float32, f"{name} {kwargs} grad_hess", kind)


# ---------------------------------------------------------- embedding losses
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", PAIRWISE_CASES, ids=case_id)
def test_embedding_blocks_match_reference(case, dtype, monkeypatch):
    """The row-block and tile paths of _cext/pairwise.pyx (blocks of 1, 5 and 16 rows
    of N = 23, so the last block is partial; many tiles for NT-Xent/SupCon) against
    the float64 reference.  Needs no Numba."""
    name, params = case
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(23)
    inputs, kwargs = make_case(name, params, rng, shape=(23, 6), dtype=dtype)
    weights = _weights(loss, inputs, name, rng)
    want = loss.value_and_grad(*inputs, backend="numpy", **weights, **kwargs)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for rows in (1, 5, 16):
        monkeypatch.setattr(_cython_backend._pairwise, "BLOCK_ROWS", rows)  # the copy in use
        got = loss.value_and_grad(*inputs, backend="cython", **weights, **kwargs)
        for a, e in zip((got[0],) + as_tuple(got[1]), (want[0],) + as_tuple(want[1])):
            scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
            np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=tol["rtol"],
                                       atol=tol["atol"] * scale, err_msg=f"{name} {kwargs} rows={rows}")


# ----------------------------------------------------------------- determinism
@pytest.mark.parametrize("name, kwargs, shape", [
    ("mse", {}, (50_003, 7)), ("binary_cross_entropy", {"from_logits": True}, (50_003, 7)),
    ("focal", {}, (50_003, 7)), ("categorical_cross_entropy", {"from_logits": True}, (50_003, 7)),
    ("info_nce", {}, (600, 32)), ("nt_xent", {}, (600, 32)), ("batch_hard_triplet", {}, (600, 32)),
])
def test_result_does_not_depend_on_thread_count(name, kwargs, shape):
    loss = nl.LOSSES[name]
    rng = np.random.default_rng(3)
    inputs, kwargs = make_case(name, kwargs, rng, shape=shape, dtype=np.float32)
    results = []
    before = nl.get_num_threads()
    try:
        for threads in sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}):
            nl.set_num_threads(threads)
            results.append(loss.value_and_grad(*inputs, backend="cython", **kwargs))
    finally:
        nl.set_num_threads(before)
    for value, grad in results[1:]:
        assert value == results[0][0]
        assert np.array_equal(grad, results[0][1])


def _copies(module="elementwise"):
    """The compiled copies of a _cext module that this CPU runs (see setup.py)."""
    base = importlib.import_module(f"numbaloss._cext.{module}")
    copies = {"baseline": base}
    for isa in _cython_backend.ISAS[:-1]:
        if _cython_backend._elementwise.cpu_supports(isa):
            try:
                copies[isa] = importlib.import_module(f"numbaloss._cext.{module}_{isa}")
            except ImportError:
                pass
    return copies


_TERM_PARAMS = {
    "huber": (1.0,), "bce_logits": (2.0, 0.1), "bce_probs": (1.0, 0.0, 1e-7),
    "focal_logits": (0.25, 0.75, 2.0), "focal_probs": (0.25, 0.75, 1.5, 1e-7),
    "squared_error_to_constant": (1.0,), "bce_logits_to_constant": (1.0,),
    "bce_probs_to_constant": (0.0, 1e-7),
}


def test_instruction_set_copies_agree():
    """Every copy of the elementwise loops (baseline, AVX2, AVX-512) computes the same
    numbers, to the fused multiply-adds of the fast exp/log (used where the copy's
    instruction set has FMA)."""
    copies = _copies()
    if len(copies) == 1:
        pytest.skip("only the baseline copy of numbaloss._cext.elementwise is built or runs here")
    rng = np.random.default_rng(5)
    rows, m = 43_001, 7  # 301k elements: parallel, rows across chunk boundaries
    logits = (3 * rng.standard_normal(rows * m)).astype(np.float32)
    probs = rng.uniform(0.01, 0.99, rows * m).astype(np.float32)
    targets = (rng.random(rows * m) < 0.4).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, rows)
    bounds = (-np.inf, np.inf, -np.inf, np.inf)
    base = copies["baseline"]
    for term, (term_id, has_hessian) in base.TERMS.items():
        z = probs if "probs" in term else logits
        y = z if term.endswith("_to_constant") else targets
        results = {}
        for isa, module in copies.items():
            grad = np.empty_like(z)
            total, _ = module.run(term_id, module.MODES["value_sum_and_grad"], y, z, weights, m,
                                  _TERM_PARAMS.get(term, ()), bounds, 0.5, None, grad, None, 2)
            hess = np.empty_like(z)
            grad2 = np.empty_like(z)
            if has_hessian:
                module.run(term_id, module.MODES["grad_and_hess"], y, z, None, 0,
                           _TERM_PARAMS.get(term, ()), bounds, 1.0, None, grad2, hess, 2)
            results[isa] = (total, grad, grad2 if has_hessian else None, hess if has_hessian else None)
        ref = results["baseline"]
        for isa, got in results.items():
            np.testing.assert_allclose(got[0], ref[0], rtol=1e-12, err_msg=f"{term} {isa} total")
            for a, b in zip(got[1:], ref[1:]):
                if a is not None:
                    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12, err_msg=f"{term} {isa}")


@pytest.mark.parametrize("name", ["categorical_cross_entropy", "categorical_focal"])
def test_softmax_instruction_set_copies_agree(name, monkeypatch):
    """Every copy of the softmax loops gives the same results through the public API:
    integer labels (the chunked label rows, float32 exps) and dense targets, float32
    and float64, across chunk boundaries and the parallel threshold."""
    copies = _copies("softmax")
    if len(copies) == 1:
        pytest.skip("only the baseline copy of numbaloss._cext.softmax is built or runs here")
    rng = np.random.default_rng(9)
    loss = nl.LOSSES[name]
    for dtype in (np.float32, np.float64):
        logits = (4 * rng.standard_normal((30_011, 7))).astype(dtype)
        labels = rng.integers(0, 7, 30_011)
        dense = rng.dirichlet(np.ones(7), 30_011).astype(dtype)
        for target in (labels, dense):
            results = {}
            for isa, module in copies.items():
                monkeypatch.setattr(_cython_backend, "_softmax", module)
                results[isa] = (loss.value_and_grad(target, logits, from_logits=True, backend="cython"),
                                loss.grad_hess(target, logits, from_logits=True, backend="cython"))
            (ref_value, ref_grad), ref_gh = results["baseline"]
            tol = tolerance(dtype, "softmax")
            for isa, ((value, grad), gh) in results.items():
                np.testing.assert_allclose(value, ref_value, rtol=tol["rtol"], err_msg=f"{name} {isa}")
                for a, b in zip((grad,) + tuple(gh), (ref_grad,) + tuple(ref_gh)):
                    np.testing.assert_allclose(a, b, **tol, err_msg=f"{name} {isa} {dtype.__name__}")


def test_domain_flags_and_nan():
    """The per-chunk domain check: values out of range anywhere (also in the last,
    partial chunk) raise; nan does not (it propagates)."""
    n = 200_003
    y = np.full(n, 0.5, dtype=np.float32)
    p = np.full(n, 0.5, dtype=np.float32)
    for where in (0, 16_383, 16_384, n - 1):
        bad = p.copy()
        bad[where] = 1.5
        with pytest.raises(ValueError, match="y_pred must lie in"):
            nl.bce(y, bad, backend="cython")
        bad_y = y.copy()
        bad_y[where] = -0.25
        with pytest.raises(ValueError, match="y_true must lie in"):
            nl.bce(bad_y, p, backend="cython")
    with_nan = p.copy()
    with_nan[[0, 17, n - 1]] = np.nan
    assert np.isnan(nl.bce(y, with_nan, backend="cython"))
    value, grad = nl.bce.value_and_grad(np.zeros(4), np.array([np.nan, 0.2, 0.3, 0.4]), backend="cython")
    assert np.isnan(value) and np.isnan(grad[0]) and np.all(np.isfinite(grad[1:]))


@pytest.mark.parametrize("targets", [np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float64])
def test_target_dtypes(targets):
    """Targets of any numeric dtype, read as the Numba loops read them (exact widening),
    with float32 predictions: bool/uint8 natively, others converted."""
    rng = np.random.default_rng(9)
    y = (rng.random((301, 3)) < 0.5).astype(targets)
    z = rng.uniform(0.05, 0.95, (301, 3)).astype(np.float32)
    ref_value, ref_grad = nl.bce.value_and_grad(y.astype(np.float64), z.astype(np.float64), backend="numpy")
    value, grad = nl.bce.value_and_grad(y, z, backend="cython")
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-9)
    big = np.array([[2**40 + 1, -3], [7, 2**31 + 5]], dtype=np.int64)
    pred = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(nl.mse(big, pred, reduction="none", backend="cython"),
                                  nl.mse(big, pred, reduction="none", backend="numpy"))


# ------------------------------------------------------------------- fallback
_BLOCKER = """
import sys


class _Blocked:
    \"\"\"Makes the imports of the named top-level packages fail, as if uninstalled.\"\"\"

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names or fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the test)", name=fullname)
        return None


sys.meta_path.insert(0, _Blocked(BLOCKED))
"""


def _python_without(tmp_path, blocked):
    """Environment for a subprocess in which importing ``blocked`` fails."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_BLOCKER.replace("BLOCKED", repr(sorted(blocked))))
    env = dict(os.environ)
    env.pop("NUMBALOSS_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import numbaloss as nl
    from numbaloss import _config
    status = nl.backend_status()
    module = _config.resolve(None, [np.zeros(3)], "elementwise", "bce")
    embedding = _config.resolve(None, [np.zeros((3, 2))], "pairwise", "info_nce")
    value = float(nl.bce(np.array([0.0, 1.0]), np.array([0.3, 0.8])))
    print(json.dumps({"available": nl.available_backends(), "status": status, "auto": module.name,
                      "auto_embedding": embedding.name, "value": value,
                      "numba_imported": "numba" in sys.modules}))
""")


def test_without_numba_auto_is_cython(tmp_path):
    env = _python_without(tmp_path, {"numba", "llvmlite"})
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "numba" not in result["available"]
    assert "numba" in result["status"]["numba"] or "No module" in result["status"]["numba"]
    assert result["available"][0] == "cython" and "numpy" in result["available"]
    assert result["auto"] == "cython"
    assert result["auto_embedding"] == "cython"
    assert not result["numba_imported"]
    assert result["value"] == pytest.approx(float(nl.bce(np.array([0.0, 1.0]), np.array([0.3, 0.8]))))


def test_test_suite_passes_without_numba(tmp_path):
    """The real fallback proof: tests/test_losses.py on cython + numpy in a Python
    where ``import numba`` fails."""
    env = _python_without(tmp_path, {"numba", "llvmlite"})
    report = tmp_path / "report.xml"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--junitxml={report}",
         "tests/test_losses.py"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    names = report.read_text()
    assert "-cython]" in names, "no test ran on the cython backend"
    assert "-numba]" not in names


def test_clear_error_when_extension_missing(tmp_path):
    env = _python_without(tmp_path, {"numba", "llvmlite", "numbaloss._cext"})
    probe = textwrap.dedent("""
        import json
        import numpy as np
        import numbaloss as nl
        try:
            nl.mse(np.zeros(2), np.ones(2), backend="cython")
            raised = None
        except nl.BackendUnavailableError as exc:
            raised = str(exc)
        print(json.dumps({"status": nl.backend_status()["cython"], "raised": raised,
                          "available": nl.available_backends()}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "numbaloss._cext was not built" in result["status"]
    assert result["raised"] is not None and "numbaloss._cext was not built" in result["raised"]
    assert result["available"] == ["numpy"]

"""Every CUDA kernel compiles to PTX for Hopper (compute capability 9.0), for every
loss / term / softmax kind of the registry and for float32 and float64.

No GPU is needed (``numba.cuda.compile_ptx`` with the cu13 wheels of numba-cuda),
but the simulator must be off: under ``NUMBA_ENABLE_CUDASIM=1`` numba.cuda is the
simulator, which runs kernels as Python and accepts code that real CUDA rejects.
So when this file is collected under the simulator it runs itself again in a
subprocess without that variable.

The argument signatures are built by the backend's own ``elementwise_args`` /
``softmax_args`` (the functions that build the real launch arguments), typed with
``numba.typeof``, so the PTX compiled here is that of the kernels launched.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.nodevice

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")
CC = (9, 0)
ROOT = pathlib.Path(__file__).resolve().parents[2]

if SIMULATOR:

    def test_ptx_in_a_process_without_the_simulator():
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pathlib.Path(__file__))],
            cwd=os.getcwd(), env=env, capture_output=True, text=True, timeout=1800,
        )
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
        assert " passed" in result.stdout and " skipped" not in result.stdout.split("\n")[-2], result.stdout[-2000:]

else:
    numba = pytest.importorskip("numba")
    cuda = pytest.importorskip("numba.cuda")

    import numbaloss as nl
    from cases import SOFTMAX, all_cases, case_id, make_case

    backend = pytest.importorskip("numbaloss._cuda.backend")
    kernels = pytest.importorskip("numbaloss._cuda.kernels")

    DTYPES = [np.float32, np.float64]

    def _elementwise_terms():
        """(term name, parameter tuple, has a Hessian) of every variant in the registry."""
        terms = {}
        for name, params in all_cases():
            loss = nl.LOSSES[name]
            if loss.family not in ("pointwise", "two_term"):
                continue
            checked = loss._params(params)
            if loss.family == "two_term":
                found = [term for term, _ in loss.terms(checked)]
            else:
                found = [loss.term(checked)]
            for term in found:
                terms.setdefault((term.name, len(term.params)), term)
        return sorted(terms.values(), key=lambda t: (t.name, len(t.params)))

    def _softmax_kinds():
        kinds = {}
        for name, params in all_cases():
            if name not in SOFTMAX:
                continue
            loss = nl.LOSSES[name]
            checked = loss._params({k: (np.ones(3) if isinstance(v, str) else v) for k, v in params.items()})
            for target_kind in ("labels", "dense"):
                kind, kparams, *_ = loss.setup(checked, 3, target_kind)
                key = f"{kind}_{target_kind}"
                kinds.setdefault((key, len(kparams)), (key, kparams))
        return sorted(kinds.values())

    TERMS = _elementwise_terms()
    KINDS = _softmax_kinds()

    def signature(args):
        return tuple(numba.typeof(a) for a in args)

    def compile_for_hopper(pyfunc, args):
        ptx, _ = cuda.compile_ptx(pyfunc, signature(args), cc=CC)
        assert ".target sm_90" in ptx and ".entry" in ptx
        return ptx

    def compile_each_once(calls, seen=None):
        """Compile each distinct (kernel, signature) of ``calls`` [(pyfunc, args)] once
        (``seen``: the (kernel, signature) pairs already compiled; a new set by default);
        return how many distinct ones ``calls`` has."""
        seen = set() if seen is None else seen
        distinct = {(pyfunc.__name__, signature(args)) for pyfunc, args in calls}
        for pyfunc, args in calls:
            key = (pyfunc.__name__, signature(args))
            if key not in seen:
                seen.add(key)
                compile_for_hopper(pyfunc, args)
        return len(distinct)

    def test_every_registered_term_and_kind_is_covered():
        term_names = {t.name for t in TERMS}
        assert {"squared_error", "bce_logits", "bce_probs", "huber", "focal_logits", "focal_probs",
                "absolute_error"} <= term_names
        assert {k for k, _ in KINDS} == set(kernels.all_softmax_kinds())
        # every point-function pair of points.py is reached through the registry
        assert set(kernels.all_elementwise_terms()) <= term_names

    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
    @pytest.mark.parametrize("term", TERMS, ids=lambda t: f"{t.name}-{len(t.params)}")
    def test_elementwise_kernels_compile_for_hopper(term, dtype):
        pyfuncs = kernels.elementwise_pyfuncs(term.name)
        z = np.empty(0, dtype)
        bounds = term.target_domain + term.prediction_domain
        # integer and bool targets (labels, 0/1) are read as they are
        target_dtypes = [dtype] + ([np.int64, np.bool_] if term.name in ("bce_logits", "squared_error") else [])
        calls = []
        for target_dtype in target_dtypes:
            y = np.empty(0, target_dtype)
            modes = ["sum", "grad", "none"] + (["grad_hess"] if "grad_and_hess" in pyfuncs else [])
            if target_dtype != dtype:
                modes = ["sum"]  # the loads of the targets are the same in every kernel
            for mode in modes:
                for with_grad in ((True, False) if mode in ("sum", "none") else (True,)):
                    grad = np.empty(0, dtype) if with_grad else None
                    out_value = np.empty(0, dtype) if mode == "none" else None
                    hess = np.empty(0, dtype) if mode == "grad_hess" else None
                    name, args = backend.elementwise_args(mode, term.params, bounds, y, z, np.empty(0), 3, 0.5,
                                                          out_value, grad, hess)
                    calls.append((pyfuncs[name], args + (np.empty(0),)))
        assert compile_each_once(calls) >= len(pyfuncs)

    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
    @pytest.mark.parametrize("kind, kparams", KINDS, ids=lambda x: x if isinstance(x, str) else str(len(x)))
    def test_softmax_kernels_compile_for_hopper(kind, kparams, dtype):
        pyfunc = kernels.softmax_pyfunc(kind)
        z = np.empty((0, 3), dtype)
        targets = [np.empty(0, np.int64), np.empty(0, np.int32)] if kind.endswith("labels") else [z]
        calls = []
        for y in targets:
            for mode, grad, hess, values in (("sum", z, None, None), ("none", None, None, np.empty(0, dtype)),
                                             ("grad_hess", z, z, None)):
                args = backend.softmax_args(kind, kparams, y, z, None, np.empty(3), 1, mode, 1.0, values, grad, hess,
                                            alloc=lambda shape, dt: np.empty(shape, dt))
                calls.append((pyfunc, args + (np.empty(0),)))
        compile_each_once(calls)

    def test_helper_kernels_compile_for_hopper():
        f64 = np.empty(0)
        for dtype in (np.float64, np.float32):
            compile_for_hopper(kernels.sum_kernel.py_func, (np.empty(0, dtype), f64))
        for labels in (np.empty(0, np.int64), np.empty(0, np.int32)):
            compile_for_hopper(kernels.label_weight_sum.py_func, (labels, f64, f64, True, np.int64(0), f64))
        pairs = [(np.float64, np.float32), (np.float32, np.float32), (np.float16, np.float32),
                 (np.float32, np.float16), (np.int64, np.float64), (np.bool_, np.float32), (np.int32, np.int64)]
        for src_dtype, dst_dtype in pairs:
            dst = np.empty(0, dst_dtype)
            for ndim, kernel in kernels.COPY_KERNELS.items():
                base = np.empty((2,) * ndim, src_dtype)
                strided = base[(slice(None, None, 2),) * ndim]  # layout "A"
                compile_for_hopper(kernel.py_func, (strided, dst))
        for dtype in (np.float32, np.float64, np.int64):
            compile_for_hopper(kernels.tile.py_func, (np.empty(0, dtype), np.empty(0, dtype)))

    _PAIRWISE_COMPILED: set = set()
    PAIRWISE_CASES = [case for case in all_cases() if nl.LOSSES[case[0]].family == "pairwise"]

    def _pairwise_launches(monkeypatch, name, params, dtype, label_dtype):
        """(pyfunc, args) of every kernel launch of one embedding loss, value and gradient,
        recorded from ``numbaloss._cuda.pairwise`` itself with host arrays standing in
        for device arrays (the same types: C-contiguous arrays, int64/float64/bool scalars)."""
        pairwise = pytest.importorskip("numbaloss._cuda.pairwise")
        calls = []
        monkeypatch.setattr(backend, "empty", lambda shape, dt: np.empty(shape, dt))
        monkeypatch.setattr(backend, "copy_into", lambda target, src: None)
        monkeypatch.setattr(backend, "to_device", np.ascontiguousarray)
        # norms read back on the host (batch-hard) come out huge: the branch that
        # rescales rows whose squares overflow is launched too
        monkeypatch.setattr(backend, "to_host", lambda arr: np.full(arr.shape, 1e300))
        monkeypatch.setattr(pairwise, "_launch", lambda kernel, n, *args: calls.append((kernel.py_func, args)))
        monkeypatch.setattr(pairwise, "_launch_rows",
                            lambda kernel, n, shared, *args: calls.append((kernel.py_func, args)))
        monkeypatch.setattr(pairwise, "matmul", lambda *args: calls.append((pairwise.product.py_func, args)))
        loss = nl.LOSSES[name]
        inputs, kwargs = make_case(name, params, np.random.default_rng(0), shape=(4, 3), dtype=dtype)
        inputs = list(inputs) + [None] * (len(loss.inputs) - len(inputs))
        inputs = [a.astype(label_dtype) if a is not None and a.dtype.kind in "iu" else a for a in inputs]
        checked = loss._params(kwargs)
        n_losses = loss.validate(inputs, checked)[1]
        for need_grad in (True, False):
            getattr(pairwise, name)(*inputs, **checked, coef=np.ones(n_losses), need_grad=need_grad)
        return calls

    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
    @pytest.mark.parametrize("case", PAIRWISE_CASES, ids=case_id)
    def test_pairwise_kernels_compile_for_hopper(case, dtype, monkeypatch):
        name, params = case
        label_dtypes = [np.int64, np.int32] if "labels" in nl.LOSSES[name].integer_inputs else [np.int64]
        calls = []
        for label_dtype in label_dtypes:
            calls += _pairwise_launches(monkeypatch, name, params, dtype, label_dtype)
        # the kernels are shared between the losses: each signature is compiled once
        assert compile_each_once(calls, _PAIRWISE_COMPILED) >= 2

    def test_every_pairwise_kernel_is_launched_by_some_loss(monkeypatch):
        pairwise = pytest.importorskip("numbaloss._cuda.pairwise")
        launched = set()
        for name, params in PAIRWISE_CASES:
            launched |= {pyfunc.__name__ for pyfunc, _ in
                         _pairwise_launches(monkeypatch, name, params, np.float32, np.int64)}
        assert set(pairwise.KERNELS) <= launched

    def test_rebinding_maps_fastmath_to_libdevice():
        """Point functions written with ``numbaloss._numba.fastmath`` (the CPU's
        vectorisable exp/log) call CUDA's own math in the kernels."""
        import math

        fastmath = pytest.importorskip("numbaloss._numba.fastmath")
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        import _fastmath_points as fp

        ns = kernels.rebind(fp)
        assert ns["exp"] is math.exp and ns["log1p"] is math.log1p
        assert ns["fm"] is kernels.cuda_fastmath and ns["fm"].sigmoid is kernels._CUDA_MATH_BY_NAME["sigmoid"]
        assert ns["logistic_value_grad"].targetoptions["inline"] == "always"
        # the CPU module itself is untouched
        assert fp.exp is fastmath.exp
        value, grad = ns["logistic_value_grad"](0.3, 1.7, (1.0,))
        ref_value, ref_grad = fp.logistic_value_grad(0.3, 1.7, (1.0,))
        np.testing.assert_allclose([value, grad], [ref_value, ref_grad], rtol=1e-15)
        bound = {"value_grad": ns["logistic_value_grad"], "domain_flags": kernels._domain_flags}
        pyfunc = kernels.specialise(kernels.value_sum, "fastmath_logistic", bound)
        f32 = np.empty(0, np.float32)
        _, args = backend.elementwise_args("sum", (1.0,), (0.0, 1.0, -np.inf, np.inf), f32, f32, np.empty(0), 1,
                                           1.0, None, f32, None)
        compile_for_hopper(pyfunc, args + (np.empty(0),))

    def test_fastmath_itself_compiles_for_cuda():
        """For the record: the CPU polynomials compile for the GPU too (plain LLVM
        bit-casts), so an unmapped fastmath function would still work, only slower."""
        fastmath = pytest.importorskip("numbaloss._numba.fastmath")

        def kernel(x, out):
            i = cuda.grid(1)
            if i < x.shape[0]:
                out[i] = fastmath.exp(x[i]) + fastmath.log1p(x[i]) + fastmath.softplus(x[i])

        compile_for_hopper(kernel, (np.empty(0), np.empty(0)))

"""Accuracy, special values and vectorisation of numbaloss._numba.fastmath.

References are computed in numpy long double (x87 80-bit, 64-bit mantissa) so
the measured error is the true error in float64 ulp, not +-1 ulp of another
float64 implementation.
"""

import math
import platform
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit, prange

from numbaloss._numba import fastmath as fm

LD = np.longdouble
HAVE_LD = np.finfo(LD).nmant >= 63  # x87 extended; not on aarch64/Windows
needs_ld = pytest.mark.skipif(not HAVE_LD, reason="long double is not extended precision")

INF = math.inf
NAN = math.nan
TINY = 5e-324
MIN_NORMAL = 2.2250738585072014e-308
DMAX = 1.7976931348623157e308

# Measured maxima (ulp) are 0.85 for exp/log/log1p, ~1.5 softplus/log_sigmoid,
# ~2.3 sigmoid; the bounds leave a little room.
TOL = {
    "exp": 1.0,
    "log": 1.0,
    "log1p": 1.0,
    "softplus": 2.0,
    "sigmoid": 3.0,
    "log_sigmoid": 2.0,
}


# ---------------------------------------------------------------------------
# kernels: one plain loop per function (compiled once for the module)
# ---------------------------------------------------------------------------

def _make_kernel(f):
    @njit
    def kernel(a, out):
        for i in range(a.size):
            out[i] = f(a[i])

    return kernel


def _make_kernel_f32(f):
    @njit
    def kernel(a, out):
        for i in range(a.size):
            out[i] = f(np.float64(a[i]))

    return kernel


NAMES = ["exp", "log", "log1p", "softplus", "sigmoid", "log_sigmoid"]
FUNCS = {name: getattr(fm, name) for name in NAMES}
KERNELS = {name: _make_kernel(f) for name, f in FUNCS.items()}


def run(name, x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    KERNELS[name](x, out)
    return out


# ---------------------------------------------------------------------------
# long-double references
# ---------------------------------------------------------------------------

def ref(name, x):
    xl = np.asarray(x, dtype=np.float64).astype(LD)
    with np.errstate(all="ignore"):
        if name == "exp":
            return np.exp(xl)
        if name == "log":
            return np.log(xl)
        if name == "log1p":
            return np.log1p(xl)
        if name == "softplus":
            return np.logaddexp(LD(0), xl)
        if name == "log_sigmoid":
            return -np.logaddexp(LD(0), -xl)
        if name == "sigmoid":
            e = np.exp(-np.abs(xl))
            return np.where(xl >= 0, 1 / (1 + e), e / (1 + e))
    raise ValueError(name)


def ulp_error(got, want_ld):
    """|got - want| in units of the float64 spacing at want (finite want)."""
    want64 = want_ld.astype(np.float64)
    # np.spacing(DMAX) overflows; 2**1023 has the same spacing as DMAX.
    sp = np.spacing(np.minimum(np.abs(want64), 2.0**1023)).astype(LD)
    return (np.abs(got.astype(LD) - want_ld) / sp).astype(np.float64)


def check(name, x, tol=None):
    tol = TOL[name] if tol is None else tol
    x = np.asarray(x, dtype=np.float64)
    got = run(name, x)
    want = ref(name, x)
    with np.errstate(all="ignore"):
        want64 = want.astype(np.float64)
    finite = np.isfinite(want64)
    # non-finite results must match exactly (inf/-inf/nan)
    np.testing.assert_array_equal(got[~finite], want64[~finite])
    err = ulp_error(got[finite], want[finite])
    if err.size:
        i = int(np.argmax(err))
        assert err[i] <= tol, (
            f"{name}: {err[i]:.3f} ulp at x={x[finite][i]!r}: "
            f"got {got[finite][i]!r}, want {want64[finite][i]!r}"
        )
    return err


def log_uniform(rng, n, lo, hi, signed=True):
    v = 10.0 ** rng.uniform(lo, hi, n)
    if signed:
        v *= rng.choice([-1.0, 1.0], n)
    return v


RNG_SEED = 20240601


# ---------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------

@needs_ld
def test_exp_accuracy_wide():
    rng = np.random.default_rng(RNG_SEED)
    x = np.concatenate([
        rng.uniform(-745.2, 709.8, 200_000),
        log_uniform(rng, 100_000, -320, 2.85),
        rng.uniform(-1.0, 1.0, 50_000),
        rng.uniform(-745.14, -708.3, 50_000),  # subnormal results
        rng.uniform(700.0, 709.78, 20_000),
    ])
    check("exp", x)


@needs_ld
def test_exp_thresholds():
    over = 709.782712893384  # largest x with finite exp(x)
    under = -745.1332191019411  # smallest x with exp(x) > 0
    sub = -708.3964185322641  # exp(x) near 2**-1022
    pts = []
    for c in (over, under, sub, -744.4400719213812):
        pts.append(c)
        lo = hi = c
        for _ in range(40):
            lo = np.nextafter(lo, -INF)
            hi = np.nextafter(hi, INF)
            pts += [lo, hi]
    check("exp", np.array(pts))
    assert fm.exp(over) < INF and fm.exp(np.nextafter(over, INF)) == INF
    assert fm.exp(under) == TINY and fm.exp(np.nextafter(under, -INF)) == 0.0
    assert fm.exp(-745.0) == math.exp(-745.0)  # subnormal, not flushed


def test_exp_special():
    assert fm.exp(0.0) == 1.0 and fm.exp(-0.0) == 1.0
    assert fm.exp(INF) == INF
    assert fm.exp(-INF) == 0.0
    assert math.isnan(fm.exp(NAN))
    assert fm.exp(DMAX) == INF and fm.exp(-DMAX) == 0.0
    assert fm.exp(1000.0) == INF and fm.exp(-1000.0) == 0.0
    assert fm.exp(TINY) == 1.0 and fm.exp(-TINY) == 1.0
    assert fm.exp(1.0) == pytest.approx(math.e, rel=2.3e-16)


# ---------------------------------------------------------------------------
# log
# ---------------------------------------------------------------------------

@needs_ld
def test_log_accuracy_wide():
    rng = np.random.default_rng(RNG_SEED + 1)
    x = np.concatenate([
        log_uniform(rng, 200_000, -307.5, 308.2, signed=False),
        rng.uniform(0.5, 2.0, 100_000),
        rng.uniform(0.99, 1.01, 50_000),
        1.0 + log_uniform(rng, 20_000, -15.6, -3),
        rng.uniform(0.0, MIN_NORMAL, 20_000),  # subnormals
        log_uniform(rng, 20_000, -323.3, -308, signed=False),
        np.array([TINY, 2 * TINY, 3 * TINY, MIN_NORMAL, np.nextafter(MIN_NORMAL, 0), DMAX]),
    ])
    check("log", x)


def test_log_special():
    assert fm.log(0.0) == -INF and fm.log(-0.0) == -INF
    assert math.isnan(fm.log(-1.0)) and math.isnan(fm.log(-TINY)) and math.isnan(fm.log(-INF))
    assert fm.log(INF) == INF
    assert math.isnan(fm.log(NAN))
    assert fm.log(1.0) == 0.0
    assert fm.log(TINY) == math.log(TINY)
    assert fm.log(DMAX) == math.log(DMAX)
    for k in range(-1074, 1024, 37):
        assert fm.log(2.0 ** k) == pytest.approx(k * math.log(2.0), rel=2.3e-16, abs=0)


# ---------------------------------------------------------------------------
# log1p
# ---------------------------------------------------------------------------

@needs_ld
def test_log1p_accuracy_wide():
    rng = np.random.default_rng(RNG_SEED + 2)
    x = np.concatenate([
        log_uniform(rng, 100_000, -323, 308.2, signed=False),
        -log_uniform(rng, 100_000, -323, -1e-12, signed=False),
        rng.uniform(-1.0, 1.0, 50_000),
        rng.uniform(-1e-6, 1e-6, 20_000),
        log_uniform(rng, 50_000, -20, -14),  # u = 1 + x rounds coarsely
        -1.0 + log_uniform(rng, 20_000, -16, -0.3, signed=False),
    ])
    x = x[x > -1.0]
    check("log1p", x)


def test_log1p_tiny_is_exact():
    rng = np.random.default_rng(RNG_SEED + 3)
    x = log_uniform(rng, 10_000, -323.5, -17)
    x = np.concatenate([x, [TINY, -TINY, MIN_NORMAL, -MIN_NORMAL, 1e-300, -1e-300]])
    np.testing.assert_array_equal(run("log1p", x), x)


def test_log1p_special():
    assert fm.log1p(-1.0) == -INF
    assert math.isnan(fm.log1p(np.nextafter(-1.0, -2.0)))
    assert math.isnan(fm.log1p(-2.0)) and math.isnan(fm.log1p(-INF))
    assert fm.log1p(INF) == INF
    assert math.isnan(fm.log1p(NAN))
    assert fm.log1p(0.0) == 0.0
    assert math.copysign(1.0, fm.log1p(-0.0)) == -1.0
    assert fm.log1p(DMAX) == math.log1p(DMAX)
    assert fm.log1p(np.nextafter(-1.0, 0.0)) == math.log1p(np.nextafter(-1.0, 0.0))


# ---------------------------------------------------------------------------
# softplus / sigmoid / log_sigmoid
# ---------------------------------------------------------------------------

def _composite_inputs(seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.uniform(-50.0, 50.0, 100_000),
        log_uniform(rng, 100_000, -20, 30),
        rng.uniform(-745.0, -700.0, 10_000),
        rng.uniform(700.0, 745.0, 10_000),
        np.array([0.0, -0.0, TINY, -TINY, 1e30, -1e30]),
    ])


@needs_ld
@pytest.mark.parametrize("name", ["softplus", "sigmoid", "log_sigmoid"])
def test_composite_accuracy(name):
    check(name, _composite_inputs(RNG_SEED + 4))


def test_composite_vs_float64_formulas():
    # Against numpy float64 formulas (no long double needed): a few ulp.
    x = _composite_inputs(RNG_SEED + 5)
    with np.errstate(all="ignore"):
        sp = np.logaddexp(0.0, x)
        ls = -np.logaddexp(0.0, -x)
        sg = np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))
    for name, want in [("softplus", sp), ("log_sigmoid", ls), ("sigmoid", sg)]:
        got = run(name, x)
        err = np.abs(got - want) / np.spacing(np.abs(want))
        assert err.max() <= 6, (name, err.max(), x[np.argmax(err)])


def test_composite_special_and_huge():
    for x in (DMAX, 1e308, 1e30, 800.0):
        assert fm.softplus(x) == x
        assert fm.softplus(-x) == 0.0
        assert fm.sigmoid(x) == 1.0
        assert fm.sigmoid(-x) == 0.0
        assert fm.log_sigmoid(x) == 0.0
        assert fm.log_sigmoid(-x) == -x
    assert fm.softplus(INF) == INF and fm.softplus(-INF) == 0.0
    assert fm.sigmoid(INF) == 1.0 and fm.sigmoid(-INF) == 0.0
    assert fm.log_sigmoid(INF) == 0.0 and fm.log_sigmoid(-INF) == -INF
    for f in (fm.softplus, fm.sigmoid, fm.log_sigmoid):
        assert math.isnan(f(NAN))
    assert fm.softplus(0.0) == math.log(2.0)
    assert fm.sigmoid(0.0) == 0.5
    assert fm.log_sigmoid(0.0) == -math.log(2.0)
    assert fm.sigmoid(-40.0) == pytest.approx(math.exp(-40.0), rel=1e-15)
    assert fm.softplus(-40.0) == pytest.approx(math.exp(-40.0), rel=1e-15)


# ---------------------------------------------------------------------------
# hypothesis: any float64, scalar dispatch from Python
# ---------------------------------------------------------------------------

_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _scalar_ref(name, x):
    want = ref(name, np.array([x]))
    with np.errstate(all="ignore"):
        return want, want.astype(np.float64)[0]


@needs_ld
@settings(max_examples=300, deadline=None)
@given(x=_floats, name=st.sampled_from(NAMES))
def test_hypothesis_any_float(x, name):
    got = FUNCS[name](x)
    want, want64 = _scalar_ref(name, x)
    if not np.isfinite(want64):
        assert (math.isnan(got) and math.isnan(want64)) or got == want64
    else:
        err = ulp_error(np.array([got]), want)[0]
        assert err <= TOL[name], (name, x, got, want64, err)


@needs_ld
@settings(max_examples=200, deadline=None)
@given(x=st.floats(min_value=-1e-8, max_value=1e-8, allow_subnormal=True))
def test_hypothesis_log1p_small(x):
    want, want64 = _scalar_ref("log1p", x)
    assert ulp_error(np.array([fm.log1p(x)]), want)[0] <= TOL["log1p"]


# ---------------------------------------------------------------------------
# argument types, float32 loops, prange, vectorisation
# ---------------------------------------------------------------------------

def test_scalar_argument_types():
    # float32 and integer arguments are converted to float64 first.
    assert fm.exp(np.float32(1.5)) == fm.exp(1.5)
    assert fm.log(2) == fm.log(2.0)
    assert fm.log1p(np.float32(0.25)) == fm.log1p(0.25)
    assert fm.sigmoid(np.int64(3)) == fm.sigmoid(3.0)


KERNELS_F32 = {name: _make_kernel_f32(FUNCS[name]) for name in ["exp", "softplus", "sigmoid"]}


@pytest.mark.parametrize("name", sorted(KERNELS_F32))
def test_float32_input_loop(name):
    rng = np.random.default_rng(RNG_SEED + 6)
    x32 = (rng.standard_normal(10_001) * 20).astype(np.float32)
    x32[:4] = [np.inf, -np.inf, np.nan, 0.0]
    out = np.empty(x32.size)
    KERNELS_F32[name](x32, out)
    np.testing.assert_array_equal(out, run(name, x32.astype(np.float64)))


PAR_NAMES = ["log", "softplus", "sigmoid"]  # softplus = exp + log1p inside


@njit(parallel=True)
def _parallel(x, out):
    # Three functions that between them inline all four kernels (exp, log,
    # log1p, the sigmoid division); all six would triple the compile time.
    for i in prange(x.size):
        xi = x[i]
        out[0, i] = fm.log(xi)
        out[1, i] = fm.softplus(xi)
        out[2, i] = fm.sigmoid(xi)


def test_prange():
    rng = np.random.default_rng(RNG_SEED + 7)
    x = np.concatenate([
        rng.uniform(-800.0, 800.0, 50_000),
        log_uniform(rng, 50_000, -310, 308),
        [0.0, -0.0, INF, -INF, NAN, -1.0, TINY],
    ])
    out = np.empty((len(PAR_NAMES), x.size))
    _parallel(x, out)
    for j, name in enumerate(PAR_NAMES):
        want = run(name, x)
        # same IEEE operations per element; allow 1 ulp in case FMA
        # contraction differs between the two compiled loops.
        same = (out[j] == want) | (np.isnan(out[j]) & np.isnan(want))
        with np.errstate(invalid="ignore"):
            close = np.abs(out[j] - want) <= np.spacing(np.abs(want))
        assert np.all(same | close), name


@njit
def _sum_softplus(x):
    s = 0.0
    for i in range(x.size):
        s = fm.reassoc_add(s, fm.softplus(x[i]))
    return s


def test_reassoc_add_sum():
    rng = np.random.default_rng(RNG_SEED + 8)
    x = rng.standard_normal(100_003) * 5
    want = float(np.logaddexp(0.0, x).sum())
    assert _sum_softplus(x) == pytest.approx(want, rel=1e-12)


# packed double arithmetic in the optimised IR (a loop of libm calls can still
# contain <N x double> loads/stores, so look for the arithmetic itself)
_PACKED_MATH = re.compile(
    r"= (?:fmul|fadd|fsub|fdiv)[^\n]*<\d+ x double>|@llvm\.fmuladd\.v\d+f64"
)
_VECTOR_ARCH = platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64")


@pytest.mark.skipif(not _VECTOR_ARCH, reason="vector-width check only on x86-64/arm64")
def test_loops_vectorise():
    """The point of the module: the loops must contain packed double math."""
    x = np.linspace(-5.0, 5.0, 64)
    out = np.empty_like(x)
    kernels = [(n, KERNELS[n], x) for n in NAMES]
    kernels += [(n + "_f32", KERNELS_F32[n], x.astype(np.float32)) for n in sorted(KERNELS_F32)]
    kernels += [("reassoc_add", _sum_softplus, None)]
    for name, k, arg in kernels:
        if arg is None:
            k(x)
        else:
            k(arg, out)
        llvm = "\n".join(k.inspect_llvm().values())
        assert _PACKED_MATH.search(llvm), f"{name}: loop did not vectorise"


# ---------------------------------------------------------------------------
# exp_to_float32 and max_ignoring_nan (the softmax block loops)
# ---------------------------------------------------------------------------

@njit
def _exp_to_float32_loop(a, out):
    for i in range(a.size):
        out[i] = fm.exp_to_float32(a[i])


@njit
def _max_loop(a):
    m = -INF
    for i in range(a.size):
        m = fm.max_ignoring_nan(m, a[i])
    return m


@needs_ld
def test_exp_to_float32_accuracy():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-110.0, 95.0, 200_000), np.linspace(-104.5, 89.5, 200_001),
                        [88.72, 88.7228, 88.73, -87.33, -87.34, -103.97, -103.98, -104.0]])
    out = np.empty(x.size, dtype=np.float32)
    _exp_to_float32_loop(x, out)
    exact = np.exp(x.astype(LD))
    f32 = np.finfo(np.float32)
    normal = (exact >= f32.tiny) & (exact <= f32.max)
    ulp = np.spacing(exact[normal].astype(np.float32)).astype(LD)
    err = np.abs(out[normal].astype(LD) - exact[normal]) / ulp
    assert err.max() <= 2.0, err.max()
    small = exact < f32.tiny  # subnormal or zero results: within one subnormal step
    assert np.max(np.abs(out[small].astype(LD) - exact[small])) <= LD(f32.smallest_subnormal)
    assert np.all(np.isinf(out[exact > LD(f32.max) * (1 + LD(2.0) ** -25)]))


def test_exp_to_float32_special():
    x = np.array([INF, -INF, NAN, 0.0, -0.0, 1000.0, -1000.0, DMAX, -DMAX])
    out = np.empty(x.size, dtype=np.float32)
    _exp_to_float32_loop(x, out)
    np.testing.assert_array_equal(out, np.array([INF, 0.0, NAN, 1.0, 1.0, INF, 0.0, INF, 0.0], dtype=np.float32))


def test_max_ignoring_nan():
    x = np.array([NAN, -3.0, 2.5, NAN, -INF, 1.0])
    assert _max_loop(x) == 2.5
    assert _max_loop(np.array([-INF, -INF])) == -INF
    assert _max_loop(np.array([1.0, INF, NAN])) == INF
    assert _max_loop(np.array([NAN, NAN])) == -INF  # the start value
    assert math.isnan(njit(lambda: fm.max_ignoring_nan(NAN, NAN))())
    rng = np.random.default_rng(3)
    y = rng.standard_normal(1001)
    assert _max_loop(y) == y.max()


@pytest.mark.skipif(not _VECTOR_ARCH, reason="no SIMD vectorisation expected")
def test_softmax_helpers_vectorise():
    x = np.linspace(-5.0, 5.0, 64)
    _exp_to_float32_loop(x, np.empty(64, dtype=np.float32))
    llvm = "\n".join(_exp_to_float32_loop.inspect_llvm().values())
    assert re.search(r"@llvm\.fmuladd\.v\d+f32", llvm), "exp_to_float32: no packed float32 math"
    _max_loop(x)
    llvm = "\n".join(_max_loop.inspect_llvm().values())
    assert re.search(r"llvm\.vector\.reduce\.fmax|@llvm\.maxnum\.v\d+f64", llvm), "max_ignoring_nan: not vectorised"

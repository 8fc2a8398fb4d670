"""numbaloss.dask on a real dask.distributed cluster: two worker processes, results
equal to the in-memory loss (float64, rtol 1e-12) for chunked, uneven and misaligned
inputs."""

import os
import pathlib
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import numbaloss as nl  # noqa: E402
import numbaloss.dask as nld  # noqa: E402

RTOL = 1e-12
# the matrix runs on the float64 reference backend, which compiles nothing in each new
# worker process; test_compiled_backend_on_the_workers runs the default backend there
BACKEND = "numpy"
REPO = str(pathlib.Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def client():
    # worker processes import numbaloss from this checkout (installed or not)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as dask_client:
            yield dask_client


def _rng():
    return np.random.default_rng(7)


def _binary(n=103, m=3):
    rng = _rng()
    y = (rng.random((n, m)) < 0.3).astype(np.float64)
    return y, rng.standard_normal((n, m)), rng.random(n)


def _labels(n=101, k=5):
    rng = _rng()
    return rng.integers(0, k, n), rng.standard_normal((n, k)), rng.random(n)


def _chunked(*arrays_and_chunks):
    return [da.from_array(a, chunks=c) for a, c in arrays_and_chunks]


# (loss, params, in-memory inputs and weights, their dask chunks)
CASES = {
    "bce misaligned 2-D": ("bce", {"from_logits": True}, _binary(), ((17, 2), (30, 3), 50)),
    "mse uneven 1-D": ("mse", {}, tuple(a[:, 0] for a in _binary()[:2]) + (_binary()[2],), (7, 40, 33)),
    "focal misaligned": ("focal", {"from_logits": True, "gamma": 1.5}, _binary(), ((13, 3), (20, 1), 101)),
    "huber": ("huber", {"delta": 0.4}, _binary(), ((25, 3), (25, 3), 25)),
    "cce labels, class weights, ignore_index, class axis chunked": (
        "cce", {"from_logits": True, "class_weight": np.arange(1.0, 6.0), "ignore_index": 3}, _labels(),
        ((20,), (25, 2), 33)),
    "cce soft targets, smoothing": (
        "cce", {"from_logits": True, "label_smoothing": 0.1},
        (np.eye(5)[_labels()[0]] * 0.9 + 0.02,) + _labels()[1:], ((10, 5), (30, 3), 101)),
    "categorical_focal": ("categorical_focal", {"from_logits": True, "alpha": 0.5}, _labels(),
                          ((50,), (21, 5), 60)),
}


def _case(name):
    loss, params, arrays, chunks = CASES[name]
    return loss, params, arrays[:-1], arrays[-1], _chunked(*zip(arrays, chunks))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", CASES)
def test_score_equals_in_memory(client, name, reduction, weighted):
    loss, params, arrays, weights, chunked = _case(name)
    *inputs, dask_weights = chunked
    expected = getattr(nl, loss)(*arrays, reduction=reduction, sample_weight=weights if weighted else None,
                                 backend=BACKEND, **params)
    got = nld.score(loss, *inputs, reduction=reduction, sample_weight=dask_weights if weighted else None,
                    backend=BACKEND, **params)
    assert isinstance(got, np.float64)
    np.testing.assert_allclose(got, expected, rtol=RTOL)


@pytest.mark.parametrize("name", CASES)
def test_grad_is_chunked_like_the_prediction(client, name):
    loss, params, arrays, weights, (*inputs, dask_weights) = _case(name)
    for w, dw in ((None, None), (weights, dask_weights)):
        for reduction in ("mean", "sum"):
            expected = getattr(nl, loss).grad(*arrays, reduction=reduction, sample_weight=w, backend=BACKEND,
                                              **params)
            got = nld.grad(loss, *inputs, reduction=reduction, sample_weight=dw, backend=BACKEND, **params)
            pred = inputs[-1]
            if getattr(nl, loss).family == "softmax":  # the class axis is merged
                pred = pred.rechunk({1: -1})
            assert got.chunks == pred.chunks
            np.testing.assert_allclose(got.compute(), expected, rtol=RTOL, atol=1e-300)


def test_reduction_none_and_lazy_value(client):
    loss, params, arrays, weights, (*inputs, dask_weights) = _case("cce labels, class weights, "
                                                                   "ignore_index, class axis chunked")
    values = nld.score(loss, *inputs, reduction="none", sample_weight=dask_weights, backend=BACKEND, **params)
    assert values.chunks == (inputs[1].chunks[0],)  # the prediction's row chunks
    np.testing.assert_allclose(values.compute(), nl.cce(*arrays, reduction="none", sample_weight=weights,
                                                         backend=BACKEND, **params), rtol=RTOL)
    lazy = nld.score(loss, *inputs, compute=False, backend=BACKEND, **params)
    assert isinstance(lazy, da.Array) and lazy.shape == ()
    np.testing.assert_allclose(lazy.compute(), nl.cce(*arrays, backend=BACKEND, **params), rtol=RTOL)


def test_compiled_backend_on_the_workers(client):
    y, z, w = _binary()
    labels, logits, _ = _labels()
    for loss, arrays, chunks in ((nl.bce, (y, z), (20, 33)), (nl.cce, (labels, logits), (20, (30, 2)))):
        weights = w[:len(arrays[0])]
        # in memory first: the workers then load the kernels from Numba's disk cache
        expected = loss(*arrays, sample_weight=weights, from_logits=True)
        got = nld.score(loss, *_chunked(*zip(arrays, chunks)), sample_weight=da.from_array(weights, chunks=40),
                        from_logits=True)
        np.testing.assert_allclose(got, expected, rtol=1e-10)  # compiled sums run in their own order
    assert all(client.run(lambda: "numbaloss" in sys.modules).values())  # the work ran there


@pytest.mark.parametrize("loss, make", [
    ("cycle_consistency", lambda rng: (rng.standard_normal((40, 3)), rng.standard_normal((40, 3)),
                                       rng.standard_normal(7), rng.standard_normal(7))),
    ("lsgan_discriminator", lambda rng: (rng.standard_normal(30), rng.standard_normal(50))),
])
def test_two_term_losses_average_each_term_over_its_own_inputs(client, loss, make):
    arrays = make(_rng())
    chunked = _chunked(*((a, c) for a, c in zip(arrays, (9, 13, 3, 7))))
    for reduction in ("mean", "sum"):
        np.testing.assert_allclose(nld.score(loss, *chunked, reduction=reduction, backend=BACKEND),
                                   getattr(nl, loss)(*arrays, reduction=reduction, backend=BACKEND), rtol=RTOL)
    for got, expected in zip(nld.grad(loss, *chunked, backend=BACKEND),
                             getattr(nl, loss).grad(*arrays, backend=BACKEND)):
        np.testing.assert_allclose(got.compute(), expected, rtol=RTOL)


def test_single_input_loss(client):
    d = _rng().random(57)
    np.testing.assert_allclose(nld.score("gan_generator", da.from_array(d, chunks=10), backend=BACKEND),
                               nl.gan_generator(d, backend=BACKEND), rtol=RTOL)


@pytest.mark.parametrize("loss", ["info_nce", "nt_xent", "supcon", "batch_hard_triplet", "triplet"])
def test_batch_coupled_losses_need_the_batch_in_one_chunk(client, loss):
    arrays = getattr(nl, loss).example(_rng(), (12, 4))
    with pytest.raises(ValueError, match="one chunk"):
        nld.score(loss, *(da.from_array(a, chunks=6) for a in arrays))
    with pytest.raises(ValueError, match="one chunk"):
        nld.grad(loss, *(da.from_array(a, chunks=6) for a in arrays))
    whole = [da.from_array(a) for a in arrays]
    in_memory = getattr(nl, loss)
    np.testing.assert_allclose(nld.score(loss, *whole, backend=BACKEND), in_memory(*arrays, backend=BACKEND),
                               rtol=RTOL)
    for got, expected in zip(nld.grad(loss, *whole, backend=BACKEND), in_memory.grad(*arrays, backend=BACKEND)):
        np.testing.assert_allclose(got.compute(), expected, rtol=RTOL)


def test_bad_inputs_raise_before_any_work():
    y, z, w = _binary()
    with pytest.raises(ValueError, match="rows"):
        nld.score("bce", da.from_array(y[:50]), da.from_array(z))
    with pytest.raises(ValueError, match="same shape"):
        nld.score("bce", da.from_array(y), da.from_array(z[:, :2]))
    with pytest.raises(ValueError, match="unknown loss"):
        nld.score("no_such_loss", y, z)
    with pytest.raises(TypeError, match="sample_weight"):
        nld.score("lsgan_discriminator", z, z, sample_weight=w)

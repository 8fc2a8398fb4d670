"""numbaloss.gbdt with the real XGBoost and LightGBM: numbaloss objectives reproduce the
libraries' built-in ones, train focal on an imbalanced set, and the metrics equal the
libraries' log-losses."""

import numpy as np
import pytest

import numbaloss as nl
import numbaloss.gbdt as ng

N, ROUNDS = 500, 10


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 5))
    binary = (x[:, 0] + 0.5 * rng.standard_normal(N) > 0.3).astype(np.float64)
    classes = np.where(x[:, 1] > 0.5, 2, rng.integers(0, 3, N))
    return x, binary, classes, rng.uniform(0.5, 2.0, N)


# -------------------------------------------------------------------- XGBoost

XGB = dict(max_depth=3, eta=0.3, tree_method="hist", nthread=1, seed=0)


@pytest.fixture(scope="module")
def xgb():
    return pytest.importorskip("xgboost")


def test_xgboost_bce_reproduces_binary_logistic(xgb):
    x, y, _, w = _data()
    start = ng.init_score("bce", y, w)

    def dtrain():  # both start from the same margin, so base_score plays no part
        return xgb.DMatrix(x, label=y, weight=w, base_margin=np.full(N, start))

    builtin = xgb.train(dict(XGB, objective="binary:logistic"), dtrain(), ROUNDS)
    ours = xgb.train(dict(XGB, disable_default_eval_metric=True), dtrain(), ROUNDS,
                     obj=ng.xgboost_objective("bce"))
    np.testing.assert_allclose(ours.predict(dtrain(), output_margin=True),
                               builtin.predict(dtrain(), output_margin=True), atol=1e-5)


def test_xgboost_cce_reproduces_multi_softprob(xgb):
    x, _, labels, _ = _data()
    start = ng.init_score("cce", labels)

    def dtrain():
        return xgb.DMatrix(x, label=labels, base_margin=np.tile(start, (N, 1)))

    # XGBoost's softprob Hessian is 2·p(1 − p), twice the true diagonal numbaloss gives.
    # Without L2 and min_child_weight a uniform Hessian scale leaves the splits alone
    # and scales the leaf values -G/H, so the same model comes from half the step size.
    params = dict(XGB, num_class=3, reg_lambda=0.0, min_child_weight=0.0)
    builtin = xgb.train(dict(params, objective="multi:softprob"), dtrain(), ROUNDS)
    ours = xgb.train(dict(params, eta=XGB["eta"] / 2, disable_default_eval_metric=True), dtrain(), ROUNDS,
                     obj=ng.xgboost_objective("cce"))
    margins = ours.predict(dtrain(), output_margin=True)
    assert margins.shape == (N, 3)
    np.testing.assert_allclose(margins, builtin.predict(dtrain(), output_margin=True), atol=1e-5)


def test_xgboost_focal_trains_on_an_imbalanced_set(xgb):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 4))
    y = (x[:, 0] + 0.3 * rng.standard_normal(2000) > 1.8).astype(np.float64)  # about 4 % positive
    start = ng.init_score("focal", y, gamma=2.0)
    dtrain = xgb.DMatrix(x, label=y, base_margin=np.full(len(y), start))
    booster = xgb.train(dict(XGB, disable_default_eval_metric=True), dtrain, 30,
                        obj=ng.xgboost_objective("focal", gamma=2.0))
    margins = booster.predict(dtrain, output_margin=True)
    assert np.isfinite(margins).all()
    # better than the best constant, which already beats 0
    constant = nl.focal(y, np.full(len(y), start), from_logits=True)
    assert constant < nl.focal(y, np.zeros(len(y)), from_logits=True)
    assert nl.focal(y, margins, from_logits=True) < 0.5 * constant
    assert np.mean((margins > 0) == (y > 0)) > 0.97  # above the 96 % of "always negative"


def test_xgboost_metric_equals_logloss(xgb):
    x, y, labels, w = _data()
    for objective, target, loss, metric, extra in (
            ("binary:logistic", y, "bce", "logloss", {}),
            ("multi:softprob", labels, "cce", "mlogloss", {"num_class": 3})):
        dtrain = xgb.DMatrix(x, label=target, weight=w)
        history = {}
        # built-in objectives hand custom metrics probabilities, not margins
        xgb.train(dict(XGB, objective=objective, eval_metric=metric, **extra), dtrain, 3,
                  evals=[(dtrain, "train")], evals_result=history,
                  custom_metric=ng.xgboost_metric(loss, from_logits=False))
        name = ng.xgboost_metric(loss).__name__  # the loss's name
        np.testing.assert_allclose(history["train"][name], history["train"][metric], rtol=1e-5)


def test_xgboost_sklearn_api(xgb):
    pytest.importorskip("sklearn")
    x, y, _, w = _data()
    model = xgb.XGBClassifier(objective=ng.xgboost_objective("bce"), n_estimators=ROUNDS, max_depth=3,
                              learning_rate=0.3, tree_method="hist", n_jobs=1, random_state=0,
                              eval_metric=ng.xgboost_metric("bce"))
    model.fit(x, y, sample_weight=w, eval_set=[(x, y)], sample_weight_eval_set=[w], verbose=False)
    margins = model.predict(x, output_margin=True)
    recorded = model.evals_result()["validation_0"]["binary_cross_entropy"][-1]
    np.testing.assert_allclose(recorded, nl.bce(y, margins, from_logits=True, sample_weight=w), rtol=1e-5)
    assert nl.bce(y, margins, from_logits=True) < 0.5 * nl.bce(y, np.zeros(N), from_logits=True)


# -------------------------------------------------------------------- LightGBM

LGB = dict(num_leaves=7, learning_rate=0.3, min_data_in_leaf=5, verbose=-1, num_threads=1,
           deterministic=True, force_col_wise=True, seed=0)


@pytest.fixture(scope="module")
def lgb():
    return pytest.importorskip("lightgbm")


def test_lightgbm_bce_reproduces_binary(lgb):
    x, y, _, w = _data()
    builtin = lgb.train(dict(LGB, objective="binary"), lgb.Dataset(x, y, weight=w), ROUNDS)
    # LightGBM starts "binary" from the log-odds of the weighted mean, as init_score does
    start = ng.init_score("bce", y, w)
    ours = lgb.train(dict(LGB, objective=ng.lightgbm_objective("bce")),
                     lgb.Dataset(x, y, weight=w, init_score=np.full(N, start)), ROUNDS)
    np.testing.assert_allclose(ours.predict(x, raw_score=True) + start, builtin.predict(x, raw_score=True),
                               atol=1e-5)


def test_lightgbm_cce_reproduces_multiclass(lgb):
    x, _, labels, _ = _data()
    # LightGBM's multiclass Hessian is K/(K − 1)·p(1 − p); without L2 and a minimum leaf
    # Hessian the same model comes from a step size divided by K/(K − 1) = 1.5.  It starts
    # from the log class priors, as init_score does.
    params = dict(LGB, num_class=3, min_sum_hessian_in_leaf=0.0)
    builtin = lgb.train(dict(params, objective="multiclass"), lgb.Dataset(x, labels), ROUNDS)
    start = ng.init_score("cce", labels)
    ours = lgb.train(dict(params, objective=ng.lightgbm_objective("cce"),
                          learning_rate=LGB["learning_rate"] / 1.5),
                     lgb.Dataset(x, labels, init_score=np.tile(start, (N, 1))), ROUNDS)
    np.testing.assert_allclose(ours.predict(x, raw_score=True) + start, builtin.predict(x, raw_score=True),
                               atol=1e-5)


def test_lightgbm_metric_equals_logloss(lgb):
    x, y, labels, w = _data()
    for objective, target, loss, metric, extra in (
            ("binary", y, "bce", "binary_logloss", {}),
            ("multiclass", labels, "cce", "multi_logloss", {"num_class": 3})):
        history = {}
        train = lgb.Dataset(x, target, weight=w)
        lgb.train(dict(LGB, objective=objective, metric=metric, **extra), train, 3, valid_sets=[train],
                  valid_names=["train"], feval=ng.lightgbm_metric(loss, from_logits=False),
                  callbacks=[lgb.record_evaluation(history)])
        name = ng.lightgbm_metric(loss).__name__  # the loss's name
        np.testing.assert_allclose(history["train"][name], history["train"][metric], rtol=1e-6)


def test_lightgbm_sklearn_api_passes_the_weights(lgb):
    pytest.importorskip("sklearn")
    x, _, labels, w = _data()
    model = lgb.LGBMClassifier(objective=ng.lightgbm_objective("cce"), n_estimators=ROUNDS, **LGB)
    model.fit(x, labels, sample_weight=w)
    margins = model.predict(x, raw_score=True)
    assert margins.shape == (N, 3)
    uniform = nl.cce(labels, np.zeros((N, 3)), from_logits=True, sample_weight=w)
    assert nl.cce(labels, margins, from_logits=True, sample_weight=w) < 0.7 * uniform


# -------------------------------------------------------------------- no library needed


@pytest.mark.parametrize("loss, params, y", [
    ("mse", {}, np.array([0.5, 2.0, -1.0, 4.0])),
    ("huber", {"delta": 0.5}, np.array([0.0, 0.1, 0.2, 10.0, -3.0])),
    ("bce", {"pos_weight": 3.0, "label_smoothing": 0.1}, np.array([0.0, 1.0, 0.0, 0.0, 1.0])),
    ("focal", {"gamma": 2.0}, np.array([0.0, 1.0, 0.0, 0.0, 0.0])),
])
def test_init_score_minimises_the_loss_over_constants(loss, params, y):
    w = np.linspace(0.5, 1.5, len(y))
    c = ng.init_score(loss, y, w, **params)
    value = getattr(nl, loss)
    logits = {"from_logits": True} if "from_logits" in value.params else {}
    best = value(y, np.full(len(y), c), sample_weight=w, **params, **logits)
    for shift in (-1e-3, 1e-3):
        assert best <= value(y, np.full(len(y), c + shift), sample_weight=w, **params, **logits)


def test_init_score_closed_forms():
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    w = np.array([1.0, 2.0, 1.0, 1.0, 0.5])
    mean = np.average(y, weights=w)
    assert ng.init_score("bce", y, w) == pytest.approx(np.log(mean / (1 - mean)), abs=1e-12)
    assert ng.init_score("mse", y, w) == pytest.approx(mean, abs=1e-12)
    labels = np.array([0, 2, 2, 1, 2])
    np.testing.assert_allclose(ng.init_score("cce", labels, n_classes=4)[:3], np.log([0.2, 0.2, 0.6]), atol=1e-9)


def test_objective_gradients_are_per_sample_weighted_and_floored():
    y = np.array([1.0, 1.0, 0.0])
    margins = np.array([-12.0, 0.5, 3.0])
    w = np.array([2.0, 0.5, 1.0])
    g, h = ng.xgboost_objective("focal", gamma=2.0)(y, margins, sample_weight=w)
    g_ref, h_ref = nl.focal.grad_hess(y, margins, from_logits=True, gamma=2.0)
    np.testing.assert_allclose(g, g_ref * w, rtol=1e-12)
    assert h_ref[0] < 0  # the focal Hessian is negative far from the target
    np.testing.assert_allclose(h, np.maximum(h_ref, 1e-16) * w, rtol=1e-12)
    g2, h2 = ng.lightgbm_objective("focal", gamma=2.0, hess_floor=0.1)(y, margins, w)
    np.testing.assert_allclose(g2, g)
    assert h2.min() >= 0.1 * w.min()


def test_objectives_reject_losses_without_a_hessian_and_probability_inputs():
    with pytest.raises(ValueError, match="Hessian"):
        ng.xgboost_objective("triplet")
    with pytest.raises(ValueError, match="margins"):
        ng.lightgbm_objective("bce", from_logits=False)
    with pytest.raises(TypeError, match="unexpected"):
        ng.xgboost_objective("bce", gama=2.0)
    with pytest.raises(ValueError, match="num_class"):
        ng.xgboost_objective("cce")(np.array([0.0, 1.0]), np.zeros(2))

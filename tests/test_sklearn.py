"""numbaloss.sklearn.make_scorer with real scikit-learn estimators, checked against
scikit-learn's own log-loss and squared-error scorers."""

import numpy as np
import pytest

import numbaloss as nl

pytest.importorskip("sklearn")
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402

from numbaloss.sklearn import make_scorer  # noqa: E402

CV = KFold(3, shuffle=True, random_state=0)


@pytest.fixture(scope="module")
def binary():
    return make_classification(240, 6, n_informative=4, random_state=0)


@pytest.fixture(scope="module")
def multiclass():
    X, y = make_classification(240, 6, n_informative=4, n_classes=3, random_state=1)
    return X, np.array(["cat", "dog", "emu"])[y]  # string labels go through classes_


@pytest.mark.parametrize("loss, params", [
    ("bce", {}),                               # predict_proba, column of classes_[1]
    ("bce", {"from_logits": True}),            # decision_function read as the logit
    ("cce", {}),                               # predict_proba, both columns
    ("cce", {"from_logits": True}),            # binary decision_function → logits [0, z]
])
def test_binary_cross_val_score_matches_neg_log_loss(binary, loss, params):
    X, y = binary
    ours = cross_val_score(LogisticRegression(), X, y, cv=CV, scoring=make_scorer(loss, **params))
    theirs = cross_val_score(LogisticRegression(), X, y, cv=CV, scoring="neg_log_loss")
    assert (ours < 0).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


@pytest.mark.parametrize("params", [{}, {"from_logits": True}])
def test_multiclass_cross_val_score_matches_neg_log_loss(multiclass, params):
    # multinomial logistic regression: softmax(decision_function) is predict_proba
    X, y = multiclass
    ours = cross_val_score(LogisticRegression(), X, y, cv=CV, scoring=make_scorer(nl.cce, **params))
    theirs = cross_val_score(LogisticRegression(), X, y, cv=CV, scoring="neg_log_loss")
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_grid_search_picks_what_neg_log_loss_picks(multiclass):
    X, y = multiclass
    grid = {"C": [0.003, 0.03, 0.3, 3.0]}
    ours = GridSearchCV(LogisticRegression(), grid, scoring=make_scorer("cce"), cv=CV).fit(X, y)
    theirs = GridSearchCV(LogisticRegression(), grid, scoring="neg_log_loss", cv=CV).fit(X, y)
    assert ours.best_params_ == theirs.best_params_
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"],
                               rtol=1e-10)
    # the refitted best model scores like log_loss on the data
    assert ours.score(X, y) == pytest.approx(-log_loss(y, ours.predict_proba(X)), rel=1e-10)


def test_regression_scorer_uses_predict():
    X, y = make_regression(150, 5, noise=5.0, random_state=0)
    ours = cross_val_score(Ridge(), X, y, cv=CV, scoring=make_scorer("mse"))
    theirs = cross_val_score(Ridge(), X, y, cv=CV, scoring="neg_mean_squared_error")
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    huber = cross_val_score(Ridge(), X, y, cv=CV, scoring=make_scorer("huber", delta=2.0))
    assert (huber < 0).all() and (huber > ours).all()  # Huber grows linearly beyond delta


def test_sample_weight_is_passed_to_the_loss(binary):
    X, y = binary
    model = LogisticRegression().fit(X, y)
    w = np.random.default_rng(0).uniform(0.1, 3.0, len(y))
    scorer = make_scorer("bce")
    assert scorer(model, X, y, sample_weight=w) == pytest.approx(
        -log_loss(y, model.predict_proba(X), sample_weight=w), rel=1e-10)


def test_scorer_parameters_reach_the_loss(binary):
    X, y = binary
    model = LogisticRegression().fit(X, y)
    p = model.predict_proba(X)[:, 1]
    expected = -float(nl.focal(y, p, gamma=1.0, alpha=None))
    assert make_scorer("focal", gamma=1.0, alpha=None)(model, X, y) == pytest.approx(expected, rel=1e-12)


def test_errors(binary, multiclass):
    with pytest.raises(ValueError, match="make_scorer takes one of"):
        make_scorer("nt_xent")
    with pytest.raises(TypeError, match="unexpected keyword"):
        make_scorer("bce", gama=2.0)
    with pytest.raises(ValueError, match="unknown loss 'bcee'"):
        make_scorer("bcee")
    X, y = multiclass
    model = LogisticRegression().fit(X, y)
    with pytest.raises(ValueError, match="binary_cross_entropy scores a binary classifier; this one has 3 classes"):
        make_scorer("bce")(model, X, y)
    with pytest.raises(ValueError, match="label 'yak' is not one of the estimator's classes"):
        make_scorer("cce")(model, X[:2], np.array(["cat", "yak"]))

"""The kNN head: the sklearn contract, k by leave-one-out, groups kept out of a row's own vote, explanations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.heads.knn import KNNHead


def _expected_failed_checks(estimator):
    if estimator.scoring != "accuracy":
        return {"check_class_weight_classifiers": "macro F1 and QWK choose k unweighted, and k = 1 votes "
                "alone; with accuracy (weighted as the votes are) k follows the weights and the check passes"}
    return {}


@parametrize_with_checks([KNNHead(), KNNHead(ks=(1, 5), scoring="f1_macro", class_weight="balanced")],
                         expected_failed_checks=_expected_failed_checks)
def test_knn_head_follows_the_sklearn_contract(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    """Three classes around their own direction in 32-d, 60 rows each, and 30 held-out rows."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 32)) * 2
    y = np.arange(210) % 3
    X = (centers[y] + rng.normal(size=(210, 32))).astype(np.float32)
    return X[:180], y[:180], X[180:], y[180:]


def test_learns_and_explains_with_training_rows(blobs):
    X, y, X_test, y_test = blobs
    head = KNNHead().fit(X, y)
    assert (head.predict(X_test) == y_test).mean() > 0.95
    assert head.cv_scores_[list(head.ks_).index(head.n_neighbors_)] == head.cv_scores_.max()
    sims, ids = head.kneighbors(X[:4], n_neighbors=3)
    assert np.array_equal(ids[:, 0], np.arange(4)) and np.allclose(sims[:, 0], 1, atol=1e-5)  # itself first
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    np.testing.assert_allclose(head.predict_proba(X_test).sum(axis=1), 1, rtol=1e-6)


def test_a_rows_own_group_never_votes_for_it():
    """Labels without signal, each image present 3 times: its copies would make leave-one-out perfect."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(90, 16))
    X = np.repeat(images, 3, axis=0) + 1e-3 * rng.normal(size=(270, 16))
    y = np.repeat(rng.integers(0, 2, 90), 3)
    groups = np.repeat(np.arange(90), 3)
    assert KNNHead(ks=(1,)).fit(X, y).cv_scores_[0] == 1.0
    assert KNNHead(ks=(1,)).fit(X, y, groups=groups).cv_scores_[0] < 0.7


def test_balanced_votes_find_the_rare_class():
    """A rare class inside a common one's spread: unweighted votes drown it, balanced votes recover it."""
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(400, 8)), rng.normal(loc=0.8, size=(40, 8))])
    y = np.array([0] * 400 + [1] * 40)
    plain = KNNHead(ks=(25,)).fit(X, y).predict(X)
    balanced = KNNHead(ks=(25,), class_weight="balanced").fit(X, y).predict(X)
    assert (balanced[y == 1] == 1).mean() > (plain[y == 1] == 1).mean() + 0.3

"""Classifier heads: each learns, searches choose as full grids do, groups stay whole, contracts hold."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.metrics import cohen_kappa_score, recall_score
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from featx.cores import usable_cores
from featx.errors import FeatxError
from featx.heads import (
    HEAD_NAMES,
    TRUSTED_TYPES,
    FoldEnsemble,
    LinearSVM,
    MLPHead,
    OrdinalThresholds,
    PathSearchCV,
    RBFFeatures,
    RidgeLOO,
    Rotation,
    RoundedRegression,
    SoftmaxRegression,
    cv_score,
    fit_head,
    fitted_params,
    is_ordinal_head,
    make_head,
    min_images_per_class,
    quadratic_weighted_kappa,
)
from featx.heads._parallel import blas_threads


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """These matrices are small: extra BLAS threads only spin, and on a busy 2-core machine
    OpenBLAS's spinning threads made this file 4x slower."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def features_along_a_line(latent, n_features, signal, rng):
    """Unit-variance noise plus `latent` times a direction of length `signal`."""
    direction = rng.normal(size=n_features)
    direction *= signal / np.linalg.norm(direction)
    noise = rng.normal(size=(len(latent), n_features))
    return (np.outer(latent, direction) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def separable():
    """Three classes (grades) whose means lie 8 standard deviations apart along a line in 64-d."""
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(450) % 3)
    X = features_along_a_line(y, 64, signal=8.0, rng=rng)
    return X[:300], y[:300], X[300:], y[300:]


@pytest.fixture(scope="module")
def skewed_grades():
    """Five grades cut from a noisy latent score; about 70% of rows are grade 0."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=2400)
    y = np.digitize(latent + 0.5 * rng.normal(size=2400), [0.6, 1.3, 1.8, 2.3])
    X = features_along_a_line(latent, 32, signal=1.0, rng=rng)
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture(scope="module")
def imbalanced():
    """Two overlapping classes, 1 row in 10 of the minority class 1."""
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.1).astype(int)
    X = rng.normal(size=(1000, 16)).astype(np.float32)
    X[:, 0] += 1.5 * y
    return X[:600], y[:600], X[600:], y[600:]


@pytest.fixture(scope="module")
def overlapping():
    """Four classes in 20-d that overlap: scores change with C, so searches have something to choose."""
    rng = np.random.default_rng(3)
    y = rng.permutation(np.arange(600) % 4)
    means = rng.normal(size=(4, 20)) * 0.6
    X = (means[y] + rng.normal(size=(600, 20)) * np.linspace(0.3, 3.0, 20)).astype(np.float32)
    return X, y


# ----------------------------------------------------------------------------------------------
# every head


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_every_head_learns_a_separable_problem(name, separable):
    X_train, y_train, X_test, y_test = separable
    head = fit_head(make_head(name, n_classes=3), X_train, y_train)
    # sgd's penalties suit thousands of rows (its C grid stops at 3e-3): on 300 it scores 0.86. knn
    # compares directions (cosine), and the middle grade sits at the mean, where direction is noise: 0.83.
    assert np.mean(head.predict(X_test) == y_test) >= (0.8 if name in ("sgd", "knn") else 0.95)
    np.testing.assert_array_equal(head.classes_, [0, 1, 2])
    if name == "ridge":
        assert not hasattr(head, "predict_proba")  # a regression of the grade has no class probabilities
    else:
        probabilities = head.predict_proba(X_test)
        assert probabilities.shape == (len(X_test), 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(head.predict(X_test), head.classes_[probabilities.argmax(axis=1)])
    if is_ordinal_head(name):
        assert head.expected_grade(X_test).shape == (len(X_test),)


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize(("folds", "grouped"), [(None, False), (None, True), (2, False), (2, True)])
def test_fitted_heads_load_with_skops_trusting_only_the_listed_types(name, folds, grouped, separable):
    X_train, y_train, X_test, _ = separable
    groups = np.arange(len(y_train)) // 2 if grouped else None  # pairs of rows: an image and its copy
    head = make_head(name, n_classes=3, folds=folds, grouped=grouped)
    fit_head(head, X_train[:120], y_train[:120], None if groups is None else groups[:120])
    dumped = skops.io.dumps(head)
    assert set(skops.io.get_untrusted_types(data=dumped)) <= set(TRUSTED_TYPES)
    loaded = skops.io.loads(dumped, trusted=list(TRUSTED_TYPES))
    np.testing.assert_array_equal(loaded.predict(X_test), head.predict(X_test))


def test_every_trusted_type_is_held_by_some_head(separable):
    """The list trusts nothing that no head holds: each entry is a type a loaded file may construct."""
    X_train, y_train, _, _ = separable
    groups = np.arange(120) // 2
    held = set()
    for name in HEAD_NAMES:
        for folds, grouped in ((None, False), (2, True)):
            head = fit_head(make_head(name, n_classes=3, folds=folds, grouped=grouped), X_train[:120], y_train[:120],
                            groups if grouped else None)
            held |= set(skops.io.get_untrusted_types(data=skops.io.dumps(head)))
    assert held == set(TRUSTED_TYPES)


@pytest.mark.parametrize("name", ["logreg", "svm", "svm-rbf", "ridge", "mlp", "sgd"])
def test_balanced_class_weight_raises_minority_recall(name, imbalanced):
    X_train, y_train, X_test, y_test = imbalanced
    plain = fit_head(make_head(name, n_classes=2), X_train, y_train)
    balanced = fit_head(make_head(name, n_classes=2, class_weight="balanced"), X_train, y_train)
    plain_recall = recall_score(y_test, plain.predict(X_test))
    balanced_recall = recall_score(y_test, balanced.predict(X_test))
    assert balanced_recall > plain_recall + 0.2


def test_make_head_refuses_what_a_user_can_get_wrong_in_one_line():
    with pytest.raises(FeatxError, match="logreg, svm, svm-rbf, ridge, ordinal, mlp, sgd"):
        make_head("forest", n_classes=2)
    with pytest.raises(FeatxError, match="class_weight"):
        make_head("logreg", n_classes=2, class_weight="inverse")
    with pytest.raises(FeatxError, match="accuracy, f1_macro, qwk"):
        make_head("logreg", n_classes=2, metric="auc")
    with pytest.raises(FeatxError, match="folds must be at least 2"):
        make_head("logreg", n_classes=2, folds=1)


def test_ordinal_heads_are_ridge_and_ordinal():
    assert [name for name in HEAD_NAMES if is_ordinal_head(name)] == ["ridge", "ordinal"]


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_make_head_outputs_clone_and_take_parameters(name):
    head = make_head(name, n_classes=4, class_weight="balanced", n_jobs=2, seed=7, cv=4, folds=3)
    copy = clone(head)
    assert copy is not head
    assert copy.get_params().keys() == head.get_params().keys()
    params = head.get_params()
    assert all(value == 7 for key, value in params.items() if key.endswith("seed"))
    assert all(value == 4 for key, value in params.items() if key.endswith("cv") and value != "search")
    key = next(k for k in params if k.endswith("class_weight"))
    assert params[key] == "balanced"
    copy.set_params(**{key: None})
    assert copy.get_params()[key] is None and head.get_params()[key] == "balanced"


# ----------------------------------------------------------------------------------------------
# how many images per class


@pytest.mark.parametrize(("name", "folds", "need", "why"), [
    ("logreg", None, 3, "3-fold search"),
    ("svm", None, 3, "3-fold search"),
    ("ordinal", None, 3, "3-fold search"),
    ("ridge", None, 3, "no inner cross-validation"),
    ("mlp", None, 3, "no inner cross-validation"),
    ("logreg", 3, 5, "3-fold ensemble > 3-fold search"),
    ("ridge", 4, 4, "4-fold ensemble"),
    ("ordinal", 5, 5, "5-fold ensemble > 3-fold search"),
])
def test_min_images_per_class_follows_the_heads_nested_splits(name, folds, need, why):
    assert min_images_per_class(name, folds) == (need, why)


@pytest.mark.parametrize(("name", "folds"), [("logreg", None), ("svm", None), ("ordinal", None), ("logreg", 3),
                                             ("svm-rbf", 2)])
def test_a_head_trains_on_its_minimum_images_per_class(name, folds):
    need, _ = min_images_per_class(name, folds)
    y = np.repeat(np.arange(3), need)
    X = features_along_a_line(y, 8, 8.0, np.random.default_rng(0))
    head = fit_head(make_head(name, n_classes=3, folds=folds), X, y)
    assert np.mean(head.predict(X) == y) > 0.8


# ----------------------------------------------------------------------------------------------
# searches


def test_a_path_search_chooses_what_a_full_grid_search_chooses(overlapping):
    X, y = overlapping
    values = np.logspace(-4, 2, 7)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    model = make_pipeline(StandardScaler(), SoftmaxRegression(tol=1e-6))
    path = PathSearchCV(model, "C", values, scoring="neg_log_loss", cv=folds).fit(X, y)
    grid = GridSearchCV(model, {"softmaxregression__C": values}, scoring="neg_log_loss", cv=folds).fit(X, y)
    # Equal up to the solver's tolerance: the path's fits start from the previous value's solution.
    np.testing.assert_allclose(path.cv_results_["mean_test_neg_log_loss"], grid.cv_results_["mean_test_score"],
                               rtol=1e-3)
    assert path.best_params_["C"] == grid.best_params_["softmaxregression__C"]
    np.testing.assert_allclose(path.predict_proba(X), grid.predict_proba(X), atol=1e-4)


def test_a_path_stops_patience_values_past_its_best(overlapping):
    X, y = overlapping
    values = np.logspace(-4, 4, 9)
    model = make_pipeline(StandardScaler(), SoftmaxRegression())
    full = PathSearchCV(model, "C", values, scoring="neg_log_loss").fit(X, y)
    early = PathSearchCV(model, "C", values, scoring="neg_log_loss", patience=2).fit(X, y)
    assert 0 < full.best_index_ < len(values) - 3  # the curve peaks inside the grid
    assert early.best_params_ == full.best_params_
    assert len(early.cv_results_["param_C"]) < len(values)
    np.testing.assert_allclose(early.predict_proba(X), full.predict_proba(X), atol=1e-6)


def test_logreg_chooses_by_log_loss_and_reports_accuracy(overlapping):
    X, y = overlapping
    head = fit_head(make_head("logreg", n_classes=4), X, y)
    assert head.scoring == "neg_log_loss"
    assert cv_score(head) == pytest.approx(head.cv_results_["mean_test_accuracy"][head.best_index_])
    assert 0.25 < cv_score(head) <= 1.0
    assert fitted_params(head) == {"C": head.best_params_["C"]}


def test_searches_score_qwk_on_every_grade_even_one_missing_from_the_rows(skewed_grades):
    X, y, _, _ = skewed_grades
    rows = y != 2  # no grade 2 to train on: grades 1 and 3 are still two apart
    X, y = X[rows], y[rows]
    head = fit_head(make_head("logreg", n_classes=5, metric="qwk"), X, y)
    folds = StratifiedKFold(3, shuffle=True, random_state=0).split(X, y)
    for fold, (_, test) in enumerate(folds):
        predicted = head.classes_[head.oof_proba_[test].argmax(axis=1)]
        expected = cohen_kappa_score(y[test], predicted, weights="quadratic", labels=range(5))
        assert head.cv_results_[f"split{fold}_test_qwk"][head.best_index_] == pytest.approx(expected)


def test_softmax_regression_is_logistic_regression_and_a_rotation_changes_nothing(overlapping):
    X, y = overlapping
    X = X.astype(np.float64)  # float32 products would limit the agreement to about 1e-4
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000)).fit(X, y)
    ours = make_pipeline(StandardScaler(), SoftmaxRegression(C=0.05, tol=1e-8)).fit(X, y)
    rotated = make_pipeline(StandardScaler(), PCA(svd_solver="covariance_eigh"),
                            SoftmaxRegression(C=0.05, tol=1e-8)).fit(X, y)
    np.testing.assert_allclose(ours[-1].coef_, reference[-1].coef_, atol=1e-4)
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(rotated.predict_proba(X), reference.predict_proba(X), atol=1e-5)


def test_a_rotation_lets_the_preconditioner_find_the_same_optimum_in_fewer_steps():
    """Correlated features (as pooled CNN features are): on their principal axes, rescaling each axis
    by its curvature makes the problem round, so L-BFGS needs far fewer steps to the same solution."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=600)
    mixing = rng.normal(size=(30, 30)) * np.logspace(0, -2, 30)[:, None]  # variances over 4 decades
    X = (rng.normal(size=(600, 30)) + 0.5 * y[:, None]) @ mixing
    plain = make_pipeline(StandardScaler(), SoftmaxRegression(C=10.0, tol=1e-7)).fit(X, y)
    rotated = make_pipeline(StandardScaler(), PCA(svd_solver="covariance_eigh"),
                            SoftmaxRegression(C=10.0, tol=1e-7)).fit(X, y)
    np.testing.assert_allclose(rotated.predict_proba(X), plain.predict_proba(X), atol=1e-4)
    assert rotated[-1].n_iter_ < plain[-1].n_iter_ / 2


def test_linear_svm_minimises_its_stated_objective():
    """Its solution is the minimum of the weighted Weston-Watkins squared hinge, found by brute force too."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(60, 3)) + y[:, None]
    sample_weight = rng.uniform(0.5, 2.0, size=60)
    weights = sample_weight * np.where(y == 2, 3.0, 1.0)  # class 2 weighted 3x
    C = 0.3

    def objective(flat):
        coef, intercept = flat[:9].reshape(3, 3), flat[9:]
        scores = X @ coef.T + intercept
        margins = np.maximum(0.0, 1.0 - scores[np.arange(60), y][:, None] + scores)
        margins[np.arange(60), y] = 0.0
        return 0.5 * np.sum(coef**2) + C * weights @ (margins**2).sum(axis=1)

    svm = LinearSVM(C=C, tol=1e-9, class_weight={0: 1.0, 1: 1.0, 2: 3.0}).fit(X, y, sample_weight=sample_weight)
    brute = minimize(objective, np.zeros(12), method="Powell", options={"maxiter": 200_000, "xtol": 1e-10,
                                                                       "ftol": 1e-14})
    ours = np.append(svm.coef_.ravel(), svm.intercept_)
    assert objective(ours) == pytest.approx(brute.fun, rel=1e-6)
    np.testing.assert_allclose(svm.coef_.ravel(), brute.x[:9], atol=1e-3)
    # Adding one constant to every intercept changes no score difference: only their differences are defined.
    np.testing.assert_allclose(np.diff(svm.intercept_), np.diff(brute.x[9:]), atol=1e-3)


def test_rbf_features_reproduce_the_rbf_kernel_on_their_landmarks():
    from sklearn.metrics.pairwise import rbf_kernel

    X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    every_row = RBFFeatures(n_components=500).fit(X)  # more landmarks than rows: every row is one
    mapped = every_row.transform(X)
    np.testing.assert_allclose(mapped @ mapped.T, rbf_kernel(X, gamma=1 / 16), atol=1e-5)
    few = RBFFeatures(n_components=50, gamma=0.1).fit(X)
    landmarks = few.transform(few.landmarks_)
    np.testing.assert_allclose(landmarks @ landmarks.T, rbf_kernel(few.landmarks_, gamma=0.1), atol=1e-5)


def test_ridge_loo_chooses_and_fits_as_ridge_cv():
    rng = np.random.default_rng(0)
    for n_rows, n_features in ((300, 40), (40, 120)):  # the covariance and the Gram decompositions
        X = rng.normal(size=(n_rows, n_features))
        y = X[:, :5].sum(axis=1) + 2.0 * rng.normal(size=n_rows)
        weights = rng.uniform(0.5, 2.0, size=n_rows)
        for sample_weight in (None, weights):
            ours = RidgeLOO().fit(X, y, sample_weight=sample_weight)
            reference = RidgeCV(alphas=ours.alphas).fit(X, y, sample_weight=sample_weight)
            assert ours.alpha_ == reference.alpha_
            assert 0.1 < ours.alpha_ < 1e4  # a choice inside the grid, not at its edge (10 and 32 here)
            np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-8)
            assert ours.intercept_ == pytest.approx(reference.intercept_, abs=1e-8)
            assert ours.best_score_ == pytest.approx(reference.best_score_)


def test_fitted_params_name_each_heads_choice(skewed_grades):
    X, y, _, _ = skewed_grades
    ordinal = fit_head(make_head("ordinal", n_classes=5), X, y)
    params = fitted_params(ordinal)
    assert set(params) == {"C", "thresholds"} and len(params["thresholds"]) == 4
    assert cv_score(ordinal) is None  # its search scores log loss, not the reported metric
    ridge = fit_head(make_head("ridge", n_classes=5), X, y)
    assert set(fitted_params(ridge)) == {"alpha"} and cv_score(ridge) is None
    mlp = fit_head(make_head("mlp", n_classes=5), X, y)
    assert fitted_params(mlp) == {"epochs": mlp.best_epoch_}


def test_fold_ensembles_list_each_folds_choice_where_they_disagree(overlapping):
    X, y = overlapping
    head = fit_head(make_head("logreg", n_classes=4, folds=3, metric="f1_macro"), X, y)
    chosen = [member.best_params_["C"] for member in head.estimators_]
    assert fitted_params(head)["C"] == (chosen[0] if len(set(chosen)) == 1 else chosen)
    assert cv_score(head) == pytest.approx(np.mean([member.best_score_ for member in head.estimators_]))


# ----------------------------------------------------------------------------------------------
# ordinal heads and ensembles


def test_ordinal_thresholds_beat_argmax_and_rounding_on_skewed_grades(skewed_grades):
    X_train, y_train, X_test, y_test = skewed_grades
    head = OrdinalThresholds().fit(X_train, y_train)
    argmax = head.estimator_.predict(X_test)
    rounded = np.clip(np.rint(head.expected_grade(X_test)), 0, 4).astype(int)

    kappa = quadratic_weighted_kappa(y_test, head.predict(X_test))
    # Measured with this seed: 0.42 vs 0.30 (argmax) and 0.39 (rounding).
    assert kappa > quadratic_weighted_kappa(y_test, argmax) + 0.05
    assert kappa > quadratic_weighted_kappa(y_test, rounded) + 0.01
    assert head.thresholds_.shape == (4,)
    assert np.all(np.diff(head.thresholds_) > 0)


def test_the_ordinal_head_sets_thresholds_on_its_searchs_out_of_fold_probabilities(skewed_grades):
    X_train, y_train, X_test, y_test = skewed_grades
    head = fit_head(make_head("ordinal", n_classes=5), X_train, y_train)
    np.testing.assert_allclose(head.oof_expected_grade_, head.estimator_.oof_proba_ @ np.arange(5))
    assert quadratic_weighted_kappa(y_test, head.predict(X_test)) > 0.35  # 0.42 when measured
    with pytest.raises(ValueError, match="oof_proba_"):
        OrdinalThresholds(estimator=LogisticRegression(), cv="search").fit(X_train, y_train)


def test_rounded_regression_predicts_the_nearest_grade(separable):
    X_train, y_train, X_test, _ = separable
    head = RoundedRegression().fit(X_train, y_train + 10)  # grades by position, not value
    scores = head.expected_grade(X_test)
    expected = np.clip(np.rint(scores), 0, 2).astype(int) + 10
    np.testing.assert_array_equal(head.predict(X_test), expected)
    assert not hasattr(head, "predict_proba")


def test_fold_ensemble_averages_its_members(separable):
    X_train, y_train, X_test, _ = separable
    ensemble = FoldEnsemble(LogisticRegression(), n_splits=4).fit(X_train, y_train)
    assert len(ensemble.estimators_) == 4
    members = np.stack([member.predict_proba(X_test) for member in ensemble.estimators_])
    np.testing.assert_allclose(ensemble.predict_proba(X_test), members.mean(axis=0))
    np.testing.assert_array_equal(
        ensemble.predict(X_test), ensemble.classes_[members.mean(axis=0).argmax(axis=1)]
    )


def test_fold_ensemble_of_ordinal_heads_cuts_the_mean_grade_by_mean_thresholds(skewed_grades):
    X_train, y_train, X_test, _ = skewed_grades
    ensemble = FoldEnsemble(OrdinalThresholds(), n_splits=3).fit(X_train, y_train)
    mean_grade = np.mean([m.expected_grade(X_test) for m in ensemble.estimators_], axis=0)
    mean_thresholds = np.mean([m.thresholds_ for m in ensemble.estimators_], axis=0)
    np.testing.assert_allclose(ensemble.thresholds_, mean_thresholds)
    np.testing.assert_array_equal(
        ensemble.predict(X_test), np.searchsorted(mean_thresholds, mean_grade, side="right")
    )


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_fold_ensemble_names_a_class_missing_from_a_fold():
    X = np.arange(20, dtype=float).reshape(-1, 1)
    y = np.array([0] * 18 + [1] * 2)
    groups = np.array(list(range(18)) + [99, 99])  # both class-1 rows in one group
    with pytest.raises(ValueError, match="no training rows of class"):
        FoldEnsemble(LogisticRegression(), n_splits=3).fit(X, y, groups=groups)


# ----------------------------------------------------------------------------------------------
# groups: augmented copies of one image never straddle an inner split


class _RowRecorder(ClassifierMixin, BaseEstimator):
    """Predicts the majority class and remembers which rows (ids in column 0) it was fitted on."""

    def fit(self, X, y):
        self.classes_, counts = np.unique(y, return_counts=True)
        self.majority_ = self.classes_[np.argmax(counts)]
        self.row_ids_ = X[:, 0].astype(int)
        return self

    def predict(self, X):
        return np.full(len(X), self.majority_)


def test_fold_ensemble_keeps_each_group_on_one_side_of_every_split():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)  # e.g. an image and two augmented copies
    y = np.repeat(rng.permutation(np.arange(40) % 2), 3)
    X = np.column_stack([np.arange(len(y)), rng.normal(size=len(y))])
    ensemble = FoldEnsemble(_RowRecorder(), n_splits=4).fit(X, y, groups=groups)
    assert len(ensemble.estimators_) == 4
    for member in ensemble.estimators_:
        seen_groups = np.unique(groups[member.row_ids_])
        # Every group a member saw, it saw whole: copies never straddle train and test.
        assert len(member.row_ids_) == 3 * len(seen_groups)
        assert 0 < len(seen_groups) < 40


# Every (fitted-on rows, predicted rows) pair a _SplitSpy saw; a list because clones share no state.
SPY_SPLITS = []


class _SplitSpy(ClassifierMixin, BaseEstimator):
    """Uniform probabilities; each predict_proba logs the row ids (column 0) fitted on and asked about."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.row_ids_ = X[:, 0].astype(int)
        return self

    def predict_proba(self, X):
        SPY_SPLITS.append((self.row_ids_, X[:, 0].astype(int)))
        return np.full((len(X), len(self.classes_)), 1.0 / len(self.classes_))

    def predict(self, X):
        return self.classes_[np.zeros(len(X), dtype=int)]


def augmented_near_duplicates(n_images=30, copies=4, seed=0):
    """Rows of 3-grade images, each with copies that differ by tiny noise: (X with row ids in column 0, y, groups)."""
    rng = np.random.default_rng(seed)
    image_grades = np.arange(n_images) % 3
    image_features = rng.normal(size=(n_images, 6)) + image_grades[:, None]
    groups = np.repeat(np.arange(n_images), copies)
    rows = image_features[groups] + 1e-3 * rng.normal(size=(len(groups), 6))
    X = np.column_stack([np.arange(len(groups)), rows])
    return X, image_grades[groups], groups


def spied_grid_search():
    """A 3-fold search over _SplitSpy, scored on probabilities so every validation fold is logged."""
    return GridSearchCV(_SplitSpy(), {"C": [1.0, 2.0]}, cv=3, scoring="neg_log_loss")


def spied_halving_search():
    """A halving search, which scikit-learn offers only once enabled: featx must still pass it groups."""
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    # return_train_score would log the training rows' own predictions as a split.
    return HalvingGridSearchCV(_SplitSpy(), {"C": [1.0, 2.0]}, cv=3, scoring="neg_log_loss", return_train_score=False)


def spied_path_search():
    return PathSearchCV(_SplitSpy(), "C", [1.0, 2.0], scoring="neg_log_loss")


def assert_no_split_shares_a_group(groups):
    assert SPY_SPLITS, "nothing was predicted out of fold"
    for fitted_on, predicted in SPY_SPLITS:
        assert not set(groups[fitted_on]) & set(groups[predicted])


@pytest.mark.parametrize("head", [
    "path search", "fold ensemble of path searches", "ordinal over a path search", "fold ensemble of ordinal",
    "fold ensemble of grid searches", "ordinal over a grid search", "fold ensemble of halving searches",
])
def test_internal_cross_validation_keeps_augmented_copies_together(head):
    X, y, groups = augmented_near_duplicates()
    grid, path = spied_grid_search(), spied_path_search()
    estimator = {
        "path search": path,
        "fold ensemble of path searches": FoldEnsemble(path, n_splits=3),
        "ordinal over a path search": OrdinalThresholds(estimator=path, cv="search"),
        "fold ensemble of ordinal": FoldEnsemble(OrdinalThresholds(estimator=path, cv="search"), n_splits=3),
        "fold ensemble of grid searches": FoldEnsemble(grid, n_splits=3),
        "ordinal over a grid search": OrdinalThresholds(estimator=grid, cv=3),
        "fold ensemble of halving searches": FoldEnsemble(spied_halving_search(), n_splits=3),
    }[head]
    SPY_SPLITS.clear()
    fit_head(estimator, X, y, groups)
    assert_no_split_shares_a_group(groups)
    assert grid.cv == 3  # the given search is untouched; its clones got the grouped splitter


def test_without_groups_internal_splits_stay_as_they_were():
    X, y, groups = augmented_near_duplicates()
    SPY_SPLITS.clear()
    OrdinalThresholds(estimator=spied_path_search(), cv="search").fit(X, y)
    # Ungrouped, copies do land on both sides (the leak the groups prevent), i.e. behaviour is unchanged.
    assert any(set(groups[fitted]) & set(groups[predicted]) for fitted, predicted in SPY_SPLITS)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_grouped_heads_split_by_group_everywhere_inside(name):
    head = make_head(name, n_classes=3, grouped=True, folds=2)
    splitters = [value for key, value in head.get_params().items() if key.endswith("cv") and value != "search"]
    assert all(isinstance(splitter, StratifiedGroupKFold) for splitter in splitters)
    assert bool(splitters) == (name not in ("ridge", "mlp", "sgd", "knn"))  # these hold out whole groups themselves
    X, y, groups = augmented_near_duplicates(n_images=60)
    fit_head(head, X[:, 1:], y, groups)
    if splitters:
        with pytest.raises(ValueError, match="groups"):
            fit_head(make_head(name, n_classes=3, grouped=True), X[:, 1:], y)  # grouped heads need groups


# ----------------------------------------------------------------------------------------------
# threads


class _ThreadSpy(ClassifierMixin, BaseEstimator):
    """Logs, on each fit, its thread and the BLAS thread limit it ran under."""

    seen = []
    # Set by a test that expects folds in parallel: each fit then waits until a second thread has fitted
    # too, which proves two fits ran at once (a serial search times out here and fails the test's checks).
    second_thread = None

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        _ThreadSpy.seen.append((threading.get_ident(), blas_threads()))
        if self.second_thread is not None:
            if len({thread for thread, _ in _ThreadSpy.seen}) > 1:
                self.second_thread.set()
            self.second_thread.wait(timeout=60)
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        return np.full((len(X), len(self.classes_)), 1.0 / len(self.classes_))


@pytest.mark.skipif(usable_cores() < 2, reason="two folds at once need two usable cores")
def test_parallel_folds_share_the_blas_threads_out(overlapping):
    X, y = overlapping
    _ThreadSpy.seen.clear()
    _ThreadSpy.second_thread = threading.Event()
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            fit_head(PathSearchCV(_ThreadSpy(), "C", [1.0, 2.0], scoring="neg_log_loss", n_jobs=2), X, y, n_jobs=2)
    finally:
        _ThreadSpy.second_thread = None
    fold_fits = _ThreadSpy.seen[:-1]  # the last is the refit on all rows, after the folds
    assert len({thread for thread, _ in fold_fits}) == 2  # two folds at once
    assert all(blas == 1 for _, blas in fold_fits), _ThreadSpy.seen  # 2 threads x 1 BLAS thread each = 2 cores
    assert _ThreadSpy.seen[-1][1] == 2  # the refit alone gets both


def test_fit_head_keeps_blas_within_n_jobs(overlapping):
    X, y = overlapping
    _ThreadSpy.seen.clear()
    with threadpool_limits(limits=2, user_api="blas"):
        fit_head(PathSearchCV(_ThreadSpy(), "C", [1.0], scoring="neg_log_loss"), X, y, n_jobs=1)
    assert len({thread for thread, _ in _ThreadSpy.seen}) == 1
    assert {blas for _, blas in _ThreadSpy.seen} == {1}


def test_parallel_folds_fit_what_sequential_folds_fit(overlapping):
    X, y = overlapping
    head = make_head("svm", n_classes=4, n_jobs=1)
    sequential = fit_head(clone(head), X, y)
    with threadpool_limits(limits=2, user_api="blas"):
        parallel = fit_head(clone(head).set_params(n_jobs=2), X, y, n_jobs=2)
    assert parallel.best_params_ == sequential.best_params_
    np.testing.assert_allclose(parallel.predict_proba(X), sequential.predict_proba(X), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the MLP, kappa, and the scikit-learn contract


def test_grid_search_over_mlp_head(separable):
    X_train, y_train, X_test, y_test = separable
    search = GridSearchCV(
        MLPHead(hidden=(32,), max_epochs=30, lr=1e-2), {"alpha": [1e-4, 1.0]}, cv=3
    ).fit(X_train, y_train)
    assert search.best_params_["alpha"] in (1e-4, 1.0)
    assert np.mean(search.predict(X_test) == y_test) >= 0.95


def test_mlp_head_stops_early_and_keeps_its_best_epoch(separable):
    X_train, y_train, _, _ = separable
    head = MLPHead(hidden=(32,), max_epochs=200, patience=5).fit(X_train, y_train)
    assert head.n_iter_ < 200
    assert head.best_validation_loss_ == min(head.validation_loss_curve_)
    assert head.validation_loss_curve_[head.best_epoch_ - 1] == head.best_validation_loss_


def test_quadratic_weighted_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, size=(2, 300))
    assert quadratic_weighted_kappa(y_true, y_pred) == pytest.approx(
        cohen_kappa_score(y_true, y_pred, weights="quadratic")
    )
    assert quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]) == 1.0


def _expected_failed_checks(estimator):
    if isinstance(estimator, OrdinalThresholds):
        return {
            "check_classifiers_train": "predict cuts the expected grade by tuned thresholds, "
            "so by design it is not argmax(predict_proba)",
        }
    if isinstance(estimator, RidgeLOO) or (isinstance(estimator, RoundedRegression) and estimator.estimator is None):
        return {
            "check_sample_weight_equivalence_on_dense_data": "the leave-one-out choice of alpha "
            "sees a repeated row as two rows (as RidgeCV's does); the Ridge-based instance passes",
        }
    if isinstance(estimator, MLPHead):
        return {
            "check_sample_weight_equivalence_on_dense_data": "minibatch order and the "
            "early-stopping split depend on the rows, so repeating a row is not a weight of 2",
        }
    if isinstance(estimator, LinearSVM):
        return {
            "check_sample_weight_equivalence_on_dense_data": "L-BFGS stops 1e-4 short of the optimum on the "
            "squared hinge, whose curvature jumps; with ftol=1e-22 weights and repeats agree to 1e-7",
        }
    return {}


def _small_search(model, **options):
    return PathSearchCV(model, "C", [0.1, 1.0, 10.0], **options)


@parametrize_with_checks(
    [
        FoldEnsemble(LogisticRegression(), n_splits=3),
        FoldEnsemble(RoundedRegression(), n_splits=3),
        OrdinalThresholds(),
        OrdinalThresholds(estimator=_small_search(SoftmaxRegression(), scoring="neg_log_loss"), cv="search"),
        RoundedRegression(),
        RoundedRegression(estimator=make_pipeline(StandardScaler(), Ridge())),
        RidgeLOO(),
        RBFFeatures(n_components=20),
        Rotation(),
        SoftmaxRegression(),
        LinearSVM(),
        _small_search(make_pipeline(StandardScaler(), SoftmaxRegression()), patience=1),
        _small_search(LinearSVM(), calibration="logistic"),
        _small_search(LinearSVM()),
        MLPHead(hidden=(16,), max_epochs=20, lr=1e-2),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_featx_estimators_follow_the_sklearn_contract(estimator, check):
    check(estimator)

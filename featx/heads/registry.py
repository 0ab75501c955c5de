"""Heads by name: what ``featx train --heads NAME`` builds, and how many images per class each needs."""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx.choices import HEAD_NAMES, METRICS, ORDINAL_HEAD_NAMES
from featx.errors import FeatxError
from featx.heads._validation import nested_splits
from featx.heads.ensemble import FoldEnsemble
from featx.heads.kernel import RBFFeatures
from featx.heads.knn import KNNHead
from featx.heads.linear import LinearSVM, Rotation, SoftmaxRegression
from featx.heads.mlp import MLPHead
from featx.heads.ordinal import OrdinalThresholds, RoundedRegression
from featx.heads.search import PathSearchCV
from featx.heads.streaming import SGDHead

# No head trains on fewer source images per class than this, whatever its splits allow.
MIN_TRAIN_IMAGES_PER_CLASS = 3

# The seeds searched C in 0.1 ... 10^4; pooled CNN features with more dimensions than rows
# often want far stronger regularisation, hence the smaller values.
LOGREG_C_GRID = np.logspace(-4, 4, 9)
# The squared hinge sums a term per other class, so it wants smaller C than SVC's hinge: on knee
# grades 1e-4 won (1e-6 ... 1e-2 walked), below the old grid's 1e-3 ... 1.
SVM_C_GRID = np.logspace(-5, 0, 6)
# For the linear SVM on RBF features: 0.1 won on knee grades, 1 on the bench's generated rows.
SVM_RBF_C_GRID = np.logspace(-2, 1, 4)
# Landmarks for the kernel's nonlinear part. On knee grades (val as test) 500 scored 0.506 / QWK 0.535,
# below the exact kernel SVC featx had before (0.513 / 0.553, 563 s); 750 scored 0.517 / 0.552 in 7 s,
# 1,000 0.515 / 0.552 but 11 s on the bench's 10,000 rows (750: 8.8 s).
RBF_COMPONENTS = 750
# The solver's stopping tolerance on those 1,781 columns: 1e-3 fits in 8.9 s where 1e-4 took 13.2 s on
# the bench's 10,000 rows (accuracy 0.7024 vs 0.7020; knee grades 0.5048 vs 0.5061, QWK -0.002).
RBF_TOL = 1e-3
# A path walks on this many values past the best before it stops: scores along C rise to one
# peak and fall, and the weakly regularised end is where fits are slowest.
PATIENCE = 2


def make_head(name, *, n_classes, metric="accuracy", class_weight=None, folds=None, grouped=False, n_jobs=None,
              seed=0, cv=3):
    """A fresh, unfitted scikit-learn estimator for head `name`, with its own search and scoring.

    n_classes: classes of the task (grades 0..n_classes-1 for "qwk"). metric: what the head's search
    chooses by ("accuracy", "f1_macro" or "qwk"; logreg chooses by log loss when it is "accuracy").
    class_weight: None or "balanced". folds: K fold models whose probabilities are averaged.
    grouped: inner splits keep a group's rows (an image's augmented copies) together; fit with groups.
    n_jobs: folds fitted at once (None: all cores). cv: folds of the inner searches.
    """
    if name not in HEAD_NAMES:
        raise FeatxError(f"Unknown head {name!r}; choose one of: {', '.join(HEAD_NAMES)}.")
    if class_weight not in (None, "balanced"):
        raise FeatxError(f"class_weight must be None or 'balanced'; got {class_weight!r}.")
    if metric not in METRICS:
        raise FeatxError(f"Unknown metric {metric!r}; choose one of: {', '.join(METRICS)}.")
    if int(n_classes) < 2:
        raise FeatxError(f"A head needs at least 2 classes; got n_classes={n_classes}.")
    if folds is not None and int(folds) < 2:
        raise FeatxError(f"folds must be at least 2 (got {folds}); leave it out for a single model.")
    if int(cv) < 2:
        raise FeatxError(f"cv must be at least 2 (got {cv}).")
    search = dict(
        cv=StratifiedGroupKFold(int(cv), shuffle=True, random_state=seed) if grouped else int(cv),
        labels=tuple(range(int(n_classes))),
        n_jobs=n_jobs,
        seed=seed,
    )
    head = _head(name, metric, class_weight, search, seed)
    return FoldEnsemble(head, n_splits=int(folds), seed=seed) if folds else head


def _head(name, metric, class_weight, search, seed):
    return _BUILDERS[name](metric=metric, class_weight=class_weight, search=search, seed=seed)


def _logreg(*, metric, class_weight, search, seed):
    # On a few hundred rows, 3-fold accuracy ties across many C and the first (strongest
    # regularisation) wins, leaving probabilities near 0.5 for clear cases. Log loss is a proper
    # scoring rule: it picks C by how good the probabilities are. Accuracy is reported.
    scoring = "neg_log_loss" if metric == "accuracy" else metric
    return _logreg_search(class_weight, search, scoring=scoring, report=metric)


def _svm(*, metric, class_weight, search, seed):
    svm = make_pipeline(StandardScaler(), _rotation(), LinearSVM(class_weight=class_weight))
    return PathSearchCV(svm, "C", SVM_C_GRID, scoring=metric, calibration="logistic", patience=PATIENCE, **search)


def _svm_rbf(*, metric, class_weight, search, seed):
    # Kernel SVC costs O(N^2) kernel evaluations outside BLAS per fit (hours on 10,000 rows with its
    # search); the same kernel approximated by RBF features is a linear SVM on 1,000 columns.
    # The kernel is rotation-invariant; rotated rows give its linear columns principal axes.
    features = RBFFeatures(n_components=RBF_COMPONENTS, seed=seed)
    svm = make_pipeline(StandardScaler(), _rotation(), features, LinearSVM(class_weight=class_weight, tol=RBF_TOL))
    return PathSearchCV(svm, "C", SVM_RBF_C_GRID, scoring=metric, calibration="logistic", patience=PATIENCE,
                        **search)


def _ridge(*, metric, class_weight, search, seed):
    return RoundedRegression(class_weight=class_weight)


def _ordinal(*, metric, class_weight, search, seed):
    # Expected grades need calibrated probabilities, so C is chosen by log loss here; the
    # thresholds are set on the search's own out-of-fold probabilities at that C.
    return OrdinalThresholds(estimator=_logreg_search(class_weight, search, scoring="neg_log_loss"), cv="search",
                             seed=seed)


def _mlp(*, metric, class_weight, search, seed):
    return MLPHead(class_weight=class_weight, seed=seed)


def _sgd(*, metric, class_weight, search, seed):
    # The out-of-core head (featx.heads.streaming): its held-out log loss chooses C, whatever the metric.
    return SGDHead(class_weight=class_weight, n_jobs=search["n_jobs"], seed=seed)


def _knn(*, metric, class_weight, search, seed):
    return KNNHead(scoring=metric, class_weight=class_weight)


# How each head of featx.choices.HEADS is built (tests/test_heads.py builds every name).
_BUILDERS = {"logreg": _logreg, "svm": _svm, "svm-rbf": _svm_rbf, "ridge": _ridge, "ordinal": _ordinal, "mlp": _mlp,
             "sgd": _sgd, "knn": _knn}


def _rotation():
    return Rotation()  # principal axes: the same linear model, found in 3-4x fewer solver steps


def _logreg_search(class_weight, search, *, scoring, report=None):
    logreg = make_pipeline(StandardScaler(), _rotation(), SoftmaxRegression(class_weight=class_weight))
    return PathSearchCV(logreg, "C", LOGREG_C_GRID, scoring=scoring, report=report, patience=PATIENCE, **search)


def is_ordinal_head(name) -> bool:
    """True for heads that treat labels as ordered grades (ridge, ordinal)."""
    return name in ORDINAL_HEAD_NAMES


def min_images_per_class(name, folds=None) -> tuple[int, str]:
    """Fewest source images per class that head `name` (with `folds`) trains on, and why in words.

    Derived from the head's own nested stratified splits (ensemble, search, thresholds).
    """
    splits = nested_splits(make_head(name, n_classes=2, folds=folds))
    need = max(MIN_TRAIN_IMAGES_PER_CLASS, images_for_splits([k for k, _ in splits]))
    why = " > ".join(f"{k}-fold {purpose}" for k, purpose in splits) or "no inner cross-validation"
    return need, why


def images_for_splits(splits) -> int:
    """Fewest images per class so that every nested stratified k-fold split (outermost first) is possible.

    A k-fold split needs k images of a class (one in each validation fold). Its training side
    keeps n - ceil(n/k) of n, which must still be enough for the split inside it.
    """
    need = 1
    for k in reversed(list(splits)):
        n = max(k, need)
        while n - math.ceil(n / k) < need:
            n += 1
        need = n
    return need


# What a saved head made by make_head may contain beyond skops' defaults: featx's own estimators
# and the grouped splitter. Searches name their metric as a string, so no scorer is stored.
# Pass to skops.io.load(trusted=...). Reviewed by hand; never extend it from a file's own contents.
TRUSTED_TYPES = (
    "featx.heads.ensemble.FoldEnsemble",
    "featx.heads.kernel.RBFFeatures",
    "featx.heads.knn.KNNHead",
    "featx.heads.linear.LinearSVM",
    "featx.heads.linear.Rotation",
    "featx.heads.linear.SoftmaxRegression",
    "featx.heads.mlp.MLPHead",
    "featx.heads.ordinal.OrdinalThresholds",
    "featx.heads.ordinal.RoundedRegression",
    "featx.heads.ridge.RidgeLOO",
    "featx.heads.search.PathSearchCV",
    "featx.heads.streaming.SGDHead",
    "sklearn.model_selection._split.StratifiedGroupKFold",
)

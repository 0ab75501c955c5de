"""Heads by name: what ``featx train --head NAME`` builds."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from featx.errors import FeatxError
from featx.heads.mlp import MLPHead
from featx.heads.ordinal import OrdinalThresholds, RoundedRegression

HEAD_NAMES = ("logreg", "svm", "svm-rbf", "ridge", "ordinal", "mlp")
ORDINAL_HEAD_NAMES = ("ridge", "ordinal")

# The seeds searched C in 0.1 ... 10^4; pooled CNN features with more dimensions than rows
# often want far stronger regularisation, hence the smaller values.
LOGREG_C_GRID = np.logspace(-4, 4, 9)
# Linear SVMs on standardised features with more dimensions than rows barely change above C=1.
SVM_C_GRID = np.logspace(-3, 0, 4)
SVM_RBF_C_GRID = np.logspace(0, 2, 3)
# On standardised inputs "scale" is 1 / n_features (1/512 ... 1/2048 for common backbones);
# a wider kernel is the other choice. Grids are absolute, so they cannot follow n_features.
SVM_RBF_GAMMA_GRID = ("scale", 1e-4)


def make_head(name, *, class_weight=None, n_jobs=1, random_state=0, cv=3):
    """A fresh, unfitted scikit-learn estimator for head `name`.

    class_weight: None or "balanced" (weights classes by inverse frequency).
    n_jobs: parallel fits in grid searches. cv: folds of the internal searches.
    """
    if name not in HEAD_NAMES:
        raise FeatxError(f"Unknown head {name!r}; choose one of: {', '.join(HEAD_NAMES)}.")
    if class_weight not in (None, "balanced"):
        raise FeatxError(f"class_weight must be None or 'balanced'; got {class_weight!r}.")
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    if name == "logreg":
        return _logreg(class_weight, n_jobs, folds)
    if name == "svm":
        return _svm(SVC(kernel="linear", class_weight=class_weight), {"C": SVM_C_GRID}, n_jobs, folds)
    if name == "svm-rbf":
        return _svm(
            SVC(kernel="rbf", class_weight=class_weight),
            {"C": SVM_RBF_C_GRID, "gamma": SVM_RBF_GAMMA_GRID},
            n_jobs,
            folds,
        )
    if name == "ridge":
        return RoundedRegression(class_weight=class_weight)
    if name == "ordinal":
        # Expected grades need calibrated probabilities, so C is chosen by log loss here.
        base = _logreg(class_weight, n_jobs, folds, scoring="neg_log_loss")
        return OrdinalThresholds(estimator=base, cv=cv, random_state=random_state)
    return MLPHead(class_weight=class_weight, random_state=random_state)


def is_ordinal_head(name) -> bool:
    """True for heads that treat labels as ordered grades (ridge, ordinal)."""
    return name in ORDINAL_HEAD_NAMES


def _logreg(class_weight, n_jobs, folds, scoring=None):
    pipeline = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, class_weight=class_weight)
    )
    return GridSearchCV(
        pipeline,
        {"logisticregression__C": LOGREG_C_GRID},
        scoring=scoring,
        cv=folds,
        n_jobs=n_jobs,
    )


def _svm(svc, grid, n_jobs, folds):
    # Probabilities by Platt scaling on out-of-fold decision values (what the deprecated
    # SVC(probability=True) did), inside the search so every C is judged as used.
    calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False)
    pipeline = make_pipeline(StandardScaler(), calibrated)
    step_grid = {f"calibratedclassifiercv__estimator__{key}": values for key, values in grid.items()}
    return GridSearchCV(pipeline, step_grid, cv=folds, n_jobs=n_jobs)


# What a saved head may contain beyond skops' defaults: featx's own estimators and the
# scikit-learn internals that the heads above carry. Pass to skops.io.load(trusted=...).
TRUSTED_TYPES = (
    "featx.heads.ensemble.FoldEnsemble",
    "featx.heads.mlp.MLPHead",
    "featx.heads.ordinal.OrdinalThresholds",
    "featx.heads.ordinal.RoundedRegression",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.metrics._classification.log_loss",
    "sklearn.metrics._scorer._PassthroughScorer",
    "sklearn.metrics._scorer._Scorer",
    "sklearn.model_selection._split.StratifiedKFold",
)

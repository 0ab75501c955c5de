"""K-fold ensembles: one head per fold, probabilities averaged (``--folds K``)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._validation import fit_grouped, nested_splits
from featx.heads.ordinal import grades_from_scores


def _members_have(attribute):
    def check(ensemble):
        # Before fit, answer for the template estimator, as sklearn meta-estimators do.
        members = getattr(ensemble, "estimators_", None) or [ensemble.estimator]
        return all(hasattr(member, attribute) for member in members)

    return check


class FoldEnsemble(ClassifierMixin, BaseEstimator):
    """Fit a clone of `estimator` on the training part of each of K stratified folds.

    predict_proba averages the members' probabilities. predict is their argmax, except for
    graded heads (members with ``expected_grade``): their expected grades are averaged and
    cut by the averaged ``thresholds_`` (OrdinalThresholds) or rounded (RoundedRegression).

    Parameters
    ----------
    estimator : classifier
    n_splits : int, default=5
    seed : int, default=0
        Seed of the fold shuffle.
    """

    def __init__(self, estimator, n_splits=5, seed=0):
        self.estimator = estimator
        self.n_splits = n_splits
        self.seed = seed

    def fit(self, X, y, groups=None):
        """Fit K members; with `groups`, rows of one group (e.g. augmented copies) share a fold.

        Members that take groups (searches, OrdinalThresholds) get their fold's groups, so their
        internal cross-validation keeps a group's rows together as well.
        """
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = unique_labels(y)
        if groups is not None:
            groups = np.asarray(groups)
        if groups is None:
            splitter = StratifiedKFold(self.n_splits, shuffle=True, random_state=self.seed)
        else:
            splitter = StratifiedGroupKFold(
                self.n_splits, shuffle=True, random_state=self.seed
            )
        self.estimators_ = []
        for fold, (train_rows, _) in enumerate(splitter.split(X, y, groups)):
            # Members must share the ensemble's classes for their outputs to be averaged.
            missing = np.setdiff1d(self.classes_, y[train_rows])
            if len(missing):
                raise ValueError(
                    f"Fold {fold} has no training rows of class(es) {missing.tolist()}; "
                    "use fewer folds or gather more rows (groups) of those classes."
                )
            # With groups, a member's own searches must keep a group's rows together too.
            member_groups = None if groups is None else groups[train_rows]
            member = clone(self.estimator)
            self.estimators_.append(
                fit_grouped(member, X[train_rows], y[train_rows], member_groups, self.seed)
            )
        return self

    @available_if(_members_have("predict_proba"))
    def predict_proba(self, X):
        """Mean of the members' class probabilities."""
        X = self._validated(X)
        return np.mean([member.predict_proba(X) for member in self.estimators_], axis=0)

    @available_if(_members_have("expected_grade"))
    def expected_grade(self, X) -> np.ndarray:
        """Mean of the members' expected grades."""
        X = self._validated(X)
        return np.mean([member.expected_grade(X) for member in self.estimators_], axis=0)

    @property
    def thresholds_(self):
        """Mean of the members' thresholds (graded members with thresholds only)."""
        check_is_fitted(self)
        if not all(hasattr(member, "thresholds_") for member in self.estimators_):
            raise AttributeError("The ensemble's members have no thresholds_.")
        # Means of increasing vectors are increasing, so these stay valid cut points.
        return np.mean([member.thresholds_ for member in self.estimators_], axis=0)

    def predict(self, X):
        check_is_fitted(self)
        if _members_have("expected_grade")(self):
            scores = self.expected_grade(X)
            if hasattr(self, "thresholds_"):
                grades = grades_from_scores(scores, self.thresholds_)
            else:
                grades = np.clip(np.rint(scores), 0, len(self.classes_) - 1).astype(np.intp)
            return self.classes_[grades]
        if _members_have("predict_proba")(self):
            return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
        # Members without probabilities (e.g. plain SVC): majority vote.
        X = self._validated(X)
        votes = np.stack([np.searchsorted(self.classes_, m.predict(X)) for m in self.estimators_])
        counts = np.apply_along_axis(np.bincount, 0, votes, minlength=len(self.classes_))
        return self.classes_[np.argmax(counts, axis=0)]

    def nested_splits(self):
        """The k-fold splits nested in this ensemble, outermost first: [(k, what it is for), ...]."""
        return [(int(self.n_splits), "ensemble"), *nested_splits(self.estimator)]

    def _validated(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = get_tags(self.estimator).classifier_tags.poor_score
        return tags

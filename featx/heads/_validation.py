"""Small helpers shared by featx's estimators."""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.model_selection import (
    GroupKFold,
    GroupShuffleSplit,
    LeaveOneGroupOut,
    LeavePGroupsOut,
    StratifiedGroupKFold,
)
from sklearn.model_selection._search import BaseSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import has_fit_parameter


def encode_classes(y):
    """Return (classes_, grade index of each row); classes_ sorted, which is the grade order."""
    check_classification_targets(y)
    classes = unique_labels(y)
    if len(classes) < 2:
        raise ValueError(
            f"This head needs at least 2 classes in y to learn from; got 1 class: {classes[0]!r}."
        )
    return classes, np.searchsorted(classes, y)


def fit_with_sample_weight(estimator, X, y, sample_weight=None):
    """Fit `estimator`, passing sample_weight to it (or to every Pipeline step that takes one)."""
    if sample_weight is None:
        return estimator.fit(X, y)
    if isinstance(estimator, Pipeline):
        # A Pipeline only forwards weights named per step; the scaler needs them too,
        # so that a weight of 2 means the same as a duplicated row.
        routed = {
            f"{name}__sample_weight": sample_weight
            for name, step in estimator.steps
            if step not in (None, "passthrough") and has_fit_parameter(step, "sample_weight")
        }
        return estimator.fit(X, y, **routed)
    if not has_fit_parameter(estimator, "sample_weight"):
        raise ValueError(
            f"{type(estimator).__name__} does not accept sample_weight; "
            "use an estimator whose fit takes sample_weight."
        )
    return estimator.fit(X, y, sample_weight=sample_weight)


# Splitters that already keep a group's rows on one side of every split.
_GROUP_SPLITTERS = (GroupKFold, GroupShuffleSplit, LeaveOneGroupOut, LeavePGroupsOut, StratifiedGroupKFold)


def group_splitter(cv, seed=0):
    """A group-aware version of a search's `cv`: StratifiedGroupKFold with as many splits.

    Group-aware splitters are kept as they are; the seed is the given splitter's own where it has one.
    """
    if isinstance(cv, _GROUP_SPLITTERS):
        return cv
    n_splits = 5 if cv is None else cv if isinstance(cv, (int, np.integer)) else cv.get_n_splits()
    own_seed = getattr(cv, "random_state", None)
    return StratifiedGroupKFold(
        n_splits=int(n_splits), shuffle=True, random_state=seed if own_seed is None else own_seed
    )


def takes_groups(estimator) -> bool:
    """True for searches (their splitter takes groups) and estimators whose fit names `groups`."""
    return isinstance(estimator, BaseSearchCV) or "groups" in inspect.signature(estimator.fit).parameters


def fit_grouped(estimator, X, y, groups=None, seed=0):
    """Fit `estimator` (a fresh clone: a search's cv is replaced on it) keeping each group together.

    Without groups this is plain ``estimator.fit(X, y)``. With groups, a search splits by group
    and an estimator whose fit takes `groups` gets them; others cannot use them.
    """
    if groups is None or not takes_groups(estimator):
        return estimator.fit(X, y)
    return with_group_cv(estimator, seed).fit(X, y, groups=groups)


def with_group_cv(estimator, seed=0):
    """`estimator` with a search's cv made group-aware (set on it: pass a clone); others as they are."""
    if isinstance(estimator, BaseSearchCV):
        estimator.set_params(cv=group_splitter(estimator.cv, seed))
    return estimator


def nested_splits(estimator) -> list[tuple[int, str]]:
    """The k-fold splits nested in an unfitted estimator, outermost first: [(k, what it is for), ...].

    featx's estimators describe their own cross-validation (a ``nested_splits`` method); of a
    Pipeline's steps the deepest counts; other estimators have none.
    """
    describe = getattr(estimator, "nested_splits", None)
    if callable(describe) and not isinstance(estimator, type):
        return describe()
    if isinstance(estimator, Pipeline):
        return max((nested_splits(step) for _, step in estimator.steps), key=len, default=[])
    return []

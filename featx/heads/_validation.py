"""Small helpers shared by featx's estimators."""

from __future__ import annotations

import inspect
import numbers

import numpy as np
import sklearn.model_selection
from sklearn.model_selection import (
    GroupKFold,
    GroupShuffleSplit,
    LeaveOneGroupOut,
    LeavePGroupsOut,
    StratifiedGroupKFold,
)
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_array, has_fit_parameter


def encode_classes(y):
    """Return (classes_, grade index of each row); classes_ sorted, which is the grade order."""
    check_classification_targets(y)
    classes = unique_labels(y)
    if len(classes) < 2:
        raise ValueError(
            f"This head needs at least 2 classes in y to learn from; got 1 class: {classes[0]!r}."
        )
    return classes, np.searchsorted(classes, y)


def check_sample_weight(sample_weight, X, dtype=None):
    """Row weights as a 1-D array of len(X): ones for None, a number repeated, or the given array checked.

    scikit-learn's own helper for this is private; dtype None keeps X's float type (else float64).
    """
    if dtype is None:
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    n_rows = X.shape[0]
    if sample_weight is None or isinstance(sample_weight, numbers.Number):
        weights = np.full(n_rows, 1 if sample_weight is None else sample_weight, dtype=dtype)
    else:
        weights = check_array(sample_weight, ensure_2d=False, dtype=dtype, order="C", input_name="sample_weight")
        if weights.shape != (n_rows,):
            raise ValueError(f"sample_weight.shape == {weights.shape}, expected {(n_rows,)}.")
    if not np.any(weights):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return weights


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


def require_groups(splitter, groups):
    """`splitter`, refused when it splits by group and no groups came (scikit-learn 1.6 would split anyway)."""
    if groups is None and isinstance(splitter, _GROUP_SPLITTERS):
        raise ValueError(
            f"{type(splitter).__name__} splits by group: pass groups to fit, one id per row "
            "(e.g. the image each row came from)."
        )
    return splitter


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


# scikit-learn's searches; their common base class is private. The halving ones exist only once the
# user has enabled them (sklearn.experimental), so they are looked up when asked, not at import.
_SEARCH_NAMES = ("GridSearchCV", "RandomizedSearchCV", "HalvingGridSearchCV", "HalvingRandomSearchCV")


def is_search(estimator) -> bool:
    """True for scikit-learn's hyper-parameter searches (a `cv` that splits, and groups passed to it)."""
    # vars(), not getattr: scikit-learn 1.6 raises ImportError for a halving search not yet enabled.
    found = vars(sklearn.model_selection)
    searches = tuple(found[name] for name in _SEARCH_NAMES if name in found)
    return isinstance(estimator, searches)


def takes_groups(estimator) -> bool:
    """True for searches (their splitter takes groups) and estimators whose fit names `groups`."""
    return is_search(estimator) or "groups" in inspect.signature(estimator.fit).parameters


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
    if is_search(estimator):
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

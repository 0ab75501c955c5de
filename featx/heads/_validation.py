"""Small helpers shared by featx's estimators."""

from __future__ import annotations

import numpy as np
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

"""What a head's search chooses by: the test metrics plus log loss, scored on per-class outputs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

# The metric math lives in featx.metrics; these names stay importable from here for the heads.
from featx.metrics import METRICS, quadratic_weighted_kappa, qwk_from_grades

__all__ = ["SEARCH_METRICS", "quadratic_weighted_kappa", "qwk_from_grades", "search_score"]

# Metrics a head's search can choose by; all are higher-is-better ("neg_log_loss" as in scikit-learn).
SEARCH_METRICS = (*METRICS, "neg_log_loss")


def search_score(metric: str, true_columns, outputs, grades=None) -> float:
    """Score per-class outputs (probabilities, or decision values) against the true class columns.

    Predictions are the argmax of `outputs`. grades: the grade number of each output column for
    "qwk" (default 0..K-1), so a class missing from some rows still counts in the grade distances.
    """
    true_columns = np.asarray(true_columns, dtype=np.intp)
    if metric == "neg_log_loss":
        picked = np.asarray(outputs, dtype=np.float64)[np.arange(len(true_columns)), true_columns]
        return float(np.log(np.clip(picked, 1e-15, None)).mean())
    predicted = np.argmax(outputs, axis=1)
    if metric == "accuracy":
        return float(np.mean(predicted == true_columns))
    if metric == "f1_macro":
        # Averaged over the classes present in either, as the "f1_macro" scorer does.
        return float(f1_score(true_columns, predicted, average="macro", zero_division=0.0))
    if metric == "qwk":
        grades = np.arange(np.shape(outputs)[1]) if grades is None else np.asarray(grades, dtype=np.intp)
        return qwk_from_grades(grades[true_columns], grades[predicted], int(grades.max()) + 1)
    raise ValueError(f"Unknown search metric {metric!r}; choose one of {', '.join(SEARCH_METRICS)}.")

"""Scores of graded and plain predictions: quadratic weighted kappa, and what a head's search chooses by."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def quadratic_weighted_kappa(y_true, y_pred, *, labels=None) -> float:
    """Cohen's kappa with quadratic weights; `labels` gives the grade order (default: sorted).

    Equals ``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic")``,
    except that perfect agreement on a single grade scores 1.0 instead of nan.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred differ in length ({len(y_true)} vs {len(y_pred)})."
        )
    if labels is None:
        labels = np.union1d(y_true, y_pred)
    labels = np.asarray(labels)
    grade_of = {label: grade for grade, label in enumerate(labels.tolist())}
    try:
        true_grades = np.array([grade_of[v] for v in y_true.tolist()], dtype=np.intp)
        pred_grades = np.array([grade_of[v] for v in y_pred.tolist()], dtype=np.intp)
    except KeyError as missing:
        raise ValueError(f"Label {missing} is not in labels {labels.tolist()}.") from None
    return qwk_from_grades(true_grades, pred_grades, len(labels))


def qwk_from_grades(true_grades, pred_grades, n_grades: int) -> float:
    """Quadratic weighted kappa of integer grades in [0, n_grades); fast enough for search loops."""
    n_grades = max(int(n_grades), 1)
    if len(true_grades) == 0:
        return 0.0
    observed = np.bincount(
        true_grades * n_grades + pred_grades, minlength=n_grades * n_grades
    ).reshape(n_grades, n_grades)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    grades = np.arange(n_grades)
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected_disagreement = (weights * expected).sum()
    if expected_disagreement == 0:
        # Both sides constant on the same grade: perfect agreement, which
        # cohen_kappa_score reports as nan (0/0).
        return 1.0
    return float(1.0 - (weights * observed).sum() / expected_disagreement)


# Metrics a head's search can choose by; all are higher-is-better ("neg_log_loss" as in scikit-learn).
SEARCH_METRICS = ("accuracy", "f1_macro", "qwk", "neg_log_loss")


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

"""Quadratic weighted kappa: the agreement score for graded (ordinal) labels."""

from __future__ import annotations

import numpy as np


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

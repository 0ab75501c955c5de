"""A head's test predictions -> its leaderboard row (metrics with intervals) and its detailed report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import numpy as np
from sklearn.metrics import classification_report

from featx.metrics import (
    METRICS,
    accuracy,
    accuracy_of_confusions,
    bootstrap_ci,
    bootstrap_confusions,
    confusion_matrix,
    confusion_text,
    f1_macro,
    f1_macro_of_confusions,
    percentile_interval,
    qwk_of_confusions,
)
from featx.metrics import quadratic_weighted_kappa as qwk

__all__ = ["METRICS", "best_head", "best_index", "details", "leaderboard_row", "score_row"]


def leaderboard_row(head_name: str, y_true, y_pred, *, n_classes: int, with_qwk: bool, params=None, cv_score=None,
                    fit_seconds: float | None = None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """One head's line of the leaderboard: what it is, its test metrics with 95% intervals, how long it fitted.

    Every leaderboard (train, compare, evaluate, the streamed head, fine-tuning) builds its rows here.
    """
    row = {"head": head_name, "params": params, "cv_score": cv_score}
    row.update(score_row(y_true, y_pred, n_classes=n_classes, with_qwk=with_qwk, bootstrap=bootstrap, seed=seed))
    row["fit_seconds"] = None if fit_seconds is None else round(float(fit_seconds), 3)
    return row


def score_row(y_true, y_pred, *, n_classes: int, with_qwk: bool, bootstrap: int = 1000, seed: int = 0) -> dict:
    """accuracy, macro F1 and (optionally) QWK on the test rows, each with a 95% bootstrap interval."""
    metric_fns = {
        "accuracy": accuracy,
        # Classes fixed on the full test set: a resample that misses a class still averages over it.
        "f1_macro": partial(f1_macro, labels=np.union1d(y_true, y_pred)),
    }
    if with_qwk:
        metric_fns["qwk"] = partial(qwk, labels=np.arange(n_classes))
    row = {}
    for key, fn in metric_fns.items():
        row[key] = float(fn(y_true, y_pred))
        row[f"{key}_ci"] = None
    if bootstrap and len(y_true):
        # The resamples bootstrap_ci would draw, each scored from its confusion matrix, all at once.
        confusions = bootstrap_confusions(y_true, y_pred, n_classes, n=bootstrap, seed=seed)
        of_confusions = {"accuracy": accuracy_of_confusions, "qwk": qwk_of_confusions,
                         "f1_macro": partial(f1_macro_of_confusions, labels=np.union1d(y_true, y_pred))}
        for key in metric_fns:
            row[f"{key}_ci"] = list(percentile_interval(of_confusions[key](confusions)))
    elif bootstrap:
        for key, fn in metric_fns.items():
            row[f"{key}_ci"] = list(bootstrap_ci(y_true, y_pred, fn, n=bootstrap, seed=seed))
    return row


def details(head_name: str, y_true, y_pred, class_names: Sequence[str]) -> tuple[str, np.ndarray]:
    """scikit-learn's classification report and the confusion matrix, as text, and the matrix."""
    present = np.union1d(y_true, y_pred)
    report = classification_report(
        y_true, y_pred, labels=present, target_names=[class_names[i] for i in present], digits=3, zero_division=0
    )
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    text = (
        f"classification report ({head_name}):\n{report.rstrip()}\n\n"
        f"confusion matrix ({head_name}; rows: true class, columns: predicted):\n{confusion_text(cm, class_names)}"
    )
    return text, cm


def best_index(rows: Sequence[dict], metric: str) -> int:
    """Position of the row with the highest test `metric`; the first of equals (the order asked for) wins."""
    def score(index):
        value = rows[index].get(metric)
        return -math.inf if value is None or not math.isfinite(value) else value

    return max(range(len(rows)), key=score)


def best_head(rows: Sequence[dict], metric: str) -> str:
    """The head with the highest test `metric`; the first of equals wins."""
    return rows[best_index(rows, metric)]["head"]

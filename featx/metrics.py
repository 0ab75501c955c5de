"""The metrics featx scores heads by: their names, their math, bootstrap intervals and confusion matrices.

Low in the import graph (numpy only) so that scoring a prediction never loads the report, the heads or
the backbones; the report, the heads' searches and the leaderboard all import the math from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from featx.choices import METRICS

__all__ = [
    "METRICS",
    "accuracy",
    "accuracy_of_confusions",
    "bootstrap_ci",
    "bootstrap_confusions",
    "confusion_matrix",
    "confusion_text",
    "f1_macro",
    "f1_macro_of_confusions",
    "percentile_interval",
    "quadratic_weighted_kappa",
    "qwk_from_grades",
    "qwk_of_confusions",
]

def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the truth."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def f1_macro(y_true, y_pred, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every label in y_true or y_pred).

    Written with numpy because the bootstrap calls it a thousand times per head; it matches
    `sklearn.metrics.f1_score(average="macro", labels=labels, zero_division=0)`.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if labels is None:
        labels = np.union1d(y_true, y_pred)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    true_at, pred_at = _places(y_true, labels), _places(y_pred, labels)
    counted_true, counted_pred = true_at[true_at >= 0], pred_at[pred_at >= 0]
    true_pos = np.bincount(true_at[(true_at >= 0) & (true_at == pred_at)], minlength=len(labels))
    denominator = np.bincount(counted_true, minlength=len(labels)) + np.bincount(counted_pred, minlength=len(labels))
    per_class = np.divide(2 * true_pos, denominator, out=np.zeros(len(labels)), where=denominator > 0)
    return float(per_class.mean())


def quadratic_weighted_kappa(y_true, y_pred, *, labels=None) -> float:
    """Cohen's kappa with quadratic weights; `labels` gives the grade order (default: sorted).

    Equals ``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic")``,
    except that perfect agreement on a single grade scores 1.0 instead of nan.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length ({len(y_true)} vs {len(y_pred)}).")
    if labels is None:
        labels = np.union1d(y_true, y_pred)
    labels = np.asarray(labels)
    true_grades, pred_grades = _places(y_true, labels), _places(y_pred, labels)
    for values, grades in ((y_true, true_grades), (y_pred, pred_grades)):
        if (grades < 0).any():
            raise ValueError(f"Label {values[grades < 0][0].item()!r} is not in labels {labels.tolist()}.")
    return qwk_from_grades(true_grades, pred_grades, len(labels))


def _places(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each value's place in `labels` (distinct), -1 where it is none of them. By binary search: a dict lookup
    or a row-by-label comparison per row cost the bootstrap's 1,000 resamples of a test set 0.1 s each."""
    if len(labels) == 0:
        return np.full(len(values), -1, dtype=np.intp)
    order = np.argsort(labels, kind="stable")
    at = np.minimum(np.searchsorted(labels[order], values), len(labels) - 1)
    return np.where(labels[order][at] == values, order[at], -1).astype(np.intp)


def qwk_from_grades(true_grades, pred_grades, n_grades: int) -> float:
    """Quadratic weighted kappa of integer grades in [0, n_grades); fast enough for search loops."""
    n_grades = max(int(n_grades), 1)
    if len(true_grades) == 0:
        return 0.0
    observed = np.bincount(
        true_grades * n_grades + pred_grades, minlength=n_grades * n_grades
    ).reshape(n_grades, n_grades)
    return float(qwk_of_confusions(observed[None])[0])


def qwk_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of each (grades x grades) confusion matrix in a stack (m, K, K)."""
    confusions = np.asarray(confusions, dtype=float)
    totals = confusions.sum(axis=(1, 2))
    expected = confusions.sum(axis=2)[:, :, None] * confusions.sum(axis=1)[:, None, :] / totals[:, None, None]
    grades = np.arange(confusions.shape[1])
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected_disagreement = (weights * expected).sum(axis=(1, 2))
    observed_disagreement = (weights * confusions).sum(axis=(1, 2))
    # Both sides constant on the same grade: perfect agreement, which cohen_kappa_score reports as nan (0/0).
    return 1.0 - np.divide(observed_disagreement, expected_disagreement, out=np.zeros(len(confusions)),
                           where=expected_disagreement != 0)


def accuracy_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Accuracy of each confusion matrix in a stack (m, K, K)."""
    return np.trace(confusions, axis1=1, axis2=2) / confusions.sum(axis=(1, 2))


def f1_macro_of_confusions(confusions: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Macro F1 over `labels` (class indices) of each confusion matrix in a stack (m, K, K), as `f1_macro`."""
    labels = np.asarray(labels, dtype=np.intp)
    true_pos = confusions[:, labels, labels]
    denominator = confusions.sum(axis=2)[:, labels] + confusions.sum(axis=1)[:, labels]
    per_class = np.divide(2 * true_pos, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    return per_class.mean(axis=1)


def bootstrap_confusions(y_true, y_pred, n_classes: int, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Confusion matrices (n, K, K) of the `n` seeded resamples `bootstrap_ci` draws, for class indices: a metric
    that the matrix determines is scored on all resamples at once (1,000 calls cost 0.1-0.4 s per metric)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    rows = _resamples(len(y_true), n, seed)
    k = int(n_classes)
    confusions = np.empty((n, k * k), dtype=np.int64)
    step = max(1, 2_000_000 // max(len(y_true), 1))  # resamples at a time: temporaries stay near 16 MB each
    for start in range(0, n, step):
        block = rows[start:start + step]
        codes = (np.arange(len(block), dtype=np.int64) * k * k)[:, None] + y_true[block] * k + y_pred[block]
        confusions[start:start + len(block)] = np.bincount(codes.ravel(), minlength=len(block) * k * k).reshape(
            len(block), k * k)
    return confusions.reshape(n, k, k)


def percentile_interval(scores) -> tuple[float, float]:
    """95% percentile interval of the finite `scores` (nan, nan when there are none)."""
    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_ci(
    y_true, y_pred, metric_fn: Callable[[np.ndarray, np.ndarray], float], n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of `metric_fn` over `n` seeded resamples of the rows (with replacement)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if n <= 0 or len(y_true) == 0:
        value = float(metric_fn(y_true, y_pred)) if len(y_true) else float("nan")
        return value, value
    return percentile_interval([metric_fn(y_true[take], y_pred[take]) for take in _resamples(len(y_true), n, seed)])


def _resamples(n_rows: int, n: int, seed: int) -> np.ndarray:
    """The row indices of `n` seeded resamples with replacement (n, n_rows): bootstrap_ci and
    bootstrap_confusions draw the same ones, so their intervals agree."""
    return np.random.default_rng(seed).integers(0, n_rows, size=(n, n_rows))




def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) label indices in 0..n_classes-1; rows are the true class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def confusion_text(cm, names: Sequence[str]) -> str:
    """The confusion matrix as an aligned table: rows are the true class, columns the prediction."""
    cm = np.asarray(cm)
    names = [str(name) for name in names]
    corner = "true \\ predicted"
    first_width = max([len(corner)] + [len(name) for name in names])
    widths = [max(len(name), len(str(cm[:, j].max())) if cm.size else 1) for j, name in enumerate(names)]
    header = corner.ljust(first_width) + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))
    lines = [header.rstrip()]
    for i, name in enumerate(names):
        counts = "  ".join(str(count).rjust(w) for count, w in zip(cm[i], widths))
        lines.append(name.ljust(first_width) + "  " + counts)
    return "\n".join(lines)

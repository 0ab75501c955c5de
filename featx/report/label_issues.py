"""Likely label errors by confident learning (cleanlab), from out-of-fold class probabilities.

Confident learning (Northcutt, Jiang and Chuang, JAIR 2021) estimates how many rows of each given
class really belong to each other class, and flags that many of the least likely ones. A row the
model merely misclassifies is not flagged for that alone: misclassifications belong in the confusion
matrix. For graded labels (KL, retinopathy grades), disagreement by one grade is rater noise, so only
rows at least two grades from their label count.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.atomic import atomic_output
from featx.errors import FeatxError

__all__ = [
    "GRADE_DISTANCE",
    "RANKED_BY",
    "LabelIssues",
    "find_label_issues",
    "issue_rule",
    "out_of_fold_probabilities",
    "write_label_issues_csv",
]

# cleanlab's ranking of the flagged rows. Measured on planted errors (bench/label_issues.py, 5% of the
# rows moved to another class, the logreg head's own out-of-fold probabilities): on the demo's 10 digits
# self-confidence put 82-83% of the planted rows in the top n, normalized margin 79-81%; on ants/bees
# (2 classes) the two orders are the same.
RANKED_BY = "self_confidence"
# Which rows cleanlab lists. "prune_by_class" lists, in each class, as many of its rows as it estimates belong
# elsewhere, those with the lowest self-confidence; "prune_by_noise_rate" (its default) splits that count by
# the other class and picks by normalized margin, which ranks planted errors worse. Measured (5 seeds, 5% moved,
# precision in the top n / recall in the top 2n of the list): digits 0.840 / 0.913 against 0.787 / 0.807;
# ants/bees the same (0.750 / 0.800); flagged share of the clean labels unchanged (digits 0.8%, ants/bees 1.8%).
FILTER_BY = "prune_by_class"
GRADE_DISTANCE = 2  # graded labels: an issue is at least this many grades from its label


@dataclass
class LabelIssues:
    """Rows whose given label is likely wrong, most likely error first."""

    rows: np.ndarray  # index of each flagged row in the arrays searched
    given: np.ndarray  # its given class index
    suggested: np.ndarray  # the class (grade) the model suggests instead
    quality: np.ndarray  # cleanlab's label quality score in [0, 1]: low means the given label is doubtful
    reasons: list[str]  # why each row is listed, in words
    probabilities: np.ndarray  # (flagged rows, classes), out-of-fold
    n_checked: int  # rows searched
    paths: list[str]  # the flagged rows' image paths (relative to root), "" where unknown
    root: str | None = None  # dataset root the paths are relative to
    graded: bool = False
    expected: np.ndarray | None = None  # graded: the flagged rows' out-of-fold expected grade
    source: str = ""  # where the out-of-fold probabilities came from, in words

    def __len__(self) -> int:
        return len(self.rows)


def issue_rule(graded: bool) -> str:
    """What makes a row a label issue, in words (the page and the CSV's reader need the rule)."""
    if graded:
        return (f"an image is listed when its out-of-fold expected grade is at least {GRADE_DISTANCE} grades from "
                f"its label, or when confident learning (cleanlab) flags it, suggests a grade at least "
                f"{GRADE_DISTANCE} away, and its expected grade is at least {GRADE_DISTANCE - 0.5:g} away (so it "
                f"rounds to a grade {GRADE_DISTANCE} or more away); one-grade disagreement is normal rater noise. "
                "Farthest first")
    return ("confident learning (cleanlab) estimates, for each class, how many of the images labelled with it "
            "belong to another class, and lists that many of them, those whose label the out-of-fold probabilities "
            "find least likely; a plain misclassification is not listed (the confusion matrix shows those). "
            f"Lowest {RANKED_BY.replace('_', '-')} first")


def out_of_fold_probabilities(head, X, y, groups=None, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Class probabilities of every row from a clone of `head` fitted without that row's fold.

    Columns are class indices 0..max(y). With `groups` (the source image of each row), the folds
    are StratifiedGroupKFold, so augmented copies of one image never predict each other.
    """
    from sklearn.base import clone
    from sklearn.model_selection import (
        StratifiedGroupKFold,
        StratifiedKFold,
        cross_val_predict,
    )

    from featx.heads._validation import takes_groups

    y = np.asarray(y, dtype=np.int64)
    if not hasattr(head, "predict_proba"):
        raise FeatxError(
            f"{type(head).__name__} gives no class probabilities; find label issues with a head that does (e.g. logreg)"
        )
    classes, counts = np.unique(y, return_counts=True)
    if groups is not None:
        # A class's images, not its rows, are what the folds divide.
        counts = np.array([len(np.unique(np.asarray(groups)[y == label])) for label in classes])
    n_splits = min(int(folds), int(counts.min()))
    if len(classes) < 2 or n_splits < 2:
        raise FeatxError(
            "label issues need at least 2 classes with 2 or more images each; add labelled images"
        )
    if groups is not None:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    model = clone(head)
    # A search inside the head gets the groups too, so its own splits keep copies together.
    params = {"groups": np.asarray(groups)} if groups is not None and takes_groups(model) else None
    found = cross_val_predict(model, X, y, groups=groups, cv=cv, method="predict_proba", params=params)
    probabilities = np.zeros((len(y), int(classes.max()) + 1))
    probabilities[:, classes] = found  # a class index with no rows keeps probability 0
    return probabilities


def _confident_learning(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Flags of the rows cleanlab's confident learning finds (prune by noise rate)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    if len(np.unique(labels)) < 2:
        return np.zeros(len(labels), dtype=bool)  # one class: nothing to confuse it with
    with warnings.catch_warnings():
        # It warns about classes without rows; their columns hold zeros, which is what it assumes.
        warnings.simplefilter("ignore")
        # n_jobs=1: its process pool costs more than the search on a few thousand rows.
        return np.asarray(cleanlab_issues(labels, probabilities, filter_by=FILTER_BY, n_jobs=1), dtype=bool)


def _suggestions(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The class confident learning files each row under: the likeliest other class whose probability reaches
    that class's threshold (the mean probability of the rows labelled with it), else the likeliest other class."""
    n_rows, n_classes = probabilities.shape
    sums = np.bincount(labels, weights=probabilities[np.arange(n_rows), labels], minlength=n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    # No rows labelled j: nothing says how sure the model must be to call a row a j.
    thresholds = np.divide(sums, counts, out=np.full(n_classes, np.inf), where=counts > 0)
    others = probabilities.copy()
    others[np.arange(n_rows), labels] = -np.inf
    confident = others >= thresholds[None, :]
    return np.where(confident.any(axis=1), np.argmax(np.where(confident, others, -np.inf), axis=1),
                    np.argmax(others, axis=1))


def _quality(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(labels, probabilities, method=RANKED_BY)


def find_label_issues(probabilities, labels, *, graded: bool = False, paths: Sequence[str] | None = None,
                      root=None) -> LabelIssues:
    """Rows whose given label is likely wrong, most doubtful first (see `issue_rule`).

    probabilities: (rows, classes) out-of-fold, rows summing to 1; labels: each row's given class index.
    graded: classes are grades in index order.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(f"probabilities must be (rows, classes) for {len(labels)} labels, got {probabilities.shape}")
    n_rows, n_classes = probabilities.shape
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class indices 0..{n_classes - 1}")
    flagged = _confident_learning(labels, probabilities) if n_rows else np.zeros(0, dtype=bool)
    quality = _quality(labels, probabilities) if n_rows else np.zeros(0)
    suggested = _suggestions(labels, probabilities) if n_classes > 1 else np.zeros(n_rows, dtype=np.int64)
    reasons = np.full(n_rows, "confident learning", dtype=object)
    expected = None
    if graded:
        expected = probabilities @ np.arange(n_classes, dtype=float)
        distance = np.abs(expected - labels)
        far = distance >= GRADE_DISTANCE
        suggested = np.where(far, np.clip(np.rint(expected), 0, n_classes - 1).astype(np.int64), suggested)
        # cleanlab's flag alone listed 12% of the clean knee grades; the expected grade must back its
        # suggestion (round to a grade GRADE_DISTANCE away): 7% (bench/label_issues.py).
        backed = distance >= GRADE_DISTANCE - 0.5
        flagged = far | (flagged & backed & (np.abs(suggested - labels) >= GRADE_DISTANCE))
        reasons = np.where(far, [f"expected grade {value:.1f}" for value in expected],
                           [f"confident learning; expected grade {value:.1f}" for value in expected])
        order_key = -distance  # farthest first
    else:
        order_key = quality  # least likely label first
    found = np.flatnonzero(flagged)
    order = found[np.lexsort((found, order_key[found]))]  # ties by row, so the order is stable
    all_paths = list(paths) if paths is not None else [""] * n_rows
    return LabelIssues(
        rows=order, given=labels[order], suggested=suggested[order], quality=quality[order],
        reasons=[str(reasons[i]) for i in order], probabilities=probabilities[order], n_checked=n_rows,
        paths=[str(all_paths[i]) for i in order], root=None if root is None else os.fspath(root), graded=graded,
        expected=None if expected is None else expected[order],
    )


def write_label_issues_csv(path, issues: LabelIssues, class_names: Sequence[str]) -> Path:
    """Write `path, given, suggested, label_quality, reason, p_<class>...`, one line per flagged row, most likely
    error first.

    `path` is joined to the dataset root when it is known, so the file can be opened or moved as listed.
    """
    path = Path(path)
    names = [str(name) for name in class_names]
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "given", "suggested", "label_quality", "reason", *(f"p_{name}" for name in names)])
        for i, relative in enumerate(issues.paths):
            full = os.path.join(issues.root, relative) if issues.root and relative else relative
            writer.writerow([
                full, names[issues.given[i]], names[issues.suggested[i]], f"{issues.quality[i]:.6f}",
                issues.reasons[i], *(f"{p:.6f}" for p in issues.probabilities[i][: len(names)]),
            ])
    return path

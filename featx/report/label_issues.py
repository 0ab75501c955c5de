"""Likely label errors by confident learning (cleanlab), from out-of-fold class probabilities.

Confident learning (Northcutt, Jiang and Chuang, JAIR 2021) estimates how many of the given labels are
wrong, and flags that many of the least likely ones. A row the model merely misclassifies is not flagged
for that alone: misclassifications belong in the confusion matrix. With the rows' features, each of the
most doubtful labels is judged a second time by the labels of its nearest neighbours. For graded labels
(KL, retinopathy grades), disagreement by one grade is rater noise, so only rows at least two grades from
their label count.
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
    "neighbour_votes",
    "out_of_fold_probabilities",
    "write_label_issues_csv",
]

# cleanlab's ranking of the flagged rows. Measured on planted errors (bench/label_issues.py, 5% of the
# rows moved to another class, the logreg head's own out-of-fold probabilities): on the demo's 10 digits
# self-confidence put 82-83% of the planted rows in the top n, normalized margin 79-81%; on ants/bees
# (2 classes) the two orders are the same.
RANKED_BY = "self_confidence"
# Which rows are listed (classes): as many as confident learning estimates are wrong (cleanlab's calibrated
# confident joint, `num_label_issues(..., "off_diagonal_calibrated")`), the least likely labels of all rows.
# Taking that count per class ("prune_by_class") missed planted errors in classes whose count came out low while
# listing clean rows of others. Measured (5 seeds, 5% moved, precision in the top n / recall in the top 2n of
# the list, no neighbours): digits 0.853 / 0.940 against 0.840 / 0.913; ants/bees the same (0.750 / 0.800);
# the same count on clean labels (digits 0.8%, ants/bees 1.8%).
# Graded labels keep cleanlab's per-class list ("prune_by_class"), which their distance rule then filters.
FILTER_BY = "prune_by_class"
GRADE_DISTANCE = 2  # graded labels: an issue is at least this many grades from its label
# The neighbour vote (classes, with features): each of the SHORTLIST x count least likely labels is judged again
# by the labels of its NEIGHBOURS nearest rows (cosine of the centred features in a seeded random projection to
# PROJECTED_DIMS, exact search with faiss); its self-confidence becomes (1 - w) p(label) + w (share of neighbours
# with that label). Neighbours see the image itself, not only what the head learnt from 5% wrong labels.
# Measured (bench/label_issues.py, 5 seeds, the list): digits 0.853 / 0.940 -> 0.900 / 0.956; ants/bees
# 0.750 / 0.800 -> 0.740 / 0.800 (its base cleaned of 2 photos of no ant: 0.770 / 0.830 -> 0.780 / 0.810); the
# lists were the same with 2 or 5 times the count shortlisted. On digits, 10-NN at 0.3 against 5, 15, 20
# neighbours and weights 0.2-0.5: all within 0.02; 128 random dimensions against 32 and 64 (0.01 lower), the full
# 1,280 and the head's own principal axes (the same). Cost at 10,000 x 1,280 rows: 0.1 s (--timing, load 2.8).
# w is NEIGHBOUR_WEIGHT times the neighbours' skill at predicting the given labels as a share of the model's
# (`_neighbour_weight`, at most 1; digits and ants/bees 0.9-1): where neighbourhoods say nothing about the labels
# (bench/heads_speed.py's synthetic rows as plain classes: 10-NN agree with a row's label as often as two random
# labels do) a fixed weight put 0.344 of the planted rows in the top n instead of 0.440; weighed, 0.442.
NEIGHBOURS = 10
NEIGHBOUR_WEIGHT = 0.3
SKILL_SAMPLE = 500  # random rows whose neighbours measure the neighbours' skill
PROJECTED_DIMS = 128
SHORTLIST = 2
# At most this many rows are judged again (the search costs rows judged x rows): where confident learning counts
# a third or half of the labels wrong (the knee grades as plain classes, 5,778 rows: 3,174), judging all of them
# changed little (precision in the top n 0.401 -> 0.381 and 0.422 -> 0.412 on two seeds) for 0.4-0.7 s.
MAX_JUDGED = 2000


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
    neighbours: int = 0  # nearest neighbours whose labels judged the most doubtful rows again (0: none)
    neighbour_weight: float = 0.0  # the weight of their vote in the label quality

    def __len__(self) -> int:
        return len(self.rows)


def issue_rule(graded: bool, neighbours: int = 0, weight: float = 0.0) -> str:
    """What makes a row a label issue, in words (the page and the CSV's reader need the rule)."""
    if graded:
        return (f"an image is listed when its out-of-fold expected grade is at least {GRADE_DISTANCE} grades from "
                f"its label, or when confident learning (cleanlab) flags it, suggests a grade at least "
                f"{GRADE_DISTANCE} away, and its expected grade is at least {GRADE_DISTANCE - 0.5:g} away (so it "
                f"rounds to a grade {GRADE_DISTANCE} or more away); one-grade disagreement is normal rater noise. "
                "Farthest first")
    judged = "the out-of-fold probabilities"
    if neighbours:
        judged += (f", blended ({1 - weight:.2f} : {weight:.2f}) with the share of each image's {neighbours} "
                   "nearest images that carry its label (weighed by how well neighbours predict the labels),")
    return ("confident learning (cleanlab) estimates how many of the images' labels are wrong, and lists that many "
            f"of them, those whose label {judged} find least likely; a plain misclassification is not listed "
            f"(the confusion matrix shows those). Lowest {RANKED_BY.replace('_', '-')} first")


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
    """Flags of the rows cleanlab's confident learning finds, class by class (FILTER_BY)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    if len(np.unique(labels)) < 2:
        return np.zeros(len(labels), dtype=bool)  # one class: nothing to confuse it with
    with warnings.catch_warnings():
        # It warns about classes without rows; their columns hold zeros, which is what it assumes.
        warnings.simplefilter("ignore")
        # n_jobs=1: its process pool costs more than the search on a few thousand rows.
        return np.asarray(cleanlab_issues(labels, probabilities, filter_by=FILTER_BY, n_jobs=1), dtype=bool)


def _issue_count(labels: np.ndarray, probabilities: np.ndarray) -> int:
    """How many of the labels confident learning estimates are wrong: the off-diagonal share of cleanlab's
    calibrated confident joint, times the rows."""
    from cleanlab.count import num_label_issues

    if len(np.unique(labels)) < 2:
        return 0  # one class: nothing to confuse it with
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without rows, as above
        return int(num_label_issues(labels, probabilities, estimation_method="off_diagonal_calibrated"))


def neighbour_votes(features, labels, rows, *, k: int = NEIGHBOURS, dims: int = PROJECTED_DIMS,
                    seed: int = 0) -> np.ndarray:
    """How many of each of `rows`' `k` nearest other rows carry its label: (len(rows),) counts.

    Nearest by cosine of the centred features, in a seeded Gaussian random projection to `dims` columns when
    there are more (it keeps cosines to about 1 / sqrt(dims)); searched exactly (faiss).
    """
    from threadpoolctl import threadpool_limits

    from featx import audit_index
    from featx.cores import usable_cores

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    rows = np.asarray(rows, dtype=np.int64)
    k = min(int(k), len(features) - 1)
    if k < 1 or not len(rows):
        return np.zeros(len(rows), dtype=np.int64)
    if features.shape[1] > dims:
        projection = np.random.default_rng(seed).standard_normal((features.shape[1], dims), dtype=np.float32)
        with threadpool_limits(limits=1):  # as the map's PCA: spinning BLAS threads lose on shared cores
            # (X - mean) R as X R - mean R: no centred copy of the features.
            points = features @ projection - features.mean(axis=0, dtype=np.float64).astype(np.float32) @ projection
    else:
        points = features - features.mean(axis=0)
    points = audit_index.unit_rows(points)
    faiss = audit_index.faiss()
    # One thread: on 2 cores shared with other work, faiss's second thread made the search 3-5x slower
    # (2,000 of 10,000 rows: 0.04-0.07 s against 0.19-0.26 s at load 3.3).
    faiss.omp_set_num_threads(1)
    try:
        _, found = audit_index.search(audit_index.flat_index(points), points[rows], k + 1)
    finally:
        faiss.omp_set_num_threads(usable_cores())
    # Each row finds itself (or an exact duplicate) first; drop it, or the farthest where a duplicate came first.
    itself = found == rows[:, None]
    keep = np.where(itself.any(axis=1, keepdims=True), ~itself, np.arange(k + 1) < k)
    neighbours = found[keep].reshape(len(rows), k)
    return (labels[neighbours] == labels[rows][:, None]).sum(axis=1)


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


def _neighbour_weight(labels: np.ndarray, probabilities: np.ndarray, shares: np.ndarray) -> float:
    """NEIGHBOUR_WEIGHT, scaled by the neighbours' skill as a share of the model's (at most 1).

    Skill: the mean probability given to the given label, above chance (what the labels' shares alone give:
    the sum of their squares). `shares`: the share of neighbours carrying the label, of a random sample of rows.
    """
    prior = np.bincount(labels) / len(labels)
    chance = float(prior @ prior)
    model = float(probabilities[np.arange(len(labels)), labels].mean()) - chance
    neighbours = float(np.mean(shares)) - chance
    if model <= 0:  # the model is no better than chance: neighbours that are get the whole weight
        return NEIGHBOUR_WEIGHT if neighbours > 0 else 0.0
    return NEIGHBOUR_WEIGHT * float(np.clip(neighbours / model, 0.0, 1.0))


def find_label_issues(probabilities, labels, *, graded: bool = False, paths: Sequence[str] | None = None,
                      root=None, features=None) -> LabelIssues:
    """Rows whose given label is likely wrong, most doubtful first (see `issue_rule`).

    probabilities: (rows, classes) out-of-fold, rows summing to 1; labels: each row's given class index.
    graded: classes are grades in index order.
    features: the rows' features (classes only): the most doubtful labels are judged again by their neighbours'.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(f"probabilities must be (rows, classes) for {len(labels)} labels, got {probabilities.shape}")
    n_rows, n_classes = probabilities.shape
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class indices 0..{n_classes - 1}")
    if features is not None and len(features) != n_rows:
        raise ValueError(f"features must have one row per label ({n_rows}), got {len(features)}")
    quality = _quality(labels, probabilities) if n_rows else np.zeros(0)
    suggested = _suggestions(labels, probabilities) if n_classes > 1 else np.zeros(n_rows, dtype=np.int64)
    reasons = np.full(n_rows, "confident learning", dtype=object)
    expected = None
    neighbours, weight = 0, 0.0
    if graded:
        flagged = _confident_learning(labels, probabilities) if n_rows else np.zeros(0, dtype=bool)
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
        count = _issue_count(labels, probabilities) if n_rows else 0
        ranked = np.lexsort((np.arange(n_rows), quality))  # least likely first, ties by row (a stable order)
        doubtful = ranked[: min(SHORTLIST * count, MAX_JUDGED)]
        if features is not None and count:
            neighbours = min(NEIGHBOURS, n_rows - 1)
            sample = np.random.default_rng(0).choice(n_rows, min(n_rows, SKILL_SAMPLE), replace=False)
            agree = neighbour_votes(features, labels, np.concatenate([doubtful, sample]), k=neighbours)
            agree, sampled = agree[: len(doubtful)], agree[len(doubtful):]
            weight = _neighbour_weight(labels, probabilities, sampled / neighbours)
            # Smoothed toward 1 / classes, so that no share is exactly 0 or 1.
            share = (agree + 1.0 / n_classes) / (neighbours + 1.0)
            quality[doubtful] = (1.0 - weight) * quality[doubtful] + weight * share
            reasons[doubtful] = [f"confident learning; {int(a)} of {neighbours} nearest images share its label"
                                 for a in agree]
            ranked[: len(doubtful)] = doubtful[np.lexsort((doubtful, quality[doubtful]))]
        flagged = np.zeros(n_rows, dtype=bool)
        flagged[ranked[:count]] = True
        order_key = quality  # least likely label first
    found = np.flatnonzero(flagged)
    order = found[np.lexsort((found, order_key[found]))]  # ties by row, so the order is stable
    all_paths = list(paths) if paths is not None else [""] * n_rows
    return LabelIssues(
        rows=order, given=labels[order], suggested=suggested[order], quality=quality[order],
        reasons=[str(reasons[i]) for i in order], probabilities=probabilities[order], n_checked=n_rows,
        paths=[str(all_paths[i]) for i in order], root=None if root is None else os.fspath(root), graded=graded,
        expected=None if expected is None else expected[order], neighbours=neighbours,
        neighbour_weight=weight,
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

"""Likely label errors: the confident-learning rule, out-of-fold probabilities, planted errors found."""

from __future__ import annotations

import csv
import os
import re

import cv2
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx.errors import FeatxError
from featx.report import (
    ReportData,
    build_report,
    find_label_issues,
    out_of_fold_probabilities,
)
from featx.rows import Rows


def test_rule_flags_rows_below_their_threshold_with_another_class_above_its_own():
    probabilities = np.array([
        [0.9, 0.1, 0.0],  # labelled 0, confident
        [0.7, 0.3, 0.0],  # labelled 0
        [0.2, 0.8, 0.0],  # labelled 0, but class 1 clears its threshold: flagged, suggests 1
        [0.1, 0.9, 0.0],  # labelled 1
        [0.3, 0.7, 0.0],  # labelled 1, below threshold 0.8, but class 0 (0.3) is below 0.6: kept
        [0.0, 0.5, 0.5],  # labelled 2, at or above its threshold 0.43: kept
        [0.0, 0.3, 0.7],  # labelled 2
        [0.05, 0.85, 0.1],  # labelled 2, class 1 clears 0.8: flagged, suggests 1
        [0.45, 0.55, 0.0],  # labelled 0, below 0.5625; class 1 misses 0.8 but beats the label: flagged
    ])
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0])
    issues = find_label_issues(probabilities, labels, paths=[f"img{i}.png" for i in range(9)], root="/data")
    # Thresholds: mean self-confidence per given class.
    expected = [(0.9 + 0.7 + 0.2 + 0.45) / 4, (0.9 + 0.7) / 2, (0.5 + 0.7 + 0.1) / 3]
    np.testing.assert_allclose(issues.thresholds, expected)
    assert list(issues.rows) == [7, 2, 8]  # margins 0.75, 0.6, 0.1: the largest first
    assert list(issues.suggested) == [1, 1, 1] and list(issues.given) == [2, 0, 0]
    np.testing.assert_allclose(issues.score, [0.75, 0.6, 0.1])
    assert list(issues.confident) == [True, True, False]
    assert issues.paths == ["img7.png", "img2.png", "img8.png"] and issues.root == "/data" and issues.n_checked == 9


def test_a_class_without_rows_never_reaches_a_threshold():
    # Nobody is labelled 2, so nothing says how sure the model must be to call a row a 2: the
    # confident-joint rule cannot fire for it; only an outright preference flags the row.
    probabilities = np.array([[0.1, 0.0, 0.9], [0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.2, 0.8, 0.0]])
    issues = find_label_issues(probabilities, np.array([0, 0, 1, 1]))
    assert np.isinf(issues.thresholds[2])
    assert list(issues.rows) == [0] and list(issues.suggested) == [2] and not issues.confident[0]


class _GroupSpy(ClassifierMixin, BaseEstimator):
    """Predicts class 1 for a row whose group (column 0) it saw while fitting, class 0 otherwise."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.seen_ = set(np.asarray(X)[:, 0].tolist())
        return self

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def predict_proba(self, X):
        leaked = np.isin(np.asarray(X)[:, 0], list(self.seen_))
        return np.column_stack([~leaked, leaked]).astype(float)


def test_out_of_fold_keeps_augmented_copies_of_one_image_in_one_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)  # 40 images, each with 2 augmented copies
    y = np.repeat(np.arange(40) % 2, 3)
    X = np.column_stack([groups, rng.normal(size=len(groups))])
    probabilities = out_of_fold_probabilities(_GroupSpy(), X, y, groups, folds=5)
    assert probabilities.shape == (120, 2)
    assert probabilities[:, 1].max() == 0.0  # no row was predicted by a model that had seen its image
    # Without groups, copies land in other folds: the spy sees them (the test above is not vacuous).
    assert out_of_fold_probabilities(_GroupSpy(), X, y, folds=5)[:, 1].max() == 1.0


def test_out_of_fold_refuses_what_it_cannot_do():
    X = np.random.default_rng(0).normal(size=(9, 3))
    with pytest.raises(FeatxError, match="no class probabilities"):
        out_of_fold_probabilities(Ridge(), X, np.array([0, 1] * 4 + [1]))
    with pytest.raises(FeatxError, match="2 or more images"):
        out_of_fold_probabilities(LogisticRegression(), X, np.array([0] + [1] * 8))


def _clear_dataset(tmp_path, *, per_class=80, moved=8, dim=32, seed=0):
    """Three well-separated classes; `moved` images of 'ants' sit in the 'bees' folder (planted errors).

    Features come from each image's true class; the images are real PNGs so the page can show them.
    """
    rng = np.random.default_rng(seed)
    names = ["ants", "bees", "wasps"]
    centres = rng.normal(scale=4.0, size=(3, dim))
    colours = [(40, 40, 200), (40, 200, 200), (200, 60, 40)]
    X, given, truth, paths = [], [], [], []
    for true_class in range(3):
        for i in range(per_class):
            label = 1 if true_class == 0 and i < moved else true_class
            relative = f"{names[label]}/{names[true_class]}_{i:03d}.png"
            image = np.clip(rng.normal(colours[true_class], 25, size=(40, 56, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "images" / names[label]).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "images" / relative), image)
            X.append(centres[true_class] + rng.normal(size=dim))
            given.append(label)
            truth.append(true_class)
            paths.append(relative)
    return np.array(X, dtype=np.float32), np.array(given), np.array(truth), paths, names


def test_planted_label_errors_rank_at_the_top_of_the_csv(tmp_path):
    X, given, truth, paths, names = _clear_dataset(tmp_path)
    planted = {paths[i] for i in np.flatnonzero(given != truth)}
    assert len(planted) == 8  # 10% of the 80 ants images
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X, given)
    rows = Rows.of(X, given, paths, root=str(tmp_path / "images"), source="generated")
    summary = ReportData(title="planted", class_names=names)
    result = build_report(tmp_path / "out" / "planted-report.html", head, summary, rows, log=lambda _: None)

    assert result.label_issues_csv == tmp_path / "out" / "planted-label-issues.csv"
    with open(result.label_issues_csv, newline="", encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    assert list(listed[0]) == ["path", "given", "suggested", "score", "confident", "p_ants", "p_bees", "p_wasps"]
    top = listed[: len(planted)]
    found = [row for row in top if row["path"].split("images/")[1] in planted]
    # Precision of the top 8 (as many as were planted): at least 0.8, i.e. 7 of the 8 are planted errors.
    assert len(found) / len(planted) >= 0.8
    assert all(row["given"] == "bees" and row["suggested"] == "ants" for row in found)
    scores = [float(row["score"]) for row in listed]
    assert scores == sorted(scores, reverse=True)
    assert all((tmp_path / "images").joinpath(row["path"].split("images/")[1]).is_file() for row in listed)


def test_augmented_copies_are_judged_as_one_image(tmp_path):
    X, given, truth, paths, names = _clear_dataset(tmp_path, per_class=40, moved=4)
    rng = np.random.default_rng(1)
    # Each image twice more, slightly moved, as `featx extract --augment 2` writes them.
    copies = 3
    rows = Rows.of(
        X=np.concatenate([X + (0 if k == 0 else rng.normal(scale=0.3, size=X.shape)) for k in range(copies)]),
        y=np.tile(given, copies), paths=paths * copies, root=str(tmp_path / "images"),
        aug=np.repeat(np.arange(copies), len(given)),
    )
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(rows.X, rows.y)
    result = build_report(tmp_path / "aug-report.html", head, ReportData(title="aug", class_names=names), rows,
                          log=lambda _: None)
    with open(result.label_issues_csv, newline="", encoding="utf-8") as handle:
        listed = [row["path"] for row in csv.DictReader(handle)]
    assert len(listed) == len(set(listed))  # an image is listed once, not once per copy
    planted = {os.path.join(str(tmp_path / "images"), paths[i]) for i in np.flatnonzero(given != truth)}
    assert set(listed[: len(planted)]) == planted
    page = result.page.read_text(encoding="utf-8")
    assert page.count('<circle class="pt') == len(given)  # the map shows each image once too


def test_a_head_without_probabilities_is_judged_by_logreg(tmp_path):
    X, given, truth, paths, names = _clear_dataset(tmp_path, per_class=40, moved=4)
    head = make_pipeline(StandardScaler(), RidgeClassifier()).fit(X, given)
    assert not hasattr(head, "predict_proba")
    lines = []
    rows = Rows.of(X, given, paths, root=str(tmp_path / "images"))
    result = build_report(tmp_path / "ridge-report.html", head, ReportData(title="ridge", class_names=names), rows,
                          rows, log=lines.append)
    assert any("finding label issues with a logreg head" in line for line in lines)
    with open(result.label_issues_csv, newline="", encoding="utf-8") as handle:
        top = [row["path"] for row in csv.DictReader(handle)][:4]
    assert {os.path.basename(path) for path in top} == {f"ants_{i:03d}.png" for i in range(4)}
    # Without probabilities each confusion-cell image is captioned with its prediction instead.
    page = result.page.read_text(encoding="utf-8")
    cells = [int(count) for count in re.findall(r'data-cell="\d+-\d+"[^>]*>(\d+)</td>', page)]
    captions = re.findall(r"<br>predicted (?:ants|bees|wasps)</figcaption>", page)
    assert len(captions) == sum(min(count, 24) for count in cells) > 0

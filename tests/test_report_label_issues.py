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
from featx.heads import make_head
from featx.report import (
    ReportData,
    build_report,
    find_label_issues,
    out_of_fold_probabilities,
)
from featx.report.label_issues import NEIGHBOUR_WEIGHT, NEIGHBOURS, neighbour_votes
from featx.rows import Rows


def _confident_rows(n_classes, per_class, rng, sureness=0.9):
    """Probabilities of rows the model is sure of, labelled with the class it is sure of."""
    labels = np.repeat(np.arange(n_classes), per_class)
    rest = (1.0 - sureness) / (n_classes - 1)
    probabilities = np.full((len(labels), n_classes), rest)
    rows = np.arange(len(labels))
    noise = rng.uniform(-0.02, 0.02, size=len(labels))
    probabilities[rows, labels] = sureness + noise
    probabilities[rows, (labels + 1) % n_classes] -= noise
    return probabilities, labels


def test_a_confident_mislabel_is_an_issue_and_a_plain_misclassification_is_not():
    rng = np.random.default_rng(0)
    probabilities, labels = _confident_rows(3, 40, rng)
    extra = np.array([
        [0.05, 0.9, 0.05],  # labelled 0, the model is as sure it is a 1 as of the real 1s: a label error
        [0.45, 0.55, 0.0],  # labelled 0, a near miss between 0 and 1: a misclassification, not a label error
        [0.40, 0.05, 0.55],  # labelled 0, the same between 0 and 2
    ])
    probabilities = np.vstack([probabilities, extra])
    labels = np.concatenate([labels, [0, 0, 0]])
    issues = find_label_issues(probabilities, labels, paths=[f"img{i}.png" for i in range(len(labels))], root="/d")
    mislabel = len(labels) - 3
    assert list(issues.rows) == [mislabel]
    assert list(issues.given) == [0] and list(issues.suggested) == [1] and issues.reasons == ["confident learning"]
    assert issues.paths == [f"img{mislabel}.png"] and issues.root == "/d" and issues.n_checked == len(labels)
    assert issues.quality[0] < 0.1


def test_graded_issues_are_two_or_more_grades_from_their_label():
    rng = np.random.default_rng(0)
    probabilities, labels = _confident_rows(5, 30, rng)
    extra = np.array([
        [0.0, 0.05, 0.9, 0.05, 0.0],  # labelled 0, expected grade 2.0: listed, suggests 2
        [0.0, 0.95, 0.05, 0.0, 0.0],  # labelled 0, surely a 1: adjacent grades, rater noise, not listed
        [0.0, 0.0, 0.0, 0.1, 0.9],  # labelled 1, expected grade 3.9: listed first (farthest)
        [0.0, 0.0, 0.9, 0.1, 0.0],  # labelled 3, expected grade 2.1: adjacent, not listed
    ])
    probabilities = np.vstack([probabilities, extra])
    labels = np.concatenate([labels, [0, 0, 1, 3]])
    first = len(labels) - 4
    issues = find_label_issues(probabilities, labels, graded=True)
    assert list(issues.rows) == [first + 2, first]
    assert list(issues.suggested) == [4, 2] and list(issues.given) == [1, 0]
    np.testing.assert_allclose(issues.expected, [3.9, 2.0])
    assert issues.reasons == ["expected grade 3.9", "expected grade 2.0"]
    # As plain classes the adjacent-grade mislabel is a label error (shown without the far one, which would
    # fill class 0's estimated count of one).
    keep = np.delete(np.arange(len(labels)), first)
    adjacent = first  # first + 1 before the deletion
    assert adjacent in find_label_issues(probabilities[keep], labels[keep]).rows
    assert adjacent not in find_label_issues(probabilities[keep], labels[keep], graded=True).rows


def test_a_graded_cleanlab_flag_counts_only_where_the_expected_grade_backs_it():
    rng = np.random.default_rng(0)
    probabilities, labels = _confident_rows(5, 30, rng, sureness=0.6)
    extra = np.array([
        [0.3, 0.0, 0.65, 0.05, 0.0],  # labelled 0, cleanlab suggests 2, expected grade 1.45: rounds to 1, not listed
        [0.15, 0.15, 0.65, 0.05, 0.0],  # labelled 0, cleanlab suggests 2, expected grade 1.6: rounds to 2, listed
    ])
    probabilities = np.vstack([probabilities, extra])
    labels = np.concatenate([labels, [0, 0]])
    unbacked, backed = len(labels) - 2, len(labels) - 1
    # Confident learning flags both (the rule below is not vacuous) ...
    assert {unbacked, backed} <= set(find_label_issues(probabilities, labels).rows)
    issues = find_label_issues(probabilities, labels, graded=True)
    # ... but only the one its expected grade backs is a graded issue.
    assert list(issues.rows) == [backed] and list(issues.suggested) == [2]
    assert issues.reasons == ["confident learning; expected grade 1.6"]


def test_a_class_without_rows_changes_nothing():
    # Nobody is labelled 2 and the model never gives it probability: a column of zeros changes nothing.
    rng = np.random.default_rng(1)
    probabilities, labels = _confident_rows(2, 30, rng)
    probabilities = np.vstack([probabilities, [[0.05, 0.95]]])
    labels = np.append(labels, 0)
    with_empty = find_label_issues(np.column_stack([probabilities, np.zeros(len(labels))]), labels)
    assert list(with_empty.rows) == list(find_label_issues(probabilities, labels).rows) == [len(labels) - 1]
    assert list(with_empty.suggested) == [1]


def test_the_neighbours_judge_the_most_doubtful_labels_again():
    rng = np.random.default_rng(0)
    probabilities, labels = _confident_rows(3, 30, rng)
    centres = rng.normal(scale=5.0, size=(3, 16))
    features = centres[labels] + rng.normal(size=(len(labels), 16))
    # Two images labelled 0 that the model calls a 1; confident learning counts one label error among them.
    # The first looks like the other 0s (its neighbours are 0s), the second like the 1s.
    probabilities = np.vstack([probabilities, [[0.05, 0.92, 0.03], [0.06, 0.88, 0.06]]])
    labels = np.concatenate([labels, [0, 0]])
    features = np.vstack([features, centres[0] + rng.normal(size=16), centres[1] + rng.normal(size=16)])
    among_zeros, among_ones = len(labels) - 2, len(labels) - 1

    by_model = find_label_issues(probabilities, labels)
    assert list(by_model.rows) == [among_zeros]  # the model alone: the lower p(label)
    assert by_model.neighbours == 0 and by_model.reasons == ["confident learning"]
    judged = find_label_issues(probabilities, labels, features=features)
    assert list(judged.rows) == [among_ones]  # its neighbours carry another label
    assert judged.neighbours == NEIGHBOURS
    assert judged.reasons == [f"confident learning; 0 of {NEIGHBOURS} nearest images share its label"]
    # Neighbours predict these labels as well as the model (clear clusters): their vote gets its whole weight,
    # and label quality blends p(label) 0.06 with the smoothed share of neighbours that agree, (0 + 1/3) / 11.
    assert judged.neighbour_weight == NEIGHBOUR_WEIGHT
    np.testing.assert_allclose(judged.quality, [0.7 * 0.06 + 0.3 * (1 / 3) / (NEIGHBOURS + 1)])
    np.testing.assert_allclose(judged.probabilities, [[0.06, 0.88, 0.06]])  # the CSV keeps the model's

    # Features that say nothing about the labels: neighbours agree with a label no more often than chance,
    # so their vote weighs (next to) nothing and the model's list stands.
    noise = rng.normal(size=features.shape)
    unjudged = find_label_issues(probabilities, labels, features=noise)
    assert unjudged.neighbour_weight < 0.05
    assert list(unjudged.rows) == [among_zeros]


def test_neighbour_votes_count_the_nearest_other_rows_by_cosine():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 5)).astype(np.float32)
    features[7] = features[3]  # an exact duplicate: each finds the other, never itself
    labels = rng.integers(0, 3, size=60)
    rows = np.array([0, 3, 7, 59])
    centred = features - features.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity[rows], axis=1)[:, :4]
    expected = (labels[nearest] == labels[rows][:, None]).sum(axis=1)
    np.testing.assert_array_equal(neighbour_votes(features, labels, rows, k=4), expected)
    assert 7 in nearest[1] and 3 in nearest[2]
    # More columns than the projection keeps (100 -> 8): three clear clusters are still told apart, so the
    # one image filed under another cluster's label finds no neighbour that shares it, and the rest nearly all do.
    cluster = np.repeat(np.arange(3), 20)
    wide = (rng.normal(scale=3.0, size=(3, 100))[cluster] + rng.normal(size=(60, 100))).astype(np.float32)
    filed = cluster.copy()
    filed[0] = 2
    votes = neighbour_votes(wide, filed, np.arange(60), k=4, dims=8)
    assert votes[0] == 0 and votes[1:].min() >= 3


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
    assert list(listed[0]) == ["path", "given", "suggested", "label_quality", "reason", "p_ants", "p_bees", "p_wasps"]
    # Confident learning lists few of errors that all go one way (ants filed as bees make the model less
    # sure of every ant), but what it lists is right: the many-class test below measures recall.
    assert 0 < len(listed) <= len(planted)
    assert all(row["path"].split("images/")[1] in planted for row in listed)
    assert all(row["given"] == "bees" and row["suggested"] == "ants" for row in listed)
    quality = [float(row["label_quality"]) for row in listed]
    assert quality == sorted(quality)  # the most doubtful label first
    assert all((tmp_path / "images").joinpath(row["path"].split("images/")[1]).is_file() for row in listed)


def test_planted_errors_among_many_classes_from_the_heads_own_cross_validation(tmp_path):
    """5% of the rows of 8 classes moved to another class: the list starts with them, and its
    probabilities are the head's own out-of-fold ones (no second cross-validation)."""
    rng = np.random.default_rng(3)
    n_classes, per_class, dim = 8, 50, 24
    truth = np.repeat(np.arange(n_classes), per_class)
    X = (rng.normal(scale=1.6, size=(n_classes, dim))[truth] + rng.normal(size=(len(truth), dim))).astype(np.float32)
    moved = rng.choice(len(truth), size=len(truth) // 20, replace=False)
    given = truth.copy()
    given[moved] = (truth[moved] + rng.integers(1, n_classes, size=len(moved))) % n_classes
    names = [f"c{k}" for k in range(n_classes)]
    paths = [f"{names[label]}/{i:04d}.png" for i, label in enumerate(given)]  # no images: the page says so
    head = make_head("logreg", n_classes=n_classes).fit(X, given)
    rows = Rows.of(X, given, paths, root=str(tmp_path / "none"))
    lines = []
    result = build_report(tmp_path / "many-report.html", head, ReportData(title="many", class_names=names), rows,
                          log=lines.append, fitted=head)
    with open(result.label_issues_csv, newline="", encoding="utf-8") as handle:
        listed = [(row["path"], [float(row[f"p_{name}"]) for name in names]) for row in csv.DictReader(handle)]
    planted = {os.path.join(str(tmp_path / "none"), paths[i]) for i in moved}
    n = len(planted)
    assert len({path for path, _ in listed[:n]} & planted) / n >= 0.9  # precision in the top n
    assert len({path for path, _ in listed[: 2 * n]} & planted) / n >= 0.95  # recall in the top 2n
    assert len(listed) <= 2 * n  # the clean 95% are not flooded in
    assert "out-of-fold probabilities from the head&#x27;s own cross-validation" in result.page.read_text("utf-8")
    index = {path: i for i, path in enumerate(os.path.join(str(tmp_path / "none"), p) for p in paths)}
    for path, probabilities in listed:
        np.testing.assert_allclose(probabilities, head.oof_proba_[index[path]], atol=1e-6)
    assert set(result.timings) >= {"out-of-fold probabilities", "label issues", "map", "thumbnails", "HTML"}


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
    assert listed and set(listed) <= planted
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
        listed = [row["path"] for row in csv.DictReader(handle)]
    assert listed and {os.path.basename(path) for path in listed} <= {f"ants_{i:03d}.png" for i in range(4)}
    # Without probabilities each confusion-cell image is captioned with its prediction instead.
    page = result.page.read_text(encoding="utf-8")
    cells = [int(count) for count in re.findall(r'data-cell="\d+-\d+"[^>]*>(\d+)</td>', page)]
    captions = re.findall(r"<br>predicted (?:ants|bees|wasps)</figcaption>", page)
    assert len(captions) == sum(min(count, 24) for count in cells) > 0

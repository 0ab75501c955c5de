"""featx.report: metrics with bootstrap intervals, the leaderboard table, confusion matrices."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, precision_recall_fscore_support

from featx.report import (
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    confusion_text,
    f1_macro,
    leaderboard_table,
    per_class_scores,
    quadratic_weighted_kappa,
    save_confusion_png,
)

Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2, 0, 1])
Y_PRED = np.array([0, 1, 1, 1, 2, 1, 2, 0, 0, 2, 0, 1])


def test_quadratic_weighted_kappa_matches_a_hand_computed_case():
    # Grades 0..2; truth [0, 0, 1, 2], prediction [0, 1, 1, 2]; weights w_ij = (i - j)^2 / 2^2.
    # Observed: one disagreement, at (0, 1): sum w*O = 1/4.
    # Expected E = outer(truth counts [2, 1, 1], prediction counts [1, 2, 1]) / 4, so sum w*E =
    #   (0,1) 1.0/4 + (0,2) 0.5*1 + (1,0) 0.25/4 + (1,2) 0.25/4 + (2,0) 0.25*1 + (2,1) 0.5/4 = 1.25.
    # kappa = 1 - 0.25 / 1.25 = 0.8
    assert quadratic_weighted_kappa([0, 0, 1, 2], [0, 1, 1, 2]) == pytest.approx(0.8)
    assert quadratic_weighted_kappa(Y_TRUE, Y_PRED) == pytest.approx(
        cohen_kappa_score(Y_TRUE, Y_PRED, weights="quadratic")
    )


def test_fast_metrics_match_sklearn():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(np.mean(Y_TRUE == Y_PRED))
    assert f1_macro(Y_TRUE, Y_PRED) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    # A class never seen in a resample still counts (as 0), as sklearn does with labels= given.
    assert f1_macro([0, 0, 1], [0, 0, 1], labels=[0, 1, 2]) == pytest.approx(
        f1_score([0, 0, 1], [0, 0, 1], labels=[0, 1, 2], average="macro", zero_division=0)
    )


def test_per_class_scores_match_sklearn_including_a_class_never_predicted():
    y_pred = np.where(Y_PRED == 2, 1, Y_PRED)  # class 2 is never predicted: its precision is 0, as sklearn has it
    scores = per_class_scores(confusion_matrix(Y_TRUE, y_pred, 3))
    expected = precision_recall_fscore_support(Y_TRUE, y_pred, labels=[0, 1, 2], zero_division=0)
    for ours, theirs in zip((scores["precision"], scores["recall"], scores["f1"], scores["support"]), expected):
        np.testing.assert_allclose(ours, theirs)


@pytest.mark.parametrize("metric_fn", [accuracy, f1_macro, quadratic_weighted_kappa])
def test_bootstrap_interval_contains_the_point_estimate_and_is_seeded(metric_fn):
    low, high = bootstrap_ci(Y_TRUE, Y_PRED, metric_fn, n=500, seed=0)
    assert low <= metric_fn(Y_TRUE, Y_PRED) <= high
    assert low < high  # 12 rows with mistakes: the interval has width
    assert bootstrap_ci(Y_TRUE, Y_PRED, metric_fn, n=500, seed=0) == (low, high)


def test_leaderboard_table_aligns_columns_and_formats_intervals():
    rows = [
        {"head": "logreg", "params": {"C": 0.01}, "cv_score": 0.9512, "accuracy": 0.953,
         "accuracy_ci": [0.921, 0.979], "f1_macro": 0.95, "f1_macro_ci": [0.9, 0.98], "fit_seconds": 1.234},
        {"head": "svm-rbf", "params": {"C": 10.0, "gamma": "scale"}, "cv_score": None, "accuracy": 0.9,
         "accuracy_ci": None, "f1_macro": 0.88, "f1_macro_ci": [0.8, 0.93], "fit_seconds": 0.5},
    ]
    lines = leaderboard_table(rows).splitlines()
    assert lines[0].split() == ["head", "params", "cv", "score", "accuracy", "macro", "F1", "fit", "s"]
    assert set(lines[1]) <= {"-", " "}
    assert "0.953 [0.921, 0.979]" in lines[2] and "C=0.01" in lines[2] and "1.23" in lines[2]
    assert "C=10, gamma=scale" in lines[3] and " - " in lines[3]
    assert lines[2].index("0.953") == lines[3].index("0.900")  # metric columns line up
    assert "QWK" not in lines[0]  # no row has a kappa


def test_confusion_text_and_png(tmp_path):
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.sum() == len(Y_TRUE) and cm[1, 1] == 3 and cm[2, 1] == 1
    text = confusion_text(cm, ["cat", "dog", "bird"]).splitlines()
    assert text[0].split()[-3:] == ["cat", "dog", "bird"]
    assert text[3].split() == ["bird", "0", "1", "3"]
    png = save_confusion_png(cm, ["cat", "dog", "bird"], tmp_path / "plots" / "cm.png")
    image = cv2.imread(str(png))
    assert image is not None and image.shape[2] == 3 and min(image.shape[:2]) > 100

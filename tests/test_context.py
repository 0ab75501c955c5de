"""--context others: each row beside the mean of its subject's other images, from train through predict."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from featx import FeatureStore, load_bundle
from featx.cli import main
from featx.context import others_mean, single_image_rows, with_context
from featx.pipeline_split import Split
from featx.rows import Rows, grouped_train_test_split
from featx.store import HDF5DatasetWriter

KNEE = r"(\d+)[LR]\."


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_context_is_the_mean_of_the_other_images_and_never_the_row_itself():
    X = np.array([[1, 0], [3, 0], [5, 0], [9, 9], [2, 4]], dtype=np.float32)  # row 3: a flipped copy of row 0
    subjects = ["a", "a", "a", "a", "b"]
    images = ["a1", "a2", "a3", "a1", "b1"]
    originals = [True, True, True, False, True]
    context = others_mean(X, subjects, images, originals)
    # a1 and its augmented copy see a2 and a3; a2 sees a1 and a3 but not a1's copy; b has no other image.
    assert context.tolist() == [[4, 0], [3, 0], [2, 0], [4, 0], [2.75, 1]]
    assert others_mean(X, subjects, images, originals, fill="self")[4].tolist() == [2, 4]
    assert others_mean(X, subjects, images, originals, fill="zeros")[4].tolist() == [0, 0]
    # The default fill: given features (a bundle's training mean), else the mean of the original rows here.
    assert others_mean(X, subjects, images, originals, value=[7, 7])[4].tolist() == [7, 7]
    # Rows without paths are their own images: two such rows of one subject are each other's context.
    rows = Rows.of(X[:2], [0, 1], subjects=["s", "s"])
    assert with_context(rows).X.tolist() == [[1, 0, 3, 0], [3, 0, 1, 0]]
    assert single_image_rows(Rows.of(X, [0] * 5, images, aug=[0, 0, 0, 1, 0], subjects=subjects)) == 1


def test_context_before_the_split_is_what_each_side_would_compute_alone():
    """Splits keep a subject on one side, so no row's context crosses from test to train or back."""
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(30), 2)[:-1]  # 29 patients with two knees, one with one
    rows = Rows.of(rng.normal(size=(59, 3)), np.arange(59) % 2, [f"{s}{'LR'[i % 2]}.png" for i, s in
                                                                   enumerate(subjects)], subjects=subjects.astype(str))
    fill = np.zeros(3)
    whole = with_context(rows, value=fill)
    for seed in range(3):
        for side in grouped_train_test_split(rows.y, rows.groups, test_size=0.25, seed=seed):
            assert np.array_equal(whole.subset(side).X, with_context(rows.subset(side), value=fill).X)


def test_a_fused_split_picks_each_files_context_with_its_features():
    rows = Rows.of(np.arange(12, dtype=np.float32).reshape(2, 6), [0, 1], subjects=["s", "s"])
    rows.widths = (2, 4)
    fused = with_context(rows)
    assert fused.widths == (2, 4, 2, 4) and fused.X.shape == (2, 12)
    split = Split(train=fused, test=fused, class_names=["0", "1"], graded=True, recipes=[], test_label="",
                  all_rows=None, context="others")
    second = split.blocks([1]).train
    assert second.widths == (4, 4) and second.X[0].tolist() == [2, 3, 4, 5, 8, 9, 10, 11]


def _knee_images(folder, subjects, seed):
    """Tiny real images named like the knee set (`<grade>/<patient><side>.png`), brighter with the grade."""
    rng = np.random.default_rng(seed)
    paths = []
    for patient, grades in subjects.items():
        for side, grade in zip("LR", grades):
            path = folder / str(grade) / f"{patient}{side}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = np.clip(rng.normal(40 + 80 * grade, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(path), image)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    """36 patients with two knees (grades 0-2, a grade apart at most) and one with one knee; extracted with --group."""
    root = tmp_path_factory.mktemp("context")
    rng = np.random.default_rng(0)
    subjects = {9000000 + i: (g, min(2, g + int(rng.integers(0, 2)))) for i, g in enumerate(np.arange(36) % 3)}
    subjects[9100000] = (1,)
    _knee_images(root / "knees", subjects, seed=1)
    features = root / "knees.h5"
    assert main(["extract", str(root / "knees"), "-o", str(features), "--weights", "none", "--image-size", "32",
                 "--runtime", "keras", "--group", KNEE, "-q"]) == 0
    assert main(["train", str(features), "--context", "others", "--heads", "logreg", "-o", str(root / "models"),
                 "--no-report", "-q"]) == 0
    return root, features, root / "models" / "knees-logreg.skops"


def test_the_bundle_records_grouping_and_context(knees):
    _, features, bundle_path = knees
    bundle = load_bundle(bundle_path)
    assert (bundle.group, bundle.group_unmatched, bundle.context, bundle.context_fill) == (KNEE, "refuse", "others",
                                                                                          "mean")
    with FeatureStore(features) as store:
        assert bundle.head.n_features_in_ == 2 * store.dim
        assert np.allclose(bundle.context_fill_value, np.asarray(store.features[:], np.float32).mean(axis=0))


def test_predict_names_subjects_builds_the_same_context_and_sums_up_each_subject(knees, capsys):
    root, features, bundle_path = knees
    out = root / "out" / "predictions.csv"
    out.parent.mkdir()
    assert main(["predict", str(bundle_path), str(root / "knees"), "-o", str(out), "--runtime", "keras"]) == 0
    assert "37 subjects" in capsys.readouterr().out
    table = read_csv(out)
    assert list(table[0])[:3] == ["path", "subject", "predicted"] and len(table) == 73
    predicted = {row["path"].split("knees/", 1)[1]: row for row in table}
    assert predicted["1/9100000L.png"]["subject"] == "9100000"
    # The head saw each training row's context; predict must build the same one from the folder's images.
    bundle = load_bundle(bundle_path)
    with FeatureStore(features) as store:
        rows = bundle.labelled_rows([store], log=print)
    expected = dict(zip(rows.paths, np.asarray(bundle.label_names)[bundle.head.predict(rows.X)]))
    assert {path: row["predicted"] for path, row in predicted.items()} == expected
    summary = read_csv(root / "out" / "predictions-subjects.csv")
    assert list(summary[0]) == ["subject", "images", "predicted", "call"] and len(summary) == 37
    for subject in summary:
        grades = [int(part.rsplit("=", 1)[1]) for part in subject["predicted"].split("; ")]
        assert int(subject["images"]) == len(grades) and int(subject["call"]) == max(grades)


def test_evaluate_report_and_compare_give_rows_their_context(knees, capsys):
    root, features, bundle_path = knees
    assert main(["evaluate", str(bundle_path), str(features)]) == 0
    assert "73 images" in capsys.readouterr().out
    assert main(["report", str(bundle_path), str(features), "-o", str(root / "page")]) == 0
    assert (root / "page" / "knees-report.html").is_file()
    assert main(["compare", str(features), "--context", "others", "-o", str(root / "compare"), "--no-report",
                 "-q"]) == 0


def test_predict_refuses_names_the_regex_misses_unless_told_they_are_their_own(knees, capsys):
    root, _, bundle_path = knees
    loose = _knee_images(root / "loose", {"scan": (0,)}, seed=2)
    assert main(["predict", str(bundle_path), str(loose[0].parent), "-o", str(root / "loose.csv"),
                 "--runtime", "keras"]) == 1
    assert "--group-unmatched own" in capsys.readouterr().err and not (root / "loose.csv").exists()
    assert main(["predict", str(bundle_path), str(loose[0].parent), "-o", str(root / "loose.csv"),
                 "--runtime", "keras", "--group-unmatched", "own"]) == 0
    assert read_csv(root / "loose-subjects.csv")[0]["images"] == "1"
    # Without context nothing depends on the subjects: a name the regex misses is its own, unasked.
    assert main(["train", str(root / "knees.h5"), "--heads", "logreg", "-o", str(root / "plain"), "--no-report",
                 "-q"]) == 0
    assert load_bundle(root / "plain" / "knees-logreg.skops").group == KNEE  # the file's own regex
    assert main(["predict", str(root / "plain" / "knees-logreg.skops"), str(loose[0].parent), "-o",
                 str(root / "plain.csv"), "--runtime", "keras"]) == 0
    assert read_csv(root / "plain.csv")[0]["subject"] == "<image scanL.png>"  # relative to the folder given


def test_context_needs_subjects_and_the_in_memory_heads(tmp_path, capsys):
    path = tmp_path / "plain.h5"
    with HDF5DatasetWriter((40, 4), path) as writer:
        writer.store_class_labels(["0", "1"])
        writer.add(np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2,
                   paths=[f"{i % 2}/{i // 2}{'LR'[i % 2]}.png" for i in range(40)])
    common = ["train", str(path), "--context", "others", "-o", str(tmp_path), "--no-report", "-q"]
    assert main(common) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs subjects" in err[0] and "--group" in err[0]
    assert main([*common, "--group", KNEE, "--heads", "sgd"]) == 1
    assert "trains in memory" in capsys.readouterr().err
    assert main([*common, "--group", KNEE]) == 0
    # The streamed head's bundle records the grouping too, for predict's subject column.
    assert main(["train", str(path), "--group", KNEE, "--heads", "sgd", "-o", str(tmp_path / "sgd"), "--no-report",
                 "-q"]) == 0
    assert load_bundle(tmp_path / "sgd" / "plain-sgd.skops").group == KNEE

"""featx audit: planted near-duplicates across splits, subjects in two splits, outliers, CSVs and the CLI."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from featx.audit import audit
from featx.cli import main
from featx.store import HDF5DatasetWriter

DIM = 64
CLASSES = ["ants", "bees", "wasps"]
N_TRAIN, N_VAL = 300, 120
# Val rows 0..7 are re-saved copies of train rows 10..17 (their features plus a little noise).
PLANTED = {(f"train/{CLASSES[r % 3]}/img{r}.png", f"val/{CLASSES[r % 3]}/copy{i}.png") for i, r in
           zip(range(8), range(10, 18))}


def _write(path, features, labels, paths, root, split, aug=None):
    with HDF5DatasetWriter((len(features), DIM), path, buffer_size=100) as writer:
        writer.store_class_labels(CLASSES)
        writer.set_attrs(dataset_root=str(root), split=split)
        writer.add(features, labels, paths=paths, aug=aug)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train.h5 and val.h5 of three classes; val holds 8 planted copies of train rows and one odd row."""
    tmp = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, DIM)) * 0.5
    y_train, y_val = np.arange(N_TRAIN) % 3, np.arange(N_VAL) % 3
    x_train = (centers[y_train] + rng.normal(size=(N_TRAIN, DIM))).astype(np.float32)
    x_val = (centers[y_val] + rng.normal(size=(N_VAL, DIM))).astype(np.float32)
    y_val[:8] = y_train[10:18]
    x_val[:8] = x_train[10:18] + 0.05 * rng.normal(size=(8, DIM))
    x_val[8] = -3 * centers[y_val[8]] + rng.normal(size=DIM)  # opposite its class: a mislabelled or broken image
    train_paths = [f"{CLASSES[y]}/img{i}.png" for i, y in enumerate(y_train)]
    val_paths = [f"{CLASSES[y]}/{'copy' if i < 8 else 'val'}{i}.png" for i, y in enumerate(y_val)]
    val_paths[20] = f"{CLASSES[y_val[20]]}/img{99}.png"  # the same picture name as train's img99: one subject
    # Augmented copies are near-duplicates of their own image by construction: the audit leaves them out.
    x_aug = x_train[:5] + 0.01
    _write(tmp / "train.h5", np.concatenate([x_train, x_aug]), np.concatenate([y_train, y_train[:5]]),
           train_paths + train_paths[:5], tmp / "images" / "train", "train", aug=[0] * N_TRAIN + [1] * 5)
    _write(tmp / "val.h5", x_val, y_val, val_paths, tmp / "images" / "val", "val")
    for split, paths in (("train", train_paths[10:18]), ("val", val_paths[:9])):
        for path in paths:  # tiny real images for the page's thumbnails
            (tmp / "images" / split / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp / "images" / split / path), np.full((24, 32, 3), 128, np.uint8))
    return tmp


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _found_pairs(folder):
    rows = _rows(folder / "duplicates.csv")
    return {(f"{r['split_a']}/{r['path_a']}", f"{r['split_b']}/{r['path_b']}") for r in rows}


@pytest.mark.parametrize("exact_rows", [10_000, 100], ids=["exact", "reduced-ivf"])
def test_planted_copies_are_the_duplicates_found_across_splits(files, tmp_path, exact_rows):
    result = audit([files / "train.h5", files / "val.h5"], tmp_path / "out", exact_rows=exact_rows, page=False)
    assert _found_pairs(tmp_path / "out") == PLANTED
    assert (result.rows, result.duplicates, result.across_splits) == (N_TRAIN + N_VAL, 8, 8)
    assert all(float(r["similarity"]) > 0.95 and r["across_splits"] == "1" and r["same_label"] == "1"
               for r in _rows(tmp_path / "out" / "duplicates.csv"))


def test_outliers_and_subjects_in_two_splits(files, tmp_path):
    result = audit([files / "train.h5", files / "val.h5"], tmp_path, page=False)
    outliers = _rows(tmp_path / "outliers.csv")
    assert outliers[0]["path"] == "wasps/val8.png" and outliers[0]["reason"] == "far from its class"
    assert result.outliers == len(outliers) < 0.05 * (N_TRAIN + N_VAL)
    subjects = _rows(tmp_path / "subjects.csv")
    assert [(s["subject"], s["splits"], s["rows"]) for s in subjects] == [("img99", "train;val", "2")]


def test_cli_writes_csvs_page_and_one_summary_line(files, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", str(files / "train.h5"), str(files / "val.h5"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "8 near-duplicate pairs (8 across splits)" in printed[0]
    assert sorted(p.name for p in out.iterdir()) == ["audit.html", "duplicates.csv", "outliers.csv",
                                                      "subjects.csv", "summary.txt"]
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert page.count('border:2px solid #c00"') == 8 and page.count("data:image/jpeg;base64,") >= 16
    assert printed[0] in page and 'id="near-duplicates"' in page and 'id="outliers"' in page
    assert (out / "summary.txt").read_text().splitlines()[0] == printed[0]


def test_cli_refuses_a_missing_file_in_one_line(files, tmp_path, capsys):
    assert main(["audit", str(files / "train.h5"), str(tmp_path / "nope.h5"), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.h5 does not exist" in err[0]

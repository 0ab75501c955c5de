"""`featx demo`: the embedded dataset is deterministic and the whole pipeline runs on it."""

from __future__ import annotations

import csv

import cv2

from featx.demo import DIGIT_NAMES, run_demo, write_digits
from featx.store import FeatureStore


def test_digits_are_written_deterministically(tmp_path):
    n_train, n_test = write_digits(tmp_path / "a")
    assert (n_train, n_test) == (1437, 360)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 1797
    assert {p.parts[1] for p in files} == set(DIGIT_NAMES)
    img = cv2.imread(str(tmp_path / "a" / files[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32) and img.max() > 100
    write_digits(tmp_path / "b")
    again = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files == again
    assert (tmp_path / "a" / files[5]).read_bytes() == (tmp_path / "b" / files[5]).read_bytes()


def test_demo_runs_the_whole_pipeline_and_reuses_features(tmp_path):
    # Random weights at a small size keep this fast; the real run uses the packaged ImageNet weights.
    lines = []
    accuracy = run_demo(tmp_path, weights="none", image_size=32, heads=("mlp",), progress=False,
                        log=lines.append)
    text = "\n".join(lines)
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in text
    with FeatureStore(tmp_path / "features" / "digits-train.h5") as fs:
        assert len(fs) == 1437 and fs.label_names == DIGIT_NAMES
    bundle = tmp_path / "models" / "digits-train-mlp.skops"
    assert bundle.exists()
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 360
    correct = sum(row["predicted"] == row["path"].replace("\\", "/").split("/")[-2] for row in rows)
    assert abs(accuracy - correct / 360) < 1e-9
    assert accuracy > 0.3  # far above chance (0.1) even with random convolution weights

    lines.clear()
    run_demo(tmp_path, weights="none", image_size=32, heads=("mlp",), progress=False, log=lines.append)
    assert "already done" in "\n".join(lines)  # the second run resumes instead of re-extracting

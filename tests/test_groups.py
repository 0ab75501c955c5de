"""Subjects (--group): named from knee-style paths, recorded in the feature file, counted by info."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from featx.audit import audit
from featx.cli import main
from featx.errors import FeatxError
from featx.rows import grouped_train_test_split, read_rows
from featx.store import FeatureStore, HDF5DatasetWriter, describe, subjects_of

KNEE = r"(\d+)[LR]\."
# Two knees of most patients, in different grade folders, as in the shared knee set's names.
PATHS = ["0/9003126L.png", "3/9003126R.png", "1/9012345L.png", "1/9012345R.png", "2/9876543L.png",
         "0/9111111R.png", "4/9111111L.png"]


def test_subjects_are_the_first_group_searched_in_the_relative_path():
    assert list(subjects_of(PATHS, KNEE)) == ["9003126", "9003126", "9012345", "9012345", "9876543",
                                             "9111111", "9111111"]
    assert list(subjects_of(["left/12_left.jpeg", "right\\12_right.jpeg"], r"(\d+)_(?:left|right)")) == ["12", "12"]


def test_unmatched_paths_are_refused_with_examples_or_become_their_own_subject():
    paths = [*PATHS, "0/notes.png", "2/scan.png"]
    refusal = r"2 of 9 image paths \(e.g. '0/notes.png', '2/scan.png'\).*--group-unmatched own"
    with pytest.raises(FeatxError, match=refusal):
        subjects_of(paths, KNEE)
    subjects = subjects_of(paths, KNEE, unmatched="own")
    assert len(set(subjects[-2:])) == 2 and not set(subjects[-2:]) & set(subjects[:-2])


@pytest.mark.parametrize(("regex", "message"), [("(\\d+", "not a valid regular expression"),
                                                ("\\d+[LR]", "no capture group")])
def test_a_bad_regex_is_refused_in_one_line(regex, message):
    with pytest.raises(FeatxError, match=message):
        subjects_of(PATHS, regex)


def _grouped_file(path, paths, buffer_size=3, **group):
    writer = HDF5DatasetWriter((len(paths), 4), path, buffer_size=buffer_size)
    writer.store_class_labels(["0", "1", "2", "3", "4"])
    writer.set_attrs(**group)
    for start in range(0, len(paths), 2):  # several shards: the subjects are named on the assembled rows
        part = paths[start:start + 2]
        writer.add(np.ones((len(part), 4), np.float32), [int(p[0]) for p in part], paths=part)
    writer.close()


def test_the_feature_file_records_subjects_and_info_counts_them(tmp_path, capsys):
    _grouped_file(tmp_path / "knee.h5", PATHS, group_regex=KNEE, group_unmatched="refuse")
    with FeatureStore(tmp_path / "knee.h5") as store:
        assert store.group_regex == KNEE
        assert store.subjects == list(subjects_of(PATHS, KNEE))
    assert f"subjects: 4 (1 with 1, 3 with 2 images each), named by --group '{KNEE}'" in describe(tmp_path / "knee.h5")
    assert main(["info", str(tmp_path / "knee.h5")]) == 0
    assert "subjects: 4" in capsys.readouterr().out


def test_a_file_without_group_records_no_subjects(tmp_path):
    _grouped_file(tmp_path / "plain.h5", PATHS)
    with FeatureStore(tmp_path / "plain.h5") as store:
        assert store.subjects is None and store.group_regex is None
    assert "subjects" not in describe(tmp_path / "plain.h5")


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    """120 patients x 2 knees (grades 0-2, the knees of a patient a grade apart at most), subjects recorded."""
    path = tmp_path_factory.mktemp("groups") / "knees.h5"
    rng = np.random.default_rng(0)
    grades = np.clip(np.repeat(rng.integers(0, 3, 120), 2) + rng.integers(0, 2, 240) * (np.arange(240) % 2), 0, 2)
    paths = [f"{g}/{9000000 + i // 2}{'LR'[i % 2]}.png" for i, g in enumerate(grades)]
    features = (np.eye(3, 16)[grades] * 2 + rng.normal(size=(240, 16))).astype(np.float32)
    with HDF5DatasetWriter((240, 16), path, buffer_size=50) as writer:
        writer.store_class_labels(["0", "1", "2"])
        writer.set_attrs(group_regex=KNEE)
        writer.add(features, grades, paths=paths)
    return path


def test_a_grouped_split_never_puts_a_patient_on_both_sides(knees):
    with FeatureStore(knees) as store:
        rows = read_rows(store, ["0", "1", "2"], log=lambda message: None)
    assert rows.grouped and len(set(rows.groups)) == 120
    for seed in range(5):
        train, test = grouped_train_test_split(rows.y, rows.groups, test_size=0.25, seed=seed)
        patients = [{Path(p).stem[:-1] for p in rows.paths[side]} for side in (train, test)]
        assert patients[0] and patients[1] and not patients[0] & patients[1]


def test_train_on_a_grouped_file_runs_end_to_end(knees, tmp_path, capsys):
    assert main(["train", str(knees), "--heads", "logreg,knn", "-o", str(tmp_path), "--no-report", "-q"]) == 0
    assert "knn" in capsys.readouterr().out and sorted(p.suffix for p in tmp_path.glob("*.skops")) == [".skops"] * 2


def test_extract_records_subjects_and_refuses_a_regex_that_misses_before_any_work(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for path in PATHS:  # tiny real images under knee-style names
        (tmp_path / "knee" / path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "knee" / path), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "knee.h5"
    common = ["extract", str(tmp_path / "knee"), "-o", str(out), "--weights", "none", "--image-size", "48",
              "--runtime", "keras", "-q"]
    assert main([*common, "--group", r"(\d+)_(?:left|right)"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no subject in 7 of 7 image paths" in err[0] and not out.exists()
    assert main([*common, "--group", KNEE]) == 0
    with FeatureStore(out) as store:
        assert store.group_regex == KNEE
        assert dict(zip(store.paths, store.subjects)) == dict(zip(PATHS, subjects_of(PATHS, KNEE)))


def test_train_group_names_subjects_of_a_file_that_records_none(tmp_path):
    """--group on train: the knee file written without subjects is split by patient all the same."""
    rng = np.random.default_rng(4)
    paths = [f"{i % 3}/{9000000 + i // 2}{'LR'[i % 2]}.png" for i in range(120)]
    path = tmp_path / "plain.h5"
    with HDF5DatasetWriter((120, 8), path) as writer:
        writer.store_class_labels(["0", "1", "2"])
        writer.add(rng.normal(size=(120, 8)).astype(np.float32) + np.arange(120)[:, None] % 3, np.arange(120) % 3,
                   paths=paths)
    with FeatureStore(path) as store:
        rows = read_rows(store, ["0", "1", "2"], log=print, group=KNEE)
        assert len(set(rows.groups)) == 60
        with pytest.raises(FeatxError, match="names no subject in 120 of 120"):
            read_rows(store, ["0", "1", "2"], log=print, group=r"(\d+)_left")
    assert main(["train", str(path), "--group", KNEE, "--heads", "logreg", "-o", str(tmp_path / "m"), "--no-report",
                 "-q"]) == 0
    assert main(["compare", str(path), "--group", "(x)", "-o", str(tmp_path / "m"), "--no-report", "-q"]) == 1


def test_audit_lists_a_patient_whose_knees_are_in_two_splits(tmp_path):
    _grouped_file(tmp_path / "train.h5", PATHS[:3], group_regex=KNEE, split="train")  # 9003126 both, 9012345 left
    _grouped_file(tmp_path / "val.h5", PATHS[3:], group_regex=KNEE, split="val")  # 9012345 right
    result = audit([tmp_path / "train.h5", tmp_path / "val.h5"], tmp_path / "audit", page=False)
    assert result.subjects_across == 1
    assert (tmp_path / "audit" / "subjects.csv").read_text().splitlines()[1] == \
        "9012345,train;val,2,1/9012345L.png;1/9012345R.png"

"""Files written only through the seeds' camelCase API (no paths, no recipe) train, evaluate and compare.

Every row without a path is its own image; only fusing files needs paths to match their rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import featx
from featx import FeatureStore, FeatxError, HDF5DatasetWriter, evaluate, load_bundle
from featx.choices import HEAD_NAMES
from featx.cli import main
from featx.compare import compare

GRADES = ["0", "1", "2"]  # integer class names: graded, so the ordinal heads train too
PER_CLASS, DIM = 40, 16


def write_seed_file(path, *, seed=0):
    """The way extract_features.py-style scripts write features: dims up front, labels, add, close."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(GRADES)), PER_CLASS)
    rows = rng.normal(size=(len(labels), DIM)) + 6.0 * np.eye(len(GRADES), DIM)[labels]
    order = rng.permutation(len(labels))
    writer = HDF5DatasetWriter((len(labels), DIM), str(path), dataKey="features", bufSize=50)
    writer.storeClassLabels(GRADES)
    writer.add(rows[order], labels[order])
    writer.close()
    return path


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    path = write_seed_file(tmp_path_factory.mktemp("seed") / "seed.h5")
    with FeatureStore(path) as store:
        assert not any(store.paths) and store.recipe is None  # what the seeds' writer leaves out
    return path


@pytest.fixture(scope="module")
def seed_test_file(tmp_path_factory):
    return write_seed_file(tmp_path_factory.mktemp("seed-test") / "seed-test.h5", seed=1)


def quiet(**options):
    return {"bootstrap": 0, "progress": False, "report": False, "log": lambda message: None, **options}


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_every_head_trains_on_a_seed_file_and_predicts_by_features(seed_file, seed_test_file, tmp_path, head):
    messages = []  # scored on a second seed file: one fit per head keeps this cheap (the refit is tested below)
    result = featx.train(seed_file, test=seed_test_file, heads=head, output=tmp_path, **quiet(log=messages.append))
    assert result.best == head and result.rows[0]["accuracy"] > 0.8
    if head == "sgd":  # alone on one file it streams
        assert any(message.startswith("streaming the sgd head over 120 rows") for message in messages), messages
    bundle = load_bundle(result.bundles[head])
    with FeatureStore(seed_file) as store:
        X, y = store.features[:], np.asarray(store.labels)
    predicted = bundle.head.predict(X)
    np.testing.assert_array_equal(predicted, result.models[head].predict(X))
    assert np.mean(predicted == y) > 0.8
    scored = evaluate(bundle, seed_file, bootstrap=0, log=lambda message: None)
    assert scored.n_rows == len(y) and scored.row["accuracy"] == pytest.approx(np.mean(predicted == y))


def test_the_fold_ensemble_trains_on_a_seed_file(seed_file, tmp_path):
    result = featx.train(seed_file, heads="logreg", folds=3, output=tmp_path, **quiet())
    assert type(result.models["logreg"]).__name__ == "FoldEnsemble" and result.rows[0]["accuracy"] > 0.8


def test_a_seed_file_is_held_out_refit_reported_and_compared(seed_file, tmp_path):
    result = featx.train(seed_file, heads="logreg,sgd", output=tmp_path, **quiet(report=True))
    assert result.report_page.page.is_file() and [row["head"] for row in result.rows] == ["logreg", "sgd"]
    assert result.refit_rows == len(GRADES) * PER_CLASS  # held out, then refitted on every row, each its own image
    for head in ("sgd", "ridge"):  # streamed, and in memory without a search
        alone = featx.train(seed_file, heads=head, output=tmp_path, **quiet())
        assert alone.refit_rows == len(GRADES) * PER_CLASS and alone.rows[0]["accuracy"] > 0.8
    compared = compare(seed_file, heads="logreg,ridge", output=tmp_path, **quiet())
    assert [row["head"] for row in compared.rows] == ["logreg", "ridge"] and compared.best["accuracy"] > 0.8


def test_only_fusing_seed_files_asks_for_paths(seed_file, tmp_path):
    other = write_seed_file(tmp_path / "other.h5", seed=2)
    with pytest.raises(FeatxError, match="does not record one image path per row, so its rows cannot be matched"):
        compare([seed_file, other], heads="logreg", output=tmp_path, **quiet())


def test_the_cli_trains_and_evaluates_a_seed_file(seed_file, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["train", str(seed_file), "--heads", "logreg,sgd", "-o", str(models), "-q", "--no-report"]) == 0
    assert "best head by accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(models / "seed-logreg.skops"), str(seed_file)]) == 0
    assert f"on {seed_file} ({len(GRADES) * PER_CLASS} images)" in capsys.readouterr().out

"""featx finetune on tiny real images: outputs, Ctrl-C and resume, predict, re-extraction, refusals."""

from __future__ import annotations

import csv
import re
import shutil

import cv2
import numpy as np
import pytest

import featx
from featx.cli import main
from featx.errors import FeatxError
from featx.finetune import DEFAULTS, finetune
from featx.finetune.loss import soft_targets, training_loss
from featx.finetune.outputs import affine_map
from featx.finetune.top import MapRows, TopConfig, TopNetwork
from featx.store import FeatureStore

SIZE = 32  # Lite0 at 32 px: block5c_add maps are 2 x 2 x 112
OPTIONS = dict(weights="none", image_size=SIZE, epochs=2, patience=5, runtime="keras", bootstrap=20, progress=False)


def _write_dataset(root, per_class: int):
    rng = np.random.default_rng(0)
    for grade, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        folder = root / str(grade)
        folder.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.normal(0, 30, (48, 48, 3))
            cv2.imwrite(str(folder / f"{i}.png"), np.clip(np.array(color) + noise, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run interrupted (a real KeyboardInterrupt) after epoch 1, then the same command to the end."""
    tmp = tmp_path_factory.mktemp("finetune")
    data = _write_dataset(tmp / "grades", per_class=6)
    paths = dict(features=tmp / "features", output=tmp / "models")

    def interrupt_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    first = finetune(data, **OPTIONS, **paths, log=interrupt_after_epoch_1)
    lines = []
    second = finetune(data, **OPTIONS, **paths, log=lines.append)
    return dict(tmp=tmp, data=data, first=first, second=second, lines=lines, **paths)


def test_ctrl_c_keeps_the_best_epoch_and_writes_outputs(run):
    first = run["first"]
    assert first.interrupted
    assert [entry["epoch"] for entry in first.history] == [0, 1]
    assert first.weights_file.is_file()
    assert set(first.bundles) == {"logreg", "ordinal"}  # integer class names: graded, ordinal refit
    assert {row["features"] for row in first.rows} == {"frozen", "fine-tuned"}
    assert all("qwk" in row for row in first.rows)


def test_rerun_resumes_after_the_finished_epoch_and_reuses_the_maps(run):
    second = run["second"]
    assert any(line.startswith("resuming after epoch 1") for line in run["lines"])
    assert not any(line.startswith("loaded backbone") for line in run["lines"])  # no second pass over the images
    assert [entry["epoch"] for entry in second.history] == [0, 1, 2]
    assert not second.interrupted


def test_bundle_predicts_through_the_cli(run, capsys):
    out = run["tmp"] / "predictions.csv"
    bundle = run["second"].bundles["logreg"]
    assert main(["predict", str(bundle), str(run["data"] / "1"), "-o", str(out), "--runtime", "keras"]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and not any(row["error"] for row in rows)
    assert sum(row["predicted"] == "1" for row in rows) >= 5  # colours this plain are told apart


def test_cli_shows_each_epochs_batches_in_a_progress_bar_then_its_line(run, capsys):
    """Without -q the batches of an epoch count up on stderr; the epoch's line follows on stdout's log."""
    output = run["tmp"] / "cli-models"
    assert main(["finetune", str(run["data"]), "--weights", "none", "--image-size", str(SIZE), "--epochs", "1",
                 "--runtime", "keras", "--features", str(run["features"]), "-o", str(output)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"epoch 1/1: .*\d+/\d+ \[", captured.err)  # tqdm: "epoch 1/1: 100%|...| 1/1 [00:00<..."
    assert "loss=" in captured.err
    assert re.search(r"^epoch 1/1: loss [0-9.]+, train accuracy", captured.out, re.MULTILINE)
    assert (output / "grades-finetuned.weights.h5").is_file()


def test_weights_file_reextracts_the_fine_tuned_features(run):
    """featx extract --weights FILE gives the features the fine-tuned network computes from the maps."""
    weights = run["second"].weights_file
    result = featx.extract(run["data"], run["tmp"] / "again.h5", weights=weights, image_size=SIZE, runtime="keras",
                           progress=False, log=lambda line: None)
    extracted = FeatureStore(result.files[0].output)
    maps = FeatureStore(next(run["features"].glob("*-maps-block5c_add.h5")))
    config = TopConfig(backbone="efficientnet_lite0", weights=str(weights), image_size=SIZE, cut="block5c_add",
                       n_classes=3, graded=True, **DEFAULTS)
    net = TopNetwork(config)
    tuned = net.predict(MapRows(str(maps.path), tuple(maps.labels), net.map_shape), 8, pooled=True)
    order = [list(maps.paths).index(path) for path in extracted.paths]
    np.testing.assert_allclose(extracted.features[:], tuned[order], rtol=0.02, atol=0.02)
    assert extracted.recipe.weights_sha256 == featx.load_bundle(run["second"].bundles["logreg"]).recipe.weights_sha256


def test_changed_option_is_refused_naming_it(run):
    with pytest.raises(FeatxError, match=r"--lr 0\.0002, not 0\.001.*--overwrite"):
        finetune(run["data"], **OPTIONS, lr=1e-3, features=run["features"], output=run["output"])


def test_a_cut_that_does_not_exist_lists_the_valid_ones(run):
    with pytest.raises(FeatxError, match="block5c_add"):
        finetune(run["data"], **dict(OPTIONS, epochs=1), train_from="block99_add", features=run["features"],
                 output=run["tmp"] / "other")


def test_train_from_input_works_for_every_family_and_each_backbone_keeps_its_maps(tmp_path):
    """--train-from input on a Keras application (whose input layer Keras numbers per process) and on Lite0, in one
    process and one features folder: each trains from its own cached images."""
    data = _write_dataset(tmp_path / "grades", per_class=6)
    options = dict(OPTIONS, epochs=1, train_from="input", features=tmp_path / "features", log=lambda line: None)
    for backbone in ("mobilenet_v2", "efficientnet_lite0"):
        result = finetune(data, backbone=backbone, output=tmp_path / backbone, **options)
        assert result.weights_file.is_file() and [entry["epoch"] for entry in result.history] == [0, 1]
        maps = FeatureStore(tmp_path / "features" / f"grades-{backbone}-maps-input.h5")
        assert maps.recipe.layer == "input" and maps.dim == SIZE * SIZE * 3  # the preprocessed images, flattened
        maps.close()


def test_too_few_images_for_a_hold_out(tmp_path):
    data = _write_dataset(tmp_path / "tiny", per_class=2)
    with pytest.raises(FeatxError, match="at least 5 per class"):
        finetune(data, **OPTIONS, features=tmp_path / "f", output=tmp_path / "m")


def test_predict_refuses_a_weights_file_that_changed(run, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(run["output"], models)
    weights = run["second"].weights_file
    original = weights.read_bytes()
    try:
        weights.write_bytes(original + b"changed")
        with pytest.raises(FeatxError, match=str(weights.name)):
            featx.predict(run["second"].bundles["logreg"], [run["data"] / "0"], output=tmp_path / "p.csv",
                          runtime="keras")
    finally:
        weights.write_bytes(original)


def test_linear_probe_folds_into_one_affine_map():
    """Scaling, rotation and the softmax regression of the logreg head are exactly x @ W + b."""
    from featx.heads import make_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)) * rng.uniform(0.1, 10, 12) + rng.normal(size=12)
    y = np.repeat(np.arange(3), 20)
    X[y == 1, :3] += 2.0
    head = make_head("logreg", n_classes=3).fit(X, y)
    W, b = affine_map(head.best_estimator_, X.shape[1], 3)
    logits = X @ W + b
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities / probabilities.sum(axis=1, keepdims=True), head.predict_proba(X),
                               atol=1e-6)


def test_group_keeps_each_subject_on_one_side_of_the_hold_out(tmp_path):
    """Two knees per patient (123L.png, 123R.png), graded apart: --group holds out whole patients and records it."""
    rng = np.random.default_rng(1)
    for subject in range(100, 124):
        for side, grade in (("L", subject % 3), ("R", (subject + subject % 2) % 3)):
            folder = tmp_path / "knees" / str(grade)
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{subject}{side}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    regex = r"(\d+)[LR]\."
    result = finetune(tmp_path / "knees", **dict(OPTIONS, epochs=1), group=regex, features=tmp_path / "f",
                      output=tmp_path / "m", log=lambda line: None)
    subjects = {split: {re.search(regex, path).group(1) for path in paths} for split, paths in result.paths.items()}
    assert len(result.paths["train"]) + len(result.paths["val"]) == 48
    assert subjects["train"] and subjects["val"] and not subjects["train"] & subjects["val"]
    assert FeatureStore(next((tmp_path / "f").glob("*-maps-*.h5"))).group_regex == regex
    assert featx.load_bundle(result.bundles["logreg"]).group == regex


def test_cli_refuses_a_group_regex_without_a_capture_group_in_one_line(tmp_path, capsys):
    data = _write_dataset(tmp_path / "grades", per_class=5)
    assert main(["finetune", str(data), "--group", r"\d+", "--epochs", "1", "--features", str(tmp_path / "f"),
                 "-o", str(tmp_path / "m")]) != 0
    error = capsys.readouterr().err.strip()
    assert "no capture group" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())


def test_graded_targets_spread_to_neighbours_and_the_loss_adds_the_expected_grade_error():
    targets = soft_targets(5, 0.2, graded=True)
    np.testing.assert_allclose(targets[0], [0.8, 0.2, 0, 0, 0])
    np.testing.assert_allclose(targets[2], [0, 0.1, 0.8, 0.1, 0])
    np.testing.assert_allclose(soft_targets(3, 0.2, graded=False)[1], [0.1, 0.8, 0.1])
    config = TopConfig(backbone="efficientnet_lite0", weights="none", image_size=SIZE, cut="block5c_add", n_classes=3,
                       graded=True, **dict(DEFAULTS, label_smoothing=0.0, ordinal_loss=0.5))
    logits = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))  # expected grade 0.75
    loss = float(np.asarray(training_loss(config)(np.array([[2, 2, 1.0]], np.float32), logits))[0])
    assert loss == pytest.approx(-np.log(0.25) + 0.5 * (0.75 - 2) ** 2, rel=1e-5)

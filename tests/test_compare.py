"""Fusion and comparison of feature files of the same images (other backbones)."""

from __future__ import annotations

import csv
import os

import cv2
import h5py
import numpy as np
import pytest

from featx import FeatureStore, FeatxError, evaluate, extract, load_bundle, predict, train
from featx.cli import main
from featx.compare import compare

QUIET = dict(log=lambda message: None, progress=False)
BACKBONES = ("efficientnet_lite0", "mobilenet_v2")


def _write_images(folder, brightness, count, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        image = np.clip(rng.normal(brightness, 20, size=(40, 40, 3)), 0, 255).astype(np.uint8)
        cv2.circle(image, (20, 20), 6 + i % 5, (255, 255, 255), -1)
        cv2.imwrite(str(folder / f"{i:02d}.png"), image)


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    """train/ and val/ splits of three grey levels, extracted with two backbones in one run."""
    root = tmp_path_factory.mktemp("fusion")
    for split, count in (("train", 8), ("val", 4)):
        for k, (name, brightness) in enumerate((("dark", 40), ("grey", 128), ("light", 215))):
            _write_images(root / "data" / split / name, brightness, count, seed=10 * k + len(split))
    result = extract(root / "data", root / "f.h5", backbone=",".join(BACKBONES), weights="none", image_size=64,
                     runtime="keras", log=lambda message: None, progress=False)  # no LiteRT conversions: plumbing
    files = {(f.split, f.backbone): f.output for f in result.files}
    return root, files


def test_training_on_fused_files_joins_rows_by_image(two_backbones, tmp_path):
    root, files = two_backbones
    trains = [files[("train", b)] for b in BACKBONES]
    vals = [files[("val", b)] for b in BACKBONES]
    result = train(trains, test=vals, heads="logreg", output=tmp_path / "models", bootstrap=0, report=False, **QUIET)
    bundle = load_bundle(result.bundles["logreg"])
    assert [recipe.backbone for recipe in bundle.recipes] == list(BACKBONES)
    assert result.bundles["logreg"].name == f"{trains[0].stem}+{trains[1].stem}-logreg.skops"
    with FeatureStore(trains[0]) as a, FeatureStore(trains[1]) as b:
        assert bundle.head.n_features_in_ == a.dim + b.dim
    # The file order of the second backbone differs from the first's? Rows are matched by path all the same.
    scored = evaluate(bundle, vals, log=lambda message: None)
    assert scored.row["accuracy"] == result.rows[0]["accuracy"] and scored.n_rows == 12
    with pytest.raises(FeatxError, match="trained on 2 fused feature file"):
        evaluate(bundle, vals[0], log=lambda message: None)
    with pytest.raises(FeatxError, match="made differently from the model's .*backbone"):
        evaluate(bundle, vals[::-1], log=lambda message: None)


def test_predict_with_a_fused_bundle_runs_every_backbone_on_one_decoding(two_backbones, tmp_path):
    root, files = two_backbones
    trains = [files[("train", b)] for b in BACKBONES]
    result = train(trains, heads="logreg", output=tmp_path / "models", bootstrap=0, report=False, **QUIET)
    bundle = load_bundle(result.bundles["logreg"])
    out = predict(bundle, [root / "data" / "val"], output=tmp_path / "p.csv", runtime="keras",
                  log=lambda message: None).output
    with open(out, newline="") as handle:
        table = list(csv.DictReader(handle))
    vals = [files[("val", b)] for b in BACKBONES]
    with FeatureStore(vals[0]) as a, FeatureStore(vals[1]) as b:
        by_path = {path: np.hstack([a.features[i], b.features[b.paths.index(path)]]) for i, path in enumerate(a.paths)}
    X = np.stack([by_path[os.path.relpath(row["path"], root / "data" / "val")] for row in table])
    expected = bundle.head.predict_proba(X)
    got = np.array([[float(row[f"p_{name}"]) for name in bundle.label_names] for row in table])
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_fusing_files_of_other_images_is_refused(two_backbones, tmp_path):
    root, files = two_backbones
    with pytest.raises(FeatxError, match="do not hold the same images .*only in the first.*one dataset") as err:
        train([files[("train", BACKBONES[0])], files[("val", BACKBONES[1])]], output=tmp_path, report=False, **QUIET)
    assert "\n" not in str(err.value)
    relabelled = tmp_path / "relabelled.h5"
    with h5py.File(files[("train", BACKBONES[1])], "r") as source, h5py.File(relabelled, "w") as copy:
        for key in source:
            source.copy(key, copy)
        copy.attrs.update(source.attrs)
        copy["labels"][0] = (copy["labels"][0] + 1) % 3
    with pytest.raises(FeatxError, match="label .* differently"):
        train([files[("train", BACKBONES[0])], relabelled], output=tmp_path, report=False, **QUIET)
    with pytest.raises(FeatxError, match="2 training file\\(s\\) but 1 test file"):
        train([files[("train", b)] for b in BACKBONES], test=files[("val", BACKBONES[0])], output=tmp_path,
              report=False, **QUIET)


def test_compare_ranks_each_file_and_the_fusion_on_the_same_rows(two_backbones, tmp_path):
    root, files = two_backbones
    trains = [files[("train", b)] for b in BACKBONES]
    vals = [files[("val", b)] for b in BACKBONES]
    result = compare(trains, test=vals, heads="logreg,mlp", output=tmp_path, bootstrap=100, **QUIET)
    labels = [*BACKBONES, "fused: " + " + ".join(BACKBONES)]  # the backbones tell these files apart
    assert [(row["features"], row["head"]) for row in result.rows] == [
        (label, head) for label in labels for head in ("logreg", "mlp")]
    assert [row["dims"] for row in result.rows[::2]] == [1280, 1280, 2560]
    assert result.best == max(result.rows, key=lambda row: row["accuracy"])
    fused_alone = train(trains, test=vals, heads="logreg", output=tmp_path / "m", bootstrap=100, report=False, **QUIET)
    assert result.rows[4]["accuracy"] == fused_alone.rows[0]["accuracy"]  # the same rows, the same head
    text = str(result)
    assert text.splitlines()[0].split()[:3] == ["features", "dims", "head"]
    assert f"best recipe by accuracy: {result.best['features']} with {result.best['head']}" in text
    assert result.report_page.page.name == f"{trains[0].stem}+{trains[1].stem}-compare.html"
    assert "fused: " in result.report_page.page.read_text(encoding="utf-8")


def test_compare_through_the_cli(two_backbones, tmp_path, capsys):
    _, files = two_backbones
    trains = [str(files[("train", b)]) for b in BACKBONES]
    assert main(["compare", *trains, "--heads", "logreg", "--no-report", "-q", "--test-size", "0.34"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("comparing 3 feature set(s) x 1 head(s)")
    best = next(line for line in lines if line.startswith("best recipe by accuracy: "))
    command = next(line for line in lines if line.startswith("train it: featx train "))
    assert best and command.endswith("--heads logreg")

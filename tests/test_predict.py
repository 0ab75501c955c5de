"""Stage 3: predict repeats the bundle's recorded extraction on new images and writes a CSV."""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np
import pytest

from featx import FeatureStore, FeatxError, extract, load_bundle, predict, train
from featx.cli import main

QUIET = dict(log=lambda message: None)
NO_PAGE = dict(report=False, progress=False)


def _write_images(folder, brightness, count, seed, shape=(48, 48)):
    """Noisy images of one brightness; a bright stripe at the left edge makes mirror and crop matter."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        image = np.clip(rng.normal(brightness, 12, size=shape + (3,)), 0, 255).astype(np.uint8)
        image[:, : shape[1] // 6] = 255
        cv2.imwrite(str(folder / f"{i}.png"), image)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_round_trip_from_real_images(tmp_path):
    data = tmp_path / "images"
    _write_images(data / "dark", 30, 8, seed=0)
    _write_images(data / "bright", 225, 8, seed=1)
    extract(data, tmp_path / "light.h5", weights="none", image_size=64, progress=False, **QUIET)
    result = train(tmp_path / "light.h5", output=tmp_path / "models", bootstrap=0, **NO_PAGE, **QUIET)

    (data / "broken.png").write_bytes(b"not an image")
    predicted = predict(result.bundles["logreg"], [data / "dark", data / "bright", data / "broken.png"],
                        output=tmp_path / "out" / "predictions.csv", **QUIET)
    assert [path for path, _ in predicted.skipped] == [str(data / "broken.png")]
    assert "1 file(s) could not be read" in str(predicted) and "16 predictions" in str(predicted)
    table = read_csv(predicted.output)
    assert list(table[0]) == ["path", "predicted", "p_bright", "p_dark", "error"]
    assert len(table) == 17  # every input once: the unreadable file with its reason and no prediction
    broken = table[-1]
    assert broken["path"] == str(data / "broken.png") and broken["predicted"] == "" and broken["error"]
    for row in table[:-1]:
        truth = os.path.basename(os.path.dirname(row["path"]))
        assert row["predicted"] == truth and row["error"] == ""
        assert float(row[f"p_{truth}"]) > 0.5
        assert abs(float(row["p_bright"]) + float(row["p_dark"]) - 1.0) < 1e-4
    assert not [name for name in os.listdir(tmp_path / "out") if name != "predictions.csv"]  # no temp file left
    with pytest.raises(FeatxError, match="could be decoded"):
        predict(result.bundles["logreg"], [data / "broken.png"], output=tmp_path / "none.csv", **QUIET)
    assert not (tmp_path / "none.csv").exists()


@pytest.fixture(scope="module")
def cropped_flipped(tmp_path_factory):
    """Wide images extracted with --crop and --tta flip, and a head trained on them."""
    root = tmp_path_factory.mktemp("crop")
    data = root / "wide"
    for grade, brightness in (("1", 40), ("3", 120), ("5", 210)):
        _write_images(data / grade, brightness, 6, seed=brightness, shape=(40, 90))
    features = root / "wide.h5"
    extract(data, features, weights="none", image_size=64, crop=True, tta="flip", progress=False, **QUIET)
    result = train(features, test_size=0.34, heads="logreg,ordinal", output=root / "models", bootstrap=0,
                   **NO_PAGE, **QUIET)
    return data, features, result


def test_predict_repeats_crop_and_tta_of_the_recipe(cropped_flipped, tmp_path):
    data, features, result = cropped_flipped
    bundle = load_bundle(result.bundles["logreg"])
    assert (bundle.recipe.resize, bundle.recipe.tta) == ("crop", "flip")
    table = read_csv(predict(bundle, [data], output=tmp_path / "p.csv", **QUIET).output)
    with FeatureStore(features) as store:
        rows = {path: store.features[i] for i, path in enumerate(store.paths)}
    names = bundle.label_names
    expected = bundle.head.predict_proba(np.stack([rows[os.path.relpath(r["path"], data)] for r in table]))
    got = np.array([[float(r[f"p_{name}"]) for name in names] for r in table])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # The comparison can see a difference: features made without crop or flip give other probabilities.
    stretched = tmp_path / "stretched.h5"
    extract(data, stretched, weights="none", image_size=64, progress=False, **QUIET)
    with FeatureStore(stretched) as store:
        plain = bundle.head.predict_proba(np.stack([store.features[store.paths.index(os.path.relpath(r["path"], data))]
                                                    for r in table]))
    assert np.abs(plain - expected).max() > 1e-3


def test_predict_writes_expected_grade_in_the_users_grade_numbers(cropped_flipped, tmp_path):
    data, _, result = cropped_flipped
    bundle = load_bundle(result.bundles["ordinal"])
    assert bundle.graded and bundle.label_names == ["1", "3", "5"]
    table = read_csv(predict(bundle, [data], output=tmp_path / "grades.csv", **QUIET).output)
    assert list(table[0]) == ["path", "predicted", "p_1", "p_3", "p_5", "expected_grade", "error"]
    for row in table:
        expected = sum(int(name) * float(row[f"p_{name}"]) for name in ("1", "3", "5"))
        assert float(row["expected_grade"]) == pytest.approx(expected, abs=1e-5)
        assert 1.0 <= float(row["expected_grade"]) <= 5.0


def test_predict_through_the_cli(cropped_flipped, tmp_path, capsys):
    data, _, result = cropped_flipped
    out = tmp_path / "cli.csv"
    assert main(["predict", str(result.bundles["logreg"]), str(data / "3"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == ["extracting 6 image(s) with efficientnet_lite0 for logreg",
                                                    f"wrote 6 predictions to {out}"]
    assert [row["path"] for row in read_csv(out)] == sorted(str(p) for p in (data / "3").iterdir())
    assert main(["predict", str(result.bundles["logreg"]), str(tmp_path / "nothing-here")]) == 1
    assert capsys.readouterr().err.strip() == f"featx: error: {tmp_path / 'nothing-here'} not found; pass existing " \
                                              "image files or folders"

"""Stage 2 through its public entry points: train, evaluate, and the model bundle."""

from __future__ import annotations

import os

import cv2
import h5py
import numpy as np
import pytest
import skops.io

import featx
from featx import FeatxError, HDF5DatasetWriter, Recipe, evaluate, load_bundle
from featx.bundle import save_bundle, trusted_types
from featx.heads import HEAD_NAMES, fit_head, make_head, min_images_per_class
from featx.rows import grouped_train_test_split

RECIPE = Recipe(backbone="efficientnet_lite0", weights_source="none (random init, seed 0)", image_size=64,
                preprocessing="rgb (x-127)/128")
DIM = 64


def train(features, **options):
    """featx.train without the report page, which one test below asks for; the page has tests of its own."""
    return featx.train(features, **{"report": False, **options})


def separable(n_per_class, n_classes, *, seed=0, dim=DIM):
    """Feature rows of well-separated class clusters; labels 0..n_classes-1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    rows = centres[labels] + rng.normal(0.0, 0.5, size=(len(labels), dim))
    return rows.astype(np.float32), labels


def write_features(path, rows, labels, names, *, paths=None, aug=None, **recipe):
    writer = HDF5DatasetWriter(rows.shape, path, recipe=RECIPE.replace(**recipe))
    writer.store_class_labels(names)
    if paths is None:
        paths = [f"{names[label] if label >= 0 else 'unlabelled'}/img{i:04d}.png" for i, label in enumerate(labels)]
    writer.add(rows, np.asarray(labels, dtype=np.int64), paths=paths, aug=aug)
    writer.close()
    return path


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A trained run on three separable classes (plus unlabelled rows), and a second compatible file."""
    root = tmp_path_factory.mktemp("train")
    rows, labels = separable(16, 3)
    # Unlabelled rows far from every class: if they were trained on (as any class) accuracy would show it.
    extra = np.full((5, DIM), 40.0, np.float32)
    features = write_features(
        root / "shapes.h5", np.vstack([rows, extra]), np.concatenate([labels, -np.ones(5, int)]),
        ["circle", "square", "triangle"],
    )
    val_rows, val_labels = separable(6, 3, seed=0)
    validation = write_features(root / "shapes-val.h5", val_rows, val_labels, ["circle", "square", "triangle"])
    messages = []
    result = train(features, heads=["logreg", "svm"], output=root / "models", bootstrap=200, report=True,
                   log=messages.append)
    return result, features, validation, messages


def test_train_reports_every_head_and_saves_loadable_bundles(three_classes):
    result, features, _, messages = three_classes
    assert [row["head"] for row in result.rows] == ["logreg", "svm"]
    assert any("5 unlabelled" in message for message in messages)
    for row in result.rows:
        assert row["accuracy"] >= 0.95
        low, high = row["accuracy_ci"]
        assert low <= row["accuracy"] <= high
        assert row["cv_score"] is not None and row["cv_score"] >= 0.9
        assert "C" in row["params"]
        assert row["fit_seconds"] > 0
        assert "qwk" not in row  # named classes are not grades
    assert result.best in ("logreg", "svm")
    for head, path in result.bundles.items():
        assert path.name == f"shapes-{head}.skops"
        bundle = load_bundle(path)
        assert bundle.head_name == head
        assert bundle.label_names == ["circle", "square", "triangle"]
        assert bundle.recipes == [RECIPE]
        assert bundle.graded is False
        rows, labels = separable(2, 3)
        assert list(bundle.head.predict(rows)) == list(labels)
    text = str(result)
    assert "accuracy" in text and "classification report" in text and "triangle" in text
    assert f"best head by accuracy: {result.best}" in text


def test_train_writes_the_report_page_and_label_issues(three_classes):
    result = three_classes[0]
    page = result.report_page.page
    assert page.name == "shapes-report.html" and page.parent == result.bundles["logreg"].parent
    html = page.read_text(encoding="utf-8")
    assert "circle" in html and "triangle" in html and result.best in html
    assert result.report_page.label_issues_csv.name == "shapes-label-issues.csv"
    assert str(result).splitlines()[-1] == str(result.report_page)


def test_train_writes_real_confusion_pngs(three_classes):
    result = three_classes[0]
    for head, png in result.confusion_pngs.items():
        assert png.name == f"shapes-{head}-confusion.png"
        image = cv2.imread(str(png))
        assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100


def test_evaluate_scores_a_bundle_on_a_compatible_file(three_classes):
    result, _, validation, _ = three_classes
    evaluation = evaluate(result.bundles["logreg"], validation, log=lambda message: None)
    assert evaluation.n_rows == 18
    assert evaluation.row["accuracy"] == 1.0
    assert "confusion matrix" in str(evaluation)


def test_evaluate_refuses_features_of_another_recipe(three_classes, tmp_path):
    result = three_classes[0]
    rows, labels = separable(4, 3)
    other = write_features(tmp_path / "big.h5", rows, labels, ["circle", "square", "triangle"], image_size=96)
    with pytest.raises(FeatxError, match=r"made differently from the model's \(image_size: 64 vs 96\)"):
        evaluate(result.bundles["logreg"], other)


def test_train_refuses_a_test_file_of_another_backbone(three_classes, tmp_path):
    _, features, _, _ = three_classes
    rows, labels = separable(4, 3)
    other = write_features(tmp_path / "resnet.h5", rows, labels, ["circle", "square", "triangle"], backbone="resnet50")
    with pytest.raises(FeatxError, match="backbone: 'efficientnet_lite0' vs 'resnet50'"):
        train(features, test=other, output=tmp_path / "models", log=lambda message: None)
    cropped = write_features(tmp_path / "crop.h5", rows, labels, ["circle", "square", "triangle"], resize="crop")
    with pytest.raises(FeatxError, match="resize: 'stretch' vs 'crop'"):
        train(features, test=cropped, output=tmp_path / "models", log=lambda message: None)
    with pytest.raises(FeatxError, match="resize: 'stretch' vs 'crop'"):  # evaluate asks the same question
        evaluate(three_classes[0].bundles["logreg"], cropped)


def test_train_with_a_test_file_holding_fewer_classes(three_classes, tmp_path):
    _, features, _, _ = three_classes
    rows, labels = separable(6, 3, seed=0)  # the training file's class centres
    keep = labels != 1  # no squares in this test folder
    fewer = write_features(tmp_path / "fewer.h5", rows[keep], np.array([0, 1])[labels[keep] // 2],
                           ["circle", "triangle"])
    result = train(features, test=fewer, output=tmp_path / "models", bootstrap=0, log=lambda message: None)
    assert result.label_names == ["circle", "square", "triangle"]  # the training file's classes
    assert result.rows[0]["accuracy"] == 1.0
    bundle = load_bundle(result.bundles["logreg"])
    assert bundle.extra["test_rows"] == 12 and bundle.label_names == ["circle", "square", "triangle"]
    unknown = write_features(tmp_path / "unknown.h5", rows[:4], np.array([0, 0, 1, 1]), ["circle", "hexagon"])
    with pytest.raises(FeatxError, match="class\\(es\\) hexagon that the model does not know"):
        train(features, test=unknown, output=tmp_path / "models", log=lambda message: None)


def test_grouped_split_keeps_augmented_copies_together():
    rng = np.random.default_rng(1)
    images = np.array([f"img{i:03d}.png" for i in range(40)])
    image_labels = np.arange(40) % 2
    groups = np.repeat(images, 3)  # original + 2 augmented copies of each image
    labels = np.repeat(image_labels, 3)
    shuffled = rng.permutation(len(groups))
    train_rows, test_rows = grouped_train_test_split(labels[shuffled], groups[shuffled], test_size=0.25, seed=3)
    train_images, test_images = set(groups[shuffled][train_rows]), set(groups[shuffled][test_rows])
    assert not train_images & test_images
    assert len(train_rows) + len(test_rows) == len(groups)
    assert len(test_images) == 10
    assert sorted(np.bincount(image_labels[[int(name[3:6]) for name in test_images]])) == [5, 5]  # stratified


def test_train_on_augmented_file_scores_original_rows_only(tmp_path):
    rows, labels = separable(8, 2)
    copies = 3  # aug 0, 1, 2 share one path
    paths = [f"{'ab'[label]}/img{i:03d}.png" for i, label in enumerate(labels)]
    features = write_features(
        tmp_path / "aug.h5", np.repeat(rows, copies, axis=0), np.repeat(labels, copies), ["a", "b"],
        paths=list(np.repeat(paths, copies)), aug=np.tile(np.arange(copies), len(labels)),
    )
    result = train(features, test_size=0.25, output=tmp_path / "models", bootstrap=0, log=lambda message: None)
    extra = load_bundle(result.bundles["logreg"]).extra
    assert extra["test_rows"] == 4  # 4 of 16 source images, originals only
    assert extra["train_rows"] == 12 * copies


@pytest.fixture(scope="module")
def graded_run(tmp_path_factory):
    """Integer class names stored in string order, trained with every head but svm-rbf, scored by kappa."""
    root = tmp_path_factory.mktemp("graded")
    rows, labels = separable(12, 3, seed=2, dim=8)
    stored_names = ["10", "2", "9"]  # the order a string sort gives
    features = write_features(root / "grades.h5", rows, labels, stored_names)
    # svm-rbf is left out for time: it stores exactly the types svm does, only with another kernel.
    result = train(features, heads=["logreg", "svm", "ridge", "ordinal", "mlp"], metric="qwk", output=root / "models",
                   bootstrap=50, log=lambda message: None)
    return result, rows, [stored_names[label] for label in labels], features


def test_integer_classes_are_graded_in_numeric_order(graded_run):
    result, rows, true_names, _ = graded_run
    assert result.label_names == ["2", "9", "10"] and result.graded
    assert all(row["qwk"] is not None and row["qwk"] > 0.9 for row in result.rows)
    assert "QWK" in str(result)
    bundle = load_bundle(result.bundles["ordinal"])
    assert bundle.graded and bundle.label_names == ["2", "9", "10"]
    rows_by_head = {row["head"]: row for row in result.rows}
    assert len(rows_by_head["ordinal"]["params"]["thresholds"]) == 2  # cut points between 3 grades
    assert "alpha" in rows_by_head["ridge"]["params"]
    predicted = [bundle.label_names[i] for i in bundle.head.predict(rows)]
    assert predicted == true_names


def test_train_refuses_too_few_images_per_class(tmp_path):
    rows, labels = separable(3, 2)
    features = write_features(tmp_path / "tiny.h5", rows, labels, ["a", "b"])
    with pytest.raises(FeatxError, match="class 'a' has only 3") as refused:
        train(features, output=tmp_path / "models", log=lambda message: None)
    assert "--folds" not in str(refused.value)  # no --folds was given, so fewer cannot help


@pytest.mark.parametrize(("head", "folds", "need"), [("svm", 3, 5), ("ordinal", 3, 5), ("logreg", 3, 5)])
def test_a_head_trains_on_its_minimum_images_per_class_and_refuses_one_less(tmp_path, head, folds, need):
    # Minimums from the nested 3-fold splits, asked of the heads: --folds 3 puts a 3-fold ensemble around
    # each head's own 3-fold search. With one image less, the search's folds could not all hold every
    # class: refused before any fitting, in one line, while ridge and mlp (no search) still could train.
    names = ["1", "2", "3"]
    test = write_features(tmp_path / "test.h5", *separable(2, 3, dim=8), names)
    enough = write_features(tmp_path / "enough.h5", *separable(need, 3, dim=8), names)
    result = train(enough, test=test, heads=[head], folds=folds, output=tmp_path / "models", bootstrap=0,
                   log=lambda message: None)
    assert result.rows[0]["accuracy"] == 1.0
    assert result.rows[0]["cv_score"] is None or np.isfinite(result.rows[0]["cv_score"])
    rows, labels = separable(need, 3, dim=8)
    keep = ~((labels == 1) & (np.arange(len(labels)) == np.flatnonzero(labels == 1)[0]))  # one image of '2' less
    short = write_features(tmp_path / "short.h5", rows[keep], labels[keep], names)
    with pytest.raises(FeatxError) as refused:
        train(short, test=test, heads=[head], folds=folds, output=tmp_path / "models", log=lambda message: None)
    message = str(refused.value)
    assert "\n" not in message
    assert f"head '{head}' needs at least {need} images per class" in message
    assert f"class '2' has {need - 1}" in message
    assert "add labelled images" in message and "choose another head (" in message
    assert ("fewer --folds" in message) == (folds is not None)


def test_heads_all_skips_the_heads_a_small_dataset_cannot_train(tmp_path):
    names = ["0", "1", "2"]
    test = write_features(tmp_path / "test.h5", *separable(2, 3, dim=8), names)
    features = write_features(tmp_path / "small.h5", *separable(4, 3, dim=8), names)
    messages = []
    result = train(features, test=test, heads="all", folds=3, output=tmp_path / "models", bootstrap=0,
                   log=messages.append)
    trained = [row["head"] for row in result.rows]
    assert trained == [name for name in HEAD_NAMES if min_images_per_class(name, 3)[0] <= 4]
    assert {"ridge", "mlp", "sgd"} <= set(trained)  # no search inside: 3 images per class do
    for skipped in ("logreg", "svm", "svm-rbf", "ordinal"):
        assert any(message.startswith(f"skipping {skipped}: it needs 5 images per class") and "has 4" in message
                   for message in messages)
    with pytest.raises(FeatxError, match="head 'svm' needs at least 5 .* class '0' has 4"):
        train(features, test=test, heads="ridge,svm", folds=3, output=tmp_path / "models", log=lambda message: None)
    assert len(train(features, test=test, heads="all", output=tmp_path / "models", bootstrap=0,
                     log=lambda message: None).rows) == len(HEAD_NAMES)  # without --folds all train on 4 per class


def test_fold_ensembles_search_augmented_copies_grouped(tmp_path):
    from sklearn.model_selection import StratifiedGroupKFold

    rows, labels = separable(12, 3, dim=8)
    copies = 3
    paths = [f"{label}/img{i:03d}.png" for i, label in enumerate(labels)]
    rng = np.random.default_rng(0)
    features = write_features(
        tmp_path / "aug.h5", np.repeat(rows, copies, axis=0) + 0.01 * rng.normal(size=(len(rows) * copies, 8)),
        np.repeat(labels, copies), ["0", "1", "2"], paths=list(np.repeat(paths, copies)),
        aug=np.tile(np.arange(copies), len(labels)),
    )
    result = train(features, heads=["logreg", "ordinal"], folds=3, output=tmp_path / "models", bootstrap=0,
                   log=lambda message: None)
    logreg, ordinal = (load_bundle(result.bundles[name]).head for name in ("logreg", "ordinal"))
    for member in logreg.estimators_:
        assert isinstance(member.cv, StratifiedGroupKFold)  # the member's own search, grouped
    for member in ordinal.estimators_:
        assert isinstance(member.estimator_.cv, StratifiedGroupKFold)  # the search inside the thresholds


def test_train_refuses_ordinal_heads_for_named_classes(three_classes, tmp_path):
    features = three_classes[1]
    with pytest.raises(FeatxError, match="graded"):
        train(features, heads=["ordinal"], output=tmp_path / "models", log=lambda message: None)


def test_every_head_and_fold_ensemble_round_trips_through_the_trusted_list(graded_run, tmp_path):
    result, rows, _, features = graded_run
    folded = train(features, heads=["logreg", "ridge"], folds=2, metric="f1_macro", output=tmp_path / "folded",
                   bootstrap=0, log=lambda message: None)
    trusted = set(trusted_types())
    for path in list(result.bundles.values()) + list(folded.bundles.values()):
        assert set(skops.io.get_untrusted_types(file=path)) <= trusted, path.name
        assert load_bundle(path).head.predict(rows[:1]).shape == (1,)


def test_load_bundle_refuses_untrusted_missing_and_corrupt_files(tmp_path):
    dangerous = tmp_path / "evil.skops"
    skops.io.dump({"format": "featx-bundle/1", "head": os.system}, dangerous)
    with pytest.raises(FeatxError, match="does not trust"):
        load_bundle(dangerous)
    with pytest.raises(FeatxError, match="not found"):
        load_bundle(tmp_path / "missing.skops")
    corrupt = tmp_path / "corrupt.skops"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(FeatxError, match="not a readable"):
        load_bundle(corrupt)
    foreign = tmp_path / "foreign.skops"
    skops.io.dump({"some": "dict"}, foreign)
    with pytest.raises(FeatxError, match="not a featx model bundle"):
        load_bundle(foreign)
    incomplete = tmp_path / "incomplete.skops"
    skops.io.dump({"format": "featx-bundle/1", "head_name": "logreg"}, incomplete)
    with pytest.raises(FeatxError, match="incomplete featx model bundle.*label_names"):
        load_bundle(incomplete)


def test_load_bundle_refuses_a_newer_format_and_an_unknown_backbone(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rows, labels = separable(5, 2, dim=4)
    head = LogisticRegression().fit(rows, labels)
    good = save_bundle(tmp_path / "good.skops", head, label_names=["a", "b"], recipes=[RECIPE], metrics={},
                       head_name="logreg", graded=False)
    content = skops.io.load(good, trusted=trusted_types())
    newer = tmp_path / "newer.skops"
    skops.io.dump({**content, "format": "featx-bundle/9"}, newer)
    with pytest.raises(FeatxError, match="featx-bundle/9 bundle, newer than this featx .*upgrade featx"):
        load_bundle(newer)
    unknown = tmp_path / "unknown.skops"
    skops.io.dump({**content, "recipes": [RECIPE.replace(backbone="resnet9000").to_attrs()]}, unknown)
    with pytest.raises(FeatxError, match="backbone 'resnet9000', which this featx does not know"):
        load_bundle(unknown)
    # A featx-bundle/1 file (one recipe, weights as one string) still loads.
    old = tmp_path / "old.skops"
    legacy = {key: value for key, value in RECIPE.to_attrs().items() if not key.startswith("weights_")}
    skops.io.dump({**{k: v for k, v in content.items() if k != "recipes"}, "format": "featx-bundle/1",
                   "recipe": {**legacy, "weights_id": "none (random init, seed 0)"}}, old)
    assert load_bundle(old).recipe == RECIPE


def test_saved_heads_are_refitted_on_all_rows_after_scoring(three_classes, tmp_path):
    result, features, validation, _ = three_classes
    assert result.refit_rows == 48 and "refitted on all 48 labelled rows" in str(result)
    with h5py.File(features, "r") as f:
        labelled = f["labels"][:] >= 0
        X, y = f["features"][:][labelled], f["labels"][:][labelled]
    for name in ("logreg", "svm"):
        saved = load_bundle(result.bundles[name]).head
        assert saved is not result.models[name] and type(saved) is type(result.models[name])
        on_all_rows = fit_head(make_head(name, n_classes=3), X, y)
        np.testing.assert_allclose(saved.predict_proba(X), on_all_rows.predict_proba(X), atol=1e-6)
        np.testing.assert_allclose(result.models[name].predict_proba(X), on_all_rows.predict_proba(X), atol=1e-6)
    # With a separate test file the training file is all the data: heads are saved as scored.
    with_test = train(features, test=validation, output=tmp_path / "models", bootstrap=0, log=lambda m: None)
    assert with_test.refit_rows is None and "bundles: the heads as scored" in str(with_test)
    saved = load_bundle(with_test.bundles["logreg"]).head
    np.testing.assert_allclose(saved.predict_proba(X), fit_head(make_head("logreg", n_classes=3), X, y)
                               .predict_proba(X), atol=1e-6)


def test_save_bundle_round_trips_metadata(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rows, labels = separable(5, 2, dim=4)
    head = LogisticRegression().fit(rows, labels)
    path = save_bundle(tmp_path / "m.skops", head, label_names=["a", "b"], recipes=[RECIPE],
                       metrics={"accuracy": 1.0, "accuracy_ci": [0.9, 1.0]}, head_name="logreg", graded=False,
                       extra={"seed": 0})
    bundle = load_bundle(path)
    assert bundle.metrics["accuracy_ci"] == [0.9, 1.0] and bundle.extra == {"seed": 0}
    assert bundle.recipe == RECIPE and bundle.recipes == [RECIPE] and bundle.featx_version


def test_logreg_chooses_c_by_log_loss_so_clear_cases_get_confident_probabilities(tmp_path):
    # Every C separates these classes perfectly, so accuracy alone ties across the whole grid and
    # would keep the strongest regularisation (probabilities near 1/2 for obvious rows).
    rows, labels = separable(30, 2, seed=3)
    features = write_features(tmp_path / "easy.h5", rows, labels, ["left", "right"])
    result = train(features, heads=["logreg"], output=tmp_path / "models", bootstrap=50, log=lambda *a: None)
    row = result.rows[0]
    assert row["cv_score"] == pytest.approx(1.0)  # reported in the metric (accuracy), not log loss
    assert row["params"]["C"] > 1e-4
    head = load_bundle(result.bundles["logreg"]).head
    assert head.predict_proba(rows).max(axis=1).mean() > 0.9


def test_the_pipeline_fits_and_scores_a_named_head_on_arrays():
    """What fine-tuning calls: a head by name on rows in memory, scored into train's leaderboard format."""
    from featx.pipeline import Options, fit_and_score, leaderboard_text
    from featx.pipeline_split import Split

    every, every_label = separable(16, 3)
    tested = np.arange(len(every_label)) % 4 == 0  # one row in four of the same clusters
    rows, labels, test_rows, test_labels = every[~tested], every_label[~tested], every[tested], every_label[tested]
    split = Split.from_arrays(rows, labels, test_rows, test_labels, ["0", "1", "2"])
    head, row, predicted = fit_and_score("logreg", split, Options(bootstrap=50, progress=False))
    assert split.graded and row["head"] == "logreg" and row["accuracy"] == 1.0 and row["qwk"] == 1.0
    assert row["accuracy_ci"] == [1.0, 1.0] and "C" in row["params"] and row["fit_seconds"] > 0
    np.testing.assert_array_equal(predicted, head.predict(test_rows))
    table = leaderboard_text([row], "accuracy").splitlines()
    assert table[0].split()[:3] == ["head", "params", "cv"] and table[2].startswith("logreg ")
    assert table[-1].startswith("(cv score: the head's own hyperparameter search on the training rows, in accuracy")


def test_no_featx_module_imports_another_modules_private_names():
    import ast
    from pathlib import Path

    offenders = []
    for path in Path(featx.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("featx"):
                offenders += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offenders == []

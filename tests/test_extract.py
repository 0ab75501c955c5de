"""Stage 1 end to end: real images written with OpenCV, real TF backbones, real HDF5 files."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from killing import sigkill_once_ready

from featx import FeatxError
from featx import runner as extract_mod
from featx.backbones import get_backbone
from featx.extract import extract
from featx.images import load_image, resize, tta_flip
from featx.runner import features_for_files
from featx.store import FeatureStore, HDF5DatasetWriter

SIZE = 48  # small inputs keep random-weight backbones fast; the plumbing is the same at 224
BACKBONE = "efficientnet_lite0"


def _write_images(folder: Path, n: int, seed: int, shape=(40, 56)):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
        cv2.rectangle(img, (5, 5), (20 + i % 10, 25), (int(rng.integers(256)), 0, 255), -1)
        assert cv2.imwrite(str(folder / f"img {i:03d}.png"), img)


def make_dataset(root: Path, classes=("ants", "bees"), n=6, seed=0) -> Path:
    for c, name in enumerate(classes):
        _write_images(root / name, n, seed + c)
    return root


@pytest.fixture(scope="module")
def backbone():
    return get_backbone(BACKBONE, weights="none", image_size=SIZE)


def run(dataset, output, **kw):
    kw.setdefault("backbone", BACKBONE)
    kw.setdefault("weights", "none")
    kw.setdefault("image_size", SIZE)
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *a: None)
    return extract(dataset, output, **kw)


def direct_features(backbone, files, flip=False):
    batch = np.stack([resize(load_image(f), backbone.input_size) for f in files])
    feats = backbone(backbone.preprocess(batch))
    if flip:
        mirrored = np.stack([resize(tta_flip(load_image(f)), backbone.input_size) for f in files])
        feats = (feats + backbone(backbone.preprocess(mirrored))) / 2
    return np.asarray(feats)


def test_features_equal_backbone_applied_directly(tmp_path, backbone):
    data = make_dataset(tmp_path / "insects", n=7)
    out = tmp_path / "f.h5"
    result = run(data, out, batch_size=4, buffer_size=3, workers=2)
    assert result.rows == 14 and result.skipped == 0 and result.images_processed == 14
    with FeatureStore(out) as fs:
        assert fs.label_names == ["ants", "bees"]
        assert len(fs) == 14
        assert sorted(fs.paths) == sorted(f"{c}/img {i:03d}.png" for c in ("ants", "bees") for i in range(7))
        for path, label in zip(fs.paths, fs.labels):
            assert fs.label_names[label] == path.split("/")[0]
        expected = direct_features(backbone, [data / p for p in fs.paths])
        np.testing.assert_allclose(fs.features[:], expected, atol=1e-5, rtol=1e-5)
        assert fs.attrs["backbone"] == BACKBONE and fs.attrs["image_size"] == SIZE
        assert fs.complete
    # the seeded shuffle is reproducible: a second run writes the same order
    again = tmp_path / "g.h5"
    run(data, again, batch_size=5, workers=0)
    with FeatureStore(out) as a, FeatureStore(again) as b:
        assert a.paths == b.paths
        np.testing.assert_allclose(a.features[:], b.features[:], atol=1e-5)


def test_large_jpegs_decode_reduced_by_default_and_in_full_when_asked(tmp_path, backbone):
    rng = np.random.default_rng(3)
    for name in ("ants", "bees"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(2):
            photo = cv2.GaussianBlur(rng.integers(0, 256, (400, 480, 3), dtype=np.uint8), (31, 31), 0)
            assert cv2.imwrite(str(tmp_path / "photos" / name / f"{i}.jpg"), photo)
    reduced, full = run(tmp_path / "photos", tmp_path / "reduced.h5"), run(tmp_path / "photos", tmp_path / "full.h5",
                                                                            decode="full")
    for result, decode in ((reduced, "reduced"), (full, "full")):
        with FeatureStore(result.files[0].output) as fs:
            assert fs.recipe.decode == decode
            files = [tmp_path / "photos" / p for p in fs.paths]
            # 400 pixels >= 8 x 48: libjpeg decodes 60 x 50 pixels, then the same resize to 48 x 48.
            pixels = [load_image(f, reduce_to=SIZE if decode == "reduced" else None) for f in files]
            assert {p.shape for p in pixels} == {(50, 60, 3)} if decode == "reduced" else {(400, 480, 3)}
            expected = backbone(backbone.preprocess(np.stack([resize(p, SIZE) for p in pixels])))
            np.testing.assert_allclose(fs.features[:], np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_features_for_files_skips_bad_files(tmp_path, backbone):
    data = make_dataset(tmp_path / "d", classes=("x",), n=3)
    bad = data / "x" / "broken.jpg"
    bad.write_text("not an image")
    files = sorted((data / "x").iterdir())
    feats, kept, skipped = features_for_files(files, backbone, batch_size=2)
    assert feats.shape == (3, backbone.feature_dim)
    assert [Path(p).name for p, _ in skipped] == ["broken.jpg"] and skipped[0][1]
    np.testing.assert_allclose(feats, direct_features(backbone, kept), atol=1e-5)


def test_mixed_folder_records_undecodable_files(tmp_path):
    data = make_dataset(tmp_path / "mixed", n=4)
    (data / "ants" / "empty.png").write_bytes(b"")
    (data / "bees" / "notes.jpg").write_text("hello")
    (data / "bees" / "truncated.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((30, 30, 3), np.uint8))[1][:40])
    out = tmp_path / "m.h5"
    result = run(data, out)
    assert result.rows == 8
    with FeatureStore(out) as fs:
        skipped = dict(fs.skipped)
        assert len(fs) == 8
    assert {"ants/empty.png", "bees/notes.jpg"} <= set(skipped)
    assert all(reason for reason in skipped.values())
    assert result.skipped == len(skipped)
    assert "skipped" in str(result)


def test_nothing_decodable_fails_clearly_and_leaves_nothing(tmp_path):
    data = tmp_path / "junk"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.jpg").write_text("nope")
    out = tmp_path / "junk.h5"
    with pytest.raises(FeatxError, match="could be decoded"):
        run(data, out)
    assert not out.exists() and not Path(str(out) + ".parts").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatxError):
        run(empty, tmp_path / "e.h5")
    with pytest.raises(FeatxError, match="not found"):
        run(tmp_path / "missing", tmp_path / "e.h5")


def test_split_folders_give_one_file_per_split_with_shared_classes(tmp_path):
    root = tmp_path / "hymen"
    make_dataset(root / "train", classes=("ants", "bees", "wasps"), n=3)
    make_dataset(root / "val", classes=("ants", "bees"), n=2, seed=10)
    result = run(root, tmp_path / "out" / "hymen.h5")
    outputs = {f.split: f.output for f in result.files}
    assert set(outputs) == {"train", "val"}
    assert outputs["train"].name == "hymen-train.h5" and outputs["val"].name == "hymen-val.h5"
    with FeatureStore(outputs["train"]) as tr, FeatureStore(outputs["val"]) as va:
        assert tr.label_names == va.label_names == ["ants", "bees", "wasps"]
        assert len(tr) == 9 and len(va) == 4
        assert {va.label_names[i] for i in va.labels} == {"ants", "bees"}


def test_unlabeled_test_split_keeps_the_shared_class_list(tmp_path):
    root = tmp_path / "comp"
    make_dataset(root / "train", classes=("cat", "dog"), n=2)
    _write_images(root / "test", 3, seed=9)  # a competition-style test folder: images, no classes
    result = run(root, tmp_path / "comp.h5")
    outputs = {f.split: f.output for f in result.files}
    with FeatureStore(outputs["test"]) as te, FeatureStore(outputs["train"]) as tr:
        assert len(te) == 3 and (te.labels == -1).all()
        assert te.label_names == tr.label_names == ["cat", "dog"]


def test_augment_applies_to_the_train_split_only(tmp_path):
    root = tmp_path / "splits"
    make_dataset(root / "train", n=2)
    make_dataset(root / "val", n=2, seed=5)
    result = run(root, tmp_path / "s.h5", augment=2)
    rows = {f.split: f.rows for f in result.files}
    assert rows == {"train": 12, "val": 4}
    with FeatureStore(tmp_path / "s-val.h5") as fs:
        assert fs.aug is None or not fs.aug.any()
        assert fs.attrs["augment"] == 0


def test_default_output_is_features_folder(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "flowers", n=2)
    monkeypatch.chdir(tmp_path)
    result = run(data, None)
    assert result.files[0].output == Path("features") / "flowers.h5"
    assert (tmp_path / "features" / "flowers.h5").exists()


def test_unlabeled_flat_folder(tmp_path):
    data = tmp_path / "flat"
    _write_images(data, 5, seed=3)
    out = tmp_path / "flat.h5"
    run(data, out)
    with FeatureStore(out) as fs:
        assert len(fs) == 5
        assert (fs.labels == -1).all()
        assert fs.label_names == []


def test_augment_and_tta_rows(tmp_path, backbone):
    data = make_dataset(tmp_path / "aug", n=3)
    out = tmp_path / "aug.h5"
    run(data, out, augment=2, batch_size=4)
    with FeatureStore(out) as fs:
        assert len(fs) == 6 * 3
        assert sorted(np.bincount(fs.aug).tolist()) == [6, 6, 6]
        for path in set(fs.paths):
            rows = [i for i, p in enumerate(fs.paths) if p == path]
            assert sorted(fs.aug[rows].tolist()) == [0, 1, 2]
            originals = [i for i in rows if fs.aug[i] == 0]
            np.testing.assert_allclose(fs.features[originals[0]], direct_features(backbone, [data / path])[0],
                                       atol=1e-5)
        assert fs.attrs["augment"] == 2
    # augmentation is seeded per image: a second run gives the same rows
    out2 = tmp_path / "aug2.h5"
    run(data, out2, augment=2, batch_size=3)
    with FeatureStore(out) as a, FeatureStore(out2) as b:
        np.testing.assert_allclose(a.features[:], b.features[:], atol=1e-5)

    tta = tmp_path / "tta.h5"
    run(data, tta, tta="flip")
    with FeatureStore(tta) as fs:
        assert len(fs) == 6 and fs.attrs["tta"] == "flip"
        expected = direct_features(backbone, [data / p for p in fs.paths], flip=True)
        np.testing.assert_allclose(fs.features[:], expected, atol=1e-5)


def test_two_backbones_one_run(tmp_path):
    data = make_dataset(tmp_path / "two", n=3)
    result = run(data, tmp_path / "two.h5", backbone="efficientnet_lite0,mobilenet_v2", runtime="keras")
    by_backbone = {f.backbone: f.output for f in result.files}
    assert set(by_backbone) == {"efficientnet_lite0", "mobilenet_v2"}
    with FeatureStore(by_backbone["efficientnet_lite0"]) as a, FeatureStore(by_backbone["mobilenet_v2"]) as b:
        assert len(a) == len(b) == 6
        assert a.paths == b.paths
        assert a.dim == 1280 and b.dim == 1280
        assert a.attrs["backbone"] != b.attrs["backbone"]
    assert result.images_processed == 6  # each image decoded once for both


def test_rerun_different_backbone_refused(tmp_path):
    data = make_dataset(tmp_path / "r", n=2)
    out = tmp_path / "r.h5"
    run(data, out)
    with pytest.raises(FeatxError, match="overwrite"):
        run(data, out, pooling="max", runtime="keras")  # Keras and LiteRT make the same recipe; no conversion
    with FeatureStore(out) as fs:
        assert len(fs) == 4 and fs.attrs["pooling"] == "avg"  # the existing file is untouched
    run(data, out, pooling="max", overwrite=True, runtime="keras")
    with FeatureStore(out) as fs:
        assert fs.attrs["pooling"] == "max"


@pytest.mark.parametrize("change", [dict(crop=True), dict(augment=1), dict(seed=1), dict(tta="flip"),
                                    dict(image_size=64), dict(pooling="max"), dict(layer="block6a_expand_activation"),
                                    dict(decode="full")])
def test_rerun_or_resume_with_another_recipe_is_refused(tmp_path, change):
    """Every recipe key: a complete file and an interrupted run both refuse, naming key and values."""
    data = make_dataset(tmp_path / "r", n=3)
    complete, interrupted = tmp_path / "done.h5", tmp_path / "half.h5"
    run(data, complete)
    with HDF5DatasetWriter(1280, interrupted, recipe=FeatureStore(complete).recipe) as w:  # shards, no file
        w.add(np.zeros((1, 1280)), [0], paths=["ants/img 000.png"])
        w.abort()
    key, value = next(iter(change.items()))
    key = {"crop": "resize"}.get(key, key)
    for out in (complete, interrupted):
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(FeatxError, match=rf"another recipe.*{key}: .* vs .*--overwrite") as err:
            run(data, out, runtime="keras", **change)  # the same recipe as LiteRT's, without converting
        assert "\n" not in str(err.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    with FeatureStore(complete) as fs:
        assert len(fs) == 6 and fs.recipe.resize == "stretch" and fs.recipe.augment == 0


def test_two_backbones_with_different_input_sizes_in_one_run(tmp_path):
    data = make_dataset(tmp_path / "sizes", n=2)
    result = run(data, tmp_path / "s.h5", backbone="efficientnet_lite0,efficientnet_lite1", image_size=None,
                 runtime="keras")
    assert result.images_processed == 4  # each image decoded once, resized once per input size
    for summary in result.files:
        backbone = get_backbone(summary.backbone, weights="none", runtime="keras")
        with FeatureStore(summary.output) as fs:
            assert fs.recipe.image_size == backbone.input_size
            np.testing.assert_allclose(fs.features[:], direct_features(backbone, [data / p for p in fs.paths]),
                                       atol=1e-5, rtol=1e-5)
    assert {f.backbone: FeatureStore(f.output).recipe.image_size for f in result.files} == {
        "efficientnet_lite0": 224, "efficientnet_lite1": 240}


def test_rerun_of_complete_file_is_a_no_op(tmp_path):
    data = make_dataset(tmp_path / "done", n=3)
    out = tmp_path / "done.h5"
    run(data, out)
    before = out.stat().st_mtime_ns
    result = run(data, out)
    assert result.rows_new == 0 and result.rows == 6 and result.images_processed == 0
    assert out.stat().st_mtime_ns == before


def test_resume_after_exception_matches_uninterrupted_run(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "crash", n=10)
    reference = tmp_path / "reference.h5"
    run(data, reference, batch_size=2, buffer_size=3)

    real = extract_mod._run_backbone
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash in the middle of the run")
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "_run_backbone", failing)
    out = tmp_path / "crash.h5"
    with pytest.raises(RuntimeError, match="simulated"):
        run(data, out, batch_size=2, buffer_size=3)
    monkeypatch.setattr(extract_mod, "_run_backbone", real)
    assert not out.exists() and Path(str(out) + ".parts").is_dir()

    result = run(data, out, batch_size=2, buffer_size=3)
    assert result.files[0].resumed and 0 < result.rows_new < 20
    _assert_same_content(out, reference)


def _assert_same_content(a, b):
    with FeatureStore(a) as x, FeatureStore(b) as y:
        assert x.paths == y.paths
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_allclose(x.features[:], y.features[:], atol=1e-5)
        assert x.label_names == y.label_names
        assert x.complete and y.complete


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from featx import runner
from featx.extract import extract

real = runner._run_backbone
parts, ready = Path(sys.argv[2] + ".parts"), Path(sys.argv[3])

def run_then_stall(*args, **kwargs):
    # Stall mid-run once shards are on disk: the parent kills us here, with rows flushed, a buffer
    # in memory and images still to do. The run cannot finish before the kill, however slow the machine.
    if len(list(parts.glob("shard-*.h5"))) >= 3:
        ready.write_text("ready")
        time.sleep(3600)
    return real(*args, **kwargs)

runner._run_backbone = run_then_stall
extract(sys.argv[1], sys.argv[2], backbone="efficientnet_lite0", weights="none", image_size=160,
               batch_size=2, buffer_size=2, workers=1, progress=False, log=lambda *a: None)
"""


def test_sigkill_mid_run_then_rerun_completes(tmp_path):
    data = make_dataset(tmp_path / "kill", n=30)
    out = tmp_path / "kill.h5"
    ready = tmp_path / "ready"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    sigkill_once_ready(script, data, out, ready, ready=ready)
    assert not out.exists() and len(list(Path(f"{out}.parts").glob("shard-*.h5"))) >= 3

    kw = dict(image_size=160, batch_size=2, buffer_size=2)
    result = run(data, out, **kw)
    assert result.files[0].resumed and result.rows == 60 and 0 < result.rows_new < 60
    reference = tmp_path / "reference.h5"
    run(data, reference, **kw)
    _assert_same_content(out, reference)
    with h5py.File(out, "r") as f:  # a plain h5py reader sees a complete, ordinary file
        assert f["features"].shape == (60, 1280)


def test_float16_features_and_bad_options(tmp_path, backbone):
    data = make_dataset(tmp_path / "half", n=2)
    out = tmp_path / "half.h5"
    run(data, out, dtype="float16", workers=1)
    with FeatureStore(out) as fs:
        assert fs.features.dtype == np.float16
        expected = direct_features(backbone, [data / p for p in fs.paths])
        np.testing.assert_allclose(fs.features[:].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    for bad in (dict(dtype="int8"), dict(tta="rotate"), dict(augment=-1), dict(batch_size=0), dict(buffer_size=0),
                dict(backbone="no_such_net")):
        with pytest.raises(FeatxError):
            run(data, tmp_path / "bad.h5", **bad)
    assert not (tmp_path / "bad.h5").exists()


def test_one_options_object_carries_the_keywords_to_the_runner(tmp_path):
    from featx.backbones import DEFAULT_BACKBONE
    from featx.extract import ExtractOptions, extract_with

    options = ExtractOptions.from_keywords(backbone=BACKBONE, weights="none", image_size=SIZE, batch_size=3,
                                           tta="flip", workers=1, buffer_size=2, progress=False)
    assert options.backbones.names == (BACKBONE,) and options.backbones.image_size == SIZE
    assert (options.feeding.batch_size, options.feeding.tta, options.feeding.workers) == (3, "flip", 1)
    assert (options.writing.buffer_size, options.writing.progress, options.engine.name) == (2, False, "local")
    assert ExtractOptions.from_keywords().backbones.names == (DEFAULT_BACKBONE,)

    data = make_dataset(tmp_path / "d", n=2)
    grouped = extract_with(data, tmp_path / "grouped.h5", options, log=lambda *a: None)
    loose = run(data, tmp_path / "loose.h5", batch_size=3, tta="flip", workers=1, buffer_size=2)
    with FeatureStore(grouped.files[0].output) as a, FeatureStore(loose.files[0].output) as b:
        assert a.recipe == b.recipe and list(a.paths) == list(b.paths)
        np.testing.assert_array_equal(a.features[:], b.features[:])
    with pytest.raises(FeatxError, match="--address and --gpus-per-worker are options of --engine ray"):
        ExtractOptions.from_keywords(address="127.0.0.1:6379")

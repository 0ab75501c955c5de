"""The out-of-core `sgd` head: a scikit-learn estimator, and the same fit streamed from a real feature file."""

from __future__ import annotations

import numpy as np
import pytest
import skops.io
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx import FeatxError
from featx.heads.streaming import SGDHead, _held_out_split
from featx.store import FeatureStore, HDF5DatasetWriter

DIM = 24
CLASSES = ("a", "b", "c")


# The default penalties suit 1,280 pooled CNN features; the checks' blobs (2-5 features, 30 rows) want weak ones.
@parametrize_with_checks([SGDHead(Cs=(1e-2, 1.0, 100.0), max_epochs=5)])
def test_sklearn_contract(estimator, check):
    check(estimator)


def write_file(path, *, per_class=300, copies=1, seed=0):
    """A float16 feature file written class by class (the worst order for SGD), `copies` rows per image."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=0.6, size=(len(CLASSES), DIM))
    with HDF5DatasetWriter((0, DIM), path, buffer_size=200, dtype="float16") as writer:
        writer.store_class_labels(CLASSES)
        for label in range(len(CLASSES)):
            images = [f"{CLASSES[label]}/{i:04d}.png" for i in range(per_class)]
            paths = [p for p in images for _ in range(copies)]
            rows = means[label] + rng.normal(size=(len(paths), DIM))
            writer.add(rows, np.full(len(paths), label), paths=paths,
                       aug=np.tile(np.arange(copies), per_class) if copies > 1 else None)
    return path


class ReadSpy:
    """The real h5py dataset, recording how many rows each read asks for."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, []
        self.shape, self.dtype = dataset.shape, dataset.dtype

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        rows = self.dataset[key]
        self.reads.append(len(rows))
        return rows


def test_streamed_fit_equals_the_in_memory_fit_and_reads_only_chunks(tmp_path):
    path = write_file(tmp_path / "f.h5")
    with FeatureStore(path) as store:
        rng = np.random.default_rng(1)
        test = rng.random(len(store)) < 0.25
        train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
        X, y, paths = store.features[:], store.labels, np.asarray(store.paths, dtype=object)
        store.features = spy = ReadSpy(store.features)
        head = SGDHead(chunk_rows=64, validation_rows=64).fit_store(store, train_rows)
        streamed = head.predict_proba_store(store, test_rows)
    assert max(spy.reads) <= 64 + 64  # a span of one chunk, never the matrix (900 rows)
    in_memory = SGDHead(chunk_rows=64, validation_rows=64).fit(X[train_rows], y[train_rows], groups=paths[train_rows])
    np.testing.assert_allclose(streamed, in_memory.predict_proba(X[test_rows]), atol=1e-6)
    assert head.best_params_ == in_memory.best_params_ and head.held_out_rows_ > 0
    accuracy = (head.classes_[streamed.argmax(1)] == y[test_rows]).mean()
    assert accuracy > 0.9  # learnt from a class-sorted file: each step mixes rows from all over it


def test_held_out_rows_are_whole_images_of_every_class():
    y = np.repeat([0, 1, 2], 40)
    groups = np.repeat([f"img{i}" for i in range(60)], 2)  # two augmented copies per image
    fit_at, held = _held_out_split(y, groups, validation_rows=1000, seed=0)
    assert not set(groups[fit_at]) & set(groups[held])
    assert set(y[held]) == {0, 1, 2} and len(held) + len(fit_at) == len(y)
    few_at, none = _held_out_split(y[:4], groups[:4], validation_rows=1000, seed=0)
    assert len(none) == 0 and len(few_at) == 4  # too few images to spare one: nothing held out


def test_augmented_file_and_balanced_weights_train(tmp_path):
    path = write_file(tmp_path / "aug.h5", per_class=60, copies=3)
    head = SGDHead(class_weight="balanced", chunk_rows=128).fit_store(path)
    with FeatureStore(path) as store:
        proba = head.predict_proba_store(path)
        assert proba.shape == (len(store), 3)
        assert (head.classes_[proba.argmax(1)] == store.labels).mean() > 0.9


def test_saved_with_skops_loads_with_one_trusted_featx_type(tmp_path):
    path = write_file(tmp_path / "f.h5", per_class=50)
    head = SGDHead(chunk_rows=64).fit_store(path)
    skops.io.dump(head, tmp_path / "head.skops")
    untrusted = skops.io.get_untrusted_types(file=tmp_path / "head.skops")
    assert untrusted == ["featx.heads.streaming.SGDHead"]
    loaded = skops.io.load(tmp_path / "head.skops", trusted=untrusted)
    np.testing.assert_array_equal(loaded.predict_proba_store(path), head.predict_proba_store(path))


def test_wrong_width_file_is_refused(tmp_path):
    head = SGDHead(chunk_rows=64).fit_store(write_file(tmp_path / "f.h5", per_class=30))
    with HDF5DatasetWriter((0, DIM + 1), tmp_path / "wide.h5") as writer:
        writer.add(np.zeros((2, DIM + 1)), [0, 1], paths=["x.png", "y.png"])
    with pytest.raises(FeatxError, match="same recipe"):
        head.predict_proba_store(tmp_path / "wide.h5")


def test_train_streams_sgd_alone_and_points_there_when_memory_is_short(tmp_path, monkeypatch):
    from featx import load_bundle, pipeline_split
    from featx.train import train

    path = write_file(tmp_path / "f.h5", per_class=200)
    messages = []
    options = dict(output=tmp_path / "models", bootstrap=0, progress=False)
    result = train(path, heads="sgd", log=messages.append, **options)
    assert any(message.startswith("streaming the sgd head over 450 rows") for message in messages), messages
    assert result.best == "sgd" and result.rows[0]["accuracy"] > 0.9 and result.refit_rows == 600
    bundle = load_bundle(result.bundles["sgd"])
    with FeatureStore(path) as store:  # the bundle holds the head refit on every row
        X = store.features[:]
        np.testing.assert_array_equal(bundle.head.predict(X), result.models["sgd"].predict(X))
    tested = train(path, test=path, heads="sgd", log=lambda message: None, **options)
    assert tested.refit_rows is None and tested.rows[0]["accuracy"] > 0.9  # with --test the bundle is as scored

    monkeypatch.setattr(pipeline_split, "available_memory", lambda: 100_000)  # 100 kB free: 4 x 58 kB does not fit
    with pytest.raises(FeatxError, match=r"need\(s\) about .* GiB to train in memory .*--heads sgd, one feature file"):
        train(path, heads="logreg", log=lambda message: None, **options)
    messages.clear()
    streamed = train(path, heads="sgd", log=messages.append, **options)  # streaming needs no room
    assert len(streamed.rows) == 1 and streamed.report_page is None  # the page would need the features in memory:
    assert any(message.startswith("no report page: its map and label issues need") for message in messages)  # said


def test_streamed_sgd_writes_the_report_page_when_the_features_fit(tmp_path):
    from featx.train import train

    path = write_file(tmp_path / "f.h5", per_class=40)
    result = train(path, heads="sgd", output=tmp_path / "models", bootstrap=0, progress=False,
                   log=lambda message: None)
    assert result.report_page is not None and result.report_page.page.is_file()
    assert "sgd" in result.report_page.page.read_text() and str(result.report_page) in result.report


def test_streamed_sgd_refuses_the_ray_engine_instead_of_dropping_it(tmp_path):
    from featx.train import train

    path = write_file(tmp_path / "f.h5", per_class=10)
    with pytest.raises(FeatxError, match=r"^--engine ray .* --heads sgd alone streams the file here"):
        train(path, heads="sgd", engine="ray", output=tmp_path / "models", log=lambda message: None)
    assert not (tmp_path / "models").exists()


def test_streamed_sgd_refuses_too_few_images_per_class_as_in_memory_heads_do(tmp_path):
    from featx.train import train

    path = tmp_path / "small.h5"
    rng = np.random.default_rng(1)
    counts = {"a": 2, "b": 30, "c": 30}  # 'a': 2 images, while a hold-out and sgd's fit need 3 + 1
    with HDF5DatasetWriter((0, DIM), path) as writer:
        writer.store_class_labels(list(counts))
        for label, (name, count) in enumerate(counts.items()):
            writer.add(rng.normal(label, 1, (count, DIM)), np.full(count, label),
                       paths=[f"{name}/{i}.png" for i in range(count)])
    options = dict(output=tmp_path / "models", bootstrap=0, progress=False, log=lambda message: None)
    for heads in ("sgd", "logreg"):  # streamed and in memory: the same one line
        with pytest.raises(FeatxError) as refused:
            train(path, heads=heads, **options)
        assert str(refused.value) == (f"class 'a' has only 2 labelled image(s) in {path} (3 to train, 1 to test); "
                                      "need at least 4: add labelled images per class")
    with pytest.raises(FeatxError, match=r"^class 'a' has only 2 labelled image\(s\) to train on; need at least 3"):
        train(path, test=path, heads="sgd", **options)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())

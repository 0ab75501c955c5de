"""The feature file: round trips, resume, crash safety, locking and readable errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from featx.errors import FeatxError
from featx.recipe import RECIPE_KEYS, Recipe
from featx.store import (
    FORMAT,
    FeatureStore,
    HDF5DatasetWriter,
    check_compatible,
    describe,
)

DIM = 5
CLASSES = ["ants", "bees", "wasps"]
PATHS = ["bees/ähre blüte 1.jpg", "猫/çat.png", "ants/with space.JPG"]
PATHS += [f"c{i % 3}/img_{i}.jpg" for i in range(17)]
RECIPE = Recipe(backbone="resnet50", weights_sha256="abc123", weights_source="keras-cache:resnet50.h5",
                image_size=224, preprocessing="caffe (BGR, ImageNet mean)")


def make_rows(n, start=0):
    """Rows whose values encode their index, so any mix-up or duplicate is visible."""
    rows = (np.arange(start, start + n)[:, None] * 10 + np.arange(DIM)) / 7
    return rows.astype(np.float32)


def write_file(path, n=len(PATHS), buf_size=7, **kwargs):  # noqa: B008 - PATHS is a constant
    writer = HDF5DatasetWriter((n, DIM), path, bufSize=buf_size, **kwargs)
    writer.storeClassLabels(CLASSES)
    for start in range(0, n, 3):
        stop = min(start + 3, n)
        writer.add(make_rows(stop - start, start), np.arange(start, stop) % 3, paths=PATHS[start:stop],
                   aug=np.arange(start, stop) % 2)
    return writer


def assert_rows_exactly(store, n):
    np.testing.assert_array_equal(store.features[:], make_rows(n))
    np.testing.assert_array_equal(store.labels, np.arange(n) % 3)
    assert store.paths == PATHS[:n]


@pytest.mark.parametrize("buf_size", [1, 7, 1000])
def test_round_trip_across_buffer_boundaries(tmp_path, buf_size):
    path = tmp_path / "out.h5"
    writer = write_file(path, buf_size=buf_size)
    writer.skip("ants/imageNotFound.gif", "OpenCV cannot decode it")
    writer.set_attrs(**RECIPE.to_attrs())
    # Rows come 3 at a time: with bufSize 7, shards of 9 rows, and 2 rows + 1 skip left
    # in a partial buffer that only close() writes.
    assert writer.rows_written == {1: 20, 7: 18, 1000: 0}[buf_size]
    writer.close()
    assert not os.path.exists(f"{path}.parts") and not os.path.exists(f"{path}.lock")

    with FeatureStore(path) as store:
        assert len(store) == 20 and store.dim == DIM and store.dtype == np.float32
        assert_rows_exactly(store, 20)
        np.testing.assert_array_equal(store.aug, np.arange(20) % 2)
        assert store.label_names == CLASSES
        assert store.skipped == [("ants/imageNotFound.gif", "OpenCV cannot decode it")]
        assert store.complete and store.data_key == "features"
        assert store.recipe == RECIPE

    with h5py.File(path, "r") as f:  # the same through plain h5py
        assert f.attrs["format"] == FORMAT and bool(f.attrs["complete"])
        np.testing.assert_array_equal(f["features"][:], make_rows(20))
        np.testing.assert_array_equal(f["labels"][:], np.arange(20) % 3)
        assert f["labels"].dtype == np.int64
        assert list(f["paths"].asstr()[:]) == PATHS
        assert list(f["label_names"].asstr()[:]) == CLASSES
        np.testing.assert_array_equal(f["aug"][:], np.arange(20) % 2)
        assert f["features"].maxshape == (None, DIM) and f["features"].chunks is not None
        assert f["skipped"].shape == (1, 2)


def test_seeds_usage_without_paths_reads_with_plain_h5py(tmp_path):
    path = str(tmp_path / "seeds.h5")
    writer = HDF5DatasetWriter((6, DIM), path, bufSize=4)
    writer.storeClassLabels(np.array(["cat", "dog"]))
    for i in range(3):
        writer.add(make_rows(2, 2 * i), [0, 1])
    writer.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["features"][:], make_rows(6))
        assert list(f["labels"][:]) == [0, 1] * 3
        assert "aug" not in f and f["skipped"].shape == (0, 2)
    with FeatureStore(path) as store:
        assert store.aug is None and store.skipped == [] and store.paths == [""] * 6


def test_float16_and_int_dims(tmp_path):
    path = tmp_path / "half.h5"
    with HDF5DatasetWriter(DIM, path, dtype="float16") as writer:
        writer.add(make_rows(4), [-1.0] * 4, aug=2)
    with FeatureStore(path) as store:
        assert store.dtype == np.float16 and store.data_key == "features"
        np.testing.assert_array_equal(store.features[:], make_rows(4).astype(np.float16))
        assert list(store.labels) == [-1] * 4 and list(store.aug) == [2] * 4


def test_append_mode_keeps_rows_and_adds_after_them(tmp_path):
    path = tmp_path / "out.h5"
    write_file(path, n=8, recipe=RECIPE).close()
    writer = HDF5DatasetWriter((20, DIM), path, bufSize=5, mode="a", recipe=RECIPE)
    assert writer.done_paths == set(PATHS[:8]) and writer.rows_written == 8
    writer.storeClassLabels(CLASSES)
    writer.add(make_rows(12, 8), np.arange(8, 20) % 3, paths=PATHS[8:])
    writer.close()
    with FeatureStore(path) as store:
        assert_rows_exactly(store, 20)


def test_mode_w_dash_refuses_existing_and_w_overwrites(tmp_path):
    path = tmp_path / "out.h5"
    write_file(path).close()
    with pytest.raises(FeatxError, match="already exists.*--overwrite"):
        HDF5DatasetWriter(DIM, path)
    with HDF5DatasetWriter(DIM, path, mode="w") as writer:
        writer.add(make_rows(2), [0, 1])
    with FeatureStore(path) as store:
        assert len(store) == 2

    unfinished = tmp_path / "unfinished.h5"
    write_file(unfinished, buf_size=3).abort()
    with pytest.raises(FeatxError, match="unfinished extraction"):
        HDF5DatasetWriter(DIM, unfinished)


def test_resume_after_exception_completes_without_duplicates(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with HDF5DatasetWriter(DIM, path, bufSize=4, recipe=RECIPE) as writer:
            writer.storeClassLabels(CLASSES)
            writer.add(make_rows(6), np.arange(6) % 3, paths=PATHS[:6])
            raise RuntimeError("backbone crashed")
    assert not path.exists() and os.path.isdir(f"{path}.parts")
    with pytest.raises(FeatxError, match="incomplete.*6 rows.*featx extract"):
        FeatureStore(path)
    assert "INCOMPLETE" in describe(path) and "rows so far: 6" in describe(path)

    with HDF5DatasetWriter(DIM, path, bufSize=4, mode="a", recipe=RECIPE) as writer:
        todo = [i for i, p in enumerate(PATHS) if p not in writer.done_paths]
        assert todo == list(range(6, 20))
        writer.add(make_rows(14, 6), np.arange(6, 20) % 3, paths=PATHS[6:])
    with FeatureStore(path) as store:
        assert_rows_exactly(store, 20)
        assert store.label_names == CLASSES and store.recipe == RECIPE


@pytest.mark.parametrize("with_paths", [True, False])
def test_kill_after_final_replace_before_shard_removal(tmp_path, with_paths):
    """Shards left next to the file they were assembled into must not be read twice."""
    path = tmp_path / "out.h5"
    writer = HDF5DatasetWriter(DIM, path, bufSize=3)
    writer.add(make_rows(7), np.arange(7) % 3, paths=PATHS[:7] if with_paths else None)
    writer.flush()
    shutil.copytree(f"{path}.parts", tmp_path / "saved.parts")
    writer.close()
    shutil.copytree(tmp_path / "saved.parts", f"{path}.parts")  # as if rmtree never ran

    with HDF5DatasetWriter(DIM, path, mode="a") as writer:
        assert writer.rows_written == 7
        writer.add(make_rows(1, 7), [1], paths=PATHS[7:8] if with_paths else None)
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.features[:], make_rows(8))


def test_temp_leftovers_are_ignored_and_removed(tmp_path):
    path = tmp_path / "out.h5"
    write_file(path, buf_size=5).abort()
    garbage = [tmp_path / "out.h5.tmp-99999", tmp_path / "out.h5.parts" / ".shard-000009.h5.tmp-99999"]
    for junk in garbage:
        junk.write_bytes(b"half-written HDF5")
    with HDF5DatasetWriter(DIM, path, mode="a"):
        assert not any(junk.exists() for junk in garbage)
    with FeatureStore(path) as store:
        assert_rows_exactly(store, 20)


def test_unreadable_shard_at_close_is_one_line_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.h5"
    writer = HDF5DatasetWriter(DIM, path, bufSize=3)
    for start in (0, 3):  # two shards of 3 rows
        writer.add(make_rows(3, start), np.arange(start, start + 3) % 3, paths=PATHS[start:start + 3])
    damaged = tmp_path / "out.h5.parts" / "shard-000001.h5"
    damaged.write_bytes(b"damaged by a bad disk")
    with pytest.raises(FeatxError, match="shard-000001.h5 is unreadable.*delete it") as err:
        writer.close()
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5.parts"]  # no temp copy, no lock

    damaged.unlink()
    with HDF5DatasetWriter(DIM, path, mode="a") as writer:
        assert writer.rows_written == 3
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.features[:], make_rows(3, 3))


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from featx.store import HDF5DatasetWriter

    path, dim = sys.argv[1], int(sys.argv[2])
    writer = HDF5DatasetWriter(dim, path, bufSize=4)
    i = 0
    while True:  # write until killed
        writer.add(np.full((1, dim), i, np.float32), [i % 2], paths=[f"img/{i}.png"])
        i += 1
        if i % 4 == 0:
            print(writer.rows_written, flush=True)
    """
)


def test_resume_after_sigkill_mid_write(tmp_path):
    path = tmp_path / "killed.h5"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(DIM)], stdout=subprocess.PIPE,
                             text=True)
    reported = 0
    for line in child.stdout:
        reported = int(line)
        if reported >= 200:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    # The lock died with the child; every flushed row is still there.
    with HDF5DatasetWriter(DIM, path, mode="a") as writer:
        durable = writer.rows_written
        assert durable >= reported
        assert writer.done_paths == {f"img/{i}.png" for i in range(durable)}
    with FeatureStore(path) as store:
        assert len(store) == durable
        assert store.paths == [f"img/{i}.png" for i in range(durable)]
        np.testing.assert_array_equal(store.features[:, 0], np.arange(durable, dtype=np.float32))


def test_identity_mismatch_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "out.h5"
    write_file(path, recipe=RECIPE).close()
    with pytest.raises(FeatxError, match=r"backbone: 'resnet50' vs 'vgg16'.*--overwrite") as err:
        HDF5DatasetWriter(DIM, path, mode="a", recipe=RECIPE.replace(backbone="vgg16"))
    assert "pooling" not in str(err.value)

    with HDF5DatasetWriter(DIM, path, mode="a") as writer:
        with pytest.raises(FeatxError, match=r"pooling: 'avg' vs 'max'"):
            writer.set_attrs(pooling="max")
        writer.set_attrs(dataset_root="datasets/bees")  # provenance that is not identity may change
    with pytest.raises(FeatxError, match="feature dim: 5 -> 8"):
        HDF5DatasetWriter(8, path, mode="a")
    with FeatureStore(path) as store:
        assert len(store) == 20 and store.attrs["dataset_root"] == "datasets/bees"


def test_second_writer_is_refused_while_first_is_open(tmp_path):
    path = tmp_path / "out.h5"
    first = HDF5DatasetWriter(DIM, path)
    with pytest.raises(FeatxError, match="being written by another process"):
        HDF5DatasetWriter(DIM, path, mode="a")
    first.add(make_rows(2), [0, 1])
    first.close()
    with HDF5DatasetWriter(DIM, path, mode="a") as again:
        assert again.rows_written == 2


def test_bad_input_is_refused_without_losing_flushed_rows(tmp_path):
    path = tmp_path / "out.h5"
    writer = HDF5DatasetWriter(DIM, path, bufSize=2)
    writer.add(make_rows(3), [0, 1, 2])
    with pytest.raises(FeatxError, match=r"shape \(2, 4\).*\(n, 5\)"):
        writer.add(np.zeros((2, 4)), [0, 1])
    with pytest.raises(FeatxError, match="3 feature rows but 2 labels"):
        writer.add(make_rows(3, 3), [0, 1])
    with pytest.raises(FeatxError, match="1 feature rows but 2 paths"):
        writer.add(make_rows(1, 3), [0], paths=["a", "b"])
    writer.close()
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.features[:], make_rows(3))


def test_unreadable_inputs_give_one_line_errors(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["weights"] = np.zeros(3)
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    cases = {tmp_path / "missing.h5": "does not exist", other: "not a featx feature file",
             text: "not an HDF5 file", tmp_path: "is a folder"}
    for path, expected in cases.items():
        with pytest.raises(FeatxError, match=expected) as err:
            FeatureStore(path)
        assert "\n" not in str(err.value)
    with pytest.raises(FeatxError, match="cannot resume.*not a featx feature file.*--overwrite"):
        HDF5DatasetWriter(DIM, other, mode="a")


def test_reads_seeds_style_files(tmp_path):
    path = tmp_path / "seeds.h5"
    with h5py.File(path, "w") as f:
        f["images"] = make_rows(4)
        f["labels"] = np.array([0, 1, 1, 0])
        f.create_dataset("label_names", data=["cat", "dog"], dtype=h5py.string_dtype())
    with FeatureStore(path) as store:
        assert store.data_key == "images" and store.recipe is None and store.label_names == ["cat", "dog"]
        batches = list(store.iter_batches(3))
        assert [start for _, _, start in batches] == [0, 3]
        np.testing.assert_array_equal(np.concatenate([b for b, _, _ in batches]), make_rows(4))
        assert list(np.concatenate([y for _, y, _ in batches])) == [0, 1, 1, 0]


def test_check_compatible_names_the_differing_key(tmp_path):
    write_file(tmp_path / "a.h5", recipe=RECIPE).close()
    write_file(tmp_path / "b.h5", recipe=RECIPE.replace(pooling="max")).close()
    with FeatureStore(tmp_path / "a.h5") as a, FeatureStore(tmp_path / "b.h5") as b:
        a.check_compatible(RECIPE)
        with pytest.raises(FeatxError, match=r"pooling: 'avg' vs 'max'") as err:
            a.check_compatible(b)
        assert "resnet50" not in str(err.value)
        with pytest.raises(FeatxError, match="layer: none vs 'block5'"):
            check_compatible([a, RECIPE.replace(layer="block5")])
        # Augmentation and seed change how rows were generated, not the feature space.
        check_compatible([a, RECIPE.replace(augment=4, seed=3)])


def test_describe_reports_what_was_written(tmp_path):
    path = tmp_path / "out.h5"
    writer = write_file(path, recipe=RECIPE)
    writer.add(make_rows(1), [-1], paths=["unlabeled/x.jpg"])
    for i in range(7):
        writer.skip(f"broken/{i}.gif", "cannot decode")
    writer.close(complete=False)
    text = describe(path)
    for expected in ["rows: 21", "feature dim: 5 (float32", "classes: 3", "ants   7", "bees   7",
                     "wasps  6", "(unlabeled)  1", "backbone: resnet50",
                     "weights: keras-cache:resnet50.h5 sha256:abc123",
                     "pooling: avg", "image size: 224", "INCOMPLETE", "skipped files: 7",
                     "broken/0.gif: cannot decode", "... and 2 more", "featx_version: "]:
        assert expected in text, expected


def test_describe_counts_only_shards_not_yet_assembled(tmp_path):
    path = tmp_path / "out.h5"
    writer = HDF5DatasetWriter(DIM, path, bufSize=3)
    writer.add(make_rows(4), np.arange(4) % 3, paths=PATHS[:4])
    writer.flush()
    shutil.copytree(f"{path}.parts", tmp_path / "saved.parts")
    writer.close()
    shutil.copytree(tmp_path / "saved.parts", f"{path}.parts")  # assembled already: not pending
    assert "in progress" not in describe(path)

    writer = HDF5DatasetWriter(DIM, path, mode="a")
    writer.add(make_rows(2, 4), [1, 2], paths=PATHS[4:6])
    writer.abort()
    assert "in progress: 2 more rows waiting in" in describe(path)


CHANGED = {"backbone": "vgg16", "weights_sha256": "def456", "image_size": 160, "preprocessing": "tf",
           "pooling": "max", "layer": "block5", "resize": "crop", "tta": "flip", "augment": 2, "seed": 7,
           "decode": "reduced", "precision": "int8"}


def test_changed_values_cover_every_recipe_key():
    assert set(CHANGED) == set(RECIPE_KEYS)


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_resume_with_any_changed_recipe_key_is_refused(tmp_path, key):
    path = tmp_path / "out.h5"
    writer = write_file(path, n=6, buf_size=2, recipe=RECIPE)
    writer.abort()  # an interrupted run: shards only
    changed = RECIPE.replace(**{key: CHANGED[key]})
    before = sorted(os.listdir(f"{path}.parts"))
    with pytest.raises(FeatxError) as err:
        HDF5DatasetWriter(DIM, path, mode="a", recipe=changed)
    message = str(err.value)
    old, new = getattr(RECIPE, key), CHANGED[key]
    assert f"{key}: {old!r}" in message or f"{key}: none vs" in message
    assert repr(new) in message and "--overwrite" in message and "\n" not in message
    assert sorted(os.listdir(f"{path}.parts")) == before  # nothing lost
    # The weights' location is provenance, not identity: found elsewhere, the same weights resume.
    with HDF5DatasetWriter(DIM, path, mode="a", recipe=RECIPE.replace(weights_source="file:/elsewhere")) as again:
        assert again.rows_written == 6


def test_a_shard_of_another_recipe_is_refused(tmp_path):
    path, other = tmp_path / "out.h5", tmp_path / "other.h5"
    write_file(path, n=3, buf_size=3, recipe=RECIPE).abort()
    write_file(other, n=3, buf_size=3, recipe=RECIPE.replace(image_size=160)).abort()
    shutil.copy(f"{other}.parts/shard-000001.h5", f"{path}.parts/shard-000002.h5")
    with pytest.raises(FeatxError, match=r"another recipe than this run \(image_size: 160 vs 224\)"):
        HDF5DatasetWriter(DIM, path, mode="a", recipe=RECIPE)
    with pytest.raises(FeatxError, match=r"another recipe than .*shard-000002.h5 \(image_size: 224 vs 160\)"):
        HDF5DatasetWriter(DIM, path, mode="a")


def test_snake_case_names_with_the_seeds_camel_case_aliases(tmp_path):
    path = tmp_path / "out.h5"
    writer = HDF5DatasetWriter((4, DIM), output_path=path, buffer_size=2)
    assert writer.data_key == writer.dataKey == "features"  # the file format's name, not the seeds' "images"
    assert writer.buffer_size == writer.bufSize == 2 and writer.output_path == writer.outputPath == str(path)
    writer.store_class_labels(["a", "b"])
    writer.add(make_rows(4), [0, 1, 0, 1])
    writer.close()
    seeds = tmp_path / "seeds.h5"
    with HDF5DatasetWriter((4, DIM), outputPath=seeds, dataKey="images", bufSize=3) as old_style:
        old_style.storeClassLabels(["a", "b"])
        old_style.add(make_rows(4), [0, 1, 0, 1])
    for file, key in ((path, "features"), (seeds, "images")):
        with FeatureStore(file) as store:
            assert store.data_key == key and store.label_names == ["a", "b"]
            np.testing.assert_array_equal(store.features[:], make_rows(4))
    with pytest.raises(TypeError, match="not both"):
        HDF5DatasetWriter(DIM, tmp_path / "x.h5", buffer_size=5, bufSize=6)

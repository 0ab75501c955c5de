"""Damaged feature files at every entry point that opens one: a result or one clean error, input unchanged.

The files are a real `featx extract` output damaged with h5py (hypothesis draws which damage and
where), random bytes named .h5, and the real file cut short at every offset hypothesis picks. The
entry points: `FeatureStore`, `featx info`, `featx train`, `featx evaluate`, and the resume of an
extraction (the writer in append mode, as `featx extract` opens it; the real command runs below on
one file of each kind, and on damaged `.parts/` folders).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile import (
    EXTRACT_ARGS,
    HOSTILE,
    assert_clean_exit,
    clean_call,
    clean_cli,
    file_digest,
)
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import featx
from featx import FeatureStore, HDF5DatasetWriter, Recipe
from featx.store import describe, parts_dir

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
REPO = str(Path(featx.__file__).resolve().parents[1])  # a fresh process imports this featx, not another checkout
STR = h5py.string_dtype("utf-8")
# Values no featx attribute ever holds: numbers for names, names for numbers, bytes that are not
# utf-8, arrays, HDF5's empty (null-dataspace) attribute.
WEIRD_VALUES = [7, -1, 3.5, float("nan"), "", "junk", np.bytes_(b"\xff\xfe"), np.array([1, 2]),
                np.array([], dtype="f4"), h5py.Empty("f4"), True]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _replace(f, name, data=None, **kwargs):
    if name in f:
        del f[name]
    if data is None:
        f.create_group(name)
    else:
        f.create_dataset(name, data=data, **kwargs)


def _n(f):
    return f["labels"].shape[0]


def _some_rows(f, draw):
    if _n(f) == 0:
        return []
    return draw(st.lists(st.integers(0, _n(f) - 1), min_size=1, max_size=4, unique=True))


def _nan_rows(f, draw):
    rows = sorted(_some_rows(f, draw))
    if rows:
        f["features"][rows, :] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))


def _set_labels(f, rows, value):
    labels = f["labels"][()]
    labels[rows] = value
    f["labels"][...] = labels


def _labels_out_of_range(f, draw):
    _set_labels(f, _some_rows(f, draw), draw(st.integers(2, 2**62)))  # 2 classes: only 0 and 1 have names


def _labels_very_negative(f, draw):
    _set_labels(f, _some_rows(f, draw), draw(st.integers(-(2**62), -2)))


def _attr_deleted(f, draw):
    del f.attrs[draw(st.sampled_from(sorted(f.attrs)))]


def _attr_wrong_type(f, draw):
    key = draw(st.sampled_from(sorted(f.attrs) + ["dataset_root", "complete"]))
    f.attrs[key] = draw(st.sampled_from(WEIRD_VALUES))


def _features_empty(f, draw):
    for name in ("features", "labels", "paths"):
        column = f[name]
        _replace(f, name, column[:0], dtype=column.dtype)


def _data_key_elsewhere(f, draw):
    f.attrs["format"] = "featx-features/1"  # a seeds-style file (no format) would not read data_key at all
    f.attrs["data_key"] = draw(st.sampled_from(["labels", "paths", "nope", 5]))


# Damage after which the file is not a usable feature file: FeatureStore, train, evaluate and resume refuse it.
BROKEN = {
    "no features": lambda f, draw: f.__delitem__("features"),
    "features 3-D": lambda f, draw: _replace(f, "features", np.zeros((_n(f), 4, 2), "f4")),
    "features 1-D": lambda f, draw: _replace(f, "features", np.zeros(_n(f), "f4")),
    "features strings": lambda f, draw: _replace(f, "features", np.array([["a", "b"]] * _n(f), dtype=object),
                                                 dtype=STR),
    "features a group": lambda f, draw: _replace(f, "features"),
    "features bool": lambda f, draw: _replace(f, "features", np.zeros((_n(f), 8), bool)),
    "features complex": lambda f, draw: _replace(f, "features", np.zeros((_n(f), 8), "c8")),
    "labels longer": lambda f, draw: _replace(f, "labels", np.zeros(_n(f) + draw(st.integers(1, 5)), "i8")),
    "labels shorter": lambda f, draw: _replace(f, "labels", np.zeros(_n(f) - draw(st.integers(1, _n(f))), "i8")),
    "labels 2-D": lambda f, draw: _replace(f, "labels", np.zeros((_n(f), 2), "i8")),
    "labels strings": lambda f, draw: _replace(f, "labels", np.array(["0"] * _n(f), dtype=object), dtype=STR),
    "labels float": lambda f, draw: _replace(f, "labels", np.full(_n(f), 0.5)),
    "labels outside label_names": _labels_out_of_range,
    "label_names not utf-8": lambda f, draw: _replace(f, "label_names", np.array([b"\xff\xfe", b"ok"], dtype=object),
                                                      dtype=h5py.string_dtype("ascii")),
    "label_names numbers": lambda f, draw: _replace(f, "label_names", np.arange(2)),
    "label_names repeated": lambda f, draw: _replace(f, "label_names", np.array(["dark", "dark"], dtype=object),
                                                     dtype=STR),
    "label_names fewer than labels": lambda f, draw: _replace(f, "label_names", np.array(["dark"], dtype=object),
                                                              dtype=STR),
    "paths wrong length": lambda f, draw: _replace(f, "paths", np.array(["a.png"], dtype=object), dtype=STR),
    "paths numbers": lambda f, draw: _replace(f, "paths", np.arange(_n(f))),
    "paths not utf-8": lambda f, draw: _replace(f, "paths", np.array([b"\xff"] * _n(f), dtype=object),
                                                dtype=h5py.string_dtype("ascii")),
    "aug wrong length": lambda f, draw: _replace(f, "aug", np.zeros(_n(f) + 1, "i8")),
    "aug strings": lambda f, draw: _replace(f, "aug", np.array(["0"] * _n(f), dtype=object), dtype=STR),
    "skipped 3 columns": lambda f, draw: _replace(f, "skipped", np.array([["a", "b", "c"]], dtype=object), dtype=STR),
    "skipped numbers": lambda f, draw: _replace(f, "skipped", np.zeros((1, 2))),
    "data_key elsewhere": _data_key_elsewhere,
}
# Damage a reader may survive (it describes the file) but nothing may train or score on.
UNTRAINABLE = {
    "NaN or inf rows": _nan_rows,
    "no label_names": lambda f, draw: f.__delitem__("label_names"),
    "no rows": _features_empty,
}
# Damage whose right outcome depends on which attribute it hits: only a clean end is required.
ANY_OUTCOME = {
    "attribute missing": _attr_deleted,
    "attribute of the wrong type": _attr_wrong_type,
    "labels below -1": _labels_very_negative,
}
DAMAGE = {**BROKEN, **UNTRAINABLE, **ANY_OUTCOME}


def _resume(path, recipe: Recipe):
    """What `featx extract` does first on an existing output: open it to append, record the classes."""
    writer = HDF5DatasetWriter((0, 1280), path, mode="a", recipe=recipe)
    try:
        writer.store_class_labels(["dark", "light"])
    finally:
        writer.abort()  # nothing buffered: writes nothing, releases the lock
    return writer


def _every_entry_point(kind: str, path: Path, base, workdir: Path, *, refused: bool, untrainable: bool):
    """Hand `path` to each entry point; each must end cleanly, refuse when told, and leave the file as it was."""
    before = file_digest(path), file_digest(parts_dir(path))
    recipe = base["recipe"]

    store, error = clean_call(f"{kind}: FeatureStore", FeatureStore, path)
    if store is not None:
        store.close()
    assert (error is not None) >= refused, f"FeatureStore read a damaged file: {path}"
    assert (clean_cli(f"{kind}: featx info", "info", path) is not None) >= refused
    assert (clean_cli(f"{kind}: featx train", "train", path, "-o", workdir / "models", "-q", "--no-report")
            is not None) >= (refused or untrainable)
    assert (clean_cli(f"{kind}: featx evaluate", "evaluate", base["bundle"], path) is not None) >= (
        refused or untrainable)
    _, error = clean_call(f"{kind}: extract resume", _resume, path, recipe)
    assert (error is not None) >= refused
    assert (file_digest(path), file_digest(parts_dir(path))) == before, "an entry point changed its input"


# Damage that earlier damage can make harmless or impossible: a file without rows has no label to put out of
# range, no labels to shorten, no path to garble; and labels are only out of range of class names that exist
# (a file may have none: train refuses it then).
UNDONE_BY = {"labels outside label_names": {"no rows", "no label_names"}, "label_names fewer than labels": {"no rows"},
             "labels shorter": {"no rows"}, "paths not utf-8": {"no rows"}}


@st.composite
def damage_plans(draw):
    """Up to two kinds of damage a reader may survive, then at most one that breaks the file (applied last,
    so nothing after it can undo it)."""
    survivable = draw(st.lists(st.sampled_from(sorted({**UNTRAINABLE, **ANY_OUTCOME})), max_size=2, unique=True))
    breaking = draw(st.one_of(st.none(), st.sampled_from(sorted(BROKEN))))
    survivable = [name for name in survivable if name not in UNDONE_BY.get(breaking, ())]
    plan = survivable + ([breaking] if breaking else [])
    return plan or [draw(st.sampled_from(sorted(DAMAGE)))]


@settings(max_examples=40, **SETTINGS)
@given(plan=damage_plans(), data=st.data())
def test_damaged_feature_file(base, plan, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.h5"
        shutil.copy(base["features"], path)
        with h5py.File(path, "r+") as f:
            for name in plan:
                DAMAGE[name](f, data.draw)
        _every_entry_point("damaged HDF5", path, base, Path(tmp), refused=any(name in BROKEN for name in plan),
                           untrainable=any(name in UNTRAINABLE for name in plan))


@settings(max_examples=30, **SETTINGS)
@given(blob=st.binary(max_size=4096), signed=st.booleans())
def test_random_bytes_named_h5(base, blob, signed):
    # With HDF5's signature in front, the bytes get past h5py.is_hdf5 and reach the HDF5 library itself.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.h5"
        path.write_bytes((HDF5_SIGNATURE if signed else b"") + blob)
        _every_entry_point("random bytes", path, base, Path(tmp), refused=True, untrainable=True)


@settings(max_examples=30, **SETTINGS)
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_feature_file_cut_short(base, fraction):
    content = base["features"].read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "truncated.h5"
        path.write_bytes(content[: int(len(content) * fraction)])
        _every_entry_point("truncated HDF5", path, base, Path(tmp), refused=True, untrainable=True)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_kind_of_damage_can_be_drawn(kind):
    # The damaged-file test draws plans from damage_plans(); a kind it can never draw would go untested.
    # Derandomized and without the example database, so the answer is the same on every run and host.
    plan = find(damage_plans(), lambda plan: kind in plan,
                settings=settings(max_examples=2000, derandomize=True, database=None))
    assert kind in plan


# ---------------------------------------------------------------------------------------------------
# the real `featx extract` resuming onto damaged files and damaged .parts folders


def _damaged_copy(base, tmp: Path, damage: str) -> Path:
    path = tmp / "out.h5"
    shutil.copy(base["features"], path)
    with h5py.File(path, "r+") as f:
        {"labels longer": lambda: BROKEN["labels longer"](f, lambda s: 2),
         "features strings": lambda: BROKEN["features strings"](f, None),
         "features 3-D": lambda: BROKEN["features 3-D"](f, None),
         "no features": lambda: BROKEN["no features"](f, None),
         "recipe attribute of the wrong type": lambda: f.attrs.__setitem__("image_size", "junk"),
         "attribute not utf-8": lambda: f.attrs.__setitem__("augment", np.bytes_(b"\xff\xfe")),
         "labels outside label_names": lambda: f["labels"].__setitem__(0, 99)}[damage]()
    return path


def _shard(tmp: Path, backbone="efficientnet_lite0", rows=2, image_size=32) -> Path:
    """A real shard, as a killed extraction leaves it: written by the writer, never assembled."""
    out = tmp / "shard-source.h5"
    recipe = Recipe(backbone=backbone, weights_source="none (random init, seed 0)", image_size=image_size,
                    preprocessing="rgb (x-127)/128")
    writer = HDF5DatasetWriter((rows, 1280), out, buffer_size=rows, recipe=recipe)
    writer.store_class_labels(["dark", "light"])
    writer.add(np.ones((rows, 1280), "f4"), [0] * rows, paths=[f"dark/{i:03d}.png" for i in range(rows)])
    writer.abort()
    return Path(parts_dir(out)) / "shard-000001.h5"


def _parts_case(base, tmp: Path, case: str) -> Path:
    out = tmp / "out.h5"
    parts = Path(parts_dir(out))
    if case == "parts is a file":
        parts.write_bytes(b"not a folder")
        return out
    parts.mkdir()
    if case == "garbage shard":
        (parts / "shard-000001.h5").write_bytes(os.urandom(3000))
    elif case == "truncated shard":
        content = _shard(tmp).read_bytes()
        (parts / "shard-000001.h5").write_bytes(content[: len(content) // 2])
    elif case == "shard of another recipe":
        shutil.copy(_shard(tmp, backbone="mobilenet_v2"), parts / "shard-000001.h5")
    elif case == "shard of another image size":
        shutil.copy(_shard(tmp, image_size=48), parts / "shard-000001.h5")
    elif case == "shard with more labels than rows":
        shutil.copy(_shard(tmp), parts / "shard-000001.h5")
        with h5py.File(parts / "shard-000001.h5", "r+") as f:
            _replace(f, "labels", np.zeros(5, "i8"))
    elif case == "folder named like a shard":
        (parts / "shard-000001.h5").mkdir()
    elif case == "complete file and a shard of another recipe":
        shutil.copy(base["features"], out)
        shutil.copy(_shard(tmp, backbone="mobilenet_v2"), parts / "shard-000001.h5")
    return out


@pytest.mark.parametrize("damage", ["no features", "features 3-D", "features strings", "labels longer",
                                    "labels outside label_names", "recipe attribute of the wrong type",
                                    "attribute not utf-8"])
def test_extract_refuses_to_resume_onto_a_damaged_file(base, tmp_path, damage):
    out = _damaged_copy(base, tmp_path, damage)
    before = file_digest(out)
    error = clean_cli(f"damaged HDF5: featx extract resume ({damage})", "extract", base["data"], "-o", out,
                      *EXTRACT_ARGS, must_fail=True)
    assert "--overwrite" in error
    assert file_digest(out) == before and not Path(parts_dir(out)).exists()


PARTS_CASES = ["garbage shard", "truncated shard", "shard of another recipe", "shard of another image size",
               "shard with more labels than rows", "folder named like a shard", "parts is a file",
               "complete file and a shard of another recipe"]


@pytest.mark.parametrize("case", PARTS_CASES)
def test_damaged_parts_folder(base, tmp_path, case):
    out = _parts_case(base, tmp_path, case)
    parts = Path(parts_dir(out))
    before = file_digest(out), file_digest(parts)
    kind = f".parts: {case}"
    error = clean_cli(kind + ": featx extract resume", "extract", base["data"], "-o", out, *EXTRACT_ARGS,
                      must_fail=True)
    assert "featx: error:" in error
    store, error = clean_call(kind + ": FeatureStore", FeatureStore, out)
    if store is not None:
        store.close()
    else:
        assert error is not None
    clean_call(kind + ": describe", describe, out)
    clean_cli(kind + ": featx info", "info", out)
    clean_cli(kind + ": featx train", "train", out, "-o", tmp_path / "models", "-q", "--no-report")
    assert (file_digest(out), file_digest(parts)) == before, "an entry point changed the shards or the file"


def test_stray_files_in_parts_are_left_alone_and_never_read(base, tmp_path):
    # Only featx's own temporary shards are tidied; a file someone left there is not a shard and not ours.
    out = tmp_path / "out.h5"
    parts = Path(parts_dir(out))
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    (parts / "shard-1.h5").write_bytes(b"too few digits: not a shard name")
    store, error = clean_call(".parts: stray files: FeatureStore", FeatureStore, out)
    assert store is None and "does not exist" in str(error)
    writer = HDF5DatasetWriter((0, 1280), out, mode="a")
    writer.abort()
    assert (parts / "notes.txt").read_text() == "mine" and (parts / "shard-1.h5").exists()


# ---------------------------------------------------------------------------------------------------
# the real command line: exit code and stderr of a fresh process


@pytest.mark.parametrize("command", ["info", "train"])
def test_command_line_process_on_a_truncated_file(base, tmp_path, command):
    path = tmp_path / "cut.h5"
    path.write_bytes(base["features"].read_bytes()[:5000])
    before = file_digest(path)
    HOSTILE[f"truncated HDF5: featx {command} (process)"] += 1
    args = [path] if command == "info" else [path, "-o", tmp_path / "models", "-q"]
    proc = subprocess.run([sys.executable, "-m", "featx", command, *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    line = assert_clean_exit(proc.returncode, proc.stderr, must_fail=True)
    assert str(path) in line and proc.stderr.strip().splitlines()[-1] == line
    assert file_digest(path) == before and not (tmp_path / "models").exists()

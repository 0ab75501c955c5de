"""A disk that fills up: one line that says so, nothing flushed is lost, nothing partial looks complete.

Two real ways to run out of space: a small tmpfs mounted for the test (ENOSPC; needs mount rights,
so it is skipped with the reason elsewhere), and RLIMIT_FSIZE in a child process (EFBIG; works for
any user, per file). After each failure the space comes back and the same command finishes the job.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile import EXTRACT_ARGS, HOSTILE, assert_clean_exit, run_cli

import featx
from featx import FeatureStore, load_bundle
from featx.store import describe, parts_dir
from featx.store._durable import list_shards
from featx.store._files import open_shard

REPO = str(Path(featx.__file__).resolve().parents[1])
SHARDED = ["--buffer-size", "2", "--batch-size", "2"]  # a shard every two images: a full disk meets a run mid-way


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for this test: a real filesystem that really runs out of space."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                              capture_output=True, text=True, timeout=30)
        reason = proc.stderr.strip() if proc.returncode else ""
    except (OSError, subprocess.SubprocessError) as error:
        reason = str(error)
    if reason:
        pytest.skip(f"cannot mount a small tmpfs here ({reason}); the RLIMIT_FSIZE test still runs")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def leave_free(disk: Path, free_bytes: int) -> Path:
    """Fill `disk` with one file so that only about `free_bytes` stay free; delete it to free the space."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    size = max(0, stats.f_bavail * stats.f_frsize - free_bytes)
    with open(filler, "wb") as handle:
        handle.write(b"\0" * size)
    return filler


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name or p.name.startswith(".featx-write-test")]


def assert_same_rows(path, reference):
    with FeatureStore(path) as got, FeatureStore(reference) as want:
        assert got.complete and got.paths == want.paths and got.label_names == want.label_names
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.features[:], want.features[:], atol=1e-5)


def flushed_rows_are_readable(out: Path, reference: Path) -> int:
    """Every shard on disk opens and holds the reference rows of its images; returns the rows in them."""
    with FeatureStore(reference) as want:
        expected = dict(zip(want.paths, want.features[:]))
    rows = 0
    for _, path in list_shards(parts_dir(out)):
        h5file, shard = open_shard(path)
        with h5file:
            for row_path, row in zip(shard.paths(), shard.features[:]):
                np.testing.assert_allclose(row, expected[row_path], atol=1e-5)
            rows += len(shard)
    return rows


def disk_full_line(kind: str, *args) -> str:
    HOSTILE[kind] += 1
    code, _, stderr = run_cli(*args)
    line = assert_clean_exit(code, stderr, must_fail=True)
    assert "disk full" in line and stderr.strip() == line, stderr  # one line, and nothing else said
    return line


def test_extract_onto_a_full_disk_then_resume(base, small_disk):
    out = small_disk / "features.h5"
    command = ["extract", base["data"], "-o", out, *SHARDED, *EXTRACT_ARGS]
    filler = leave_free(small_disk, 64 * 1024)  # room for a few of the 8 shards, not all
    line = disk_full_line("full disk (tmpfs): featx extract", *command)
    assert str(small_disk) in line and "rerun the same command" in line
    shards = list_shards(parts_dir(out))
    assert 0 < len(shards) < 8 and not out.exists() and no_temporary_files(small_disk)
    rows = flushed_rows_are_readable(out, base["features"])
    assert f"rows so far: {rows}" in describe(out)

    filler.unlink()
    code, printed, stderr = run_cli(*command)
    assert code == 0, stderr
    assert f"{16 - rows} new, resumed" in printed
    assert_same_rows(out, base["features"])
    assert not Path(parts_dir(out)).exists() and no_temporary_files(small_disk)


def _complete_outputs(folder: Path) -> list[str]:
    """Every file featx left in `folder`, each checked complete by its own reader; no temporary files."""
    assert no_temporary_files(folder)
    names = []
    for path in sorted(folder.iterdir()):
        if path.name == "filler":
            continue
        if path.suffix == ".png":
            assert cv2.imread(str(path)) is not None, f"{path} is not a whole PNG"
        elif path.suffix == ".skops":
            load_bundle(path)
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), f"{path} is cut short"
        elif path.suffix == ".csv":
            with open(path, newline="") as handle:
                list(csv.DictReader(handle))
        names.append(path.name)
    return names


def test_train_onto_a_full_disk(base, small_disk):
    models = small_disk / "models"
    command = ["train", base["features"], "-o", models, "-q"]
    # Free space that runs out at each of train's outputs in turn: the PNG (16 KB), the bundle (130 KB),
    # the report page and the label-issue CSV; the last run has room for all of them.
    failures = []
    for free_kib in (8, 40, 160):
        filler = leave_free(small_disk, free_kib * 1024)
        failures.append(disk_full_line(f"full disk (tmpfs): featx train, {free_kib} KiB free", *command))
        _complete_outputs(models) if models.exists() else None
        filler.unlink()
    assert len({line.split(" (")[0] for line in failures}) >= 2, f"the disk filled at one output only: {failures}"
    code, _, stderr = run_cli(*command)
    assert code == 0, stderr
    assert _complete_outputs(models) == ["base-label-issues.csv", "base-logreg-confusion.png", "base-logreg.skops",
                                         "base-report.html"]


def test_predict_onto_a_full_disk(base, small_disk):
    output = small_disk / "predictions.csv"
    command = ["predict", base["bundle"], base["data"] / "dark", "-o", output]
    filler = leave_free(small_disk, 0)
    line = disk_full_line("full disk (tmpfs): featx predict", *command)
    assert str(output) in line and not output.exists() and no_temporary_files(small_disk)
    filler.unlink()
    code, _, stderr = run_cli(*command)
    assert code == 0, stderr
    with open(output, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8


# ---------------------------------------------------------------------------------------------------
# RLIMIT_FSIZE: any user can limit the size of the files a process writes

LIMITED = """
import contextlib, io, json, resource, signal, sys
from featx.cli import main

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
results = []
for limit, argv in json.loads(sys.argv[1]):
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_file_size_limit_in_a_child_process(base, tmp_path):
    """extract (its final file), train (its bundle) and predict (its CSV) each meet a file size limit."""
    out, models, predictions = tmp_path / "features.h5", tmp_path / "models", tmp_path / "predictions.csv"
    extract = ["extract", base["data"], "-o", out, *SHARDED, *EXTRACT_ARGS]
    train = ["train", base["features"], "-o", models, "-q"]
    predict = ["predict", base["bundle"], base["data"] / "dark", "-o", predictions]
    # Shards (2 rows) fit under 40 KB, the assembled file (16 rows) does not; the PNG fits under 40 KB, the
    # bundle does not; no CSV of eight predictions fits in 200 bytes.
    steps = [[40_000, [str(a) for a in extract]], [40_000, [str(a) for a in train]],
             [200, [str(a) for a in predict]]]
    proc = subprocess.run([sys.executable, "-c", LIMITED, json.dumps(steps)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (code, stderr), kind in zip(results, ("extract", "train", "predict")):
        HOSTILE[f"file size limit (RLIMIT_FSIZE, child process): featx {kind}"] += 1
        line = assert_clean_exit(code, stderr, must_fail=True)
        assert "disk full" in line and "File too large" in line, line

    # extract: every shard was flushed before the final file failed; freed, the same command assembles them.
    assert not out.exists() and flushed_rows_are_readable(out, base["features"]) == 16
    code, printed, stderr = run_cli(*extract)
    assert code == 0 and "0 new, resumed" in printed, stderr
    assert_same_rows(out, base["features"])
    # train: the PNG written before the bundle is whole, the bundle is not there at all.
    assert _complete_outputs(models) == ["base-logreg-confusion.png"]
    assert run_cli(*train)[0] == 0 and "base-logreg.skops" in _complete_outputs(models)
    # predict: no CSV, not even a partial one under another name.
    assert not predictions.exists() and no_temporary_files(tmp_path)
    assert run_cli(*predict)[0] == 0 and predictions.exists()

"""Options that are wrong or contradict each other: one line that says what to do, exit 1, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile import EXTRACT_ARGS, HOSTILE, assert_clean_exit, run_cli, tree

import featx
from featx import HDF5DatasetWriter

REPO = str(Path(featx.__file__).resolve().parents[1])


def _other_recipe(base, path: Path) -> Path:
    """The base file as if extracted at another image size (its rows are not comparable)."""
    shutil.copy(base["features"], path)
    with h5py.File(path, "r+") as f:
        f.attrs["image_size"] = 48
    return path


def _extra_class(base, path: Path) -> Path:
    """A file of the same recipe holding a class ('medium') the base file has no rows of."""
    with h5py.File(base["features"], "r") as f:
        rows = f["features"][:6]
    writer = HDF5DatasetWriter(rows.shape, path, recipe=base["recipe"])
    writer.store_class_labels(["dark", "light", "medium"])
    writer.add(rows, [0, 1, 2, 2, 1, 0], paths=[f"x/{i}.png" for i in range(6)])
    writer.close()
    return path


# (name, arguments with {data}/{features}/{bundle}/{work} filled in, words the error must hold)
CASES = [
    ("image size below any backbone's", ["extract", "{data}", "-o", "{work}/f.h5", "--weights", "none",
                                          "--image-size", "8"], "--image-size 32 or more"),
    ("image size too small for inception_v3", ["extract", "{data}", "-o", "{work}/f.h5", "--weights", "none",
                                               "--backbone", "inception_v3", "--image-size", "40"],
     "pass a larger --image-size"),
    ("buffer size 0", ["extract", "{data}", "-o", "{work}/f.h5", *EXTRACT_ARGS, "--buffer-size", "0"],
     "--buffer-size must be at least 1"),
    ("negative augment", ["extract", "{data}", "-o", "{work}/f.h5", *EXTRACT_ARGS, "--augment", "-1"],
     "--augment must be 0 or more"),
    ("unknown backbone", ["extract", "{data}", "-o", "{work}/f.h5", "--backbone", "resnet9000"], "featx backbones"),
    ("empty dataset", ["extract", "{work}/empty", "-o", "{work}/f.h5", *EXTRACT_ARGS], "no images found"),
    ("dataset path is a file", ["extract", "{features}", "-o", "{work}/f.h5", *EXTRACT_ARGS],
     "pass a folder of class folders"),
    ("test file of another recipe", ["train", "{features}", "--test", "{other_recipe}", "-o", "{work}/models"],
     "extract both with the same recipe"),
    ("test file with classes the training file lacks", ["train", "{features}", "--test", "{extra_class}", "-o",
                                                        "{work}/models"], "medium"),
    ("unknown head", ["train", "{features}", "--heads", "logreg,forest", "-o", "{work}/models"], "choose from"),
    ("one fold", ["train", "{features}", "--folds", "1", "-o", "{work}/models"], "leave it out"),
    ("test size of 1", ["train", "{features}", "--test-size", "1", "-o", "{work}/models"], "between 0 and 1"),
    ("evaluate on features of another recipe", ["evaluate", "{bundle}", "{other_recipe}"], "model's recipe"),
    ("predict an image that is not there", ["predict", "{bundle}", "{work}/nope.jpg", "-o", "{work}/p.csv"],
     "pass existing image files"),
]


@pytest.mark.parametrize("name, arguments, words", CASES, ids=[case[0] for case in CASES])
def test_bad_arguments_are_one_line_and_write_nothing(base, tmp_path, name, arguments, words):
    work = tmp_path / "work"
    (work / "empty" / "class").mkdir(parents=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    other_recipe = _other_recipe(base, inputs / "other-recipe.h5")
    extra_class = _extra_class(base, inputs / "extra-class.h5")
    fill = dict(data=base["data"], features=base["features"], bundle=base["bundle"], work=work,
                other_recipe=other_recipe, extra_class=extra_class)
    before = tree(work), tree(inputs), tree(base["root"])
    HOSTILE[f"bad argument: {name}"] += 1
    code, _, stderr = run_cli(*[argument.format(**fill) for argument in arguments])
    line = assert_clean_exit(code, stderr, must_fail=True)
    assert words in line, line
    assert (tree(work), tree(inputs), tree(base["root"])) == before, "a refused command wrote something"


UNPRIVILEGED = """
import contextlib, io, json, os, sys
from featx.cli import main

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        return [main(argv), err.getvalue()]

commands, as_root = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if as_root:
    # Python itself lives under /root here: once this process is 'nobody' it cannot import more of it. So
    # it first imports what the commands use, as root, then gives up root for good, as a daemon does.
    import featx.runner, featx.train, featx.predict, featx.store, featx.rows  # noqa
    from featx.bundle import load_bundle
    load_bundle(commands[-1][1])  # reading a bundle imports codecs and numpy parts lazily
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
print(json.dumps([run(argv) for argv in commands]))
"""


def test_output_folder_without_write_permission(base):
    # Root writes anywhere, whatever the folder's mode: as root, the commands run as user 'nobody'.
    as_root = os.geteuid() == 0
    shared = Path(tempfile.mkdtemp(prefix="featx-permissions-"))
    try:
        os.chmod(shared, 0o755)  # mkdtemp makes it 0700: another user could not even look inside
        for item in ("data", "features", "bundle"):
            source = base[item]
            target = shared / source.name
            shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
        home = shared / "home"
        home.mkdir()
        os.chmod(home, 0o777)
        locked = shared / "locked"
        locked.mkdir()
        os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        features, bundle, data = (str(shared / base["features"].name), str(shared / base["bundle"].name),
                                  str(shared / "data"))

        commands = [["extract", data, "-o", f"{locked}/f.h5", *EXTRACT_ARGS],
                    ["extract", data, "-o", f"{locked}/new/f.h5", *EXTRACT_ARGS],
                    ["train", features, "-o", f"{locked}/models", "-q", "--no-report"],
                    ["train", features, "-o", str(locked), "-q", "--no-report"],
                    ["predict", bundle, f"{data}/dark", "-o", f"{locked}/p.csv"]]
        before = tree(shared)
        proc = subprocess.run([sys.executable, "-c", UNPRIVILEGED, json.dumps(commands), json.dumps(as_root)],
                              capture_output=True, text=True,
                              timeout=600, env=dict(os.environ, PYTHONPATH=REPO, HOME=str(home),
                                                    MPLCONFIGDIR=str(home)))
        if proc.returncode and "PermissionError" in proc.stderr and "setuid" in proc.stderr:
            pytest.skip(f"cannot give up root here: {proc.stderr.strip().splitlines()[-1]}")
        assert proc.returncode == 0, proc.stderr
        for (code, stderr), command in zip(json.loads(proc.stdout.strip().splitlines()[-1]), commands):
            HOSTILE[f"bad argument: output folder without write permission (featx {command[0]})"] += 1
            line = assert_clean_exit(code, stderr, must_fail=True)
            assert "Permission denied" in line and "choose a folder you can write to (-o)" in line, line
        unchanged = [name for name in before if not name.startswith("home/")]
        assert {name: tree(shared).get(name) for name in unchanged} == {name: before[name] for name in unchanged}
        assert not any(locked.iterdir()), "a refused command wrote something"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_file_without_rows_cannot_train(base, tmp_path):
    # An 'empty dataset' that got as far as a feature file: no class has images to train on.
    path = tmp_path / "empty.h5"
    writer = HDF5DatasetWriter((0, 1280), path, recipe=base["recipe"])
    writer.store_class_labels(["dark", "light"])
    writer.add(np.zeros((0, 1280), "f4"), np.zeros(0, np.int64))
    writer.close()
    HOSTILE["bad argument: a feature file without rows"] += 1
    code, _, stderr = run_cli("train", path, "-o", tmp_path / "models")
    assert "fewer than 2 labelled classes" in assert_clean_exit(code, stderr, must_fail=True)
    assert not (tmp_path / "models").exists()

"""The `featx` command: thin over the library, one-line errors, real files."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from featx import __version__
from featx.cli import main
from featx.store import HDF5DatasetWriter


def featx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "featx", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_version_and_help():
    proc = featx("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"featx {__version__}"
    proc = featx("--help")
    assert proc.returncode == 0
    for command in ("demo", "extract", "train", "evaluate", "predict", "info", "backbones"):
        assert command in proc.stdout


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = featx("extract", str(tmp_path / "no-such-folder"), "-q")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("featx: error: ")
    assert "no-such-folder" in proc.stderr
    not_features = tmp_path / "x.h5"
    not_features.write_text("plain text")
    proc = featx("info", str(not_features))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "featx: error:" in proc.stderr


def test_info_prints_what_was_written(tmp_path, capsys):
    out = tmp_path / "written.h5"
    rng = np.random.default_rng(0)
    attrs = dict(backbone="efficientnet_lite0", weights_id="none (random init, seed 0)", pooling="avg",
                 image_size=224)
    with HDF5DatasetWriter((13, 24), str(out), dataKey="features", bufSize=5, attrs=attrs) as w:
        w.storeClassLabels(["cat", "dog"])
        w.add(rng.normal(size=(13, 24)), [0] * 9 + [1] * 4, paths=[f"p{i}.png" for i in range(13)])
        w.skip("bad.jpg", "cannot decode image")
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in ("13", "24", "float32", "cat", "9", "dog", "4", "efficientnet_lite0", "avg", "224",
                     "bad.jpg", "cannot decode image"):
        assert expected in text, expected


def test_extract_then_info_through_the_cli(tmp_path, capsys):
    for name, value in (("dark", 30), ("bright", 220)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(3):
            img = np.full((20, 30, 3), value + i, np.uint8)
            cv2.imwrite(str(folder / f"{i}.png"), img)
    out = tmp_path / "f.h5"
    code = main(["extract", str(tmp_path / "data"), "-o", str(out), "--weights", "none", "--image-size", "32",
                 "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 rows" in printed and "images/s" in printed and "inference" in printed
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "dark" in info and "bright" in info and "6" in info


def test_backbones_lists_the_registry(capsys):
    assert main(["backbones"]) == 0
    table = capsys.readouterr().out
    for name in ("efficientnet_lite0", "efficientnet_lite2", "vgg16", "resnet50", "inception_v3",
                 "mobilenet_v2", "efficientnet_b0"):
        assert name in table


def test_train_and_evaluate_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, size=(2, 16))
    labels = np.repeat([0, 1], 20)
    rows = centres[labels] + rng.normal(0, 0.5, size=(40, 16))
    attrs = dict(backbone="efficientnet_lite0", weights_id="none (random init, seed 0)", pooling="avg",
                 image_size=64)
    features = tmp_path / "pets.h5"
    with HDF5DatasetWriter((40, 16), str(features), dataKey="features", attrs=attrs) as w:
        w.storeClassLabels(["cat", "dog"])
        w.add(rows, labels, paths=[f"img{i}.png" for i in range(40)])
    models = tmp_path / "models"
    assert main(["train", str(features), "--heads", "logreg,mlp", "-o", str(models)]) == 0
    report = capsys.readouterr().out
    assert "logreg" in report and "mlp" in report and "classification report" in report
    bundle = models / "pets-logreg.skops"
    assert bundle.exists() and (models / "pets-logreg-confusion.png").exists()
    assert main(["evaluate", str(bundle), str(features)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["train", str(features), "--heads", "no-such-head", "-o", str(models)]) == 1
    assert "no-such-head" in capsys.readouterr().err

"""The `featx` command: thin over the library, one-line errors, real files."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from featx import HDF5DatasetWriter, Recipe, __version__
from featx.backbones.runtime import resolve_runtime
from featx.choices import HEAD_NAMES
from featx.cli import main

RECIPE = Recipe(backbone="efficientnet_lite0", weights_source="none (random init, seed 0)", image_size=224,
                preprocessing="rgb (x-127)/128")


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
    with HDF5DatasetWriter((13, 24), out, buffer_size=5, recipe=RECIPE) as w:
        w.store_class_labels(["cat", "dog"])
        w.add(rng.normal(size=(13, 24)), [0] * 9 + [1] * 4, paths=[f"p{i}.png" for i in range(13)])
        w.skip("bad.jpg", "cannot decode image")
    assert main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for expected in (f"{out}: featx-features/1, complete", "rows: 13", "feature dim: 24 (float32, dataset 'features')",
                     "classes: 2", "  cat  9", "  dog  4", "backbone: efficientnet_lite0",
                     "weights: none (random init, seed 0)", "pooling: avg", "image size: 224", "resize: stretch",
                     "tta: none", "augment: 0", "skipped files: 1", "  bad.jpg: cannot decode image"):
        assert expected in lines, expected


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
    printed = capsys.readouterr().out.splitlines()
    runtime = resolve_runtime("auto")  # decided as extract decides it: LiteRT on a CPU, Keras where a GPU shows
    assert printed[:2] == [f"loaded backbone efficientnet_lite0 (weights: none; runtime: {runtime} float32)",
                           f"{out}: 6 rows (6 new)"]
    assert printed[2].startswith("6 images in ") and "images/s): decode" in printed[2] and "inference" in printed[2]
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out.splitlines()
    assert "rows: 6" in info and "  bright  3" in info and "  dark    3" in info and "image size: 32" in info


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
    features = tmp_path / "pets.h5"
    with HDF5DatasetWriter((40, 16), features, recipe=RECIPE) as w:
        w.store_class_labels(["cat", "dog"])
        w.add(rows, labels, paths=[f"img{i}.png" for i in range(40)])
    models = tmp_path / "models"
    assert main(["train", str(features), "--heads", "logreg,mlp", "-o", str(models), "-q", "--no-report"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[0].startswith("fitting 2 head(s) on 30 rows x 16 dims of ")
    assert [line.split()[0] for line in report if line.startswith(("logreg ", "mlp "))] == ["logreg", "mlp"]
    assert any(line.startswith("best head by accuracy: ") for line in report)
    bundle = models / "pets-logreg.skops"
    assert bundle.exists() and (models / "pets-logreg-confusion.png").exists()
    assert not (models / "pets-report.html").exists()  # --no-report
    assert main(["report", str(bundle), str(features), "-o", str(tmp_path / "pages")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"report: {tmp_path / 'pages' / 'pets-report.html'} (")
    assert (tmp_path / "pages" / "pets-label-issues.csv").exists()
    assert main(["evaluate", str(bundle), str(features)]) == 0
    evaluation = capsys.readouterr().out.splitlines()
    assert evaluation[0] == f"{bundle} on {features} (40 images)" and "accuracy" in evaluation[1]
    assert main(["train", str(features), "--heads", "no-such-head", "-o", str(models)]) == 1
    assert capsys.readouterr().err.strip() == ("featx: error: unknown head 'no-such-head'; choose from "
                                               f"{', '.join(HEAD_NAMES)} or all")


def test_backbones_check_through_the_cli(tmp_path, capsys, monkeypatch):
    """Real packaged weights: the sample photo's top classes are real ImageNet classes, best first."""
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["backbones", "--check", "efficientnet_lite0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "efficientnet_lite0: top-5 ImageNet classes for the sample image"
    probabilities = [float(line.split("%")[0]) for line in lines[1:]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert probabilities[0] > 20  # a confident first class, not the flat guess of random weights
    assert main(["backbones", "--check", "no_such_net"]) == 1
    assert "unknown backbone 'no_such_net'" in capsys.readouterr().err

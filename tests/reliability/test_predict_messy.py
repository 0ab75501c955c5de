"""Predict on a messy folder: every file appears in the CSV, an unreadable one with its reason and no
prediction, and the printed summary counts them."""

from __future__ import annotations

import csv
import os
import shutil

import cv2
import numpy as np
from hostile import HOSTILE, black_png, jpeg_declaring, run_cli


def test_every_file_of_a_messy_folder_is_in_the_csv(base, tmp_path):
    messy = tmp_path / "messy"
    (messy / "nested").mkdir(parents=True)
    for i, source in enumerate(sorted((base["data"] / "dark").iterdir())[:3]):
        shutil.copy(source, messy / ("nested" if i == 2 else ".") / f"good-{i}.png")
    assert cv2.imwrite(str(messy / "one-pixel.png"), np.full((1, 1, 3), 200, np.uint8))
    # Extract reads WebP, so predict does; hidden files are left out by both (".DS_Store", editor copies).
    assert cv2.imwrite(str(messy / "photo.webp"), cv2.imread(str(messy / "good-0.png")))
    shutil.copy(messy / "good-0.png", messy / ".hidden-copy.png")
    (messy / "lying-header.jpg").write_bytes(jpeg_declaring(30_000, 30_000))  # decoded at 1/8: bounded
    unreadable = {
        "empty.jpg": b"",
        "notes.png": b"shopping list, not a picture\n",
        "cut.jpg": cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()[:300],
        "poster.png": black_png(20_000, 20_000),
    }
    for name, content in unreadable.items():
        (messy / name).write_bytes(content)
    os.symlink(messy / "deleted-long-ago.png", messy / "dangling-link.png")
    (messy / "a-folder.jpg").mkdir()  # named like an image, but not a file: not an input
    expected_unreadable = {*unreadable, "dangling-link.png"}
    HOSTILE["messy folder: unreadable files handed to featx predict"] += len(expected_unreadable)

    output = tmp_path / "predictions.csv"
    code, printed, stderr = run_cli("predict", base["bundle"], messy, "-o", output)
    assert code == 0, stderr
    with open(output, newline="") as handle:
        rows = {os.path.relpath(row["path"], messy): row for row in csv.DictReader(handle)}
    assert set(rows) == {"good-0.png", "good-1.png", "nested/good-2.png", "one-pixel.png", "lying-header.jpg",
                         "photo.webp", *expected_unreadable}, "a file was dropped, or a folder taken for an image"
    for name, row in rows.items():
        if name in expected_unreadable:
            assert row["predicted"] == "" and row["error"] and row["p_dark"] == "", row
        else:
            assert row["predicted"] in ("dark", "light") and row["error"] == "", row
    assert "pixels" in rows["poster.png"]["error"] and "truncated" in rows["cut.jpg"]["error"]
    assert "file not found" in rows["dangling-link.png"]["error"]
    assert f"wrote 6 predictions to {output}; 5 file(s) could not be read" in printed

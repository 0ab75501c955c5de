"""`featx demo`: the whole pipeline on scikit-learn's handwritten digits, offline, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from featx.backbones import DEFAULT_BACKBONE
from featx.extract import extract
from featx.predict import predict
from featx.train import train

# Not bare "0".."9": integer class names would make featx treat the digits as ordered grades.
DIGIT_NAMES = [f"{d}_{w}" for d, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]
DEMO_HEADS = ("logreg", "svm", "mlp")
MARKER = ".featx-demo"


def write_digits(root, *, test_fraction=0.2, seed=0, size=32) -> tuple[int, int]:
    """Write sklearn's 1,797 digits as PNG class folders root/train/<digit>/ and root/test/<digit>/.

    Deterministic: the same files every time. Returns (train images, test images).
    """
    root = Path(root)
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, stratify=digits.target,
                                           random_state=seed)
    marker = root / MARKER
    expected = f"{len(train_idx)} {len(test_idx)} {size}"
    if marker.exists() and marker.read_text().strip() == expected:
        return len(train_idx), len(test_idx)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        for i in idx:
            folder = root / split / DIGIT_NAMES[digits.target[i]]
            folder.mkdir(parents=True, exist_ok=True)
            # 8x8 is too small to look at; upscale smoothly so the files are viewable.
            big = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(folder / f"digit-{i:04d}.png"), big)
    marker.write_text(expected + "\n")
    return len(train_idx), len(test_idx)


def run_demo(workdir=".", *, backbone=None, weights="auto", image_size=None,
             heads=DEMO_HEADS, progress=True, log=print):
    """Dataset -> features -> heads -> bundle -> predictions, saying at each step where outputs go.

    backbone: None for featx's default backbone.
    """
    backbone = backbone or DEFAULT_BACKBONE
    work = Path(workdir)
    t0 = time.perf_counter()
    data = work / "datasets" / "digits"
    log(f"[1/4] writing scikit-learn's handwritten digits as PNG class folders under {data}/")
    n_train, n_test = write_digits(data)
    log(f"      {n_train} training images in {data / 'train'}/, {n_test} held out in {data / 'test'}/")

    features = work / "features" / "digits.h5"
    log(f"[2/4] extracting features with {backbone} into {features.parent}/ "
         "(rerunning reuses what is already there)")
    result = extract(data, features, backbone=backbone, weights=weights, image_size=image_size,
                     progress=progress, log=log)
    log(str(result))
    train_file = next(f.output for f in result.files if f.split == "train")
    test_file = next(f.output for f in result.files if f.split == "test")

    models = work / "models"
    log(f"[3/4] training heads {', '.join(heads)} on {train_file}, testing on {test_file}")
    trained = train(train_file, test=test_file, heads=list(heads), output=models, progress=progress, log=log)
    log(str(trained))
    bundle = trained.bundles[trained.best]
    log(f"      best head: {trained.best}; bundle saved as {bundle}")

    csv_path = work / "predictions.csv"
    log(f"[4/4] predicting the held-out images with {bundle} into {csv_path}")
    predicted = predict(bundle, [data / "test"], output=csv_path, log=log)
    total = len(predicted.rows)
    correct = sum(Path(row["path"]).parent.name == row["predicted"] for row in predicted.rows)
    accuracy = correct / total if total else 0.0
    log(f"      predictions: {predicted.output} ({total} images); accuracy against the folder names: "
         f"{accuracy:.3f} ({correct}/{total})")
    log(f"done in {time.perf_counter() - t0:.0f} s. Next: `featx info {train_file}`, "
         f"`featx predict {bundle} YOUR_IMAGES`.")
    return accuracy

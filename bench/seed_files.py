"""Do the seeds' own feature files train? Each head on knee grades rewritten through the camelCase API.

The seeds' extract_features.py writes `HDF5DatasetWriter((N, D), path, dataKey="features", bufSize=...)`,
`storeClassLabels`, `add(X, y)`, `close()`: no paths, no recipe. This copies the original-image rows of
../shared/data/features/knee_kl_full-{train,val}.h5 into such files (in a temporary folder), then for
each head runs `featx.train(train, test=val)` and predicts the val rows from the saved bundle by features.
It prints one line per head: trained or the one-line refusal, accuracy and QWK on val, seconds.

    python bench/seed_files.py [--heads logreg,svm,ordinal,mlp,sgd]

Run it against an older checkout with PYTHONPATH=that/checkout to compare (it uses the public API only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "features"


def seed_style_copy(source: Path, target: Path) -> tuple[np.ndarray, np.ndarray]:
    """The original-image rows of `source`, written as the seeds' script writes them; (X, y)."""
    from featx import FeatureStore, HDF5DatasetWriter

    with FeatureStore(source) as store:
        keep = np.flatnonzero(np.asarray(store.aug) == 0) if store.aug is not None else np.arange(len(store))
        X = np.asarray(store.features[:], dtype=np.float32)[keep]
        y = np.asarray(store.labels)[keep]
        names = [str(name) for name in store.label_names]
    writer = HDF5DatasetWriter((len(y), X.shape[1]), str(target), dataKey="features", bufSize=1000)
    writer.storeClassLabels(names)
    writer.add(X, y)
    writer.close()
    return X, y


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="logreg,svm,ordinal,mlp,sgd")
    args = parser.parse_args()
    train_file, val_file = DATA / "knee_kl_full-train.h5", DATA / "knee_kl_full-val.h5"
    if not (train_file.exists() and val_file.exists()):
        print(f"skipped: {train_file} and {val_file} are not here")
        return 0
    import featx
    from featx import load_bundle

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        X, _ = seed_style_copy(train_file, folder / "seed-train.h5")
        X_val, y_val = seed_style_copy(val_file, folder / "seed-val.h5")
        print(f"seed-style files: {len(X)} train and {len(X_val)} val rows x {X.shape[1]} dims, no paths, no recipe")
        trained = 0
        for head in args.heads.split(","):
            started = time.perf_counter()
            try:
                result = featx.train(folder / "seed-train.h5", test=folder / "seed-val.h5", heads=head,
                                     output=folder / "models", report=False, progress=False, bootstrap=0,
                                     log=lambda message: None)
                predicted = load_bundle(result.bundles[head]).head.predict(X_val)  # predict by features
            except Exception as error:  # the old code's refusals and crashes are the measurement
                print(f"{head:8s} does not train: {type(error).__name__}: {str(error).splitlines()[0]}")
                continue
            trained += 1
            row = result.rows[0]
            print(f"{head:8s} trains: val accuracy {np.mean(predicted == y_val):.3f} (leaderboard "
                  f"{row['accuracy']:.3f}), QWK {row.get('qwk', float('nan')):.3f}, "
                  f"{time.perf_counter() - started:.1f} s")
        print(f"{trained} of {len(args.heads.split(','))} heads train and predict by features")
    return 0


if __name__ == "__main__":
    sys.exit(main())

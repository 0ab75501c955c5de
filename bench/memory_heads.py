"""Peak memory of the out-of-core `sgd` head on a file larger than an in-memory head could hold.

    python bench/memory_heads.py [--rows 200000] [--dim 1280] [--slice 20000]

Generates a float16 feature file (200,000 x 1,280 = 512 MB; 1 GB as the float32 matrix an
in-memory head reads) with HDF5DatasetWriter into a temporary folder under /tmp, then measures
each fit in a fresh process (peak RSS from the kernel's accounting of that child alone):

- sgd: `featx train FILE --heads sgd` once train offers it, else the streaming entry point it
  would call (`SGDHead().fit_store` on 75% of the rows, `predict_proba_store` on the other 25%);
  the line says which ran. Goal: under 1 GB.
- logreg: the in-memory logistic regression (`featx.train.train(..., heads=["logreg"])`) on a
  20,000-row slice of the same file, which is about what fits its memory budget.

The rows are Gaussian clusters around 5 class means: the accuracies show both heads learn, not
how they compare on real features (see README for those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 5
GOAL_MB = 1024


def generate(path: Path, rows: int, dim: int, *, seed=0, block=10_000) -> None:
    import numpy as np

    from featx.store import HDF5DatasetWriter

    rng = np.random.default_rng(seed)
    # Class means 0.08 apart per dimension under unit noise: separable, but not at a glance.
    means = (rng.normal(size=(CLASSES, dim)) * 0.08).astype(np.float32)
    with HDF5DatasetWriter((rows, dim), path, buffer_size=block, dtype="float16", mode="w") as writer:
        writer.store_class_labels([f"class{c}" for c in range(CLASSES)])
        for start in range(0, rows, block):
            n = min(block, rows - start)
            labels = rng.integers(0, CLASSES, n)
            features = means[labels] + rng.normal(size=(n, dim)).astype(np.float32)
            writer.add(features, labels, paths=[f"img{i:07d}.png" for i in range(start, start + n)])


def copy_slice(source: Path, target: Path, rows: int) -> None:
    from featx.store import FeatureStore, HDF5DatasetWriter

    with FeatureStore(source) as store, \
            HDF5DatasetWriter(store.features.shape, target, buffer_size=rows, dtype="float16", mode="w") as writer:
        writer.store_class_labels(store.label_names)
        writer.add(store.features[:rows], store.labels[:rows], paths=store.paths[:rows])


SGD_STREAMING = """
import json, sys, time
import numpy as np
from featx.heads.streaming import SGDHead
from featx.store import FeatureStore

started = time.perf_counter()
with FeatureStore(sys.argv[1]) as store:
    test = np.random.default_rng(0).random(len(store)) < 0.25
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    head = SGDHead().fit_store(store, train_rows)
    predicted = head.classes_[head.predict_proba_store(store, test_rows).argmax(1)]
    accuracy = float((predicted == store.labels[test_rows]).mean())
print(json.dumps(dict(accuracy=accuracy, train_rows=len(train_rows), test_rows=len(test_rows), C=head.best_params_["C"],
                      epochs=head.best_epoch_, seconds=time.perf_counter() - started)))
"""

TRAIN = """
import json, sys, time
from featx.train import train

started = time.perf_counter()
result = train(sys.argv[1], heads=[sys.argv[2]], output=sys.argv[3], report=False, progress=False,
               log=lambda *a: None)
row = result.rows[0]
print(json.dumps(dict(accuracy=row["accuracy"], seconds=time.perf_counter() - started)))
"""


def measured(args: list[str]) -> tuple[dict, float]:
    """Run a child python; (its JSON line, its peak RSS in MB)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args[:2])}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # Linux: KiB


def train_offers_sgd() -> bool:
    from featx.heads import HEAD_NAMES

    return "sgd" in HEAD_NAMES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--slice", type=int, default=20_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="featx-memory-heads-", dir="/tmp") as tmp:
        big, small = Path(tmp) / "big.h5", Path(tmp) / "slice.h5"
        started = time.perf_counter()
        generate(big, args.rows, args.dim)
        copy_slice(big, small, args.slice)
        size_mb, float32_mb = big.stat().st_size / 2**20, args.rows * args.dim * 4 / 2**20
        print(f"generated {big.name}: {args.rows:,} x {args.dim:,} float16 ({size_mb:.0f} MB on disk; "
              f"{float32_mb:.0f} MB as float32 in memory) in {time.perf_counter() - started:.0f} s", flush=True)

        if train_offers_sgd():
            what = "featx train --heads sgd"
            sgd, sgd_mb = measured(["-c", TRAIN, str(big), "sgd", str(Path(tmp) / "models")])
        else:
            what = "SGDHead.fit_store + predict_proba_store (train does not offer sgd yet)"
            sgd, sgd_mb = measured(["-c", SGD_STREAMING, str(big)])
        print(f"sgd    on {args.rows:>7,} rows: peak RSS {sgd_mb:6.0f} MB, accuracy {sgd['accuracy']:.3f}, "
              f"{sgd['seconds']:.0f} s  [{what}]", flush=True)
        logreg, logreg_mb = measured(["-c", TRAIN, str(small), "logreg", str(Path(tmp) / "models")])
        print(f"logreg on {args.slice:>7,} rows: peak RSS {logreg_mb:6.0f} MB, accuracy {logreg['accuracy']:.3f}, "
              f"{logreg['seconds']:.0f} s  [featx.train.train, in memory]")
    verdict = "under" if sgd_mb < GOAL_MB else "OVER"
    print(f"sgd peak RSS {sgd_mb:.0f} MB: {verdict} the {GOAL_MB} MB goal, for {args.rows / args.slice:.0f}x the rows")
    return 0 if sgd_mb < GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())

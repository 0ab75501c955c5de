"""Audit benchmark: planted near-duplicates in real photos, and audit time and memory at 10k / 100k / 1M rows.

    python bench/audit.py photos   # hymenoptera + re-saved copies in val: recall / precision across splits
    python bench/audit.py scale    # 10k and 100k rows (time), 1M float16 rows streamed (time, peak RSS)
    python bench/audit.py index    # faiss (exact, IVF) against hnswlib on the same reduced rows

`photos` copies ../shared/data/hymenoptera into /tmp, plants a resized (50-80%), cropped (up to 10%),
re-compressed (JPEG quality 60-90) copy of some train images in val, runs `featx extract` with the
default recipe and `featx audit`, and scores the pairs found across splits against the planted ones.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WORK = Path(tempfile.gettempdir()) / "featx-bench-audit"


def _load():
    os.system("uptime")


def plant_copies(src: Path, dst: Path, n: int, seed: int = 0) -> set[tuple[str, str]]:
    """Copy the dataset, then a re-saved copy of `n` train images into val: the planted (train, val) pairs."""
    import cv2

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    train = sorted(p for p in (dst / "train").rglob("*.jpg"))
    planted = set()
    for path in rng.permutation(train)[:n]:
        image = cv2.imread(str(path))
        if image is None:
            continue
        h, w = image.shape[:2]
        # Up to 10% of each side's length cut away in total, split at random between its two ends.
        cut_h, cut_w = int(h * rng.uniform(0, 0.1)), int(w * rng.uniform(0, 0.1))
        top, left = rng.integers(0, cut_h + 1), rng.integers(0, cut_w + 1)
        image = image[top:h - (cut_h - top), left:w - (cut_w - left)]
        scale = rng.uniform(0.5, 0.8)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rel = path.relative_to(dst / "train")
        out = dst / "val" / rel.parent / f"copy_{rel.stem}.jpg"
        cv2.imwrite(str(out), image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 91))])
        planted.add((str(rel), str(out.relative_to(dst / "val"))))
    return planted


def photos(args) -> None:
    src = DATA / "hymenoptera"
    if not src.is_dir():
        print(f"skipped: {src} is absent")
        return
    root = WORK / "hymenoptera"
    planted = plant_copies(src, root, args.copies)
    features = WORK / "features"
    _featx("extract", str(root), "-o", str(features / "hym.h5"), "-q")
    files = [str(features / "hym-train.h5"), str(features / "hym-val.h5")]
    out = WORK / "audit"
    for threshold in args.thresholds:
        _featx("audit", *files, "-o", str(out), "--threshold", str(threshold))
        found = set()
        with open(out / "duplicates.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["split_a"] != row["split_b"]:
                    pair = {row["split_a"]: row["path_a"], row["split_b"]: row["path_b"]}
                    found.add((pair.get("train"), pair.get("val")))
        hits = len(found & planted)
        recall = hits / len(planted)
        precision = hits / len(found) if found else 1.0
        print(f"threshold {threshold}: {len(planted)} planted, {len(found)} found across splits, "
              f"recall {recall:.3f}, precision {precision:.3f}")
        for pair in sorted(found - planted):
            print("  not planted:", pair)
        for pair in sorted(planted - found)[:10]:
            print("  missed:", pair)


def write_rows(path: Path, n: int, planted: int, seed: int = 0) -> None:
    """A seeds-style float16 file of `n` rows: mixtures of two real knee rows (or random rows when the
    shared features are absent), the last `planted` rows noisy copies of earlier ones."""
    import h5py

    rng = np.random.default_rng(seed)
    real = DATA / "features" / "knee_kl_full-train.h5"
    if real.exists():
        with h5py.File(real, "r") as f:
            base = np.asarray(f["features"][:], dtype=np.float32)
    else:
        base = np.abs(rng.normal(size=(5000, 1280))).astype(np.float32)
    spread = base.std(axis=0)
    step = 20_000
    with h5py.File(path, "w") as f:
        features = f.create_dataset("features", (n, base.shape[1]), dtype="float16", chunks=(256, base.shape[1]))
        labels = f.create_dataset("labels", (n,), dtype="int64")
        for start in range(0, n, step):
            m = min(step, n - start)
            w = rng.uniform(0, 1, size=(m, 1)).astype(np.float32)
            rows = w * base[rng.integers(0, len(base), m)] + (1 - w) * base[rng.integers(0, len(base), m)]
            rows += 0.3 * spread * rng.normal(size=rows.shape).astype(np.float32)
            features[start:start + m] = rows
            labels[start:start + m] = rng.integers(0, 5, m)
        # A planted copy: its source row plus a tenth of the rows' own spread as noise.
        sources = rng.choice(n - planted, planted, replace=False)
        copies = features[np.sort(sources)].astype(np.float32)
        copies += 0.1 * spread * rng.normal(size=copies.shape).astype(np.float32)
        features[n - planted:] = copies
        f.create_dataset("planted", data=np.stack([np.sort(sources), np.arange(n - planted, n)], axis=1))


def scale(args) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    for n in args.rows:
        path = WORK / f"rows-{n}.h5"
        if not path.exists():
            started = time.perf_counter()
            write_rows(path, n, planted=100)
            print(f"wrote {path} in {time.perf_counter() - started:.0f} s")
        _load()
        # A child process per size, so its peak resident memory is the audit's own.
        code = ("import sys,time,resource,csv,h5py; from featx.audit import audit; t=time.perf_counter(); "
                f"r=audit([{str(path)!r}], {str(WORK / f'audit-{n}')!r}, page=False); "
                "s=time.perf_counter()-t; p={tuple(x) for x in h5py.File(sys.argv[1])['planted'][:]}; "
                "f={(int(x['row_a']),int(x['row_b'])) for x in csv.DictReader(open(r.files['duplicates']))}; "
                "g=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20; "
                "print(f'{r.rows} rows: {s:.1f} s, peak RSS {g:.2f} GiB, planted found {len(p & f)}/{len(p)}, '"
                "f'other pairs {len(f - p)}')")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def _featx(*argv) -> None:
    subprocess.run([sys.executable, "-m", "featx", *argv], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("photos")
    s.add_argument("--copies", type=int, default=120)
    s.add_argument("--thresholds", type=float, nargs="+", default=[0.8])
    s.set_defaults(func=photos)
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.set_defaults(func=scale)
    args = p.parse_args()
    _load()
    args.func(args)


if __name__ == "__main__":
    main()

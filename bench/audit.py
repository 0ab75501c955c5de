"""Audit benchmark: planted near-duplicates in real photos, and audit time and memory at 10k / 100k / 1M rows.

    python bench/audit.py photos   # hymenoptera + re-saved copies in val: recall / precision across splits
    python bench/audit.py photos --dataset knee_kl --thresholds 0.6 0.7 0.8   # the same on knee X-rays
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
    train = sorted(p for p in (dst / "train").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
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
    src = DATA / args.dataset
    if not src.is_dir():
        print(f"skipped: {src} is absent")
        return
    root = WORK / args.dataset
    planted = plant_copies(src, root, args.copies)
    features = WORK / "features"
    _featx("extract", str(root), "-o", str(features / f"{args.dataset}.h5"), "-q")
    files = [str(features / f"{args.dataset}-train.h5"), str(features / f"{args.dataset}-val.h5")]
    out = WORK / f"audit-{args.dataset}"
    for threshold in args.thresholds:
        _featx("audit", *files, "-o", str(out), "--threshold", str(threshold), "--no-page")
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
    """A seeds-style float16 file of `n` rows: the real knee features' mean plus a Gaussian over their 256
    principal axes (random rows when the shared features are absent); the last `planted` rows are copies of
    earlier ones plus noise (cosine about 0.8). The real features' spread is so concentrated on a few axes
    that such rows often come out alike; every axis gets the same spread here, so the pairs found are the planted.
    """
    import h5py

    rng = np.random.default_rng(seed)
    real = DATA / "features" / "knee_kl_full-train.h5"
    if real.exists():
        with h5py.File(real, "r") as f:
            base = np.asarray(f["features"][:], dtype=np.float32)
    else:
        base = np.abs(rng.normal(size=(5000, 1280))).astype(np.float32)
    mean, spread = base.mean(axis=0), base.std(axis=0)
    _, values, axes = np.linalg.svd(base - mean, full_matrices=False)
    axes = axes[:256].astype(np.float32)
    scale = np.float32(np.sqrt(np.mean(values[:256] ** 2) / len(base)))
    step = 20_000
    with h5py.File(path, "w") as f:
        features = f.create_dataset("features", (n, base.shape[1]), dtype="float16", chunks=(256, base.shape[1]))
        labels = f.create_dataset("labels", (n,), dtype="int64")
        for start in range(0, n, step):
            m = min(step, n - start)
            rows = mean + (scale * rng.standard_normal((m, len(axes)), dtype=np.float32)) @ axes
            rows += 0.1 * spread * rng.standard_normal(rows.shape, dtype=np.float32)
            features[start:start + m] = rows.astype(np.float16)
            labels[start:start + m] = rng.integers(0, 5, m)
        sources = np.sort(rng.choice(n - planted, planted, replace=False))
        copies = features[sources].astype(np.float32)
        # Half each feature's own spread over the rows: standardised cosine about 0.8 to the source.
        spread = features[:step].astype(np.float32).std(axis=0)
        copies += 0.5 * spread * rng.standard_normal(copies.shape, dtype=np.float32)
        features[n - planted:] = copies.astype(np.float16)
        f.create_dataset("planted", data=np.stack([sources, np.arange(n - planted, n)], axis=1))


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
                "u=resource.getrusage(resource.RUSAGE_SELF); g=u.ru_maxrss/2**20; c=u.ru_utime+u.ru_stime; "
                "print(f'{r.rows} rows: {s:.1f} s ({c:.1f} s of CPU), peak RSS {g:.2f} GiB, '"
                "f'planted found {len(p & f)}/{len(p)}, other pairs {len(f - p)}')")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def index(args) -> None:
    """faiss exact, faiss IVF and hnswlib on the audit's reduced rows: build + search time, recall of close pairs."""
    import h5py
    import hnswlib

    from featx import audit_index

    path = WORK / f"rows-{args.rows}.h5"
    if not path.exists():
        write_rows(path, args.rows, planted=100)
    with h5py.File(path, "r") as f:
        x = np.asarray(f["features"][:], dtype=np.float32)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6)
    sample = audit_index.unit_rows(x[:: max(1, len(x) // 50_000)])
    axes = audit_index.principal_axes(sample, 128)
    z = audit_index.unit_rows(audit_index.unit_rows(x) @ axes.T)
    del x
    k = 11
    _load()
    timings, found = {}, {}
    started = time.perf_counter()
    found["faiss exact"] = audit_index.search(audit_index.flat_index(z), z, k)
    timings["faiss exact"] = time.perf_counter() - started
    started = time.perf_counter()
    ivf = audit_index.ivf_index(sample @ axes.T, len(z))
    ivf.add(z)
    found["faiss IVF"] = audit_index.search(ivf, z, k)
    timings["faiss IVF"] = time.perf_counter() - started
    started = time.perf_counter()
    graph = hnswlib.Index(space="ip", dim=z.shape[1])
    graph.init_index(max_elements=len(z), ef_construction=100, M=16)
    graph.set_num_threads(os.cpu_count() or 1)
    graph.add_items(z)
    graph.set_ef(64)
    ids, distances = graph.knn_query(z, k=k)
    found["hnswlib"] = (1 - distances, ids.astype(np.int64))
    timings["hnswlib"] = time.perf_counter() - started
    truth = _close_pairs(*found["faiss exact"])
    for name, (sims, ids) in found.items():
        got = _close_pairs(sims, ids)
        print(f"{name:12s} {len(z)} rows: {timings[name]:6.1f} s (build + search), "
              f"recall of the {len(truth)} pairs with cosine >= 0.5: {len(truth & got) / max(1, len(truth)):.4f}")


def _close_pairs(sims, ids, floor=0.5) -> set:
    """(row, neighbour) pairs with cosine >= floor (the candidates the audit keeps at its default), self left out."""
    rows, columns = np.nonzero(sims >= floor)
    return {(i, j) for i, j in zip(rows.tolist(), ids[rows, columns].tolist()) if i != j}


def _featx(*argv) -> None:
    subprocess.run([sys.executable, "-m", "featx", *argv], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("photos")
    s.add_argument("--dataset", default="hymenoptera", choices=["hymenoptera", "knee_kl"])
    s.add_argument("--copies", type=int, default=120)
    s.add_argument("--thresholds", type=float, nargs="+", default=[0.8])
    s.set_defaults(func=photos)
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.set_defaults(func=scale)
    s = sub.add_parser("index")
    s.add_argument("--rows", type=int, default=100_000)
    s.set_defaults(func=index)
    args = p.parse_args()
    _load()
    args.func(args)


if __name__ == "__main__":
    main()

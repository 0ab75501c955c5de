"""Local engine vs Ray engine on the same real images: images/s, and Ray's overhead on one machine.

    python bench/ray_engine.py [FOLDER] [--repeats 2] [--workers N]

Default FOLDER: ../shared/data/knee_kl/train (973 PNGs). Each repeat runs both engines on the same
folder (into a temporary folder, --overwrite), in alternating order so a change in the machine's
load hits both; the load average is printed beside every run. Ray is started once, outside the
timed runs (its start-up is timed on its own); each Ray run still pays for starting its backbone
actor (a process that imports TensorFlow and builds the model), as every `featx extract --engine ray`
does once per split.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "knee_kl" / "train"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, help="Ray backbone actors (default: one per node)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"skipping: {folder} not found (the real images live in ../shared/data)")
        return 0

    from featx.engines.ray import connect
    from featx.extract import extract

    started = time.perf_counter()
    connect(log=print)
    print(f"ray start-up: {time.perf_counter() - started:.1f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            engines = ("local", "ray") if repeat % 2 == 0 else ("ray", "local")
            for engine in engines:
                before = load()
                options = dict(engine=engine, workers=args.workers) if engine == "ray" else {}
                result = extract(folder, Path(tmp) / f"{engine}.h5", overwrite=True, progress=False,
                                 batch_size=args.batch_size, log=lambda *a: None, **options)
                rows.append((engine, result.images_processed, result.seconds, result.images_per_s, before, load()))
                print(f"{engine:5s} {result.timing_line()}  (load before/after: {before} / {load()})", flush=True)
    print()
    print("engine  images  seconds  images/s  load 1/5/15 min before")
    for engine, images, seconds, rate, before, _ in rows:
        print(f"{engine:6s}  {images:6d}  {seconds:7.1f}  {rate:8.1f}  {before}")
    for engine in ("local", "ray"):
        rates = [rate for e, _, _, rate, _, _ in rows if e == engine]
        print(f"{engine}: best {max(rates):.1f} images/s, mean {sum(rates) / len(rates):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

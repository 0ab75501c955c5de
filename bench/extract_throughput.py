"""Throughput of `featx extract`: decoding overlapped with inference vs. the same work done in turn.

Both runs use the same images, backbone, batch size and writer in one process, so the ratio is
meaningful on any machine. Real images: ../shared/data/hymenoptera (skipped with a message if absent).

    python bench/extract_throughput.py [DATASET] [--backbone efficientnet_lite0] [--workers N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "hymenoptera"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", default=str(DEFAULT_DATA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode threads for the overlapped run")
    args = p.parse_args(argv)
    data = Path(args.dataset)
    if not data.is_dir():
        print(f"skipped: {data} not found (the shared development data lives at ../shared/data)")
        return 0

    from featx import extract
    from featx.backbones import get_backbone

    # Build (and trace) once so neither run pays the start-up cost.
    get_backbone(args.backbone, weights=args.weights)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers in (("in turn (workers=0)", 0), ("overlapped", args.workers)):
            t0 = time.perf_counter()
            r = extract(data, Path(tmp) / f"{workers}.h5", backbone=args.backbone, weights=args.weights,
                        batch_size=args.batch_size, workers=workers, progress=False, echo=lambda *a: None)
            wall = time.perf_counter() - t0
            results[label] = (r, wall)
            print(f"{label:22s} {r.images_processed} images, {r.rows} rows, {r.images_processed / wall:6.1f} "
                  f"images/s end to end; {r.timing_line()}")
    base = results["in turn (workers=0)"]
    over = results["overlapped"]
    print(f"speed-up of overlapped decoding over decoding in turn: "
          f"{(over[0].images_processed / over[1]) / (base[0].images_processed / base[1]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

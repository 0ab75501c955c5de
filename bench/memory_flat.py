"""Peak memory of `featx extract` for N and 4N images: it should not grow with the dataset.

Synthetic 256x256 JPEGs are written to a temporary folder; each extraction runs in its own process
and reports its peak resident set size (ru_maxrss). Prints the ratio peak(4N) / peak(N). A first,
unmeasured run converts the backbone for LiteRT (the default runtime on CPUs), so both measured runs
start from the cached conversion: a run that converts imports TensorFlow and peaks ~9x higher.

    python bench/memory_flat.py [--n 200] [--image-size 96]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys
from featx import extract
r = extract(sys.argv[1], sys.argv[2], weights="none", image_size=int(sys.argv[3]), buffer_size=64,
            progress=False, log=lambda *a: None)
print(r.rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_images(folder: Path, n: int):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / ("a", "b")[i % 2] / f"{i:06d}.jpg"), img)


def peak_kib(folder: Path, out: Path, image_size: int) -> tuple[int, int]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), str(image_size)],
                          capture_output=True, text=True, check=True)
    rows, peak = proc.stdout.split()[-2:]
    return int(rows), int(peak)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--image-size", type=int, default=96)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, large = tmp / "small", tmp / "large"
        write_images(small, args.n)
        write_images(large, 4 * args.n)
        peak_kib(small, tmp / "warm.h5", args.image_size)  # converts once; the cache serves the runs below
        rows_s, peak_s = peak_kib(small, tmp / "s.h5", args.image_size)
        rows_l, peak_l = peak_kib(large, tmp / "l.h5", args.image_size)
    print(f"{rows_s:6d} images: peak RSS {peak_s / 1024:7.1f} MiB")
    print(f"{rows_l:6d} images: peak RSS {peak_l / 1024:7.1f} MiB")
    print(f"peak memory ratio for 4x the images: {peak_l / peak_s:.2f}x (1.00x = flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of stage 1 on real photos: the seeds' naive loop, `featx extract` (Keras), LiteRT, and LiteRT's limit.

One process, the same images, options interleaved over repeats so that load from other processes
spreads over all of them; median and min of the repeats are printed with the load average.

  (1) naive: the seeds' loop, decoding in turn, then Keras `model.predict` per batch of 32
  (2) featx extract, Keras runtime: today's `featx.extract` (decode threads ahead of inference, HDF5 out)
  (3) LiteRT end to end: the issue-11 prototype pipeline (bench/litert_feeding.py), features written to HDF5:
      decode threads ahead (one per core), one interpreter using every core, one image per call (the
      split that measured fastest; --litert-feeding workers tries one 1-thread interpreter per worker)
  (4) LiteRT compute only: the same interpreter on pre-decoded, preprocessed tensors
  (5) featx extract with its default runtime (auto: LiteRT on a CPU-only machine)
  (6) featx extract --precision fp16 (only on CPUs with fp16 arithmetic; reduced precision, never the default)
  ceiling: what float32 could reach if both cores did nothing but featx's own per-image work, summed in one
      thread (read + decode + resize + preprocess as the runner does them, then a 1-thread interpreter):
      cores / CPU ms per image. No feeding, however clever, passes it without changing the pixels or the
      arithmetic.

Goals (issue 11): (3) and (5) >= 4x (1) and >= 0.6x (4). Real images: ../shared/data/hymenoptera (skipped
with a message if absent).

    python bench/extract_throughput.py [DATASET] [--repeats 3] [--in-turn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "hymenoptera"
sys.path.insert(0, str(HERE))

import litert_feeding as feeding  # noqa: E402 - the prototype next to this script


def naive_loop(backbone, files, batch_size=32) -> int:
    """The seeds' loop: read and resize each image in turn, then one Keras predict per batch."""
    import cv2

    size, done = backbone.input_size, 0
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            image = cv2.imread(str(path))
            if image is None:
                continue
            batch.append(cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (size, size),
                                    interpolation=cv2.INTER_AREA))
        if batch:
            done += len(backbone.model.predict(backbone.preprocess(np.stack(batch)), verbose=0))
    return done


def single_thread_costs(files, single) -> tuple[float, float]:
    """CPU ms per image, in this thread alone: featx's decode (read, decode, resize) + preprocess, and a
    1-thread interpreter on the result. The ceiling of any feeding is cores / their sum."""
    import time

    from featx import runner

    size, tensors = single.input_size, []
    cpu = time.process_time()
    for path in files:
        arrays, _, _ = runner.decode(runner.Item(path=str(path), file=path, label=0), [size], augment=0, tta=None,
                                     crop=False, seed=0, reduce=True)
        if arrays is not None:
            tensors.append(single.preprocess(arrays[size]))
    decoding = time.process_time() - cpu
    cpu = time.process_time()
    for tensor in tensors:
        single(tensor)
    inference = time.process_time() - cpu
    return 1e3 * decoding / len(tensors), 1e3 * inference / len(tensors)


def featx_extract(data, out, backbone_name, weights, workers=None, **runtime) -> int:
    from featx import extract

    result = extract(data, out, backbone=backbone_name, weights=weights, workers=workers, overwrite=True,
                     progress=False, log=lambda *a: None, **runtime)
    return result.images_processed



def litert_extract(runtime, files, out, *, pool, batch, ahead=False) -> int:
    """The prototype LiteRT pipeline end to end, its features written to HDF5 like extract's."""
    import h5py

    rows: list = []
    keeping = _Keeping(runtime, rows)
    if ahead:
        done = feeding.decode_ahead(keeping, files, pool=pool, batch=batch)
    else:
        done = feeding.per_worker(keeping, files, pool=pool, batch=batch)
    with h5py.File(out, "w") as file:
        file.create_dataset("features", data=np.concatenate(rows))
    return done


class _Keeping:
    """A runtime that remembers every row it returns (calls may come from several threads)."""

    def __init__(self, runtime, rows: list):
        self._runtime, self._rows = runtime, rows
        self.input_size, self.n_jobs, self.preprocess = runtime.input_size, runtime.n_jobs, runtime.preprocess

    def __call__(self, batch):
        rows = self._runtime(batch)
        self._rows.append(rows)  # list.append is atomic under the GIL
        return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", default=str(DEFAULT_DATA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--litert-batch", type=int, default=1, help="images per interpreter call in (3) and (4)")
    p.add_argument("--litert-feeding", choices=("ahead", "workers"), default="ahead",
                   help="(3): decode ahead + one interpreter on all cores, or each worker decoding + its own")
    p.add_argument("--in-turn", action="store_true", help="also time featx extract with workers=0")
    args = p.parse_args(argv)
    data = Path(args.dataset)
    if not data.is_dir():
        print(f"skipped: {data} not found (the shared development data lives at ../shared/data)")
        return 0
    if args.backbone != feeding.BACKBONE or args.weights != "auto":
        print("the LiteRT prototype runs efficientnet_lite0 with its packaged weights only")
        return 2

    from featx.backbones import get_backbone

    keras = {"runtime": "keras"}
    cores = os.cpu_count() or 1
    files, _, _ = feeding.list_files(data)
    print(f"{len(files)} images in {data}, {cores} cores, {feeding.load_average()}")
    backbone = get_backbone(args.backbone, weights=args.weights, **keras)  # built once: no option pays start-up
    ahead = args.litert_feeding == "ahead"
    runtime = feeding.litert(cores if ahead else 1)
    decoded, _ = feeding.decode_all(files, runtime.input_size)
    tensors = runtime.preprocess(decoded)
    pool = ThreadPoolExecutor(cores)  # decode threads (ahead) or workers, alive across repeats like the runner's
    inference = ThreadPoolExecutor(1 if ahead else cores)  # where (4)'s interpreters run
    what = (f"{cores} decode threads ahead + 1 interpreter x {cores} threads" if ahead
            else f"{cores} workers each decoding + 1-thread interpreter")
    with tempfile.TemporaryDirectory() as tmp:
        options = {
            "(1) naive loop, Keras predict": lambda: naive_loop(backbone, files),
            "(2) featx extract, Keras runtime": lambda: featx_extract(data, Path(tmp) / "keras.h5", args.backbone,
                                                                      args.weights, **keras),
            f"(3) LiteRT end to end, {what}, batch {args.litert_batch}": lambda: litert_extract(
                runtime, files, Path(tmp) / "litert.h5", pool=pool, batch=args.litert_batch, ahead=ahead),
            f"(4) LiteRT compute only, {'1 interpreter' if ahead else f'{cores} interpreters'} x "
            f"{runtime.n_jobs} thread(s), batch {args.litert_batch}": lambda: feeding.compute_only(
                runtime, tensors, pool=inference, batch=args.litert_batch),
        }
        options["(5) featx extract, default runtime (auto)"] = lambda: featx_extract(
            data, Path(tmp) / "auto.h5", args.backbone, args.weights)
        from featx.backbones.runtime import fp16_native

        if fp16_native():
            options["(6) featx extract --precision fp16 (reduced precision)"] = lambda: featx_extract(
                data, Path(tmp) / "fp16.h5", args.backbone, args.weights, precision="fp16")
        if args.in_turn:
            options["    featx extract, Keras runtime, workers=0"] = lambda: featx_extract(
                data, Path(tmp) / "turn.h5", args.backbone, args.weights, workers=0)
        feeding.warm(runtime, inference, args.litert_batch)
        if not ahead:
            feeding.warm(runtime, pool, args.litert_batch)
        results = {label: [] for label in options}
        single = feeding.litert(1)
        single(np.zeros((1, single.input_size, single.input_size, 3), np.float32))
        costs = []
        for repeat in range(args.repeats):
            for label, run in options.items():
                results[label].append(feeding.timed(run))
            costs.append(single_thread_costs(files, single))
            print(f"repeat {repeat + 1}/{args.repeats} done, {feeding.load_average()}", flush=True)
    feeding.report(results)
    runs = {label[:3]: values for label, values in results.items()}

    def ratio(a, b):  # the median of ratios paired within each repeat
        return statistics.median(x / y for (x, _), (y, _) in zip(runs[a], runs[b]))

    print(f"paired ratios: (2)/(1) {ratio('(2)', '(1)'):.2f}x   (3)/(1) {ratio('(3)', '(1)'):.2f}x (goal >= 4)   "
          f"(3)/(4) {ratio('(3)', '(4)'):.2f} (goal >= 0.6)   (3)/(2) {ratio('(3)', '(2)'):.2f}x")
    print(f"featx extract default: (5)/(1) {ratio('(5)', '(1)'):.2f}x (goal >= 4)   "
          f"(5)/(4) {ratio('(5)', '(4)'):.2f} (goal >= 0.6)")
    if "(6)" in runs:
        print(f"featx extract --precision fp16: (6)/(1) {ratio('(6)', '(1)'):.2f}x   "
              f"(6)/(5) {ratio('(6)', '(5)'):.2f}x")
    decoding = statistics.median(d for d, _ in costs)
    inference = statistics.median(i for _, i in costs)
    ceiling = [cores * 1e3 / (d + i) for d, i in costs]
    print(f"ceiling, float32: one thread spends {decoding:.2f} CPU ms per image reading, decoding, resizing and "
          f"preprocessing, and {inference:.2f} in a 1-thread interpreter; "
          f"{cores} cores / {decoding + inference:.2f} ms = "
          f"{statistics.median(ceiling):.1f} images/s = "
          f"{statistics.median(c / n for c, (n, _) in zip(ceiling, runs['(1)'])):.2f}x (1), paired")
    return 0


if __name__ == "__main__":
    sys.exit(main())

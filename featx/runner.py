"""Stage 1: images -> backbone -> feature file, with decoding overlapped with inference.

The runner is a loop over fixed-size batches of decoded images. Decoding (OpenCV, which releases the
GIL) runs ahead in a thread pool with a bounded number of images in flight, so memory does not grow
with the dataset; inference runs in the main thread on batches of one fixed shape, so the model is
traced once. Every part is timed (decode, inference, write, waiting) so the bottleneck is visible.
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featx import images
from featx.cores import usable_cores
from featx.errors import FeatxError
from featx.store import FeatureStore, HDF5DatasetWriter, parts_dir

logger = logging.getLogger(__name__)



@dataclass
class FileSummary:
    """What one extraction wrote into one feature file."""

    output: Path
    backbone: str
    split: str | None
    rows: int  # rows in the file now
    rows_new: int  # rows added by this run
    images: int  # images in the dataset (split)
    skipped: list = field(default_factory=list)  # (path, reason), all recorded in the file
    resumed: bool = False


@dataclass
class ExtractResult:
    """Summary of one `extract` call: one FileSummary per (split, backbone)."""

    files: list
    seconds: float
    images_processed: int  # images decoded and run through the backbone(s) by this run
    timings: dict  # seconds: decode (summed over workers), inference, write, wait

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def rows_new(self) -> int:
        return sum(f.rows_new for f in self.files)

    @property
    def skipped(self) -> int:
        return sum(len(f.skipped) for f in self.files)

    @property
    def images_per_s(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0

    def timing_line(self) -> str:
        t = self.timings
        if t.get("engine") == "ray":
            return (
                f"{self.images_processed} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) on Ray, "
                f"{t['actors']} backbone actor(s): decode {t['decode']:.1f} s (summed over Ray tasks), "
                f"inference {t['inference']:.1f} s (summed over actors), write {t['write']:.1f} s, "
                f"waiting for Ray {t['wait']:.1f} s ({t['first_batch']:.1f} s of it until the first batch: "
                "actors starting)"
            )
        workers = t.get("workers", 1)
        where = f"summed over {workers} threads" if workers else "in the main thread"
        return (
            f"{self.images_processed} images in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s): "
            f"decode {t['decode']:.1f} s ({where}), "
            f"inference {t['inference']:.1f} s, write {t['write']:.1f} s, "
            f"waiting for decode {t['wait']:.1f} s"
        )

    def __str__(self) -> str:
        lines = []
        for f in self.files:
            what = f"{f.output}: {f.rows} rows ({f.rows_new} new"
            what += ", resumed)" if f.resumed else ")"
            what += f", {len(f.skipped)} skipped" if f.skipped else ""
            lines.append(what)
            for path, reason in f.skipped[:10]:
                lines.append(f"  skipped {path}: {reason}")
            if len(f.skipped) > 10:
                lines.append(f"  ... and {len(f.skipped) - 10} more (featx info {f.output})")
        lines.append(self.timing_line())
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# decoding: one image -> the arrays every backbone needs


@dataclass
class Item:
    path: str  # relative to the dataset root: the key in the feature file
    file: Path  # where to read it
    label: int


def _image_rng(seed: int, path: str) -> np.random.Generator:
    # Seeded per image (not per run position) so a resumed run augments each image exactly as an
    # uninterrupted run would.
    return np.random.default_rng([seed, zlib.crc32(path.encode("utf-8"))])


def decode(item: Item, sizes, *, augment: int, tta: str | None, crop: bool, seed: int, reduce: bool = False):
    """Decode one image into {size: uint8 array (copies, s, s, 3)}; copies = 1 + augment (x2 with TTA).

    reduce: let a large JPEG decode at a reduced scale, never below the largest of `sizes` (Recipe.decode).
    """
    t0 = time.perf_counter()
    image, reason = images.try_load_image(item.file, reduce_to=max(sizes) if reduce else None)
    if image is None:
        return None, reason, time.perf_counter() - t0
    try:
        variants = [image]
        if augment:
            rng = _image_rng(seed, item.path)
            variants += [images.augment(image, rng) for _ in range(augment)]
        if tta == "flip":
            variants += [images.tta_flip(v) for v in variants]
        arrays = {s: np.stack([images.resize(v, s, crop=crop) for v in variants]) for s in sizes}
    except Exception as exc:  # a pathological image (e.g. 1x1 pixels) must not stop the run
        return None, f"cannot transform image: {exc}", time.perf_counter() - t0
    return arrays, None, time.perf_counter() - t0


def decoded_stream(items, sizes, *, workers, prefetch, **options):
    """Yield (item, arrays, reason, decode_seconds) in order, decoding up to `prefetch` images ahead."""
    if workers <= 0:
        for item in items:
            yield (item, *decode(item, sizes, **options))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featx-decode") as pool:
        pending = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append((item, pool.submit(decode, item, sizes, **options)))
                if len(pending) >= prefetch:
                    head, fut = pending.popleft()
                    yield (head, *fut.result())
            while pending:
                head, fut = pending.popleft()
                yield (head, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()


# ----------------------------------------------------------------------------------------------
# inference


def _run_backbone(backbone, batch_uint8: np.ndarray, batch_size: int) -> np.ndarray:
    """Features for any number of images, at most `batch_size` per call.

    A last, smaller batch is run as it is: the model is traced for any batch size, so padding
    it would only spend inference on zeros. LiteRT runs one image per call: XNNPACK measured 1.35x
    faster so on CPUs than on batches of 32 (bench/litert_feeding.py), features unchanged.
    """
    step = 1 if getattr(backbone, "runtime", "keras") == "litert" else batch_size
    out = [np.asarray(backbone(backbone.preprocess(batch_uint8[start:start + step])), dtype=np.float32)
           for start in range(0, len(batch_uint8), step)]
    return np.concatenate(out) if out else np.zeros((0, backbone.feature_dim), np.float32)


def features_for_group(backbone, arrays_list, *, tta, batch_size):
    """Features (rows, D) for a group of decoded images; TTA copies are averaged into their originals."""
    size = backbone.input_size
    stacked = np.concatenate([a[size] for a in arrays_list])
    feats = _run_backbone(backbone, stacked, batch_size)
    per_image = [len(a[size]) for a in arrays_list]
    rows = []
    start = 0
    for k in per_image:
        f = feats[start : start + k]
        start += k
        if tta == "flip":
            half = k // 2
            f = (f[:half] + f[half:]) / 2.0
        rows.append(f)
    return rows


class Timer:
    def __init__(self):
        self.t = {"decode": 0.0, "inference": 0.0, "write": 0.0, "wait": 0.0}

    def add(self, key, seconds):
        self.t[key] += seconds


@dataclass(frozen=True)
class Feeding:
    """How images are decoded and fed to the backbones."""

    batch_size: int = 32
    workers: int = 1  # decoding threads; 0 decodes in the main thread
    augment: int = 0  # augmented copies per image
    tta: str | None = None
    crop: bool = False
    seed: int = 0
    decode: str = "full"  # or "reduced" (Recipe.decode)

    @property
    def prefetch(self) -> int:
        """Images decoded ahead of inference: enough to keep inference busy, bounded for memory."""
        return max(2 * self.batch_size, 4 * max(self.workers, 1))


def stream_features(items, backbones, needs, feeding: Feeding, timer: Timer, progress=None):
    """Yield ([(item, arrays or None, reason or None)], {backbone_index: {path: rows}}) batch by batch.

    needs[b] is the set of item paths backbone b still has to process (resume), or None for all.
    """
    sizes = sorted({b.input_size for b in backbones})
    stream = decoded_stream(items, sizes, workers=feeding.workers, prefetch=feeding.prefetch,
                             augment=feeding.augment, tta=feeding.tta, crop=feeding.crop, seed=feeding.seed,
                             reduce=feeding.decode == "reduced")
    while True:
        group = []
        t0 = time.perf_counter()
        for entry in stream:
            group.append(entry)
            if len(group) >= feeding.batch_size:
                break
        timer.add("wait", time.perf_counter() - t0)
        if not group:
            return
        for _, _, _, dt in group:
            timer.add("decode", dt)
        decoded = [(item, arrays, reason) for item, arrays, reason, _ in group]
        results = {}
        t0 = time.perf_counter()
        for b_index, backbone in enumerate(backbones):
            want = [(item, arrays) for item, arrays, _ in decoded
                    if arrays is not None and (needs[b_index] is None or item.path in needs[b_index])]
            rows = features_for_group(backbone, [a for _, a in want], tta=feeding.tta,
                                       batch_size=feeding.batch_size) if want else []
            results[b_index] = dict(zip((item.path for item, _ in want), rows))
        timer.add("inference", time.perf_counter() - t0)
        if progress is not None:
            progress.update(len(group))
        yield decoded, results


# ----------------------------------------------------------------------------------------------
# public API


def features_for_files(files, backbones, *, tta=None, crop=False, decode="full", batch_size=32, workers=None):
    """Decode and extract a list of image files in memory (what `featx predict` runs).

    backbones: one backbone, or several whose features are put side by side (each image decoded once).
    Returns (features (n, D) float32, kept paths, [(path, reason)] skipped).
    """
    backbones = list(backbones) if isinstance(backbones, (list, tuple)) else [backbones]
    items = [Item(path=str(f), file=Path(f), label=-1) for f in files]
    feeding = Feeding(batch_size=batch_size, workers=decode_workers(workers), tta=tta, crop=crop, decode=decode)
    feats, kept, skipped = [], [], []
    for decoded, results in stream_features(items, backbones, [None] * len(backbones), feeding, Timer()):
        for item, arrays, reason in decoded:
            if arrays is None:
                skipped.append((item.path, reason))
            else:
                feats.append(np.hstack([results[b][item.path] for b in range(len(backbones))]))
                kept.append(item.path)
    if feats:
        return np.concatenate(feats).astype(np.float32), kept, skipped
    return np.zeros((0, sum(b.feature_dim for b in backbones)), np.float32), kept, skipped


def decode_workers(workers):
    if workers is None:
        return max(1, min(4, usable_cores()))
    return int(workers)


class Extraction:
    """One `extract` call: the backbones, where each (split, backbone) goes, and what was written."""

    def __init__(self, models, outputs, options, *, log):
        """options: an `ExtractOptions` (its feeding, writing and engine)."""
        self.models = models
        self.outputs = outputs
        self.options = options
        self.feeding = options.feeding
        self.writing = options.writing
        self.log = log
        self.timer = Timer()
        self.summaries: list[FileSummary] = []

    def split(self, ds, split, *, augment: int) -> int:
        """Extract one split into one file per backbone; returns the images processed."""
        feeding = replace(self.feeding, augment=augment)
        writers = []
        try:
            for model in self.models:
                writers.append(self._open_writer(model, ds, split, feeding))
            needs = [{p for p in ds.paths if p not in w.done_paths} for w in writers]
            todo = set().union(*needs)
            items = [Item(path=p, file=Path(ds.root) / p, label=int(label))
                     for p, label in zip(ds.paths, ds.labels) if p in todo]
            if len(items) < len(ds):
                what = f"{split} split" if split else "dataset"
                self.log(f"resuming {what}: {len(ds) - len(items)} of {len(ds)} images already done")
            rows_before = [w.rows_written for w in writers]
            skips = self._run(items, writers, needs, feeding, desc=f"extract {split or ds.root.name}")
            t0 = time.perf_counter()
            for model, writer, before in zip(self.models, writers, rows_before):
                self._finish(writer, self.outputs[(split, model.name)], ds, split, model, before, items, skips)
            writers = []
            self.timer.add("write", time.perf_counter() - t0)
            return len(items)
        except BaseException as error:
            for writer in writers:
                try:
                    writer.abort()
                except Exception as abort_error:  # keep the original error; abort already flushed what it could
                    # A full disk refuses this flush too: the original error already says so, in one line.
                    if isinstance(error, FeatxError):
                        logger.debug("could not save the last buffered rows: %s", abort_error)
                    else:
                        logger.warning("could not save the last buffered rows: %s", abort_error)
            raise

    def _open_writer(self, model, ds, split, feeding: Feeding) -> HDF5DatasetWriter:
        out = self.outputs[(split, model.name)]
        exists = out.exists() or Path(parts_dir(out)).exists()
        recipe = model.recipe(resize="crop" if feeding.crop else "stretch", tta=feeding.tta or "",
                              decode=feeding.decode, augment=feeding.augment, seed=feeding.seed)
        writer = HDF5DatasetWriter(
            (len(ds), model.feature_dim), out, buffer_size=self.writing.buffer_size, dtype=self.writing.dtype,
            recipe=recipe, mode="w" if self.writing.overwrite else ("a" if exists else "w-"),
            attrs={"dataset_root": str(Path(ds.root).resolve()), "split": split or "", **self.writing.group_attrs()},
        )
        try:
            writer.store_class_labels(list(ds.label_names))
        except BaseException:
            writer.abort()
            raise
        return writer

    def _run(self, items, writers, needs, feeding: Feeding, desc: str) -> list[tuple[str, str]]:
        """Decode, infer and buffer every item; returns the (path, reason) of those skipped."""
        bar = tqdm(total=len(items), unit="img", desc=desc, disable=not self.writing.progress or not items,
                   dynamic_ncols=True)
        skips = []
        try:
            for decoded, results in stream_features(items, self.models, needs, feeding, self.timer, bar):
                t0 = time.perf_counter()
                skips += [(item.path, reason) for item, arrays, reason in decoded if arrays is None]
                for b, writer in enumerate(writers):
                    write_group(writer, decoded, results[b], needs[b])
                self.timer.add("write", time.perf_counter() - t0)
        finally:
            bar.close()
        return skips

    def _finish(self, writer, out: Path, ds, split, model, rows_before: int, items, skips) -> None:
        writer.flush()
        if writer.rows_written == 0:
            writer.abort()
            _discard(out)
            first = f"; first problem: {skips[0][0]}: {skips[0][1]}" if skips else ""
            raise FeatxError(f"no image in {ds.root} could be decoded ({len(items)} tried){first}")
        if not items and not Path(parts_dir(out)).exists():
            writer.abort()  # already complete: nothing to assemble, leave the file untouched
        else:
            writer.close(complete=True)
        with FeatureStore(out) as written:
            rows, skipped = len(written), list(written.skipped)
        self.summaries.append(FileSummary(output=out, backbone=model.name, split=split, rows=rows,
                                          rows_new=rows - rows_before, images=len(ds), skipped=skipped,
                                          resumed=rows_before > 0))


def write_group(writer, decoded, rows_by_path, need):
    feats, labels, paths, augs = [], [], [], []
    for item, arrays, reason in decoded:
        if item.path not in need:
            continue
        if arrays is None:
            writer.skip(item.path, reason)
            continue
        f = rows_by_path[item.path]
        feats.append(f)
        labels += [item.label] * len(f)
        paths += [item.path] * len(f)
        augs += list(range(len(f)))
    if feats:
        writer.add(np.concatenate(feats), np.asarray(labels, dtype=np.int64), paths=paths,
                   aug=augs if any(augs) else None)


def _discard(out: Path):
    for p in (out, Path(parts_dir(out))):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()

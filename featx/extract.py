"""Stage 1's entry: which images, which backbones, which output files, and which engine runs them.

`extract` lists the dataset (class folders, or train/val/test split folders with one shared class
list), builds the backbones, names one output per (split, backbone), and hands the work to an
engine: the local runner (decoding threads ahead of inference) or Ray Data across a cluster. It is
the only part that knows which engine runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from featx import images
from featx.atomic import writable_folder
from featx.backbones import DEFAULT_BACKBONE
from featx.errors import FeatxError
from featx.extract_options import ExtractOptions
from featx.runner import Extraction, ExtractResult
from featx.store import subjects_of

__all__ = ["DEFAULT_FEATURES_DIR", "ExtractOptions", "extract", "extract_with"]

DEFAULT_FEATURES_DIR = "features"


def _dataset_name(root: Path) -> str:
    return root.resolve().name or "dataset"


def _output_paths(root: Path, output, splits, backbone_names):
    """{(split, backbone): Path}. Default features/<name>[-<split>][-<backbone> when several].h5."""
    if output is None:
        base = Path(DEFAULT_FEATURES_DIR) / f"{_dataset_name(root)}.h5"
    else:
        base = Path(output)
        if base.suffix.lower() not in (".h5", ".hdf5"):
            base = base.with_suffix(base.suffix + ".h5") if base.suffix else base.with_suffix(".h5")
    out = {}
    for split in splits:
        for name in backbone_names:
            stem = base.stem
            if split is not None:
                stem += f"-{split}"
            if len(backbone_names) > 1:
                stem += f"-{name}"
            out[(split, name)] = base.with_name(stem + base.suffix)
    return out


def _list_splits(split_roots, seed) -> dict:
    """List every split once and give them one shared, ordered class list (a class may be absent from a split)."""
    listed = {split: images.list_dataset(path, seed=seed) for split, path in split_roots.items()}
    names = images.sort_class_names(set().union(*(ds.label_names for ds in listed.values())))
    shared = {}
    for split, ds in listed.items():
        to_shared = np.array([names.index(n) for n in ds.label_names] + [-1], dtype=np.int64)
        # index -1 (unlabeled) maps to the appended -1
        shared[split] = replace(ds, labels=to_shared[ds.labels], label_names=list(names))
    return shared


def extract(dataset, output=None, *, backbone=DEFAULT_BACKBONE, weights="auto", pooling="avg",
            image_size=None, layer=None, batch_size=32, buffer_size=1000, dtype="float32", augment=0,
            tta=None, crop=False, decode="reduced", seed=0, workers=None, runtime="auto", precision="float32",
            engine="local", address=None, gpus_per_worker=0, overwrite=False, progress=True, group=None,
            group_unmatched="refuse", log: Callable[[str], object] = print) -> ExtractResult:
    """Extract features of every image under `dataset` into HDF5 feature files; resumable.

    backbone: a name or a list / comma-separated names (each image is decoded once for all of them).
    weights: "auto" (ImageNet, found offline), "none" (seeded random) or a weights file, such as the
    .weights.h5 `featx finetune` writes; its sha256 goes into the recipe.
    A dataset with train/val/test folders gives one file per split with one shared class list.
    Rerunning continues an interrupted extraction; a run whose recipe differs from the existing
    file's (any key, e.g. --crop or --augment) is refused unless `overwrite`.
    runtime: "auto" (LiteRT on a CPU-only machine, Keras/TensorFlow when a GPU is visible), "keras" or
    "litert"; float32 LiteRT gives Keras' features, so files made with either resume and mix freely.
    decode: "reduced" lets JPEGs at least twice the input size on both sides decode at 1/2, 1/4 or 1/8 scale in
    libjpeg (several times faster on camera photos, never below the input size); "full" decodes every pixel.
    precision: "float32", or "fp16" (LiteRT, CPUs with fp16 arithmetic; recorded in the recipe).
    engine: "local" (decoding threads, `workers` of them) or "ray" (Ray Data: `workers` backbone actors with
    `gpus_per_worker` GPUs each, on the cluster at `address` or RAY_ADDRESS, else on a local Ray instance).
    group: a regex whose first capture group on each relative path names the image's subject (a patient's
    two eyes or knees), recorded in the file so splits keep a subject together; group_unmatched "refuse" (paths
    it misses stop the run, with examples) or "own" (each such image is its own subject).
    The keywords fill one `ExtractOptions`; `extract_with` takes that object directly.
    """
    options = ExtractOptions.from_keywords(
        backbone=backbone, weights=weights, pooling=pooling, image_size=image_size, layer=layer,
        batch_size=batch_size, buffer_size=buffer_size, dtype=dtype, augment=augment, tta=tta, crop=crop,
        decode=decode, seed=seed, workers=workers, runtime=runtime, precision=precision, engine=engine,
        address=address, gpus_per_worker=gpus_per_worker, overwrite=overwrite, progress=progress, group=group,
        group_unmatched=group_unmatched)
    return extract_with(dataset, output, options, log=log)


def extract_with(dataset, output, options: ExtractOptions, *, log: Callable[[str], object] = print) -> ExtractResult:
    """`extract` with its options already grouped and checked (what the CLI calls)."""
    root = Path(dataset)
    if not root.is_dir():
        what = "is a file, not a folder of images" if root.exists() else "not found"
        raise FeatxError(f"dataset folder {root} {what}; pass a folder of class folders")
    extraction = Extraction
    if options.engine.name == "ray":
        from featx.engines import ray as ray_engine  # only here: featx runs without Ray installed

        ray_engine.connect(options.engine.address, log=log)  # a wrong --address fails now, before any backbone loads
        extraction = ray_engine.RayExtraction

    seed = options.feeding.seed
    split_roots = images.find_splits(root)
    splits = _list_splits(split_roots, seed) if split_roots else {None: images.list_dataset(root, seed=seed)}
    if options.writing.group:  # before any backbone loads: a regex that misses paths stops the run now
        subjects_of([path for ds in splits.values() for path in ds.paths], options.writing.group,
                    options.writing.group_unmatched)
    outputs = _output_paths(root, output, list(splits), options.backbones.names)
    for folder in sorted({out.parent for out in outputs.values()}):
        # Before loading any backbone; nothing is created yet, in case a later check fails.
        writable_folder(folder, "-o", create=False)
    run = extraction(options.backbones.build(log), outputs, options, log=log)
    t_start = time.perf_counter()
    augment = options.augment
    if augment and split_roots:
        log(f"augmenting the train split only ({augment} copies per image): "
            "validation and test images are scored as they are")
    processed = 0
    for split, ds in splits.items():
        # Augmented copies only help a head learn; stage 2 scores original images only.
        processed += run.split(ds, split, augment=augment if split in (None, "train") else 0)
    return ExtractResult(files=run.summaries, seconds=time.perf_counter() - t_start,
                         images_processed=processed, timings=dict(run.timer.t, workers=options.feeding.workers))

"""`featx finetune`: cache the frozen bottom's maps once, fit a linear probe, fine-tune the top, write outputs.

The maps at the cut are a feature file like any other (featx.extract with pooling "flatten",
float32 or float16), so they are crash-safe, resumable and reused by every later run at the same cut.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import backbones, images
from featx.atomic import writable_folder
from featx.errors import FeatxError
from featx.finetune.distributed import run_training
from featx.finetune.options import DEFAULTS, VAL_SIZE, FinetuneOptions
from featx.finetune.outputs import Outputs, affine_map, linear_head, scored_rows, write_outputs
from featx.finetune.top import MapRows, TopConfig, TopNetwork, TopResult, train_top
from featx.rows import class_order, grouped_train_test_split, mapped_labels, row_groups, store_paths, store_subjects
from featx.store import subjects_of

__all__ = ["DEFAULTS", "VAL_SIZE", "FinetuneOptions", "FinetuneResult", "finetune", "finetune_with"]

# A hold-out keeps one in five images of each class for validation, and the probe's 3-fold search
# needs 3 training images of each class: below 5 images per class there is no honest hold-out.
MIN_IMAGES_PER_CLASS = 5


@dataclass
class FinetuneResult:
    """What `finetune` did: the leaderboard rows (val, and test), the history, and the files written."""

    rows: list[dict]
    test_rows: list[dict]
    history: list[dict]
    best_epoch: int
    weights_file: Path
    bundles: dict[str, Path]
    report: str
    label_names: list[str] = field(default_factory=list)
    graded: bool = False
    interrupted: bool = False
    paths: dict[str, list[str]] = field(default_factory=dict)  # {split: image paths}: what trained, what scored

    def __str__(self) -> str:
        return self.report


def finetune(dataset, *, log: Callable[[str], object] = print, **options) -> FinetuneResult:
    """Linear probe, then fine-tune the top of a backbone on the class folders of `dataset`.

    options: the fields of FinetuneOptions (backbone, train_from, epochs, lr, group, features, output, ...).
    Splits: train/ and val/ folders (test/ is scored too), else a seeded, stratified hold-out of
    `val_size` that keeps each subject (`group`) on one side. train_from: the cut layer (default per
    backbone; "input" fine-tunes everything from images). The frozen bottom's maps go to
    `features`/<name>-<backbone>-maps-<cut>[-<split>].h5 once; outputs go to `output`: <name>-finetuned.weights.h5
    and one bundle per head. A rerun resumes from the last epoch's checkpoint; changed options are
    refused unless `overwrite`. engine: "local" (this process; MirroredStrategy over several GPUs) or
    "ray" (Ray Train `workers` on the cluster at `address`), featx.finetune.distributed.run_training.
    """
    return finetune_with(dataset, FinetuneOptions(**options), log=log)


def finetune_with(dataset, options: FinetuneOptions, *, log: Callable[[str], object] = print) -> FinetuneResult:
    """`finetune` with its options in one object (what the CLI calls)."""
    o = options.checked()
    root = Path(dataset)
    if not root.is_dir():
        raise FeatxError(f"dataset folder {root} {'is a file' if root.exists() else 'not found'}; "
                         "pass a folder of class folders (or train/ and val/ split folders)")
    if o.backbone is None:
        o = dataclasses.replace(o, backbone=backbones.DEFAULT_BACKBONE)
    cut = backbones.default_cut(o.backbone) if o.train_from is None else backbones.check_cut(o.backbone, o.train_from)
    name = root.resolve().name or "dataset"
    split_roots = images.find_splits(root)
    _check_splits(root, split_roots, o)
    output = writable_folder(o.output, "-o")
    writable_folder(o.features, "--features")
    started = time.perf_counter()

    size = int(o.image_size) if o.image_size else backbones.backbone_info(o.backbone)["input_size"]
    net_config = dict(backbone=o.backbone, weights=str(o.weights), image_size=size, cut=cut, seed=int(o.seed),
                      **o.training())
    # Named by backbone too: cut names recur across backbones ("input" in all, block5c_add in every Lite).
    maps = _cache_maps(root, Path(o.features) / f"{name}-{o.backbone}-maps-{cut}.h5", split_roots, o,
                       image_size=size, cut=cut, log=log)
    data = _labelled_splits(maps, o)
    config = TopConfig(n_classes=len(data.class_names), graded=data.graded,
                       class_weight=_class_weights(data.train, o.class_weight, len(data.class_names)), **net_config)
    net = TopNetwork(config)
    data = data.with_shape(net.map_shape)

    log(f"linear probe on the frozen features of {len(data.train)} training images "
        f"({len(data.class_names)} {'graded ' if data.graded else ''}classes)")
    frozen = {split: net.predict(rows, config.batch_size, pooled=True) for split, rows in data.scored().items()}
    probe = _fit_head("logreg", frozen["train"], data, o)
    frozen_heads = {"logreg": probe}
    if data.graded:
        frozen_heads["ordinal"] = _fit_head("ordinal", frozen["train"], data, o)

    checkpoint = Path(output) / f"{name}-finetune.checkpoint.npz"
    if o.overwrite:
        checkpoint.unlink(missing_ok=True)
    log(f"fine-tuning {o.backbone} from {cut} ({'every layer' if cut == 'input' else 'the layers above it'}): "
        f"{config.epochs} epoch(s) at most, lr {config.lr:g}, batch {config.batch_size}")
    head = affine_map(probe.best_estimator_, frozen["train"].shape[1], config.n_classes)
    result: TopResult = run_training(train_top, config, data.train, data.val, head=head, checkpoint=checkpoint,
                                     log=log, engine=o.engine, address=o.address, workers=o.workers,
                                     local_kwargs={"network": net, "progress": o.progress})
    net.model.set_weights(result.weights)

    tuned = {split: net.predict(rows, config.batch_size, pooled=True) for split, rows in data.scored().items()}
    tuned_heads = {"logreg": linear_head(*net.head_weights())}
    if data.graded:
        tuned_heads["ordinal"] = _fit_head("ordinal", tuned["train"], data, o)
    # As featx train records it: predict names the subjects of new images with it.
    group = {"group": data.group, "group_unmatched": data.group_unmatched} if data.group else {}
    outputs = Outputs(name=name, folder=Path(output), class_names=data.class_names, graded=data.graded,
                      maps_recipe=data.recipe, bootstrap=o.bootstrap, seed=o.seed,
                      extra={"dataset": str(root), "cut": cut, "best_epoch": result.best_epoch, **o.training(),
                             **group})
    rows = scored_rows(outputs, frozen_heads, tuned_heads, frozen, tuned, data.labels(), "val")
    test_rows = scored_rows(outputs, frozen_heads, tuned_heads, frozen, tuned, data.labels(), "test") \
        if data.test is not None else []
    weights_file, bundles = write_outputs(outputs, net, tuned_heads, rows)
    report = outputs.report(rows, test_rows, result, weights_file, bundles, time.perf_counter() - started)
    if result.interrupted:
        report += "\ninterrupted: outputs hold the best epoch so far; rerun the same command to continue"
    return FinetuneResult(rows=rows, test_rows=test_rows, history=result.history, best_epoch=result.best_epoch,
                          weights_file=weights_file, bundles=bundles, report=report, label_names=data.class_names,
                          graded=data.graded, interrupted=result.interrupted, paths=data.paths())


def _check_splits(root: Path, split_roots: dict, options: FinetuneOptions) -> None:
    """Split folders need a val/ split; class folders need enough images per class for a hold-out."""
    if split_roots:
        if "train" not in split_roots or "val" not in split_roots:
            have = ", ".join(f"{split}/" for split in split_roots)
            raise FeatxError(f"{root} has split folders {have} but fine-tuning needs train/ and val/ (or valid/): "
                             "add the missing one, or give one folder of class folders for a hold-out")
        return
    listed = images.list_dataset(root)
    if options.group:  # before any backbone loads: a regex that misses paths stops the run now
        subjects_of(listed.paths, options.group, options.group_unmatched)
    if not listed.labeled:
        raise FeatxError(f"{root} has images outside class folders; put each image in a folder named after its class")
    counts = np.bincount(listed.labels, minlength=len(listed.label_names))
    fewest = int(np.argmin(counts))
    if counts[fewest] < MIN_IMAGES_PER_CLASS:
        raise FeatxError(
            f"{root} has only {counts[fewest]} image(s) of class {listed.label_names[fewest]!r}: a validation "
            f"hold-out needs at least {MIN_IMAGES_PER_CLASS} per class; add images, or give train/ and val/ folders"
        )


def _cache_maps(root, maps_file: Path, split_roots, o: FinetuneOptions, *, image_size: int, cut: str,
                log) -> dict[str, Path]:
    """The frozen bottom's maps of every split, extracted once (and resumed); {split: file}."""
    from featx.extract import extract

    options = dict(backbone=o.backbone, weights=o.weights, pooling="flatten", layer=cut, image_size=image_size,
                   dtype=o.maps_dtype, seed=o.seed, progress=o.progress, log=log, group=o.group,
                   group_unmatched=o.group_unmatched,
                   # LiteRT's gain is in the convolutions; an input "cut" has none to run.
                   runtime="keras" if cut == "input" else o.runtime)
    cached = _cached_maps(root, maps_file, split_roots, options)
    if cached is not None:
        log(f"reusing the cached maps {', '.join(str(path) for path in cached.values())}")
        return cached
    try:
        result = extract(root, maps_file, overwrite=False, **options)
    except FeatxError:
        if not o.overwrite:
            raise
        result = extract(root, maps_file, overwrite=True, **options)
    return {summary.split or "all": Path(summary.output) for summary in result.files}


def _cached_maps(root: Path, maps_file: Path, split_roots: dict, options: dict) -> dict[str, Path] | None:
    """{split: file} when every maps file is complete, of these images and of this recipe; else None.

    Checked from the files' attributes and the weights' hash, without building the backbone.
    """
    from featx.store import FeatureStore

    weights = options["weights"]
    weights = weights if weights in ("auto", "none") else Path(weights).expanduser().resolve()
    _, digest = backbones.family_of(options["backbone"]).weights_identity(options["backbone"], weights)
    folders = split_roots or {"all": root}
    found = {}
    for split, folder in folders.items():
        path = maps_file if split == "all" else maps_file.with_name(f"{maps_file.stem}-{split}{maps_file.suffix}")
        if not path.is_file():
            return None
        with FeatureStore(path) as store:
            recipe, complete, rows = store.recipe, store.complete, len(store.paths) + len(store.skipped)
            dtype = str(store.features.dtype)
        wanted = (options["backbone"], digest, options["layer"], options["image_size"], "flatten", options["dtype"])
        if (recipe is None or not complete or rows != len(images.list_dataset(folder))
                or (recipe.backbone, recipe.weights_sha256, recipe.layer, recipe.image_size, recipe.pooling,
                    dtype) != wanted):
            return None
        found[split] = path
    return found


@dataclass
class _Splits:
    """Rows of the maps files for training, validation and (optionally) testing, with the class order."""

    train: MapRows
    val: MapRows
    test: MapRows | None
    class_names: list[str]
    graded: bool
    recipe: object
    group: str | None = None  # the regex that named the subjects (--group, or the maps file's)
    group_unmatched: str = "refuse"

    def scored(self) -> dict[str, MapRows]:
        return {split: rows for split, rows in (("train", self.train), ("val", self.val), ("test", self.test))
                if rows is not None}

    def paths(self) -> dict[str, list[str]]:
        from featx.store import FeatureStore

        found = {}
        for split, rows in self.scored().items():
            with FeatureStore(rows.path) as store:
                paths = np.asarray(store.paths, dtype=object)
            found[split] = [str(path) for path in paths[rows.indices()]] if len(paths) else []
        return found

    def labels(self) -> dict[str, np.ndarray]:
        return {split: np.asarray(rows.labels, dtype=np.int64) for split, rows in self.scored().items()}

    def with_shape(self, shape) -> _Splits:
        def shaped(rows):
            return None if rows is None else dataclasses.replace(rows, shape=shape)

        return dataclasses.replace(self, train=shaped(self.train), val=shaped(self.val), test=shaped(self.test))


def _labelled_splits(maps: dict[str, Path], o: FinetuneOptions) -> _Splits:
    from featx.pipeline_split import subject_grouping
    from featx.store import FeatureStore

    stores = {split: FeatureStore(path) for split, path in maps.items()}
    try:
        first = stores.get("train") or stores["all"]
        class_names, graded = class_order(first.label_names, None)
        labels = {split: mapped_labels(store, class_names) for split, store in stores.items()}

        def rows_of(split, indices=None):
            y = labels[split] if indices is None else labels[split][indices]
            return MapRows(str(maps[split]), tuple(int(v) for v in y), (0, 0, 0),
                           None if indices is None else tuple(int(i) for i in indices))

        if "all" in stores:
            store = stores["all"]
            # A subject (--group, or as the maps file records) is a group; else each source image is.
            groups = row_groups(store_paths(store), len(labels["all"]),
                                store_subjects(store, o.group, o.group_unmatched))
            train_rows, val_rows = grouped_train_test_split(labels["all"], groups, test_size=o.val_size, seed=o.seed)
            train, val, test = rows_of("all", np.sort(train_rows)), rows_of("all", np.sort(val_rows)), None
        else:
            train, val = rows_of("train"), rows_of("val")
            test = rows_of("test") if "test" in stores else None
        group, unmatched = subject_grouping(list(stores.values()), o.group, o.group_unmatched)
        return _Splits(train=train, val=val, test=test, class_names=class_names, graded=graded, recipe=first.recipe,
                       group=group, group_unmatched=unmatched)
    finally:  # the splits name the files; every later read opens them again
        for store in stores.values():
            store.close()


def _fit_head(name: str, X, data: _Splits, o: FinetuneOptions):
    from featx.heads import make_head

    head = make_head(name, n_classes=len(data.class_names), class_weight=o.class_weight, seed=o.seed)
    return head.fit(X, np.asarray(data.train.labels, dtype=np.int64))


def _class_weights(train: MapRows, class_weight, n_classes: int) -> tuple[float, ...] | None:
    """'balanced' as scikit-learn computes it (n / (k * count)), one weight per class; None otherwise."""
    if class_weight is None:
        return None
    counts = np.bincount(np.asarray(train.labels), minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.ones_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return tuple(float(w) for w in weights)

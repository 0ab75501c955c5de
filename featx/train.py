"""Stage 2: fit heads on a feature file, score them on held-out rows, save one bundle per head.

The leaderboard is the estimate: each head is fitted on the training rows and scored on rows it
never saw (a separate --test file, or a seeded, stratified, grouped hold-out). The bundle gets the
data: without a --test file, each head is then refitted on all labelled rows before it is saved.
Several feature files of the same images (other backbones) are fused: rows matched by image,
features side by side, every recipe recorded in the bundle.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featx.atomic import writable_folder
from featx.bundle import save_bundle
from featx.errors import FeatxError
from featx.heads import (
    HEAD_NAMES,
    cv_score,
    fit_head,
    fitted_params,
    is_ordinal_head,
    make_head,
    min_images_per_class,
)
from featx.recipe import DECODE_KEYS, Recipe, mismatch
from featx.recipe import summary as recipe_summary
from featx.report import ReportData, ReportResult, build_report, leaderboard_table, save_confusion_png
from featx.rows import (
    Rows,
    as_paths,
    class_order,
    grouped_train_test_split,
    mapped_labels,
    output_stem,
    read_fused,
    smallest_class,
)
from featx.scoring import METRICS, best_head, details, score_row
from featx.store import FeatureStore, check_compatible

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What `train` did: the leaderboard rows, the fitted heads, where each bundle went, the report."""

    rows: list[dict]
    best: str
    models: dict[str, object]  # head name -> the fitted head that was saved
    bundles: dict[str, Path]
    confusion_pngs: dict[str, Path]
    report: str
    metric: str
    label_names: list[str]
    graded: bool
    refit_rows: int | None = None  # rows the saved heads were refitted on (None: saved as scored)
    report_page: ReportResult | None = None  # the HTML page and label-issue CSV, unless report=False

    def __str__(self) -> str:
        return self.report


@dataclass
class Split:
    """Training and test rows, ready for the heads."""

    train: Rows
    test: Rows
    class_names: list[str]
    graded: bool
    recipes: list[Recipe]
    test_label: str  # what was tested on, in words
    all_rows: Rows | None  # every labelled row of the training file, when the test rows were held out of it
    train_images_note: str = ""  # how the training images were counted, for messages

    def blocks(self, indices) -> Split:
        """The same split with only the features (and recipes) of the fused files `indices`."""
        return dataclasses.replace(
            self, train=self.train.blocks(indices), test=self.test.blocks(indices),
            recipes=[self.recipes[i] for i in indices] if self.recipes else [],
            all_rows=None if self.all_rows is None else self.all_rows.blocks(indices),
        )


@dataclass
class Options:
    """How heads are built and scored, the same for every head of a run."""

    metric: str
    class_weight: str | None
    folds: int | None
    n_jobs: int | None
    seed: int
    bootstrap: int
    progress: bool
    extra: dict = field(default_factory=dict)


def train(
    features,
    *,
    test=None,
    test_size: float = 0.25,
    heads: Iterable[str] | str = ("logreg",),
    folds: int | None = None,
    class_weight: str | None = None,
    metric: str = "accuracy",
    ordinal: bool | None = None,
    n_jobs: int | None = None,
    output="models",
    seed: int = 0,
    bootstrap: int = 1000,
    progress: bool = True,
    report: bool = True,
    engine: str = "local",
    address: str | None = None,
    log: Callable[[str], object] = print,
) -> TrainResult:
    """Fit each head on a feature file, score it on held-out rows, save one bundle per head.

    features: a feature file, or a list of files of the same images to fuse (features side by side).
    test: a second feature file of the same recipe (a list, when fusing) to score on; otherwise a seeded hold-out of
    `test_size`, stratified by class and grouped by source image (augmented copies stay together),
    and the saved heads are refitted on all rows once scored.
    heads: names, "a,b", or "all". ordinal: None = graded when every class name is an integer.
    metric: picks the best head and scores the heads' hyperparameter searches.
    n_jobs: parallel fits (None = all cores). progress: a progress line while a head fits.
    report: also write `<output>/<features>-report.html` (images behind every number, likely label
    errors) and `<features>-label-issues.csv`.
    """
    files, tests = as_paths(features), None if test is None else as_paths(test)
    check_options(metric=metric, folds=folds, test=tests, test_size=test_size)
    if _head_list(heads) == [STREAMED_HEAD] and len(files) == 1 and not folds:
        # Alone on one file, the out-of-core head reads the features a chunk at a time.
        return train_streamed(files[0], test=None if tests is None else tests[0], test_size=float(test_size),
                              class_weight=class_weight, metric=metric, ordinal=ordinal, n_jobs=n_jobs, output=output,
                              seed=seed, bootstrap=bootstrap, log=log)
    split = load_split(files, test=tests, test_size=float(test_size), ordinal=ordinal, folds=folds, seed=seed,
                       log=log)
    head_names = choose_heads(heads, split, folds=folds, log=log)
    data, held_out, class_names = split.train, split.test, split.class_names
    name = output_stem(files)
    log(
        f"fitting {len(head_names)} head(s) on {len(data)} rows x {data.X.shape[1]} dims of {split.train.source} "
        f"({len(class_names)} {'graded ' if split.graded else ''}classes: {', '.join(class_names)}); "
        f"testing on {len(held_out)} rows of {split.test_label}"
    )
    everything = split.all_rows
    options = Options(
        metric=metric, class_weight=class_weight, folds=folds, n_jobs=n_jobs, seed=seed, bootstrap=bootstrap,
        progress=progress,
        extra={"features": [str(f) for f in files], "test": None if tests is None else [str(f) for f in tests],
               "test_size": None if tests is not None else float(test_size), "seed": seed, "folds": folds,
               "class_weight": class_weight, "metric": metric, "train_rows": len(data), "test_rows": len(held_out),
               "refit_rows": None if everything is None else len(everything)},
    )
    output = writable_folder(output, "-o")  # before any fit: a long run must not end in a permission error
    rows, texts, models, scored, bundles, pngs = [], {}, {}, {}, {}, {}
    with _engine(engine, address, log):
        for head_name in head_names:
            head, row, y_pred = fit_and_score(head_name, split, options)
            scored[head_name] = head  # has not seen the test rows: the report's confusion matrix comes from it
            if everything is not None:
                head = _fit(head_name, everything, split, options, what="refitting on all rows")
            rows.append(row)
            models[head_name] = head
            texts[head_name], pngs[head_name], bundles[head_name] = _save_head(
                output, name, head, row, held_out.y, y_pred, class_names=class_names, recipes=split.recipes,
                graded=split.graded, extra=options.extra, log=log)

    best = best_head(rows, metric)
    refit_rows = None if everything is None else len(everything)
    page = None
    if report:
        summary = ReportData(title=f"featx report: {name}", class_names=class_names, graded=split.graded,
                             leaderboard=rows, best=best, metric=metric,
                             recipe=recipe_summary(split.recipes))
        page = build_report(output / f"{name}-report.html", scored[best], summary,
                            everything if everything is not None else data, held_out, seed=seed, log=log)
    text = _train_report(rows, best, metric, texts[best], bundles, pngs, refit_rows, page)
    return TrainResult(rows=rows, best=best, models=models, bundles=bundles, confusion_pngs=pngs, report=text,
                       metric=metric, label_names=class_names, graded=split.graded, refit_rows=refit_rows,
                       report_page=page)


@contextmanager
def _engine(engine: str, address: str | None, log):
    """Where the heads' searches run: here (joblib threads), or as Ray tasks on a cluster."""
    if engine not in ("local", "ray"):
        raise FeatxError(f"unknown --engine {engine!r}: use local or ray")
    if engine == "local":
        if address:
            raise FeatxError("--address is an option of --engine ray")
        yield
        return
    from featx.engines.ray import joblib_on_ray  # only here: featx runs without Ray installed

    with joblib_on_ray(address, log=log):
        yield


def _save_head(output: Path, name: str, head, row: dict, y_true, y_pred, *, class_names, recipes, graded,
               extra: dict, log) -> tuple[str, Path, Path]:
    """One head's report text, confusion-matrix PNG and bundle (`<output>/<name>-<head>.skops`); logs its line."""
    head_name, metric = row["head"], extra["metric"]
    stem = output / f"{name}-{head_name}"
    text, cm = details(head_name, y_true, y_pred, class_names)
    png = save_confusion_png(cm, class_names, f"{stem}-confusion.png", title=f"{name}: {head_name}")
    bundle = save_bundle(f"{stem}.skops", head, label_names=class_names, recipes=recipes, metrics=row,
                         head_name=head_name, graded=graded, extra=extra)
    log(f"  {head_name}: {metric} {format_optional(row.get(metric))} in {row['fit_seconds']:.2f} s -> {bundle}")
    return text, png, bundle


# ----------------------------------------------------------------------------------------------
# features larger than memory: the sgd head streams them

STREAMED_HEAD = "sgd"
# The in-memory heads hold the float32 matrix, its train/test/refit subsets and their searches' copies:
# bench/memory_heads.py measured 999 MB peak for a 98 MB matrix (20,000 x 1,280), so 4x is a floor.
MEMORY_FACTOR = 4


def _check_memory(stores, test_stores) -> None:
    """Refuse, before their features are read, files the in-memory heads could not hold; say to stream them."""
    need = sum(len(store) * store.dim * 4 * MEMORY_FACTOR for store in [*stores, *test_stores])
    free = _available_memory()
    if need > free:
        files = " + ".join(store.path for store in stores)
        raise FeatxError(f"{files} need(s) about {need / 2**30:.1f} GiB to train in memory but "
                         f"{free / 2**30:.1f} GiB is available: train the out-of-core head, which streams one file "
                         f"(--heads {STREAMED_HEAD}, one feature file, no --folds)")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def train_streamed(features: Path, *, test: Path | None, test_size: float, class_weight, metric, ordinal, n_jobs,
                   output, seed, bootstrap, log) -> TrainResult:
    """`train` with the sgd head alone, reading the features a chunk at a time: files larger than memory.

    The same hold-out (seeded, stratified, whole images), scores, bundle and refit as `train`; no report page,
    which needs the features in memory.
    """
    output = writable_folder(output, "-o")
    with ExitStack() as stack:
        store = stack.enter_context(FeatureStore(features))
        class_names, graded = class_order(store.label_names, ordinal)
        labels = mapped_labels(store, class_names)
        groups = np.asarray(store.paths, dtype=object)
        rows = np.flatnonzero(labels >= 0)
        if len(np.unique(labels[rows])) < 2:
            raise FeatxError(f"{features} has fewer than 2 labelled classes; a classifier needs at least 2")
        need = min_images_per_class(STREAMED_HEAD)[0]  # checked before any chunk is read, as train does
        if test is None:
            _check_class_sizes(labels[rows], groups[rows], class_names, need=need + 1,
                               where=f"in {features} ({need} to train, 1 to test)", fewer_folds_help=False)
            fit_at, test_at = grouped_train_test_split(labels[rows], groups[rows], test_size=test_size, seed=seed)
            train_rows, test_store, test_rows = rows[fit_at], store, rows[test_at]
            test_labels = labels
            test_label = _held_out_label(groups[test_rows], test_size, seed)
        else:
            train_rows, test_store = rows, stack.enter_context(FeatureStore(test))
            check_compatible([store, test_store])
            test_labels = mapped_labels(test_store, class_names)
            test_rows, test_label = np.flatnonzero(test_labels >= 0), str(test)
        _check_class_sizes(labels[train_rows], groups[train_rows], class_names, need=need, where="to train on",
                           fewer_folds_help=False)
        if test_store.aug is not None:
            test_rows = test_rows[np.asarray(test_store.aug)[test_rows] == 0]  # scored on original images only
        log(f"streaming the {STREAMED_HEAD} head over {len(train_rows):,} rows x {store.dim:,} dims of {features} "
            f"({len(class_names)} classes: {', '.join(class_names)}); "
            f"testing on {len(test_rows):,} rows of {test_label}")

        def fitted(at):
            head = make_head(STREAMED_HEAD, n_classes=len(class_names), metric=metric, class_weight=class_weight,
                             n_jobs=n_jobs, seed=seed)
            return head.fit_store(store, at, y=labels[at], groups=groups[at])

        started = time.perf_counter()
        head = fitted(train_rows)
        fit_seconds = time.perf_counter() - started
        y_true = test_labels[test_rows]
        y_pred = head.classes_[head.predict_proba_store(test_store, test_rows).argmax(1)]
        recipes = [recipe for recipe in (store.recipe,) if recipe is not None]
        row = {"head": STREAMED_HEAD, "params": fitted_params(head), "cv_score": None}
        refit_rows = None
        if test is None:
            head = fitted(rows)  # the bundle gets every labelled row, as train's refit does
            refit_rows = len(rows)
    row.update(score_row(y_true, y_pred, n_classes=len(class_names), with_qwk=graded or metric == "qwk",
                         bootstrap=bootstrap, seed=seed))
    row["fit_seconds"] = round(fit_seconds, 3)
    extra = {"features": [str(features)], "test": None if test is None else [str(test)],
             "test_size": None if test is not None else test_size, "seed": seed, "class_weight": class_weight,
             "metric": metric, "train_rows": len(train_rows), "test_rows": len(test_rows), "refit_rows": refit_rows}
    text, png, bundle = _save_head(output, features.stem, head, row, y_true, y_pred, class_names=class_names,
                                   recipes=recipes, graded=graded, extra=extra, log=log)
    log("  (no report page: it needs the features in memory)")
    report = _train_report([row], STREAMED_HEAD, metric, text, {STREAMED_HEAD: bundle}, {STREAMED_HEAD: png},
                           refit_rows, None)
    return TrainResult(rows=[row], best=STREAMED_HEAD, models={STREAMED_HEAD: head}, bundles={STREAMED_HEAD: bundle},
                       confusion_pngs={STREAMED_HEAD: png}, report=report, metric=metric, label_names=class_names,
                       graded=graded, refit_rows=refit_rows)


# ----------------------------------------------------------------------------------------------
# loading and checking the data


def check_options(*, metric, folds, test, test_size) -> None:
    if metric not in METRICS:
        raise FeatxError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
    if folds is not None and int(folds) < 2:
        raise FeatxError(f"--folds must be at least 2 (got {folds}); leave it out for a single model")
    if test is None and not 0.0 < float(test_size) < 1.0:
        raise FeatxError(f"--test-size must be between 0 and 1 (got {test_size}), e.g. 0.25")


def load_split(files: list[Path], *, test: list[Path] | None, test_size, ordinal, folds, seed, log,
               same_decoding: bool = True) -> Split:
    """Read the labelled rows (fused when several files) and split them, or read the test file(s).

    same_decoding: refuse fusing files that feed images differently (a fused bundle could not predict).
    """
    if test is not None and len(test) != len(files):
        raise FeatxError(f"{len(files)} training file(s) but {len(test)} test file(s); give one test file per "
                         "training file, in the same order")
    with ExitStack() as stack:
        stores = [stack.enter_context(FeatureStore(f)) for f in files]
        class_names, graded = class_order(stores[0].label_names, ordinal)
        recipes = _fused_recipes(stores, same_decoding)
        test_stores = [] if test is None else [stack.enter_context(FeatureStore(f)) for f in test]
        for store, test_store in zip(stores, test_stores):
            check_compatible([store, test_store])
        _check_memory(stores, test_stores)  # the stores hold only the small columns so far
        data = read_fused(stores, class_names, log)
        if test is not None:
            held_out = read_fused(test_stores, class_names, log)
    features = data.source
    present = np.unique(data.y)
    if len(present) < 2:
        raise FeatxError(f"{features} has fewer than 2 labelled classes; a classifier needs at least 2")
    absent = [name for index, name in enumerate(class_names) if index not in present]
    if absent:
        log(f"class(es) {', '.join(absent)} have no labelled rows in {features}; no model will predict them")
    # The least any head needs; each head's own need is checked once the heads are known.
    train_need = _fewest_images_needed(folds)
    fewer_folds_help = train_need > _fewest_images_needed(None)
    note, all_rows = "", None
    if test is None:
        _check_class_sizes(data.y, data.groups, class_names, need=train_need + 1,
                           where=f"in {features} ({train_need} to train, 1 to test)", fewer_folds_help=fewer_folds_help)
        train_rows, test_rows = grouped_train_test_split(data.y, data.groups, test_size=test_size, seed=seed)
        all_rows, data, held_out = data, data.subset(train_rows), data.subset(test_rows)
        test_label = _held_out_label(held_out.groups, test_size, seed)
        note = f" after holding out {test_size:.0%} to test (--test-size)"
    else:
        test_label = held_out.source
    _check_class_sizes(data.y, data.groups, class_names, need=train_need, where="to train on",
                       fewer_folds_help=fewer_folds_help)
    held_out = held_out.originals()
    if len(held_out) == 0:
        raise FeatxError(f"no labelled original images to test on in {test_label}; pass a labelled test file")
    return Split(train=data, test=held_out, class_names=class_names, graded=graded, recipes=recipes,
                  test_label=test_label, all_rows=all_rows, train_images_note=note)


def _held_out_label(groups, test_size: float, seed: int) -> str:
    """How the held-out test rows are named in messages: their images, the fraction and the seed."""
    return f"{len(np.unique(groups))} held-out images ({test_size:.0%}, seed {seed})"


def _fused_recipes(stores, same_decoding: bool) -> list[Recipe]:
    """The recipe of each file; with `same_decoding`, fused files must be fed the same way (a fused head's
    prediction decodes each image once for all of them)."""
    recipes = [store.recipe for store in stores]
    if len(stores) > 1 and same_decoding:
        if any(recipe is None for recipe in recipes):
            raise FeatxError("fusing needs feature files that record their recipe; extract them with `featx extract`")
        for index, differences in decoding_differences(recipes):
            raise FeatxError(f"{stores[0].path} and {stores[index].path} feed images differently ({differences}); "
                             "fused files are decoded once per image: extract them in one run (--backbone a,b)")
    return [recipe for recipe in recipes if recipe is not None]


def decoding_differences(recipes: list[Recipe]) -> list[tuple[int, str]]:
    """(index, differences) of every recipe that feeds images differently from the first (DECODE_KEYS)."""
    return [(index, differences) for index, recipe in enumerate(recipes[1:], start=1)
            if (differences := mismatch(recipes[0], recipe, DECODE_KEYS))]


def _check_class_sizes(y, groups, class_names, *, need: int, where: str, fewer_folds_help: bool) -> None:
    """Refuse classes with fewer than `need` source images (classes with none are only logged)."""
    index, images = smallest_class(y, groups)
    if images < need:
        raise FeatxError(
            f"class '{class_names[index]}' has only {images} labelled image(s) {where}; "
            f"need at least {need}: {_more_images_remedy(fewer_folds_help)}"
        )


def _fewest_images_needed(folds) -> int:
    return min(min_images_per_class(name, folds)[0] for name in HEAD_NAMES)


def _more_images_remedy(suggest_fewer_folds) -> str:
    return "add labelled images per class" + (" or use fewer --folds" if suggest_fewer_folds else "")


# ----------------------------------------------------------------------------------------------
# choosing the heads


def _head_list(heads) -> list[str]:
    if isinstance(heads, str):
        heads = heads.split(",")
    return list(dict.fromkeys(name.strip() for name in heads if name.strip()))  # keep order, drop repeats


def choose_heads(heads, split: Split, *, folds, log) -> list[str]:
    """The heads asked for that the labels suit and the training rows are large enough for."""
    return _trainable_heads(_resolve_heads(heads, split.graded, log), split, folds=folds,
                            skip_unfit=_asks_for_all(heads), log=log)


def _asks_for_all(heads) -> bool:
    return _head_list(heads) == ["all"]


def _resolve_heads(heads, graded: bool, log) -> list[str]:
    names = _head_list(heads)
    if names == ["all"]:
        chosen = [name for name in HEAD_NAMES if graded or not is_ordinal_head(name)]
        if len(chosen) < len(HEAD_NAMES):
            skipped = ", ".join(name for name in HEAD_NAMES if name not in chosen)
            log(f"skipping {skipped}: they need graded labels (integer class names, or ordinal=True)")
        return chosen
    if not names:
        raise FeatxError(f"no heads given; choose from {', '.join(HEAD_NAMES)} or all")
    for name in names:
        if name not in HEAD_NAMES:
            raise FeatxError(f"unknown head '{name}'; choose from {', '.join(HEAD_NAMES)} or all")
        if is_ordinal_head(name) and not graded:
            raise FeatxError(
                f"head '{name}' needs graded labels; name the classes by integer grade or pass ordinal=True (--ordinal)"
            )
    return names


def _trainable_heads(names, split: Split, *, folds, skip_unfit: bool, log) -> list[str]:
    """The heads the training rows have enough images per class for, checked before any fitting.

    A head asked for by name that cannot train is an error; with `skip_unfit` (--heads all) it is
    skipped with a note, and only having none left is an error.
    """
    index, images = smallest_class(split.train.y, split.train.groups)
    needs = {name: min_images_per_class(name, folds) for name in names}
    fit = [name for name in names if needs[name][0] <= images]
    unfit = [name for name in names if name not in fit]
    if unfit and (not skip_unfit or not fit):
        name = unfit[0] if not skip_unfit else min(unfit, key=lambda n: needs[n][0])
        need, why = needs[name]
        raise FeatxError(
            f"head '{name}' needs at least {need} images per class to train on ({why}), but class "
            f"'{split.class_names[index]}' has {images}{split.train_images_note}: "
            f"{_smaller_need_remedy(name, need, images, folds, split.graded)}"
        )
    for name in unfit:
        need, why = needs[name]
        log(f"skipping {name}: it needs {need} images per class to train on ({why}); "
            f"class '{split.class_names[index]}' has {images}")
    return fit


def _smaller_need_remedy(name, need, images, folds, graded) -> str:
    remedies = []
    if folds and min_images_per_class(name, None)[0] <= images:
        remedies.append("use fewer --folds (or none)")
    others = [other for other in HEAD_NAMES if other != name and (graded or not is_ordinal_head(other))
              and min_images_per_class(other, folds)[0] <= images]
    if others:
        remedies.append(f"choose another head ({', '.join(others)})")
    remedies.append(f"add labelled images to reach {need} per class")
    return ", or ".join(remedies)


# ----------------------------------------------------------------------------------------------
# fitting


def _fit(name: str, rows: Rows, split: Split, options: Options, what: str):
    """A fresh head `name` fitted on `rows` (groups passed when rows share source images)."""
    head = make_head(name, n_classes=len(split.class_names), metric=options.metric,
                     class_weight=options.class_weight, folds=options.folds, grouped=rows.grouped,
                     n_jobs=options.n_jobs, seed=options.seed)
    with _ticking(f"{name}: {what}", options.progress):
        try:
            return fit_head(head, rows.X, rows.y, rows.groups if rows.grouped else None, n_jobs=options.n_jobs)
        except ValueError as error:
            raise FeatxError(
                f"head '{name}' could not be trained ({_last_line(error)}); {_more_images_remedy(options.folds)}"
            ) from None


def fit_and_score(name: str, split: Split, options: Options):
    """Fit one head on the training rows and score it on the test rows: (head, leaderboard row, predictions)."""
    started = time.perf_counter()
    head = _fit(name, split.train, split, options, what="fitting")
    fit_seconds = time.perf_counter() - started
    y_pred = np.asarray(head.predict(split.test.X), dtype=np.int64)
    row = {"head": name, "params": fitted_params(head), "cv_score": cv_score(head)}
    row.update(score_row(split.test.y, y_pred, n_classes=len(split.class_names),
                         with_qwk=split.graded or options.metric == "qwk", bootstrap=options.bootstrap,
                         seed=options.seed))
    row["fit_seconds"] = round(fit_seconds, 3)
    return head, row, y_pred


@contextmanager
def _ticking(what: str, enabled: bool, delay: float = 2.0):
    """A progress line with the elapsed time while a fit runs, shown once it lasts `delay` seconds.

    A fit gives no progress of its own, so a thread refreshes the line every second: a user is never
    left without output for long.
    """
    if not enabled:
        yield
        return
    # disable=None: only on a terminal; in a log file a refreshed line would be a pile of repeats.
    bar = tqdm(total=None, desc=what, bar_format="{desc}: {elapsed}", delay=delay, leave=False, dynamic_ncols=True,
               disable=None)
    done = threading.Event()

    def refresh():
        while not done.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=refresh, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def _last_line(error: Exception) -> str:
    """An error's message in one line: a search whose fits all failed ends with their cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------
# the report


def format_optional(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _train_report(rows, best, metric, best_details, bundles, pngs, refit_rows: int | None,
                  page: ReportResult | None) -> str:
    saved = (f"bundles: refitted on all {refit_rows} labelled rows after scoring" if refit_rows
             else "bundles: the heads as scored")
    lines = [
        leaderboard_table(rows),
        f"(cv score: the head's own hyperparameter search on the training rows, in {metric}; "
        f"intervals: 95% bootstrap over the test rows; {saved})",
        "",
        f"best head by {metric}: {best} -> {bundles[best]} (confusion matrix: {pngs[best]})",
        "",
        best_details,
    ]
    if page is not None:
        lines += ["", str(page)]
    return "\n".join(lines)

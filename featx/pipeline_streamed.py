"""Stage 2 for files larger than memory: the sgd head alone reads the features a chunk at a time.

The same steps as featx.pipeline (the seeded, stratified, grouped hold-out; the leaderboard row; the
refit on every labelled row; the bundle; the page), with the features read from the file, never whole.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from featx.atomic import writable_folder
from featx.choices import STREAMED_HEAD
from featx.errors import FeatxError
from featx.heads import fitted_params, make_head, min_images_per_class
from featx.pipeline import Options, TrainResult, report_page, save_head, ticking, train_summary
from featx.pipeline_split import (
    check_class_sizes,
    check_test_files,
    fits_in_memory,
    held_out_label,
    load_split,
    subject_grouping,
)
from featx.rows import class_order, grouped_train_test_split, mapped_labels, row_groups, store_paths, store_subjects
from featx.scoring import leaderboard_row
from featx.store import FeatureStore, check_compatible

__all__ = ["streams", "train_streamed"]


def streams(heads: list[str], files: list[Path], options: Options) -> bool:
    """True when train streams: the sgd head alone, on one file, without --folds."""
    return heads == [STREAMED_HEAD] and len(files) == 1 and not options.folds


def train_streamed(features: Path, options: Options, log) -> TrainResult:
    """`train` with the sgd head alone, reading the features a chunk at a time."""
    if options.engine != "local":
        raise FeatxError(f"--engine {options.engine} runs the heads' searches elsewhere, but --heads {STREAMED_HEAD} "
                         "alone streams the file here, in one process: leave out --engine and --address")
    check_test_files([features], options.test)
    test = None if options.test is None else options.test[0]
    output = writable_folder(options.output, "-o")
    with ExitStack() as stack:
        store = stack.enter_context(FeatureStore(features))
        class_names, graded = class_order(store.label_names, options.ordinal)
        labels = mapped_labels(store, class_names)
        groups = row_groups(store_paths(store), len(labels),
                            store_subjects(store, options.group, options.group_unmatched))
        rows = np.flatnonzero(labels >= 0)
        if len(np.unique(labels[rows])) < 2:
            raise FeatxError(f"{features} has fewer than 2 labelled classes; a classifier needs at least 2")
        need = min_images_per_class(STREAMED_HEAD)[0]  # checked before any chunk is read, as train does
        if test is None:
            check_class_sizes(labels[rows], groups[rows], class_names, need=need + 1,
                              where=f"in {features} ({need} to train, 1 to test)", fewer_folds_help=False)
            fit_at, test_at = grouped_train_test_split(labels[rows], groups[rows], test_size=options.test_size,
                                                       seed=options.seed)
            train_rows, test_store, test_rows, test_labels = rows[fit_at], store, rows[test_at], labels
            test_label = held_out_label(groups[test_rows], options.test_size, options.seed)
        else:
            train_rows, test_store = rows, stack.enter_context(FeatureStore(test))
            check_compatible([store, test_store])
            test_labels = mapped_labels(test_store, class_names)
            test_rows, test_label = np.flatnonzero(test_labels >= 0), str(test)
        check_class_sizes(labels[train_rows], groups[train_rows], class_names, need=need, where="to train on",
                          fewer_folds_help=False)
        if test_store.aug is not None:
            test_rows = test_rows[np.asarray(test_store.aug)[test_rows] == 0]  # scored on original images only
        log(f"streaming the {STREAMED_HEAD} head over {len(train_rows):,} rows x {store.dim:,} dims of {features} "
            f"({len(class_names)} classes: {', '.join(class_names)}); "
            f"testing on {len(test_rows):,} rows of {test_label}")

        def fitted(at, what):
            head = make_head(STREAMED_HEAD, n_classes=len(class_names), metric=options.metric,
                             class_weight=options.class_weight, n_jobs=options.n_jobs, seed=options.seed)
            with ticking(f"{STREAMED_HEAD}: {what}", options.progress):
                return head.fit_store(store, at, y=labels[at], groups=groups[at])

        started = time.perf_counter()
        scored = head = fitted(train_rows, "fitting")
        fit_seconds = time.perf_counter() - started
        y_true = test_labels[test_rows]
        y_pred = head.classes_[head.predict_proba_store(test_store, test_rows).argmax(1)]
        refit_rows = None
        if test is None:
            head = fitted(rows, "refitting on all rows")  # the bundle gets every labelled row, as train's refit does
            refit_rows = len(rows)
        recipes = [recipe for recipe in (store.recipe,) if recipe is not None]
        regex, policy = subject_grouping([store], options.group, options.group_unmatched)
        in_memory = fits_in_memory([store, *([test_store] if test is not None else [])])
    row = leaderboard_row(STREAMED_HEAD, y_true, y_pred, n_classes=len(class_names),
                          with_qwk=graded or options.metric == "qwk", params=fitted_params(head), cv_score=None,
                          fit_seconds=fit_seconds, bootstrap=options.bootstrap, seed=options.seed)
    extra = {**options.bundle_record([features], train_rows=len(train_rows), test_rows=len(test_rows),
                                     refit_rows=refit_rows), "group": regex, "group_unmatched": policy}
    text, png, bundle = save_head(output, features.stem, head, row, y_true, y_pred, class_names=class_names,
                                  recipes=recipes, graded=graded, extra=extra, log=log)
    page = None
    # The page's map and label issues need the features in memory: built when they fit.
    if options.report and not in_memory:
        log(f"no report page: its map and label issues need {features}'s features in memory, and they do not fit; "
            "pass --no-report (report=False) to skip it")
    elif options.report:
        # The same seeded split as above (same labels, groups and seed), now with the features in memory.
        split = load_split([features], test=options.test, test_size=options.test_size, ordinal=options.ordinal,
                           folds=None, seed=options.seed, log=lambda message: None,  # already said above
                           group=options.group, group_unmatched=options.group_unmatched)
        page = report_page(output / f"{features.stem}-report.html", scored, split, [row], STREAMED_HEAD, options,
                           log=log, title=f"featx report: {features.stem}")
    report = train_summary([row], STREAMED_HEAD, options.metric, text, {STREAMED_HEAD: bundle},
                           {STREAMED_HEAD: png}, refit_rows, page)
    return TrainResult(rows=[row], best=STREAMED_HEAD, models={STREAMED_HEAD: head}, bundles={STREAMED_HEAD: bundle},
                       confusion_pngs={STREAMED_HEAD: png}, report=report, metric=options.metric,
                       label_names=class_names, graded=graded, refit_rows=refit_rows, report_page=page,
                       scored={STREAMED_HEAD: scored})

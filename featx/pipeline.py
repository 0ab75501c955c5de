"""Stage 2: fit heads on labelled rows, score them on held-out rows, refit, save one bundle each, report.

train, compare, evaluate, the streamed sgd path (featx.pipeline_streamed) and fine-tuning are entry
points over these steps: load and split (featx.pipeline_split) -> fit and score -> refit -> save ->
report. Their options travel as one `Options`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featx.atomic import writable_folder
from featx.bundle import save_bundle
from featx.choices import METRICS
from featx.context import check_context
from featx.errors import FeatxError
from featx.heads import cv_score, fit_head, fitted_params, make_head
from featx.pipeline_split import Split, choose_heads, load_split, more_images_remedy
from featx.recipe import summary as recipe_summary
from featx.report import ReportData, ReportResult, build_report, leaderboard_table, save_confusion_png
from featx.rows import Rows, as_paths, output_stem
from featx.scoring import best_head, details, leaderboard_row

__all__ = ["ENGINES", "Options", "TrainResult", "engine", "fit_and_score", "fit_named", "format_optional",
           "leaderboard_text", "report_page", "save_head", "ticking", "train_in_memory", "train_summary"]

ENGINES = ("local", "ray")


@dataclass
class Options:
    """Every stage-2 option of a run. train() and compare() fill it from their keyword arguments."""

    heads: Iterable[str] | str = ("logreg",)  # names, "a,b" or "all"
    test: list[Path] | None = None  # test file(s), one per training file; None: a seeded hold-out
    test_size: float = 0.25
    folds: int | None = None
    class_weight: str | None = None
    metric: str = "accuracy"
    ordinal: bool | None = None
    n_jobs: int | None = None
    output: Path | str = "models"
    seed: int = 0
    bootstrap: int = 1000
    progress: bool = True
    report: bool = True
    engine: str = "local"
    address: str | None = None
    fuse: bool = True  # compare only: also score the files fused
    group: str | None = None  # --group REGEX: subjects named on the paths stay on one side of every split
    group_unmatched: str = "refuse"  # or "own": a path the regex misses is its own subject
    context: str | None = None  # "others": each row also gets the mean features of its subject's other images

    def __post_init__(self):
        self.test = None if self.test is None else as_paths(self.test)

    def check(self) -> None:
        """Refuse options no run can honour, before any file is read."""
        if self.metric not in METRICS:
            raise FeatxError(f"unknown metric '{self.metric}'; choose from {', '.join(METRICS)}")
        if self.folds is not None and int(self.folds) < 2:
            raise FeatxError(f"--folds must be at least 2 (got {self.folds}); leave it out for a single model")
        if self.test is None and not 0.0 < _number(self.test_size) < 1.0:
            raise FeatxError(f"--test-size must be between 0 and 1 (got {self.test_size}), e.g. 0.25")
        self.test_size = _number(self.test_size)
        if self.class_weight not in (None, "balanced"):
            raise FeatxError(f"unknown class weight {self.class_weight!r}: use balanced, or leave it out")
        if self.engine not in ENGINES:
            raise FeatxError(f"unknown --engine {self.engine!r}: use {' or '.join(ENGINES)}")
        if self.address and self.engine != "ray":
            raise FeatxError("--address is an option of --engine ray")
        check_context(self.context)

    def bundle_record(self, files, *, train_rows: int, test_rows: int, refit_rows: int | None) -> dict:
        """How a bundle was made, stored in it: files, split, options and row counts."""
        return {"features": [str(f) for f in files], "test": None if self.test is None else [str(f) for f in self.test],
                "test_size": None if self.test is not None else self.test_size, "seed": self.seed,
                "folds": self.folds, "class_weight": self.class_weight, "metric": self.metric,
                "train_rows": train_rows, "test_rows": test_rows, "refit_rows": refit_rows}


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # refused as out of range


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
    scored: dict[str, object] = field(default_factory=dict, repr=False)  # head name -> the head as scored

    def __str__(self) -> str:
        return self.report


@contextmanager
def engine(options: Options, log):
    """Where the heads' searches run: here (joblib threads), or as Ray tasks on a cluster."""
    if options.engine == "local":
        yield
        return
    from featx.engines.ray import joblib_on_ray  # only here: featx runs without Ray installed

    with joblib_on_ray(options.address, log=log):
        yield


# ----------------------------------------------------------------------------------------------
# the in-memory pipeline: load -> split -> fit and score -> refit -> save -> report


def train_in_memory(files: list[Path], options: Options, log: Callable[[str], object]) -> TrainResult:
    """Fit each head on the training rows, score it on the test rows, refit it on all rows, save it; the page."""
    split = load_split(files, test=options.test, test_size=options.test_size, ordinal=options.ordinal,
                       folds=options.folds, seed=options.seed, log=log, group=options.group,
                       group_unmatched=options.group_unmatched, context=options.context)
    head_names = choose_heads(options.heads, split, folds=options.folds, log=log)
    name = output_stem(files)
    log(f"fitting {len(head_names)} head(s) on {len(split.train)} rows x {split.train.X.shape[1]} dims of "
        f"{split.train.source} ({len(split.class_names)} {'graded ' if split.graded else ''}classes: "
        f"{', '.join(split.class_names)}); testing on {len(split.test)} rows of {split.test_label}")
    refit_rows = None if split.all_rows is None else len(split.all_rows)
    extra = {**options.bundle_record(files, train_rows=len(split.train), test_rows=len(split.test),
                                     refit_rows=refit_rows), **split.bundle_record()}
    output = writable_folder(options.output, "-o")  # before any fit: a long run must not end in a permission error
    rows, texts, models, scored, bundles, pngs = [], {}, {}, {}, {}, {}
    with engine(options, log):
        for head_name in head_names:
            head, row, y_pred = fit_and_score(head_name, split, options)
            scored[head_name] = head  # has not seen the test rows: the report's confusion matrix comes from it
            if split.all_rows is not None:
                head = fit_named(head_name, split.all_rows, split.class_names, options, what="refitting on all rows")
            rows.append(row)
            models[head_name] = head
            texts[head_name], pngs[head_name], bundles[head_name] = save_head(
                output, name, head, row, split.test.y, y_pred, class_names=split.class_names, recipes=split.recipes,
                graded=split.graded, extra=extra, log=log)
    best = best_head(rows, options.metric)
    # The saved head was fitted on exactly the page's rows: its search's out-of-fold probabilities judge the labels.
    page = report_page(output / f"{name}-report.html", scored[best], split, rows, best, options, log=log,
                       title=f"featx report: {name}", fitted=models[best]) if options.report else None
    text = train_summary(rows, best, options.metric, texts[best], bundles, pngs, refit_rows, page)
    return TrainResult(rows=rows, best=best, models=models, bundles=bundles, confusion_pngs=pngs, report=text,
                       metric=options.metric, label_names=split.class_names, graded=split.graded,
                       refit_rows=refit_rows, report_page=page, scored=scored)


def report_page(path: Path, head, split: Split, rows: list[dict], best: str, options: Options, *, log, title: str,
                notes=(), fitted=None) -> ReportResult:
    """The HTML page (and label-issue CSV) of `head`, scored on the split's test rows.

    fitted: a head fitted on exactly `split.rows_to_save`, in order, whose own cross-validation gives the
    out-of-fold probabilities; without it the page refits for them.
    """
    summary = ReportData(title=title, class_names=split.class_names, graded=split.graded, leaderboard=rows, best=best,
                         metric=options.metric, recipe=recipe_summary(split.recipes), notes=list(notes))
    return build_report(path, head, summary, split.rows_to_save, split.test, seed=options.seed, log=log,
                        fitted=fitted)


# ----------------------------------------------------------------------------------------------
# fitting and scoring


def fit_named(name: str, rows: Rows, class_names, options: Options, what: str = "fitting"):
    """A fresh head `name` fitted on `rows` (groups passed when rows share source images)."""
    head = make_head(name, n_classes=len(class_names), metric=options.metric, class_weight=options.class_weight,
                     folds=options.folds, grouped=rows.grouped, n_jobs=options.n_jobs, seed=options.seed)
    with ticking(f"{name}: {what}", options.progress):
        try:
            return fit_head(head, rows.X, rows.y, rows.groups if rows.grouped else None, n_jobs=options.n_jobs)
        except ValueError as error:
            raise FeatxError(
                f"head '{name}' could not be trained ({_last_line(error)}); {more_images_remedy(options.folds)}"
            ) from None


def fit_and_score(name: str, split: Split, options: Options):
    """Fit one head on the training rows and score it on the test rows: (head, leaderboard row, predictions).

    For rows in memory: `fit_and_score("logreg", Split.from_arrays(X, y, X_test, y_test, names), Options())`.
    """
    started = time.perf_counter()
    head = fit_named(name, split.train, split.class_names, options)
    fit_seconds = time.perf_counter() - started
    y_pred = np.asarray(head.predict(split.test.X), dtype=np.int64)
    row = leaderboard_row(name, split.test.y, y_pred, n_classes=len(split.class_names),
                          with_qwk=split.graded or options.metric == "qwk", params=fitted_params(head),
                          cv_score=cv_score(head), fit_seconds=fit_seconds, bootstrap=options.bootstrap,
                          seed=options.seed)
    return head, row, y_pred


@contextmanager
def ticking(what: str, enabled: bool, delay: float = 2.0):
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
# saving and the text report


def save_head(output: Path, name: str, head, row: dict, y_true, y_pred, *, class_names, recipes, graded: bool,
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


def format_optional(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def leaderboard_text(rows: list[dict], metric: str, *, first: str = "", last: str = "") -> str:
    """The leaderboard table and its legend, as train prints it; `first`/`last` add to the legend."""
    legend = (f"cv score: the head's own hyperparameter search on the training rows, in {metric}; "
              "intervals: 95% bootstrap over the test rows")
    return leaderboard_table(rows) + "\n(" + "; ".join(part for part in (first, legend, last) if part) + ")"


def train_summary(rows, best, metric, best_details, bundles, pngs, refit_rows: int | None,
                  page: ReportResult | None) -> str:
    saved = (f"bundles: refitted on all {refit_rows} labelled rows after scoring" if refit_rows
             else "bundles: the heads as scored")
    lines = [
        leaderboard_text(rows, metric, last=saved),
        "",
        f"best head by {metric}: {best} -> {bundles[best]} (confusion matrix: {pngs[best]})",
        "",
        best_details,
    ]
    if page is not None:
        lines += ["", str(page)]
    return "\n".join(lines)

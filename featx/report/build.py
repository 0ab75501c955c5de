"""Build the report page from a fitted head and its rows: for `featx train` and `featx report BUNDLE FEATURES`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.bundle import load_bundle
from featx.errors import FeatxError
from featx.heads import make_head
from featx.recipe import summary as recipe_summary
from featx.report.label_issues import (
    LabelIssues,
    find_label_issues,
    out_of_fold_probabilities,
    write_label_issues_csv,
)
from featx.report.page import FeatureMap, Predictions, ReportData, write_report_page
from featx.rows import Rows, as_paths, output_stem
from featx.store import FeatureStore

__all__ = ["ReportResult", "build_report", "report"]


@dataclass
class ReportResult:
    """Where the page and the label-issue CSV went, and what they hold."""

    page: Path
    label_issues_csv: Path | None
    label_issues: int  # rows flagged
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds by part of the build

    def __str__(self) -> str:
        size = self.page.stat().st_size / 1e6 if self.page.exists() else 0.0
        issues = ""
        if self.label_issues_csv:
            issues = f"; {self.label_issues} likely label error(s) -> {self.label_issues_csv}"
        return f"report: {self.page} ({size:.1f} MB, {self.seconds:.1f} s){issues}"


def label_issues_csv_path(page: Path) -> Path:
    """`<name>-label-issues.csv` beside `<name>-report.html`."""
    stem = page.name[: -len("-report.html")] if page.name.endswith("-report.html") else page.stem
    return page.with_name(f"{stem}-label-issues.csv")


def _inner_models(head):
    """`head` and the fitted models behind its probabilities, outermost first.

    A search's winner (unless only the search has probabilities: a calibrated SVM), a fold ensemble's
    first member, the ordinal head's probability model.
    """
    model = head
    while True:
        yield model
        if hasattr(getattr(model, "best_estimator_", None), "predict_proba"):
            model = model.best_estimator_
        elif getattr(model, "estimators_", None):
            model = model.estimators_[0]
        elif hasattr(getattr(model, "estimator_", None), "predict_proba"):
            model = model.estimator_
        else:
            return


def _probability_model(head):
    """The fitted model behind `head`'s probabilities, to refit once per fold for out-of-fold probabilities.

    A search's winner keeps its chosen hyperparameters (one fit per fold, not a whole search per fold;
    the hyperparameter saw every row, which barely moves the probabilities).
    """
    *_, model = _inner_models(head)
    return model


def _own_out_of_fold(fitted, n_rows: int) -> np.ndarray | None:
    """The out-of-fold probabilities `fitted`'s own search kept (PathSearchCV's `oof_proba_` at the chosen
    value), columns by class index; None when it kept none for `n_rows` rows."""
    for model in _inner_models(fitted):
        found = getattr(model, "oof_proba_", None)
        if found is not None and len(found) == n_rows:
            classes = np.asarray(model.classes_, dtype=np.int64)
            probabilities = np.zeros((n_rows, int(classes.max()) + 1))
            probabilities[:, classes] = found
            return probabilities
    return None


def _issue_model(head, rows: Rows, seed: int, log):
    """The model whose out-of-fold probabilities judge the labels: the head's, or logreg's when it has none."""
    model = _probability_model(head)
    if hasattr(model, "predict_proba"):
        return model
    log(f"{type(head).__name__} gives no probabilities; finding label issues with a logreg head")
    search = make_head("logreg", n_classes=int(np.max(rows.y)) + 1, grouped=rows.grouped, seed=seed)
    if rows.grouped:
        return search.fit(rows.X, rows.y, groups=rows.groups)
    return search.fit(rows.X, rows.y)  # its own out-of-fold probabilities serve: no second cross-validation


def _originals(rows: Rows) -> np.ndarray:
    """Indices of the rows of original images (pages and scores show those, never augmented copies)."""
    return np.flatnonzero(rows.aug == 0)


def _out_of_fold(head, fitted, rows: Rows, *, folds: int, seed: int, log) -> tuple[np.ndarray, str]:
    """Out-of-fold probabilities of `rows` and where they came from, in words."""
    found = None if fitted is None else _own_out_of_fold(fitted, len(rows.y))
    if found is not None:
        return found, "the head's own cross-validation"
    model = _issue_model(head, rows, seed, log)
    found = _own_out_of_fold(model, len(rows.y))
    if found is not None:
        return found, "a logreg head's cross-validation"
    groups = rows.groups if rows.grouped else None  # copies of one image stay in one fold
    found = out_of_fold_probabilities(model, rows.X, rows.y, groups, folds=folds, seed=seed)
    return found, f"{folds}-fold cross-validation of the head at its chosen settings"


def _label_issues(head, fitted, rows: Rows, n_classes: int, graded: bool, *, folds: int, seed: int, log,
                  timings: dict) -> tuple[LabelIssues | None, str]:
    """Label issues among the original images of `rows`, or None and the reason there are none."""
    started = time.perf_counter()
    try:
        probabilities, source = _out_of_fold(head, fitted, rows, folds=folds, seed=seed, log=log)
    except FeatxError as error:
        return None, f"Label issues were not searched: {error}."
    timings["out-of-fold probabilities"] = time.perf_counter() - started
    started = time.perf_counter()
    keep = _originals(rows)
    # Columns for every class, also those without training rows (which get probability 0).
    probabilities = np.pad(probabilities, ((0, 0), (0, max(0, n_classes - probabilities.shape[1]))))
    issues = find_label_issues(probabilities[keep], rows.y[keep], graded=graded,
                               paths=[rows.paths[i] for i in keep], root=rows.root, features=rows.X[keep])
    issues.rows = keep[issues.rows]  # indices into `rows`, not into its originals
    issues.source = source
    timings["label issues"] = time.perf_counter() - started
    return issues, ""


def _predictions(head, rows: Rows, n_classes: int) -> Predictions:
    keep = _originals(rows)
    X = rows.X[keep]
    probabilities = None
    if hasattr(head, "predict_proba"):
        # The head's columns are the classes it was trained on; a class it never saw gets 0.
        found = np.asarray(head.predict_proba(X))
        classes = np.asarray(getattr(head, "classes_", np.arange(found.shape[1])), dtype=np.int64)
        probabilities = np.zeros((len(X), n_classes))
        probabilities[:, classes] = found
    return Predictions(
        y_true=np.asarray(rows.y)[keep], y_pred=np.asarray(head.predict(X), dtype=np.int64),
        probabilities=probabilities, paths=[rows.paths[i] for i in keep], root=rows.root, source=rows.source,
    )


def _feature_map(train: Rows, test: Rows | None, predictions: Predictions | None,
                 issues: LabelIssues | None, class_names) -> FeatureMap:
    """The searched rows' and the test rows' originals in one map, each image once; mistakes are misses and
    likely label errors."""
    entries: dict = {}  # full path -> [features, label, mistake, notes, relative path, root]

    def add(rows: Rows, index: int, mistake: bool, note: str) -> None:
        relative = str(rows.paths[index])
        path = os.path.join(rows.root, relative) if rows.root else relative
        # A row without a path (seed-style files) is its own image: one point each, not one for them all.
        key = path if relative else (id(rows), index)
        entry = entries.setdefault(key, [rows.X[index], int(rows.y[index]), False, [], relative, rows.root])
        entry[2] = entry[2] or mistake
        entry[3].append(note)

    suggested = {} if issues is None else {int(r): int(s) for r, s in zip(issues.rows, issues.suggested)}
    for index in _originals(train):
        if index in suggested:
            add(train, index, True, f"likely label error: looks like {class_names[suggested[index]]}")
        else:
            add(train, index, False, "")
    if test is not None and predictions is not None:
        for position, index in enumerate(_originals(test)):
            guess = int(predictions.y_pred[position])
            add(test, index, guess != int(test.y[index]), f"predicted {class_names[guess]}")
    values = list(entries.values())
    return FeatureMap(
        features=np.asarray([value[0] for value in values], dtype=np.float32),
        labels=np.array([value[1] for value in values], dtype=np.int64),
        mistakes=np.array([value[2] for value in values], dtype=bool),
        paths=[value[4] for value in values], root=[value[5] for value in values],
        notes=["; ".join(note for note in value[3] if note) for value in values],
    )


def build_report(page, head, summary: ReportData, train: Rows, test: Rows | None = None, *,
                 issues_csv=None, folds: int = 3, seed: int = 0,
                 log: Callable[[str], object] = print, fitted=None) -> ReportResult:
    """Write the report page (and the label-issue CSV) for a fitted head.

    summary: title, class names, leaderboard, recipe, ...; its test, label issues and map are filled in here.
    head: the fitted head; it predicts `test` for the confusion matrix (so it must not have seen those rows).
    train: the labelled rows to search for label issues, out-of-fold (in train: every labelled row).
    test: held-out rows for the confusion matrix; without them the page has no confusion matrix.
    fitted: the head as fitted on exactly `train`'s rows, in their order (`head` itself when it was): its own
    search's out-of-fold probabilities judge the labels, with no further fit. Otherwise, or when it kept none,
    `head`'s model (logreg's when it has no probabilities) is refitted on `folds` folds.
    issues_csv: default `<name>-label-issues.csv` beside `<name>-report.html`.
    """
    started = time.perf_counter()
    page = Path(page)
    notes = list(summary.notes)
    n_classes = len(summary.class_names)
    timings: dict[str, float] = {}
    predictions = _predictions(head, test, n_classes) if test is not None and len(test.y) else None
    issues, reason = _label_issues(head, fitted, train, n_classes, summary.graded, folds=folds, seed=seed, log=log,
                                   timings=timings)
    if reason:
        notes.append(reason)
        log(reason)
    csv_path = None
    if issues is not None:
        csv_path = write_label_issues_csv(issues_csv or label_issues_csv_path(page), issues, summary.class_names)
    data = dataclasses.replace(
        summary, test=predictions, label_issues=issues, notes=notes,
        label_issues_csv=None if csv_path is None else csv_path.name,
        feature_map=_feature_map(train, test, predictions, issues, summary.class_names),
    )
    write_report_page(page, data, seed=seed, timings=timings)
    return ReportResult(page=page, label_issues_csv=csv_path, label_issues=0 if issues is None else len(issues),
                        seconds=time.perf_counter() - started, timings=timings)


# --------------------------------------------------------------------------- featx report BUNDLE FEATURES


def _report_paths(bundle_path: Path, stem: str, output) -> tuple[Path, Path]:
    if output is None:
        page = bundle_path.parent / f"{stem}-report.html"
    else:
        output = Path(output)
        page = output if output.suffix.lower() in (".html", ".htm") else output / f"{stem}-report.html"
    return page, label_issues_csv_path(page)


def _recipe_shown(recipes) -> dict:
    # A head trained on a file without a recipe (a seeds-style file) has None in its place: nothing to show.
    return recipe_summary(recipes) if recipes and all(recipe is not None for recipe in recipes) else {}


def report(bundle_path, features_path, *, output=None, folds: int = 3, seed: int = 0,
           log: Callable[[str], object] = print) -> ReportResult:
    """The report page of a saved bundle on a labelled feature file (`featx report BUNDLE FEATURES...`).

    features_path: a feature file, or for a head trained on fused files, one file per recipe in the
    order trained (as for `featx evaluate`). The head predicts every original image (the confusion
    matrix); label issues are searched out-of-fold on the same rows. Writes `<stem>-report.html` and
    `-label-issues.csv` beside the bundle, or into `output` (a folder or an .html path), named by
    `rows.output_stem` as `featx train` names its outputs.
    """
    bundle = load_bundle(bundle_path)
    files = as_paths(features_path)
    with ExitStack() as stack:
        stores = [stack.enter_context(FeatureStore(f)) for f in files]
        rows = bundle.labelled_rows(stores, log)
    named = " + ".join(f.name for f in files)
    if len(rows) == 0:
        raise FeatxError(f"{named} has no labelled rows; a report needs images in class folders")
    notes = []
    # One path in bundles from before fusion, a list of the fused files' paths since.
    trained_on = bundle.extra.get("features")
    trained_on = [trained_on] if isinstance(trained_on, str) else trained_on if isinstance(trained_on, list) else []
    given = {f.resolve() for f in files}
    seen = [Path(path).name for path in trained_on if isinstance(path, str) and Path(path).resolve() in given]
    if seen:
        notes.append(f"The head was trained on rows of {' + '.join(seen)}: its confusion matrix here is optimistic. "
                     "The label issues are out-of-fold, so they are not.")
    summary = ReportData(
        title=f"featx report: {bundle.head_name} on {named}",
        class_names=list(bundle.label_names), graded=bundle.graded,
        leaderboard=[{"head": bundle.head_name, **bundle.metrics}], best=bundle.head_name,
        metric=str(bundle.extra.get("metric") or "accuracy"), recipe=_recipe_shown(bundle.recipes),
        notes=notes + [f"Leaderboard: the scores recorded in {Path(bundle_path).name} when it was trained."],
    )
    page, csv_path = _report_paths(Path(bundle_path), output_stem(files), output)
    result = build_report(page, bundle.head, summary, rows, rows, issues_csv=csv_path, folds=folds, seed=seed, log=log)
    log(str(result))
    return result

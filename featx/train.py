"""Stage 2: train heads on a feature file, compare them, save bundles; evaluate and predict with a bundle."""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from featx.bundle import Bundle, load_bundle, save_bundle
from featx.errors import FeatxError

__all__ = [
    "EvalResult", "PredictResult", "TrainResult", "evaluate", "grouped_train_test_split", "images_needed", "predict",
    "train",
]

METRICS = ("accuracy", "f1_macro", "qwk")
# The feature-identity keys a model depends on: features that differ in any of them are another space.
RECIPE_KEYS = ("backbone", "weights_id", "pooling", "image_size", "layer")
# No head trains on fewer source images per class than this; heads whose nested cross-validation
# needs more say so (see `images_needed`).
MIN_TRAIN_IMAGES_PER_CLASS = 3
# Feature-file attributes beyond the identity keys that predicting from raw images must repeat.
_EXTRACTION_KEYS = ("preprocessing", "resize", "tta")
_INTEGER = re.compile(r"^[+-]?\d+$")


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class TrainResult:
    """What `train` did: the leaderboard rows, the best head, where each bundle went, the report."""

    rows: list[dict]
    best: str
    bundles: dict[str, Path]
    confusion_pngs: dict[str, Path]
    report: str
    metric: str
    label_names: list[str]
    graded: bool

    def render(self) -> str:
        return self.report

    def __str__(self) -> str:
        return self.report


@dataclass
class EvalResult:
    """One bundle scored on a feature file: its leaderboard row and the full report."""

    row: dict
    report: str
    head_name: str
    n_rows: int

    @property
    def rows(self) -> list[dict]:
        return [self.row]

    def render(self) -> str:
        return self.report

    def __str__(self) -> str:
        return self.report


@dataclass
class PredictResult:
    """Where the predictions CSV went, its rows, and the files that could not be decoded."""

    output: Path
    rows: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"wrote {len(self.rows)} predictions to {self.output}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} undecodable file(s): " + ", ".join(p for p, _ in self.skipped[:5])
            text += " ..." if len(self.skipped) > 5 else ""
        return text


# ----------------------------------------------------------------------------------------------
# reading feature files


@dataclass
class _Rows:
    """Labelled rows of one feature file, labels already in the training class order."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray  # source image of each row: augmented copies share it
    aug: np.ndarray  # 0 = the original image


def _class_order(label_names: Sequence[str], ordinal: bool | None) -> tuple[list[str], bool]:
    """Class names in training order, and whether they are graded (ordered) labels."""
    names = [str(name) for name in label_names]
    if _integer_names(names):
        # "10" must come after "9": grade order is numeric, whatever order the file stored.
        names = sorted(names, key=lambda name: int(name.strip()))
        return names, ordinal is not False
    return names, bool(ordinal)


def _integer_names(names: Sequence[str]) -> bool:
    """True when every class name is an integer: such names are grades."""
    return bool(names) and all(_INTEGER.match(name.strip()) for name in names)


def _label_index(file_names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """For each class index of a file, its index in `class_names` (-1 where the class is unknown)."""
    position = {name: i for i, name in enumerate(class_names)}
    return np.array([position.get(str(name), -1) for name in file_names], dtype=np.int64)


def _read_rows(store, class_names: Sequence[str], source, log) -> _Rows:
    """Load a store's labelled rows into memory with labels mapped onto `class_names` by name."""
    labels = np.asarray(store.labels, dtype=np.int64)
    labelled = labels >= 0
    if (~labelled).any():
        log(f"{source}: leaving out {int((~labelled).sum())} unlabelled row(s)")
    file_names = [str(name) for name in store.label_names]
    if len(labels) and labels.max(initial=-1) >= len(file_names):
        raise FeatxError(f"{source} has labels without class names; re-extract it with `featx extract`")
    to_class = _label_index(file_names, class_names)
    mapped = np.full(len(labels), -1, dtype=np.int64)
    mapped[labelled] = to_class[labels[labelled]]
    unknown = labelled & (mapped < 0)
    if unknown.any():
        missing = sorted({file_names[i] for i in labels[unknown]})
        raise FeatxError(
            f"{source} has class(es) {', '.join(missing)} that the model does not know "
            f"(known: {', '.join(class_names)}); use feature files with the same class folders"
        )
    rows = np.flatnonzero(labelled)
    aug = np.zeros(len(rows), dtype=np.int64) if store.aug is None else np.asarray(store.aug)[rows]
    # One contiguous read, then select: much faster than h5py's fancy indexing, and heads need it all in memory.
    X = np.asarray(store.features[:], dtype=np.float32)
    if len(rows) < len(labels):
        X = X[rows]
    return _Rows(X=X, y=mapped[rows], groups=_source_images(store.paths, len(labels))[rows], aug=aug)


def _source_images(paths: Sequence[str], n_rows: int) -> np.ndarray:
    """The grouping key of each row: its path; rows without one are their own group."""
    if len(paths) != n_rows:
        paths = [""] * n_rows
    return np.array([path or f"<row {i}>" for i, path in enumerate(paths)], dtype=object)


def _plain(value):
    """numpy scalars/arrays and h5py strings as plain Python values (for bundles, rows and CSV)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------------------------------
# splitting


def grouped_train_test_split(y, groups, *, test_size: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): seeded, stratified by class, whole source images on one side."""
    from sklearn.model_selection import train_test_split

    keys, first_row, group_of_row = np.unique(groups, return_index=True, return_inverse=True)
    group_label = y[first_row]
    try:
        train_groups, test_groups = train_test_split(
            np.arange(len(keys)), test_size=test_size, stratify=group_label, random_state=seed
        )
    except ValueError as error:
        raise FeatxError(
            f"cannot hold out {test_size:.0%} of {len(keys)} images stratified by class ({error}); "
            "add images, change --test-size, or pass a separate --test file"
        ) from None
    in_test = np.isin(group_of_row, test_groups)
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def _check_class_sizes(y, groups, class_names, *, need: int, where: str, fewer_folds_help: bool) -> None:
    """Refuse classes with fewer than `need` source images (classes with none are only logged)."""
    index, images = _smallest_class(y, groups)
    if images < need:
        raise FeatxError(
            f"class '{class_names[index]}' has only {images} labelled image(s) {where}; "
            f"need at least {need}: {_more_images_remedy(fewer_folds_help)}"
        )


def _smallest_class(y, groups) -> tuple[int, int]:
    """(class index, source images) of the labelled class with the fewest source images."""
    counts = {int(index): len(np.unique(groups[y == index])) for index in np.unique(y)}
    index = min(counts, key=counts.get)
    return index, counts[index]


# ----------------------------------------------------------------------------------------------
# how many images per class a head needs


def _nested_splits(estimator) -> list[tuple[int, str]]:
    """The stratified k-fold splits nested in an unfitted head, outermost first: (k, what it is for).

    Read from the estimator itself (its searches', calibration's and thresholds' cv), so the
    minimum follows the heads' real settings. Of parallel parts (pipeline steps) the deepest counts.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection._search import BaseSearchCV
    from sklearn.pipeline import Pipeline

    from featx.heads import FoldEnsemble, OrdinalThresholds

    if isinstance(estimator, FoldEnsemble):
        return [(int(estimator.n_splits), "--folds ensemble"), *_nested_splits(estimator.estimator)]
    wrappers = {BaseSearchCV: "search", CalibratedClassifierCV: "calibration", OrdinalThresholds: "thresholds"}
    for kind, purpose in wrappers.items():
        if isinstance(estimator, kind):
            inner = [] if estimator.estimator is None else _nested_splits(estimator.estimator)
            return [(_n_splits(estimator.cv), purpose), *inner]
    if isinstance(estimator, Pipeline):
        return max((_nested_splits(step) for _, step in estimator.steps), key=len, default=[])
    return []


def _n_splits(cv) -> int:
    if cv is None:
        return 5  # scikit-learn's default
    return int(cv) if isinstance(cv, (int, np.integer)) else int(cv.get_n_splits())


def _images_for_splits(splits: Sequence[int]) -> int:
    """Fewest images per class so that every nested stratified split is possible and stratified.

    A k-fold split needs k images of a class (one in each validation fold). Its training side
    keeps n - ceil(n/k) of n, which must still be enough for the split inside it.
    """
    need = 1
    for k in reversed(splits):
        n = max(k, need)
        while n - math.ceil(n / k) < need:
            n += 1
        need = n
    return need


def images_needed(name: str, folds: int | None = None) -> tuple[int, str]:
    """Fewest source images per class that head `name` (with `folds`) trains on, and why in words."""
    head = _build_head(name, metric="accuracy", n_classes=2, class_weight=None, jobs=1, seed=0, folds=folds,
                       grouped_cv=False)
    splits = _nested_splits(head)
    need = max(MIN_TRAIN_IMAGES_PER_CLASS, _images_for_splits([k for k, _ in splits]))
    why = " > ".join(f"{k}-fold {purpose}" for k, purpose in splits) or "no inner cross-validation"
    return need, why


def _fewest_images_needed(folds) -> int:
    from featx.heads import HEAD_NAMES

    return min(images_needed(name, folds)[0] for name in HEAD_NAMES)


def _trainable_heads(names, split: "_Split", *, folds, skip_unfit: bool, log) -> list[str]:
    """The heads the training rows have enough images per class for, checked before any fitting.

    A head asked for by name that cannot train is an error; with `skip_unfit` (--heads all) it is
    skipped with a note, and only having none left is an error.
    """
    index, images = _smallest_class(split.train.y, split.train.groups)
    needs = {name: images_needed(name, folds) for name in names}
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
    from featx.heads import HEAD_NAMES, is_ordinal_head

    remedies = []
    if folds and images_needed(name, None)[0] <= images:
        remedies.append("use fewer --folds (or none)")
    others = [other for other in HEAD_NAMES if other != name and (graded or not is_ordinal_head(other))
              and images_needed(other, folds)[0] <= images]
    if others:
        remedies.append(f"choose another head ({', '.join(others)})")
    remedies.append(f"add labelled images to reach {need} per class")
    return ", or ".join(remedies)


# ----------------------------------------------------------------------------------------------
# heads


def _asks_for_all(heads) -> bool:
    if isinstance(heads, str):
        heads = [name.strip() for name in heads.split(",") if name.strip()]
    return list(dict.fromkeys(heads)) == ["all"]


def _resolve_heads(heads, graded: bool, log) -> list[str]:
    from featx.heads import HEAD_NAMES, is_ordinal_head

    if isinstance(heads, str):
        heads = [name.strip() for name in heads.split(",") if name.strip()]
    names = list(dict.fromkeys(heads))  # keep order, drop repeats
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


def _scorer(metric: str, n_classes: int):
    if metric == "qwk":
        from sklearn.metrics import make_scorer

        from featx.heads import quadratic_weighted_kappa

        # Fixed labels so a fold missing a grade still measures distances between the real grades.
        return make_scorer(quadratic_weighted_kappa, labels=list(range(n_classes)))
    return metric


def _build_head(name, *, metric, n_classes, class_weight, jobs, seed, folds, grouped_cv):
    """An unfitted head: featx.heads' estimator, scored by `metric`, optionally a fold ensemble."""
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    from featx.heads import FoldEnsemble, make_head

    head = make_head(name, class_weight=class_weight, n_jobs=jobs, random_state=seed, cv=3)
    if "scoring" in head.get_params(deep=False):
        # Only the head's own search: searches nested inside a head keep the scoring their author chose
        # (e.g. log-loss where calibrated probabilities matter more than hits).
        if metric == "accuracy" and name == "logreg":
            # On a few hundred rows, 3-fold accuracy ties across many C and the first (strongest
            # regularisation) wins, leaving probabilities near 0.5 for clear cases. Log loss is a
            # proper scoring rule: it picks C by how good the probabilities are. Accuracy is reported.
            head.set_params(scoring={"accuracy": "accuracy", "log_loss": "neg_log_loss"}, refit="log_loss")
        else:
            head.set_params(scoring=_scorer(metric, n_classes))
    if grouped_cv and isinstance(head, GridSearchCV):
        # Augmented copies of one image in both the search's train and validation folds would make
        # the cross-validated score (and the chosen C) optimistic. Fold ensembles keep this splitter
        # for their members' searches; nested searches (ordinal's) are made grouped when fitted.
        head.set_params(cv=StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed))
    if folds:
        head = FoldEnsemble(head, n_splits=int(folds), random_state=seed)
    return head


def _fit(head, X, y, groups):
    """Fit, passing `groups` (None unless rows share a source image) where the head takes it."""
    from featx.heads._validation import takes_groups

    # Searches take groups through **params (for their splitter); FoldEnsemble and OrdinalThresholds name it.
    if groups is not None and takes_groups(head):
        return head.fit(X, y, groups=groups)
    return head.fit(X, y)


def _members(head) -> list:
    """The fitted models a head consists of: the fold models of a FoldEnsemble, else the head itself."""
    return list(getattr(head, "estimators_", None) or [head])


def _inner_objects(model) -> list:
    """`model` and the fitted estimators nested in it (search winners, wrapped models, pipeline steps)."""
    found, queue = [], [model]
    while queue:
        obj = queue.pop(0)
        found.append(obj)
        for attribute in ("best_estimator_", "estimator_"):
            inner = getattr(obj, attribute, None)
            if inner is not None:
                queue.append(inner)
        queue += [step for _, step in getattr(obj, "steps", []) if hasattr(step, "fit")]
    return found


def _chosen_params(head) -> dict:
    """What each model chose while fitting: searched hyperparameters, ridge alpha, ordinal thresholds.

    Fold ensembles list one value per fold where the folds disagree.
    """
    per_member = []
    for member in _members(head):
        chosen = {}
        for obj in _inner_objects(member):
            if hasattr(obj, "best_params_"):
                # "logisticregression__C" -> "C": the step path is noise in a table.
                chosen.update({key.split("__")[-1]: _plain(value) for key, value in obj.best_params_.items()})
            if hasattr(obj, "alpha_"):
                chosen["alpha"] = _plain(obj.alpha_)
        per_member.append(chosen)
    params = {}
    for key in dict.fromkeys(key for chosen in per_member for key in chosen):
        values = [chosen.get(key) for chosen in per_member]
        params[key] = values[0] if all(value == values[0] for value in values) else values
    thresholds = getattr(head, "thresholds_", None)
    if thresholds is not None:
        params["thresholds"] = [round(float(t), 3) for t in np.ravel(thresholds)]
    return params


def _cv_score(head) -> float | None:
    """The head's own search's best cross-validated score (mean over fold models), or None.

    Searches nested deeper (e.g. inside the ordinal head) score something else, such as log-loss,
    so they are not reported beside the test metric.
    """
    scores = [_reported_search_score(member) for member in _members(head) if hasattr(member, "best_score_")]
    return float(np.mean(scores)) if scores else None


def _reported_search_score(search) -> float:
    """The best candidate's cross-validated score in the reported metric, not the log loss it was chosen by."""
    if isinstance(search.scoring, dict):
        shown = next(key for key in search.scoring if key != search.refit)
        return float(search.cv_results_[f"mean_test_{shown}"][search.best_index_])
    return float(search.best_score_)


# ----------------------------------------------------------------------------------------------
# scoring and the report


def _score_row(y_true, y_pred, *, n_classes, with_qwk, bootstrap, seed) -> dict:
    """accuracy, macro F1 and (optionally) QWK on the test rows, each with a bootstrap interval."""
    from featx.report import accuracy, bootstrap_ci, f1_macro, quadratic_weighted_kappa

    metric_fns = {
        "accuracy": accuracy,
        # Classes fixed on the full test set: a resample that misses a class still averages over it.
        "f1_macro": partial(f1_macro, labels=np.union1d(y_true, y_pred)),
    }
    if with_qwk:
        metric_fns["qwk"] = partial(quadratic_weighted_kappa, labels=np.arange(n_classes))
    row = {}
    for key, fn in metric_fns.items():
        row[key] = float(fn(y_true, y_pred))
        row[f"{key}_ci"] = list(bootstrap_ci(y_true, y_pred, fn, n=bootstrap, seed=seed)) if bootstrap else None
    return row


def _details(head_name, y_true, y_pred, class_names) -> tuple[str, np.ndarray]:
    """sklearn's classification report and the confusion matrix text for one head."""
    from sklearn.metrics import classification_report

    from featx.report import confusion_matrix, confusion_text

    present = np.union1d(y_true, y_pred)
    report = classification_report(
        y_true, y_pred, labels=present, target_names=[class_names[i] for i in present], digits=3, zero_division=0
    )
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    text = (
        f"classification report ({head_name}):\n{report.rstrip()}\n\n"
        f"confusion matrix ({head_name}; rows: true class, columns: predicted):\n{confusion_text(cm, class_names)}"
    )
    return text, cm


def _best_head(rows: Sequence[dict], metric: str) -> str:
    def score(row):
        value = row.get(metric)
        return -math.inf if value is None or not math.isfinite(value) else value

    return max(rows, key=score)["head"]  # max keeps the first of equals: the order asked for


# ----------------------------------------------------------------------------------------------
# train


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
    jobs: int = 1,
    output="models",
    seed: int = 0,
    bootstrap: int = 1000,
    log: Callable[[str], object] = print,
) -> TrainResult:
    """Fit each head on a feature file, score it on held-out rows, save one bundle per head.

    test: a second, compatible feature file to score on; otherwise a seeded split of `test_size`,
    stratified by class and grouped by source image (augmented copies stay together).
    ordinal: None = graded when every class name is an integer; True/False force it on/off.
    metric: picks the best head and scores the heads' hyperparameter searches.
    """
    from featx.report import save_confusion_png

    _check_options(metric=metric, folds=folds, test=test, test_size=test_size)
    features = Path(features)
    split = _load_split(features, test=test, test_size=float(test_size), ordinal=ordinal, folds=folds, seed=seed,
                        log=log)
    head_names = _trainable_heads(_resolve_heads(heads, split.graded, log), split, folds=folds,
                                  skip_unfit=_asks_for_all(heads), log=log)
    data, held_out, class_names = split.train, split.test, split.class_names
    log(
        f"training {len(head_names)} head(s) on {len(data.y)} rows of {features} ({len(class_names)} "
        f"{'graded ' if split.graded else ''}classes: {', '.join(class_names)}); "
        f"testing on {len(held_out.y)} rows of {split.test_label}"
    )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    options = dict(metric=metric, class_weight=class_weight, jobs=jobs, seed=seed, folds=folds, bootstrap=bootstrap)
    extra = _plain({
        "features": str(features), "test": None if test is None else str(test),
        "test_size": None if test is not None else float(test_size), "seed": seed, "folds": folds,
        "class_weight": class_weight, "metric": metric, "train_rows": len(data.y), "test_rows": len(held_out.y),
    })
    rows, details, bundles, pngs = [], {}, {}, {}
    for name in head_names:
        head, row, y_pred = _train_head(name, split, **options)
        rows.append(row)
        details[name], cm = _details(name, held_out.y, y_pred, class_names)
        stem = output / f"{features.stem}-{name}"
        pngs[name] = save_confusion_png(cm, class_names, f"{stem}-confusion.png", title=f"{features.stem}: {name}")
        bundles[name] = save_bundle(
            f"{stem}.skops", head, label_names=class_names, recipe=split.recipe, metrics=row, head_name=name,
            graded=split.graded, extra=extra,
        )
        log(f"  {name}: {metric} {_format_optional(row.get(metric))} in {row['fit_seconds']:.2f} s -> {bundles[name]}")

    best = _best_head(rows, metric)
    report = _train_report(rows, best, metric, details[best], bundles, pngs)
    return TrainResult(
        rows=rows, best=best, bundles=bundles, confusion_pngs=pngs, report=report, metric=metric,
        label_names=class_names, graded=split.graded,
    )


@dataclass
class _Split:
    """Training and test rows, ready for the heads."""

    train: _Rows
    test: _Rows
    class_names: list[str]
    graded: bool
    recipe: dict
    test_label: str  # what was tested on, in words
    train_images_note: str = ""  # how the training images were counted, for messages


def _check_options(*, metric, folds, test, test_size) -> None:
    if metric not in METRICS:
        raise FeatxError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
    if folds is not None and int(folds) < 2:
        raise FeatxError(f"folds must be at least 2 (got {folds}); leave it out for a single model")
    if test is None and not 0.0 < float(test_size) < 1.0:
        raise FeatxError(f"test_size must be between 0 and 1 (got {test_size}), e.g. 0.25")


def _load_split(features: Path, *, test, test_size, ordinal, folds, seed, log) -> _Split:
    """Read the labelled rows and split them (or read the test file); refuse what cannot train."""
    with _open_store(features) as store:
        class_names, graded = _class_order(store.label_names, ordinal)
        recipe = _bundle_recipe(store)
        data = _read_rows(store, class_names, features, log)
        if test is not None:
            with _open_store(test) as test_store:
                store.check_compatible(test_store)
                held_out = _read_rows(test_store, class_names, Path(test), log)
    present = np.unique(data.y)
    if len(present) < 2:
        raise FeatxError(f"{features} has fewer than 2 labelled classes; a classifier needs at least 2")
    absent = [name for index, name in enumerate(class_names) if index not in present]
    if absent:
        log(f"class(es) {', '.join(absent)} have no labelled rows in {features}; no model will predict them")
    # The least any head needs; each head's own need is checked once the heads are known.
    train_need = _fewest_images_needed(folds)
    fewer_folds_help = train_need > _fewest_images_needed(None)
    note = ""
    if test is None:
        _check_class_sizes(data.y, data.groups, class_names, need=train_need + 1,
                           where=f"in {features} ({train_need} to train, 1 to test)", fewer_folds_help=fewer_folds_help)
        train_rows, test_rows = grouped_train_test_split(data.y, data.groups, test_size=test_size, seed=seed)
        data, held_out = _subset(data, train_rows), _subset(data, test_rows)
        test_label = f"{len(np.unique(held_out.groups))} held-out images ({test_size:.0%}, seed {seed})"
        note = f" after holding out {test_size:.0%} to test (--test-size)"
    else:
        test_label = str(test)
    _check_class_sizes(data.y, data.groups, class_names, need=train_need, where="to train on",
                       fewer_folds_help=fewer_folds_help)
    held_out = _originals(held_out)
    if len(held_out.y) == 0:
        raise FeatxError(f"no labelled original images to test on in {test_label}; pass a labelled test file")
    return _Split(train=data, test=held_out, class_names=class_names, graded=graded, recipe=recipe,
                  test_label=test_label, train_images_note=note)


def _train_head(name, split: _Split, *, metric, class_weight, jobs, seed, folds, bootstrap):
    """Fit one head and score it on the test rows: (fitted head, leaderboard row, test predictions)."""
    data, held_out = split.train, split.test
    n_classes = len(split.class_names)
    grouped = len(np.unique(data.groups)) < len(data.groups)  # augmented copies present
    head = _build_head(name, metric=metric, n_classes=n_classes, class_weight=class_weight, jobs=jobs, seed=seed,
                       folds=folds, grouped_cv=grouped)
    started = time.perf_counter()
    try:
        _fit(head, data.X, data.y, data.groups if grouped else None)
    except ValueError as error:
        raise FeatxError(
            f"head '{name}' could not be trained ({_last_line(error)}); {_more_images_remedy(folds)}"
        ) from None
    fit_seconds = time.perf_counter() - started
    y_pred = np.asarray(head.predict(held_out.X), dtype=np.int64)
    row = {"head": name, "params": _chosen_params(head), "cv_score": _cv_score(head)}
    row.update(_score_row(held_out.y, y_pred, n_classes=n_classes, with_qwk=split.graded or metric == "qwk",
                          bootstrap=bootstrap, seed=seed))
    row["fit_seconds"] = round(fit_seconds, 3)
    return head, row, y_pred


def _last_line(error: Exception) -> str:
    """An error's message in one line: a search whose fits all failed ends with their cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _more_images_remedy(suggest_fewer_folds) -> str:
    return "add labelled images per class" + (" or use fewer --folds" if suggest_fewer_folds else "")


def _format_optional(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _subset(data: _Rows, rows: np.ndarray) -> _Rows:
    return _Rows(X=data.X[rows], y=data.y[rows], groups=data.groups[rows], aug=data.aug[rows])


def _originals(data: _Rows) -> _Rows:
    """Only the rows of original images: scores are measured on those, never on augmented copies."""
    return _subset(data, np.flatnonzero(data.aug == 0)) if (data.aug > 0).any() else data


def _open_store(path):
    from featx.store import FeatureStore

    return FeatureStore(path)  # it explains a missing or half-extracted file itself


def _bundle_recipe(store) -> dict:
    """How the store's features were made (identity, preprocessing, resize), so predict repeats it exactly."""
    recipe = _plain(dict(store.recipe))
    for key in _EXTRACTION_KEYS:
        if key in store.attrs:
            recipe[key] = _plain(store.attrs[key])
    return recipe


def _train_report(rows, best, metric, best_details, bundles, pngs) -> str:
    from featx.report import leaderboard_table

    lines = [
        leaderboard_table(rows),
        f"(cv score: the head's hyperparameter search, mean 3-fold {metric} on the training rows; "
        "intervals: 95% bootstrap over the test rows)",
        "",
        f"best head by {metric}: {best} -> {bundles[best]} (confusion matrix: {pngs[best]})",
        "",
        best_details,
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# evaluate


def _as_bundle(bundle) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def _same(a, b) -> bool:
    """Recipe values equal up to representation (64 vs "64", None vs "")."""
    return ("" if a is None else str(a)) == ("" if b is None else str(b))


def _check_recipe(bundle: Bundle, store, source, log) -> None:
    """Refuse features of another recipe; only note a test-time augmentation difference."""
    store_recipe = _plain(dict(store.recipe))
    for key in RECIPE_KEYS:
        model_value, file_value = bundle.recipe.get(key), store_recipe.get(key)
        if not _same(model_value, file_value):
            raise FeatxError(
                f"{source} has {key} {file_value!r} but the model was trained on {key} {model_value!r}; "
                "extract features with the model's recipe"
            )
    if not _same(bundle.recipe.get("tta"), store_recipe.get("tta")):
        log(f"note: {source} and the model differ in test-time augmentation; scores may shift slightly")


def evaluate(bundle, features, *, bootstrap: int = 1000, log: Callable[[str], object] = print) -> EvalResult:
    """Score a saved bundle (path or Bundle) on another labelled feature file, original rows only."""
    from featx.report import leaderboard_table

    model = _as_bundle(bundle)
    features = Path(features)
    with _open_store(features) as store:
        _check_recipe(model, store, features, log)
        data = _read_rows(store, model.label_names, features, log)
    data = _originals(data)
    if len(data.y) == 0:
        raise FeatxError(f"{features} has no labelled images to evaluate on; use `featx predict` for unlabelled images")
    expected_dim = getattr(model.head, "n_features_in_", None)
    if expected_dim is not None and data.X.shape[1] != expected_dim:
        raise FeatxError(
            f"{features} has {data.X.shape[1]} features per row but the model expects {expected_dim}; "
            "extract features with the model's recipe"
        )
    y_pred = np.asarray(model.head.predict(data.X), dtype=np.int64)
    row = {"head": model.head_name, "params": model.metrics.get("params"), "cv_score": model.metrics.get("cv_score")}
    row.update(_score_row(data.y, y_pred, n_classes=len(model.label_names),
                          with_qwk=model.graded or "qwk" in model.metrics, bootstrap=bootstrap, seed=0))
    row["fit_seconds"] = None
    details, _ = _details(model.head_name, data.y, y_pred, model.label_names)
    report = "\n".join([
        f"{model.path or model.head_name} on {features} ({len(data.y)} images)",
        leaderboard_table([row]),
        "",
        details,
    ])
    return EvalResult(row=row, report=report, head_name=model.head_name, n_rows=len(data.y))


# ----------------------------------------------------------------------------------------------
# predict


def _expand_images(images) -> list[str]:
    """Files as given, folders expanded recursively to their image files (sorted)."""
    from imutils.paths import list_images

    if isinstance(images, (str, Path)):
        images = [images]
    files = []
    for item in images:
        item = Path(item)
        if item.is_dir():
            found = sorted(list_images(str(item)))
            if not found:
                raise FeatxError(f"folder {item} has no image files; pass a folder of images or image files")
            files += found
        elif item.is_file():
            files.append(str(item))
        else:
            raise FeatxError(f"{item} not found; pass existing image files or folders")
    if not files:
        raise FeatxError("no images given; pass image files or folders")
    return files


def _expected_grades(model: Bundle, X) -> np.ndarray | None:
    from featx.heads import is_ordinal_head

    if not (model.graded and is_ordinal_head(model.head_name) and hasattr(model.head, "expected_grade")):
        return None
    expected = np.asarray(model.head.expected_grade(X), dtype=float)
    names = model.label_names
    if _integer_names(names):
        # The head works in class positions 0..K-1; report grades in the user's own numbers.
        return np.interp(expected, np.arange(len(names)), [int(name) for name in names])
    return expected


def predict(
    bundle, images, *, output=None, batch_size: int = 32, log: Callable[[str], object] = print
) -> PredictResult:
    """Predict image files and folders with a saved bundle; write a CSV (path, predicted, p_<class>...)."""
    from featx.backbones import from_recipe
    from featx.runner import features_for_files

    model = _as_bundle(bundle)
    files = _expand_images(images)
    output = Path("predictions.csv") if output is None else Path(output)
    recipe = model.recipe
    backbone = from_recipe(recipe)
    log(f"extracting {len(files)} image(s) with {recipe.get('backbone')} for {model.head_name}")
    X, kept, skipped = features_for_files(
        files, backbone, tta=recipe.get("tta") or None, crop=recipe.get("resize") == "crop", batch_size=batch_size
    )
    for path, reason in skipped:
        log(f"skipped {path}: {reason}")
    if not kept:
        first = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise FeatxError(f"none of the {len(files)} file(s) could be decoded as an image{first}; pass image files")

    head = model.head
    names = model.label_names
    predicted = np.asarray(head.predict(X), dtype=np.int64)
    columns = ["path", "predicted"]
    probabilities = None
    if hasattr(head, "predict_proba"):
        probabilities = np.zeros((len(kept), len(names)))
        probabilities[:, np.asarray(head.classes_, dtype=np.int64)] = head.predict_proba(X)
        columns += [f"p_{name}" for name in names]
    expected = _expected_grades(model, X)
    if expected is not None:
        columns.append("expected_grade")

    rows = []
    for i, path in enumerate(kept):
        row = {"path": path, "predicted": names[predicted[i]]}
        if probabilities is not None:
            row.update({f"p_{name}": float(probabilities[i, j]) for j, name in enumerate(names)})
        if expected is not None:
            row["expected_grade"] = float(expected[i])
        rows.append(row)
    _write_csv(output, columns, rows)
    return PredictResult(output=output, rows=rows, skipped=list(skipped))


def _write_csv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})

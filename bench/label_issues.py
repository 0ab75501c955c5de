"""Label issues people can believe: planted label errors found, and how much clean data gets flagged.

    python bench/label_issues.py [--seeds 0,1,2] [--share 0.05] [--options] [--timing] [--backbone NAME]
                                 [--imbalance 0.1] [--cache /tmp/featx-bench-label-issues]

Real photos with features from the default recipe: the shared ants/bees (``../shared/data/hymenoptera``,
2 classes) and the demo's handwritten digits (10 classes, written by ``featx.demo.write_digits``), both
extracted once into --cache. Ants/bees is measured twice: as it is, and on a base cleaned of the photos in
`NOT_THE_CLASS` (looked at by eye: no insect of the class in them), which are dropped before planting, since a
photo that is not of its class is a real label error, not a false alarm. For each seed, `share` of the rows
move to a random other class; the default logreg head is fitted on the planted labels and its own out-of-fold
probabilities (and the rows' features, as `featx train` passes them) are judged:

- precision in the top n (n = rows moved) and recall in the top 2n, of the issue list (what the page and
  CSV list), of that list without the neighbour vote, of the list cleanlab's prune_by_class gives (featx's
  list at 563ad3f), and of the label-quality ranking of every row; means over the seeds at the end;
- each cleanlab ranking (self-confidence, normalized margin, confidence-weighted entropy) and the rule featx
  had before (193b0d8, read with `git show`; skipped outside a git checkout);
- with --options: cleanlab's default list (prune_by_noise_rate), and rankings from better probabilities at a
  cost, each timed: logreg with 5 folds, logreg blended with a 10-nearest-neighbour cosine vote,
  cleanlab's ensemble label quality of those two, and a second logreg fitted without the 2n most doubtful rows;
- the share flagged on the clean labels, and on the shared knee grades (graded rule) when present; there,
  `share` of the rows moved at least 2 grades, and the recall and precision of the graded list;
- with --backbone: the photos' features from that backbone instead of the default recipe's (how much the
  lists owe to the features);
- with --imbalance R: the digits again with class k kept at R ** (k / 9) of its rows (the last class at R),
  since confident learning's count and the one list over all classes were chosen on balanced sets;
- with --timing: what the neighbour vote costs, on bench/heads_speed.py's synthetic 10,000 x 1,280 rows
  taken as plain classes with `share` moved: find_label_issues with and without the features, alternating.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
BEFORE = "193b0d8"
# Photos of ants/bees dropped for the cleaned base (relative to the dataset root), each looked at by eye: no
# insect of its class can be seen. The clean-label list's other top photos stay: swarms of bees, a mining bee on
# a leaf, ants a few dozen pixels long on flowers, a small red-bodied bee; those labels are right.
NOT_THE_CLASS = {
    "train/ants/1473187633_63ccaacea6.jpg": "two yellowjacket wasps on a twig, no ant",
    "train/ants/466430434_4000737de9.jpg": "dandelions; the only insect is a speck of a few pixels at a flower's "
                                           "centre, not recognisably an ant",
}


def _features(cache: Path, name: str, dataset: Path, backbone: str | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All labelled rows of every split of `dataset`, extracted once into `cache` with the default recipe (or
    `backbone`), and their image paths relative to `dataset`."""
    import h5py

    from featx.extract import extract

    stem = f"{backbone}_{name}" if backbone else name  # not "{name}-...": the default's glob would take it
    files = sorted(cache.glob(f"{stem}-*.h5")) + sorted(cache.glob(f"{stem}.h5"))
    if not files:
        choice = {"backbone": backbone} if backbone else {}
        extract(str(dataset), output=str(cache / f"{stem}.h5"), progress=False, log=lambda _: None, **choice)
        files = sorted(cache.glob(f"{stem}-*.h5")) + sorted(cache.glob(f"{stem}.h5"))
    X, y, paths = [], [], []
    for file in files:
        with h5py.File(file, "r") as handle:
            X.append(handle["features"][:].astype(np.float32))
            y.append(handle["labels"][:])
            root = Path(handle.attrs["dataset_root"])
            paths += [os.path.relpath(root / p.decode(), dataset) for p in handle["paths"][:]]
    X, y = np.concatenate(X), np.concatenate(y)
    keep = np.flatnonzero(y >= 0)
    return X[keep], y[keep], [paths[i] for i in keep]


def _imbalanced(X, y, paths, smallest: float, seed: int = 0):
    """The rows with class k (of K) kept at smallest ** (k / (K - 1)) of its rows, a seeded draw."""
    rng = np.random.default_rng(seed)
    n_classes = int(y.max()) + 1
    keep = np.sort(np.concatenate([
        rng.choice(rows, size=max(2, round(len(rows) * smallest ** (k / (n_classes - 1)))), replace=False)
        for k in range(n_classes) for rows in [np.flatnonzero(y == k)]]))
    print(f"digits imbalanced: class sizes {np.bincount(y[keep]).tolist()}")
    return X[keep], y[keep], [paths[i] for i in keep]


def _without(X, y, paths, dropped: dict[str, str]):
    """The rows whose path is not in `dropped`; says which were dropped and why."""
    missing = set(dropped) - set(paths)
    if missing:
        raise SystemExit(f"not in the data set: {sorted(missing)}")
    keep = np.array([path not in dropped for path in paths])
    for path, why in dropped.items():
        print(f"  dropped {path}: {why}")
    return X[keep], y[keep], [path for path, kept in zip(paths, keep) if kept]


def _old_rule():
    """featx's label-issue rule before cleanlab, or None outside a git checkout."""
    try:
        source = subprocess.run(["git", "show", f"{BEFORE}:featx/report/label_issues.py"], cwd=HERE, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "label_issues_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("label_issues_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.find_label_issues


def _oof(X, y, n_classes: int, graded: bool = False) -> tuple[np.ndarray, float]:
    """The default head's own out-of-fold probabilities (what `featx train` judges labels with), fit seconds."""
    from featx.heads import make_head

    started = time.perf_counter()
    head = make_head("ordinal" if graded else "logreg", n_classes=n_classes).fit(X, y)
    search = head.estimator_ if graded else head
    probabilities = np.zeros((len(y), n_classes))
    probabilities[:, search.classes_] = search.oof_proba_
    return probabilities, time.perf_counter() - started


def _scores(order, planted: set, n: int, tally: dict | None = None, name: str = "") -> str:
    found = [int(row) in planted for row in order]
    precision, recall = sum(found[:n]) / n, sum(found[:2 * n]) / n
    if tally is not None:
        tally.setdefault(name, []).append((precision, recall))
    return f"P@n {precision:.3f}  R@2n {recall:.3f}"


def _means(name: str, tally: dict) -> None:
    print(f"{name}, mean over {len(next(iter(tally.values())))} seeds (min):")
    for line, scores in tally.items():
        scores = np.array(scores)
        print(f"  {line:38s} P@n {scores[:, 0].mean():.3f} ({scores[:, 0].min():.3f})  "
              f"R@2n {scores[:, 1].mean():.3f} ({scores[:, 1].min():.3f})")


def _knn_vote(X, y, n_classes: int, k: int = 10) -> tuple[np.ndarray, float]:
    """Class shares among each row's k nearest other rows by cosine of centred features (faiss, exact), seconds."""
    from featx import audit_index

    started = time.perf_counter()
    unit = audit_index.unit_rows(X - X.mean(axis=0))
    _, ids = audit_index.search(audit_index.flat_index(unit), unit, k + 1)
    votes = np.zeros((len(y), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), y[ids[:, 1:]].ravel()), 1.0)  # ids[:, 0] is the row itself
    return (votes + 1.0 / n_classes) / (k + 1), time.perf_counter() - started


def options(X, given, probabilities, marked: set, n: int) -> None:
    """Other lists and rankings, and better probabilities at a cost: a second model, or 5 folds."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_ensemble_scores, get_label_quality_scores

    from featx.heads import make_head

    n_classes = probabilities.shape[1]

    def rank(p):
        return np.argsort(get_label_quality_scores(given, p), kind="stable")

    flags = np.flatnonzero(cleanlab_issues(given, probabilities, filter_by="prune_by_noise_rate", n_jobs=1))
    flags = flags[np.argsort(get_label_quality_scores(given, probabilities)[flags], kind="stable")]
    print(f"  list by prune_by_noise_rate ({len(flags)} flagged)  {_scores(flags, marked, n)}")
    started = time.perf_counter()
    five = make_head("logreg", n_classes=n_classes, cv=5).fit(X, given)
    seconds = time.perf_counter() - started
    folds5 = np.zeros_like(probabilities)
    folds5[:, five.classes_] = five.oof_proba_
    print(f"  ranking, logreg with 5 folds (fit {seconds:.1f} s)   {_scores(rank(folds5), marked, n)}")
    votes, seconds = _knn_vote(X, given, n_classes)
    blend = (probabilities + votes) / 2
    print(f"  ranking, logreg + 10-NN vote ({seconds:.2f} s)    {_scores(rank(blend), marked, n)}")
    ensemble = get_label_quality_ensemble_scores(given, [probabilities, votes], verbose=False)
    print(f"  ranking, cleanlab ensemble score of the two  {_scores(np.argsort(ensemble, kind='stable'), marked, n)}")
    # Planted errors also mislead the model about their clean neighbours: a second fit without the 2n most
    # doubtful rows judges those rows (unseen by it) and its own out-of-fold rows again.
    started = time.perf_counter()
    doubtful = rank(probabilities)[: 2 * n]
    kept = np.setdiff1d(np.arange(len(given)), doubtful)
    second = make_head("logreg", n_classes=n_classes).fit(X[kept], given[kept])
    again = np.zeros_like(probabilities)
    again[np.ix_(kept, second.classes_)] = second.oof_proba_
    again[np.ix_(doubtful, second.classes_)] = second.predict_proba(X[doubtful])
    seconds = time.perf_counter() - started
    print(f"  ranking, refit without the 2n most doubtful ({seconds:.1f} s)  {_scores(rank(again), marked, n)}")


def planted(name, X, truth, seeds, share, old_rule, more: bool = False) -> None:
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    from featx.report.label_issues import find_label_issues

    n_classes = int(truth.max()) + 1
    tally: dict = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        moved = rng.choice(len(truth), size=max(1, round(share * len(truth))), replace=False)
        given = truth.copy()
        given[moved] = (truth[moved] + rng.integers(1, n_classes, size=len(moved))) % n_classes
        probabilities, seconds = _oof(X, given, n_classes)
        n, marked = len(moved), set(moved.tolist())
        started = time.perf_counter()
        issues = find_label_issues(probabilities, given, features=X)
        seconds_issues = time.perf_counter() - started
        plain = find_label_issues(probabilities, given)
        print(f"{name} seed {seed}: {n} of {len(truth)} moved; head fit {seconds:.1f} s, "
              f"label issues {seconds_issues:.2f} s", flush=True)
        line = "featx list"
        print(f"  {line} ({len(issues)} flagged)            {_scores(issues.rows, marked, n, tally, line)}")
        line = "featx list without neighbours"
        print(f"  {line} ({len(plain)})   {_scores(plain.rows, marked, n, tally, line)}")
        by_class = np.flatnonzero(cleanlab_issues(given, probabilities, filter_by="prune_by_class", n_jobs=1))
        by_class = by_class[np.argsort(get_label_quality_scores(given, probabilities)[by_class], kind="stable")]
        line = "list by prune_by_class (563ad3f)"
        print(f"  {line} ({len(by_class)})  {_scores(by_class, marked, n, tally, line)}")
        for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
            ranking = np.argsort(get_label_quality_scores(given, probabilities, method=method), kind="stable")
            line = f"ranking of every row by {method}"
            print(f"  {line:41s}  {_scores(ranking, marked, n, tally, line)}")
        if old_rule is not None:
            before = old_rule(probabilities, given)
            line = f"before ({BEFORE})"
            print(f"  {line} ({len(before)} flagged)       {_scores(before.rows, marked, n, tally, line)}")
        if more:
            options(X, given, probabilities, marked, n)
    _means(name, tally)


def planted_grades(name, X, truth, seeds, share) -> None:
    """Graded labels: `share` of the rows moved at least GRADE_DISTANCE grades; recall and precision of the list."""
    from featx.report.label_issues import GRADE_DISTANCE, find_label_issues

    n_classes = int(truth.max()) + 1
    for seed in seeds:
        rng = np.random.default_rng(seed)
        moved = rng.choice(len(truth), size=max(1, round(share * len(truth))), replace=False)
        given = truth.copy()
        for row in moved:
            given[row] = rng.choice([g for g in range(n_classes) if abs(g - truth[row]) >= GRADE_DISTANCE])
        probabilities, seconds = _oof(X, given, n_classes, graded=True)
        issues = find_label_issues(probabilities, given, graded=True)
        found = int(np.isin(issues.rows, moved).sum())
        print(f"{name} seed {seed}: {len(moved)} of {len(truth)} moved >= {GRADE_DISTANCE} grades; {len(issues)} "
              f"listed; recall {found / len(moved):.3f}, precision {found / max(len(issues), 1):.3f}  "
              f"{_scores(issues.rows, set(moved.tolist()), len(moved))}; head fit {seconds:.1f} s", flush=True)


def clean(name, X, y, *, graded: bool, old_rule, paths=None) -> None:
    from featx.report.label_issues import find_label_issues

    n_classes = int(y.max()) + 1
    probabilities, seconds = _oof(X, y, n_classes, graded=graded)
    issues = find_label_issues(probabilities, y, graded=graded, features=None if graded else X)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    line = (f"{name} clean labels: {len(issues)} of {len(y)} flagged ({len(issues) / len(y):.1%}); out-of-fold "
            f"accuracy {accuracy:.3f}; head fit {seconds:.1f} s")
    if old_rule is not None:
        line += f"; before: {len(old_rule(probabilities, y)) / len(y):.1%}"
    print(line, flush=True)
    if paths is not None:
        for row, quality in zip(issues.rows[:10], issues.quality[:10]):
            print(f"  {paths[row]} (labelled {y[row]}, quality {quality:.3f})")


def timing(share: float, repeats: int = 3) -> None:
    """Seconds of find_label_issues with and without the neighbour vote on 10,000 x 1,280 rows, alternating."""
    sys.path.insert(0, str(HERE))
    from heads_speed import synthetic

    from featx.report.label_issues import find_label_issues

    X, truth, _, _ = synthetic()
    n_classes = int(truth.max()) + 1
    rng = np.random.default_rng(0)
    moved = rng.choice(len(truth), size=round(share * len(truth)), replace=False)
    given = truth.copy()
    given[moved] = (truth[moved] + rng.integers(1, n_classes, size=len(moved))) % n_classes
    probabilities, seconds = _oof(X, given, n_classes)
    print(f"timing: {X.shape[0]:,} x {X.shape[1]:,} synthetic rows as {n_classes} plain classes, {len(moved)} moved; "
          f"head fit {seconds:.1f} s", flush=True)
    for _ in range(repeats):
        for features in (None, X):
            load = os.getloadavg()[0]
            started = time.perf_counter()
            issues = find_label_issues(probabilities, given, features=features)
            seconds = time.perf_counter() - started
            print(f"  {'with' if features is not None else 'without'} neighbours: {seconds:.3f} s "
                  f"({len(issues)} listed, {_scores(issues.rows, set(moved.tolist()), len(moved))}); "
                  f"load {load:.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--options", action="store_true",
                        help="also other lists and rankings: 5-fold logreg, a 10-NN vote, cleanlab's ensemble score")
    parser.add_argument("--timing", action="store_true",
                        help="also time the neighbour vote on 10,000 x 1,280 synthetic rows")
    parser.add_argument("--backbone", help="the photos' features from this backbone (default: the default recipe)")
    parser.add_argument("--imbalance", type=float, metavar="R",
                        help="also the digits with class k kept at R ** (k / 9) of its rows")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "featx-bench-label-issues"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} (1, 5, 15 min)")
    old_rule = _old_rule()

    from featx.demo import write_digits

    write_digits(cache / "digits")
    sets = {"digits": _features(cache, "digits", cache / "digits", args.backbone)}
    if args.imbalance:
        sets["digits imbalanced"] = _imbalanced(*sets["digits"], args.imbalance)
    if (SHARED / "hymenoptera").is_dir():
        sets["ants/bees"] = _features(cache, "hymenoptera", SHARED / "hymenoptera", args.backbone)
        print(f"ants/bees cleaned of {len(NOT_THE_CLASS)} photos not of their class:")
        sets["ants/bees cleaned"] = _without(*sets["ants/bees"], NOT_THE_CLASS)
    else:
        print(f"skipping ants/bees: {SHARED / 'hymenoptera'} is absent")
    for name, (X, y, paths) in sets.items():
        planted(name, X, y, seeds, args.share, old_rule, more=args.options)
        clean(name, X, y, graded=False, old_rule=old_rule, paths=paths)
    knee = SHARED / "features" / "knee_kl_full-train.h5"
    if knee.is_file():
        import h5py

        with h5py.File(knee, "r") as handle:
            X, y = handle["features"][:].astype(np.float32), handle["labels"][:]
        clean("knee grades", X, y, graded=True, old_rule=old_rule)
        planted_grades("knee grades", X, y, seeds, args.share)
    else:
        print(f"skipping knee grades: {knee} is absent")
    if args.timing:
        timing(args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())

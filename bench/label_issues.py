"""Label issues people can believe: planted label errors found, and how much clean data gets flagged.

    python bench/label_issues.py [--seeds 0,1,2] [--share 0.05] [--options] [--cache /tmp/featx-bench-label-issues]

Real photos with features from the default recipe: the shared ants/bees (``../shared/data/hymenoptera``,
2 classes) and the demo's handwritten digits (10 classes, written by ``featx.demo.write_digits``), both
extracted once into --cache. For each seed, `share` of the rows move to a random other class; the default
logreg head is fitted on the planted labels and its own out-of-fold probabilities are judged:

- precision in the top n (n = rows moved) and recall in the top 2n, of the issue list (what the page and
  CSV list) and of the label-quality ranking of every row (the order to review in past the list);
- each cleanlab ranking (self-confidence, normalized margin, confidence-weighted entropy) and the rule featx
  had before (193b0d8, read with `git show`; skipped outside a git checkout);
- with --options: cleanlab's default list (prune_by_noise_rate), and rankings from better probabilities at a
  cost, each timed: logreg with 5 folds, logreg blended with a 10-nearest-neighbour cosine vote,
  cleanlab's ensemble label quality of those two, and a second logreg fitted without the 2n most doubtful rows;
- the share flagged on the clean labels, and on the shared knee grades (graded rule) when present; there,
  `share` of the rows moved at least 2 grades, and the recall and precision of the graded list.
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


def _features(cache: Path, name: str, dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """All labelled rows of every split of `dataset`, extracted with the default recipe once into `cache`."""
    import h5py

    from featx.extract import extract

    files = sorted(cache.glob(f"{name}*.h5"))
    if not files:
        extract(str(dataset), output=str(cache / f"{name}.h5"), progress=False, log=lambda _: None)
        files = sorted(cache.glob(f"{name}*.h5"))
    X, y = [], []
    for file in files:
        with h5py.File(file, "r") as handle:
            X.append(handle["features"][:].astype(np.float32))
            y.append(handle["labels"][:])
    X, y = np.concatenate(X), np.concatenate(y)
    return X[y >= 0], y[y >= 0]


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


def _scores(order, planted: set, n: int) -> str:
    found = [int(row) in planted for row in order]
    return f"P@n {sum(found[:n]) / n:.3f}  R@2n {sum(found[:2 * n]) / n:.3f}"


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
    from cleanlab.rank import get_label_quality_scores

    from featx.report.label_issues import find_label_issues

    n_classes = int(truth.max()) + 1
    for seed in seeds:
        rng = np.random.default_rng(seed)
        moved = rng.choice(len(truth), size=max(1, round(share * len(truth))), replace=False)
        given = truth.copy()
        given[moved] = (truth[moved] + rng.integers(1, n_classes, size=len(moved))) % n_classes
        probabilities, seconds = _oof(X, given, n_classes)
        n, marked = len(moved), set(moved.tolist())
        issues = find_label_issues(probabilities, given)
        print(f"{name} seed {seed}: {n} of {len(truth)} moved; head fit {seconds:.1f} s", flush=True)
        print(f"  featx list ({len(issues)} flagged)            {_scores(issues.rows, marked, n)}")
        for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
            ranking = np.argsort(get_label_quality_scores(given, probabilities, method=method), kind="stable")
            print(f"  ranking of every row by {method:17s}  {_scores(ranking, marked, n)}")
        if old_rule is not None:
            before = old_rule(probabilities, given)
            print(f"  before ({BEFORE}, {len(before)} flagged)       {_scores(before.rows, marked, n)}")
        if more:
            options(X, given, probabilities, marked, n)


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


def clean(name, X, y, *, graded: bool, old_rule) -> None:
    from featx.report.label_issues import find_label_issues

    n_classes = int(y.max()) + 1
    probabilities, seconds = _oof(X, y, n_classes, graded=graded)
    issues = find_label_issues(probabilities, y, graded=graded)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    line = (f"{name} clean labels: {len(issues)} of {len(y)} flagged ({len(issues) / len(y):.1%}); out-of-fold "
            f"accuracy {accuracy:.3f}; head fit {seconds:.1f} s")
    if old_rule is not None:
        line += f"; before: {len(old_rule(probabilities, y)) / len(y):.1%}"
    print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--options", action="store_true",
                        help="also other lists and rankings: 5-fold logreg, a 10-NN vote, cleanlab's ensemble score")
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
    sets = {"digits": _features(cache, "digits", cache / "digits")}
    if (SHARED / "hymenoptera").is_dir():
        sets["ants/bees"] = _features(cache, "hymenoptera", SHARED / "hymenoptera")
    else:
        print(f"skipping ants/bees: {SHARED / 'hymenoptera'} is absent")
    for name, (X, y) in sets.items():
        planted(name, X, y, seeds, args.share, old_rule, more=args.options)
        clean(name, X, y, graded=False, old_rule=old_rule)
    knee = SHARED / "features" / "knee_kl_full-train.h5"
    if knee.is_file():
        import h5py

        with h5py.File(knee, "r") as handle:
            X, y = handle["features"][:].astype(np.float32), handle["labels"][:]
        clean("knee grades", X, y, graded=True, old_rule=old_rule)
        planted_grades("knee grades", X, y, seeds, args.share)
    else:
        print(f"skipping knee grades: {knee} is absent")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 2 speed: each head's fit time (its search included) and test scores, beside today's heads.

    python bench/heads_speed.py [--quick] [--repeat 3] [--heads all] [--data synthetic,knee] [--no-today]
                                [--today-limit 900]

Datasets: (1) synthetic 10,000 x 1,280 float32 features of 5 graded classes, hard on purpose
(class means on a low-rank subspace, two clusters per class, correlated noise with a CNN-like
spectrum, ReLU-clipped), tested on 2,500 more rows; (2) the knee X-ray features
``../shared/data/features/knee_kl_full-{train,val}.h5`` (5,778 x 1,280, grades 0-4), when present.

For each head: featx's fit seconds (min / median of --repeat fits), test accuracy, macro F1 and QWK;
the same for the head as featx built it before issue 10 (frozen below as TODAY, run once in a child
process that is stopped after --today-limit seconds) and, for logreg, the seeds' baseline grid.
Timings on a shared machine are noisy: the load average is printed beside each table.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FEATURES = HERE.parent.parent / "shared" / "data" / "features"


# ----------------------------------------------------------------------------------------------
# data


def synthetic(n_train=10_000, n_test=2_500, dim=1_280, n_classes=5, seed=0):
    """Graded classes that a linear head gets about 70% right: (X, y, X_test, y_test), float32."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    rank = 24
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0]
    # Grades step along one direction; each grade is two clusters off that line.
    centres = rng.normal(size=(n_classes, 2, rank)) * 0.12
    centres[:, :, 0] += 0.1 * np.arange(n_classes)[:, None]
    y = rng.integers(0, n_classes, size=n)
    cluster = rng.integers(0, 2, size=n)
    # Correlated noise with a 1/k variance spectrum, as pooled CNN features have (half the variance
    # in a few dozen directions), then ReLU-clipped: pooled activations are non-negative.
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    noise = (rng.normal(size=(n, dim)) / np.sqrt(np.arange(1, dim + 1))) @ rotation.T * 4
    X = np.maximum(centres[y, cluster] @ basis.T + noise + 0.5, 0).astype(np.float32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def knee():
    """The knee KL feature files, read with h5py as float32, or None when the folder is absent."""
    import h5py

    def read(split):
        with h5py.File(FEATURES / f"knee_kl_full-{split}.h5", "r") as f:
            return np.asarray(f["features"][:], dtype=np.float32), np.asarray(f["labels"][:], dtype=np.int64)

    if not (FEATURES / "knee_kl_full-train.h5").is_file():
        return None
    return (*read("train"), *read("val"))


# ----------------------------------------------------------------------------------------------
# today's heads, frozen: featx/heads/registry.py make_head + featx/train.py _build_head before issue 10

# The heads that existed then (sgd came with issue 13, already as a path over C).
TODAY_NAMES = ("logreg", "svm", "svm-rbf", "ridge", "ordinal", "mlp")


def today_head(name, n_classes, metric="accuracy", seed=0):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from featx.heads import MLPHead, OrdinalThresholds, RoundedRegression, quadratic_weighted_kappa

    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)

    def logreg(scoring=None):
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        return GridSearchCV(pipeline, {"logisticregression__C": np.logspace(-4, 4, 9)}, scoring=scoring, cv=folds)

    def svm(svc, grid):
        calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False)
        grid = {f"calibratedclassifiercv__estimator__{key}": values for key, values in grid.items()}
        return GridSearchCV(make_pipeline(StandardScaler(), calibrated), grid, cv=folds)

    if name == "ridge":
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))
        return RoundedRegression(estimator=ridge)
    if name == "ordinal":
        return OrdinalThresholds(estimator=logreg("neg_log_loss"), cv=3, seed=seed)
    if name == "mlp":
        return MLPHead(hidden=(512, 512), dropout=0.5, alpha=1e-4, lr=1e-3, max_epochs=100, batch_size=64,
                       patience=10, validation_fraction=0.1, seed=seed)
    if name == "logreg":
        head = logreg()
    elif name == "svm":
        head = svm(SVC(kernel="linear"), {"C": np.logspace(-3, 0, 4)})
    else:
        head = svm(SVC(kernel="rbf"), {"C": np.logspace(0, 2, 3), "gamma": ("scale", 1e-4)})
    if metric == "accuracy" and name == "logreg":
        head.set_params(scoring={"accuracy": "accuracy", "log_loss": "neg_log_loss"}, refit="log_loss")
    elif metric == "qwk":
        head.set_params(scoring=make_scorer(quadratic_weighted_kappa, labels=list(range(n_classes))))
    else:
        head.set_params(scoring=metric)
    return head


def seeds_grid():
    """The seeds' baseline: raw features, scikit-learn defaults (lbfgs stops at 100 iterations)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(LogisticRegression(), {"C": [0.1, 1, 10, 100, 1000, 10000]}, cv=3)


# ----------------------------------------------------------------------------------------------
# timing and scoring


def scores(y_true, y_pred, n_classes):
    from sklearn.metrics import f1_score

    from featx.heads import quadratic_weighted_kappa

    return {
        "acc": float(np.mean(y_true == y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0.0)),
        "qwk": quadratic_weighted_kappa(y_true, y_pred, labels=np.arange(n_classes)),
    }


def fit_featx(name, data, n_classes, jobs):
    """One fit of featx's head: (seconds, scores, what it chose)."""
    from featx.heads import fit_head, fitted_params, make_head

    X, y, X_test, y_test = data
    head = make_head(name, n_classes=n_classes, n_jobs=jobs)
    started = time.perf_counter()
    fit_head(head, X, y, n_jobs=jobs)
    seconds = time.perf_counter() - started
    return seconds, scores(y_test, head.predict(X_test), n_classes), fitted_params(head)


def _fit_in_child(build, data, n_classes, pipe):
    warnings.simplefilter("ignore")  # the seeds' grid warns on every unconverged fit
    X, y, X_test, y_test = data
    head = build()
    started = time.perf_counter()
    head.fit(X, y)
    seconds = time.perf_counter() - started
    pipe.send((seconds, scores(y_test, head.predict(X_test), n_classes)))


def fit_limited(build, data, n_classes, limit):
    """Fit build() in a forked child; (seconds, scores), or (None, None) when stopped after `limit` s."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_fit_in_child, args=(build, data, n_classes, send))
    child.start()
    if receive.poll(limit):
        result = receive.recv()
        child.join()
        return result
    child.terminate()
    child.join()
    return None, None


# ----------------------------------------------------------------------------------------------
# the table


def run(title, data, heads, args):
    n_classes = int(max(data[1].max(), data[3].max())) + 1
    print(f"\n{title}: train {data[0].shape[0]:,} x {data[0].shape[1]:,} {data[0].dtype}, "
          f"test {len(data[3]):,}, {n_classes} classes; load average {os.getloadavg()[0]:.1f} at start")
    header = (f"{'head':8} {'featx s min/med':>16} {'acc':>6} {'f1':>6} {'qwk':>6} | {'before s':>9} "
              f"{'acc':>6} {'f1':>6} {'qwk':>6} | {'speed-up':>8} {'d acc':>6} {'d qwk':>6}  chosen")
    print(header)
    print("-" * len(header))
    total = 0.0
    for name in heads:
        runs = [fit_featx(name, data, n_classes, args.jobs) for _ in range(args.repeat)]
        seconds = [run[0] for run in runs]
        new, chosen = runs[0][1], runs[0][2]
        median = statistics.median(seconds)
        total += median
        line = f"{name:8} {min(seconds):7.1f} /{median:7.1f} {new['acc']:6.3f} {new['f1']:6.3f} {new['qwk']:6.3f} |"
        if args.today and name in TODAY_NAMES:
            build = functools.partial(today_head, name, n_classes)
            old_seconds, old = fit_limited(build, data, n_classes, args.today_limit)
            line += _comparison(old_seconds, old, median, new, args.today_limit)
        elif args.today:
            line += f" {'(new)':>9} {'':6} {'':6} {'':6} | {'':8} {'':6} {'':6}"
        print(f"{line}  {_short(chosen)}", flush=True)
    if args.today and "logreg" in heads:
        old_seconds, old = fit_limited(seeds_grid, data, n_classes, args.today_limit)
        featx_logreg = fit_featx("logreg", data, n_classes, args.jobs)
        line = f"{'seeds grid vs logreg':25} {'':6} {'':6} {'':6} |"
        print(line + _comparison(old_seconds, old, featx_logreg[0], featx_logreg[1], args.today_limit))
    print(f"all {len(heads)} heads: {total:.1f} s (sum of featx medians); "
          f"load average {os.getloadavg()[0]:.1f} at end")


def _comparison(old_seconds, old, new_seconds, new, limit):
    if old is None:
        stopped, speed_up = f">{limit:.0f}", f">{limit / new_seconds:.0f}x"
        return f" {stopped:>9} {'-':>6} {'-':>6} {'-':>6} | {speed_up:>8}"
    return (f" {old_seconds:9.1f} {old['acc']:6.3f} {old['f1']:6.3f} {old['qwk']:6.3f} | "
            f"{old_seconds / new_seconds:7.1f}x {new['acc'] - old['acc']:+6.3f} {new['qwk'] - old['qwk']:+6.3f}")


def _short(chosen):
    def value(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, list):
            return "[" + ",".join(value(x) for x in v) + "]"
        return str(v)

    return " ".join(f"{key}={value(v)}" for key, v in chosen.items())


def main(argv=None):
    from featx.heads import HEAD_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 synthetic rows, no knee features")
    parser.add_argument("--repeat", type=int, default=3, help="featx fits per head (min and median are printed)")
    parser.add_argument("--heads", default="all", help="comma-separated head names, or all")
    parser.add_argument("--no-today", dest="today", action="store_false", help="skip the heads as they were")
    parser.add_argument("--today-limit", type=float, default=900, help="seconds before a head as it was is stopped")
    parser.add_argument("--jobs", type=int, default=None, help="cores for featx's heads (default: all)")
    parser.add_argument("--data", default="synthetic,knee", help="which datasets: synthetic, knee or both")
    args = parser.parse_args(argv)
    heads = list(HEAD_NAMES) if args.heads == "all" else [h.strip() for h in args.heads.split(",") if h.strip()]
    print(f"{os.cpu_count()} cores; python {sys.version.split()[0]}")
    n_train = 2_000 if args.quick else 10_000
    datasets = {d.strip() for d in args.data.split(",")}
    if "synthetic" in datasets:
        run("synthetic", synthetic(n_train=n_train, n_test=n_train // 4), heads, args)
    if args.quick or "knee" not in datasets:
        return 0
    data = knee()
    if data is None:
        print(f"\nknee KL features: skipped, {FEATURES} has no knee_kl_full-train.h5 (see ../shared/data/README.md)")
    else:
        run("knee KL (validation split as test)", data, heads, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""--context others on the shared knee grades: its gain, and which fill suits a subject with one image.

    python bench/context_gain.py gain   # logreg and ordinal, val as test, with and without --context others
    python bench/context_gain.py fill   # half the val patients cut to one knee: fill self / zeros / none

Reads ../shared/data/features/knee_kl_full-{train,val}.h5 (names like 0/9003126L.png: patient + side)
and skips when they are absent. `gain` prints each head's val QWK and accuracy with 95% bootstrap
intervals, and the QWK difference with a paired bootstrap over patients (both knees drawn together).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "features"
TRAIN, VAL = DATA / "knee_kl_full-train.h5", DATA / "knee_kl_full-val.h5"
KNEE = r"(\d+)[LR]\."


def _quiet(message):
    pass


def _val_rows(bundle):
    from featx.store import FeatureStore

    with FeatureStore(VAL) as store:
        return bundle.labelled_rows([store], _quiet)


def _paired_difference(y, before, after, subjects, rounds: int = 1000, seed: int = 0):
    """QWK(after) - QWK(before) and its 95% interval, patients resampled with both their knees."""
    from featx.metrics import quadratic_weighted_kappa as qwk

    keys, inverse = np.unique(subjects, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(keys))]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        rows = np.concatenate([members[k] for k in rng.integers(0, len(keys), len(keys))])
        draws.append(qwk(y[rows], after[rows]) - qwk(y[rows], before[rows]))
    return qwk(y, after) - qwk(y, before), np.percentile(draws, [2.5, 97.5])


def gain(heads: list[str]) -> None:
    from featx import load_bundle, train

    out = Path(tempfile.mkdtemp(prefix="featx-context-"))
    results = {}
    for context in (None, "others"):
        result = train(TRAIN, test=VAL, heads=heads, metric="qwk", group=KNEE, context=context, report=False,
                       progress=False, output=out / str(context), log=_quiet)
        for row in result.rows:
            bundle = load_bundle(result.bundles[row["head"]])
            rows = _val_rows(bundle)
            results[row["head"], context] = (row, rows, np.asarray(bundle.head.predict(rows.X)))
    print("| head | QWK without | QWK with --context others | QWK difference (paired, patients) | accuracy without | "
          "accuracy with | fit s without / with |")
    print("|---|---|---|---|---|---|---|")
    for head in heads:
        (plain, rows, before), (context, context_rows, after) = results[head, None], results[head, "others"]
        assert list(rows.paths) == list(context_rows.paths)
        # The context bundle's rows carry the patients (a bundle without context reads rows by image).
        delta, (low, high) = _paired_difference(rows.y, before, after, context_rows.groups)

        def cell(row, key):
            low_, high_ = row[f"{key}_ci"]
            return f"{row[key]:.3f} [{low_:.3f}, {high_:.3f}]"

        print(f"| {head} | {cell(plain, 'qwk')} | {cell(context, 'qwk')} | {delta:+.3f} [{low:+.3f}, {high:+.3f}] | "
              f"{cell(plain, 'accuracy')} | {cell(context, 'accuracy')} | "
              f"{plain['fit_seconds']:.1f} / {context['fit_seconds']:.1f} |")


def fill(head_name: str, seeds: int) -> None:
    """Train with context on the knee pairs; test on val with half its patients cut to one knee, per fill."""
    from featx.context import FILLS, fill_value, others_mean
    from featx.heads import fit_head, make_head
    from featx.metrics import quadratic_weighted_kappa as qwk
    from featx.rows import class_order, read_rows
    from featx.store import FeatureStore

    def rows_of(path):
        with FeatureStore(path) as store:
            return read_rows(store, class_order(store.label_names, None)[0], _quiet, group=KNEE)

    train_rows, val = rows_of(TRAIN), rows_of(VAL)

    def fitted(X):
        head = make_head(head_name, n_classes=5, metric="qwk", grouped=True, seed=0)
        return fit_head(head, X, train_rows.y, train_rows.groups)

    plain = fitted(train_rows.X)
    with_context = fitted(np.hstack([train_rows.X, others_mean(train_rows.X, train_rows.groups, train_rows.paths)]))
    scores = {name: [] for name in ("none", *FILLS)}
    mean = fill_value(train_rows)  # the "mean" fill is the training rows' mean, as bundles record it
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        patients = np.unique(val.groups)
        cut = set(rng.choice(patients, len(patients) // 2, replace=False))
        side = "RL"[seed % 2]  # which knee the cut patients lose
        rows = val.subset(np.flatnonzero([not (g in cut and p.endswith(f"{side}.png"))
                                          for g, p in zip(val.groups, val.paths)]))
        single = np.isin(rows.groups, list(cut))
        predictions = {"none": plain.predict(rows.X)}
        for name in FILLS:
            context = others_mean(rows.X, rows.groups, rows.paths, fill=name, value=mean)
            predictions[name] = with_context.predict(np.hstack([rows.X, context]))
        for name, predicted in predictions.items():
            scores[name].append((qwk(rows.y[single], predicted[single]), np.mean(rows.y[single] == predicted[single]),
                                 qwk(rows.y, predicted)))
    print(f"{head_name}: {seeds} cuts of half the val patients to one knee (mean, sd over cuts)")
    for name, values in scores.items():
        values = np.array(values)
        print(f"  fill {name:5s}: one-knee patients QWK {values[:, 0].mean():.3f} (sd {values[:, 0].std():.3f}), "
              f"accuracy {values[:, 1].mean():.3f}; all rows QWK {values[:, 2].mean():.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["gain", "fill"])
    parser.add_argument("--heads", default="logreg,ordinal")
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args()
    if not (TRAIN.exists() and VAL.exists()):
        print(f"skipped: {TRAIN} and {VAL} are not here (the shared knee features)")
        return 0
    os.system("uptime")
    heads = args.heads.split(",")
    if args.part == "gain":
        gain(heads)
    else:
        for head in heads:
            fill(head, args.seeds)
    os.system("uptime")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 2: which recipe serves these images best? The same heads on each feature file and on their fusion.

Every file must hold the same images (other backbones, other recipes of one dataset). Rows are
matched by image, so every variant is trained and tested on exactly the same images: the only
difference between two rows of the leaderboard is the features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from featx.pipeline import Options, engine, fit_and_score, format_optional, leaderboard_text, report_page
from featx.pipeline_split import choose_heads, decoding_differences, load_split
from featx.report import ReportResult
from featx.rows import as_paths, output_stem
from featx.scoring import best_index

__all__ = ["CompareResult", "compare", "compare_with"]


@dataclass
class CompareResult:
    """One leaderboard across feature files (and their fusion) x heads, and the best of them."""

    rows: list[dict]  # leaderboard rows with `features` (which files) and `dims` added
    best: dict  # the best row
    metric: str
    report: str
    report_page: ReportResult | None = None

    def __str__(self) -> str:
        return self.report


def compare(
    features,
    *,
    test=None,
    test_size: float = 0.25,
    heads: Iterable[str] | str = ("logreg",),
    fuse: bool = True,
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
    group: str | None = None,
    group_unmatched: str = "refuse",
    context: str | None = None,
    log: Callable[[str], object] = print,
) -> CompareResult:
    """Train `heads` on each feature file and on all of them fused; rank every (features, head).

    features: feature files of the same images (e.g. `featx extract DATASET --backbone a,b,c`).
    test: one test file per feature file, in the same order; otherwise one seeded hold-out of the
    same images for every variant. Nothing is saved but the report page: train the winner with
    `featx train` to get its bundle. context: "others" (see `featx.train.train`).
    """
    options = Options(heads=heads, test=test, test_size=test_size, fuse=fuse, folds=folds, class_weight=class_weight,
                      metric=metric, ordinal=ordinal, n_jobs=n_jobs, output=output, seed=seed, bootstrap=bootstrap,
                      progress=progress, report=report, group=group, group_unmatched=group_unmatched,
                      context=context)
    return compare_with(features, options, log)


def compare_with(features, options: Options, log: Callable[[str], object] = print) -> CompareResult:
    """`compare` with its options as one object (the CLI passes one)."""
    files = as_paths(features)
    options.check()
    metric, tests = options.metric, options.test
    split = load_split(files, test=tests, test_size=options.test_size, ordinal=options.ordinal, folds=options.folds,
                       seed=options.seed, log=log, same_decoding=False, group=options.group,
                       group_unmatched=options.group_unmatched, context=options.context)
    head_names = choose_heads(options.heads, split, folds=options.folds, log=log)
    labels = _labels(files, split)
    variants = [(label, [i]) for i, label in enumerate(labels)]
    if options.fuse and len(files) > 1:
        if not decoding_differences(split.recipes):
            variants.append(("fused: " + " + ".join(labels), list(range(len(files)))))
        else:
            log("not fusing: the files feed images differently (resize or TTA), so a fused head could not predict")
    log(f"comparing {len(variants)} feature set(s) x {len(head_names)} head(s) on {len(split.train)} rows; "
        f"testing on {len(split.test)} rows of {split.test_label}")
    rows, fitted = [], {}
    with engine(options, log):
        for label, indices in variants:
            variant = split.blocks(indices)
            for head_name in head_names:
                head, row, _ = fit_and_score(head_name, variant, options)
                rows.append({"features": label, "dims": variant.train.X.shape[1], **row})
                fitted[len(rows) - 1] = (head, variant)
                log(f"  {label} / {head_name}: {metric} {format_optional(row.get(metric))} "
                    f"in {row['fit_seconds']:.2f} s")
    best_at = best_index(rows, metric)
    best = rows[best_at]
    page = None
    if options.report:
        head, variant = fitted[best_at]
        page = report_page(
            Path(options.output) / f"{output_stem(files)}-compare.html", head, variant,
            [{**row, "best": i == best_at} for i, row in enumerate(rows)], best["head"], options, log=log,
            title=f"featx compare: {', '.join(f.stem for f in files)}",
            notes=[f"Best: {best['features']} with {best['head']}; the map, matrix and label issues are its."])
    text = _compare_report(rows, best, metric, files, tests, labels, page)
    return CompareResult(rows=rows, best=best, metric=metric, report=text, report_page=page)


def _labels(files: list[Path], split) -> list[str]:
    """How the leaderboard names each file: its backbone, else its stem, else its path (the first that differ)."""
    for labels in ([recipe.backbone for recipe in split.recipes], [f.stem for f in files], [str(f) for f in files]):
        if len(labels) == len(files) and len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in files]


def _compare_report(rows, best, metric, files, tests, labels, page) -> str:
    interval = best.get(f"{metric}_ci")
    lines = [
        leaderboard_text(rows, metric, first="the same training and test rows for every feature set"),
        "",
        f"best recipe by {metric}: {best['features']} with {best['head']} ({metric} {format_optional(best.get(metric))}"
        + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "") + ")",
        "train it: featx train " + _train_command(best, files, tests, labels),
    ]
    if page is not None:
        lines += ["", str(page)]
    return "\n".join(lines)


def _train_command(best, files: list[Path], tests: list[Path] | None, labels: list[str]) -> str:
    """The `featx train` arguments that train the best row's features and head."""
    fused = best["features"].startswith("fused: ")
    chosen = [i for i, label in enumerate(labels) if fused or label == best["features"]]
    words = [str(files[i]) for i in chosen]
    if tests is not None:
        words += ["--test"] + [str(tests[i]) for i in chosen]
    return " ".join(words + ["--heads", best["head"]])

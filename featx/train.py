"""Stage 2: fit heads on a feature file, score them on held-out rows, save one bundle per head.

The leaderboard is the estimate: each head is fitted on the training rows and scored on rows it
never saw (a separate --test file, or a seeded, stratified, grouped hold-out). The bundle gets the
data: without a --test file, each head is then refitted on all labelled rows before it is saved.
Several feature files of the same images (other backbones) are fused: rows matched by image,
features side by side, every recipe recorded in the bundle. The steps live in featx.pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from featx.errors import FeatxError
from featx.pipeline import Options, TrainResult, train_in_memory
from featx.pipeline_split import head_list
from featx.pipeline_streamed import streams, train_streamed
from featx.rows import as_paths

__all__ = ["TrainResult", "train", "train_with"]


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
    group: str | None = None,
    group_unmatched: str = "refuse",
    context: str | None = None,
    log: Callable[[str], object] = print,
) -> TrainResult:
    """Fit each head on a feature file, score it on held-out rows, save one bundle per head.

    features: a feature file, or a list of files of the same images to fuse (features side by side).
    test: a second feature file of the same recipe (a list, when fusing) to score on; otherwise a seeded hold-out of
    `test_size`, stratified by class and grouped by source image (augmented copies stay together),
    and the saved heads are refitted on all rows once scored.
    heads: names, "a,b", or "all"; "sgd" alone on one file (no folds) streams files larger than memory.
    ordinal: None = graded when every class name is an integer.
    metric: picks the best head and scores the heads' hyperparameter searches.
    n_jobs: parallel fits (None = all cores). progress: a progress line while a head fits.
    report: also write `<output>/<features>-report.html` (images behind every number, likely label
    errors) and `<features>-label-issues.csv`. engine: "local", or "ray" to run the searches on a cluster.
    group: a regex whose first capture group names each row's subject from its path (a file made with
    `featx extract --group` records its subjects already); splits keep a subject on one side.
    group_unmatched: "refuse" paths it misses, or make each its own subject ("own").
    context: "others" puts beside each row the mean features of its subject's other images (its other eye
    or knee; the training rows' mean when it has none); needs subjects. The bundle records it and predict repeats it.
    """
    options = Options(heads=heads, test=test, test_size=test_size, folds=folds, class_weight=class_weight,
                      metric=metric, ordinal=ordinal, n_jobs=n_jobs, output=output, seed=seed, bootstrap=bootstrap,
                      progress=progress, report=report, engine=engine, address=address, group=group,
                      group_unmatched=group_unmatched, context=context)
    return train_with(features, options, log)


def train_with(features, options: Options, log: Callable[[str], object] = print) -> TrainResult:
    """`train` with its options as one object (the CLI passes one)."""
    files = as_paths(features)
    options.check()
    if not options.fuse:
        raise FeatxError("train always fuses several feature files; to score them one by one, use compare")
    if streams(head_list(options.heads), files, options):
        if options.context:
            raise FeatxError(f"--context {options.context} trains in memory, but --heads sgd alone streams the file: "
                             "add another head (e.g. --heads sgd,logreg)")
        # Alone on one file, the out-of-core head reads the features a chunk at a time.
        return train_streamed(files[0], options, log)
    return train_in_memory(files, options, log)

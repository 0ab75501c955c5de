"""Stage 2: score a saved bundle on another labelled feature file of the same recipe."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from featx.bundle import as_bundle
from featx.errors import FeatxError
from featx.report import leaderboard_table
from featx.rows import as_paths
from featx.scoring import details, leaderboard_row
from featx.store import FeatureStore

__all__ = ["EvalResult", "evaluate"]


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

    def __str__(self) -> str:
        return self.report


def evaluate(bundle, features, *, bootstrap: int = 1000, log: Callable[[str], object] = print) -> EvalResult:
    """Score a saved bundle (path or Bundle) on another labelled feature file, original rows only.

    features: a file, or for a head trained on fused files, one file per recipe in the order trained.
    """
    model = as_bundle(bundle)
    files = as_paths(features)
    with ExitStack() as stack:
        stores = [stack.enter_context(FeatureStore(f)) for f in files]
        data = model.labelled_rows(stores, log).originals()
    features = data.source
    if len(data) == 0:
        raise FeatxError(f"{features} has no labelled images to evaluate on; use `featx predict` for unlabelled images")
    y_pred = np.asarray(model.head.predict(data.X), dtype=np.int64)
    row = leaderboard_row(model.head_name, data.y, y_pred, n_classes=len(model.label_names),
                          with_qwk=model.graded or "qwk" in model.metrics, params=model.metrics.get("params"),
                          cv_score=model.metrics.get("cv_score"), bootstrap=bootstrap, seed=0)
    text, _ = details(model.head_name, data.y, y_pred, model.label_names)
    report = "\n".join([f"{model.path or model.head_name} on {features} ({len(data)} images)",
                        leaderboard_table([row]), "", text])
    return EvalResult(row=row, report=report, head_name=model.head_name, n_rows=len(data))

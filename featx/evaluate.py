"""Stage 2: score a saved bundle on another labelled feature file of the same recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.bundle import Bundle, as_bundle
from featx.errors import FeatxError
from featx.recipe import FEATURE_KEYS, mismatch
from featx.report import leaderboard_table
from featx.rows import read_rows
from featx.scoring import details, score_row
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
    """Score a saved bundle (path or Bundle) on another labelled feature file, original rows only."""
    model = as_bundle(bundle)
    features = Path(features)
    with FeatureStore(features) as store:
        check_bundle_features(model, store)
        data = read_rows(store, model.label_names, log).originals()
    if len(data) == 0:
        raise FeatxError(f"{features} has no labelled images to evaluate on; use `featx predict` for unlabelled images")
    y_pred = np.asarray(model.head.predict(data.X), dtype=np.int64)
    row = {"head": model.head_name, "params": model.metrics.get("params"), "cv_score": model.metrics.get("cv_score")}
    row.update(score_row(data.y, y_pred, n_classes=len(model.label_names),
                         with_qwk=model.graded or "qwk" in model.metrics, bootstrap=bootstrap, seed=0))
    row["fit_seconds"] = None
    text, _ = details(model.head_name, data.y, y_pred, model.label_names)
    report = "\n".join([f"{model.path or model.head_name} on {features} ({len(data)} images)",
                        leaderboard_table([row]), "", text])
    return EvalResult(row=row, report=report, head_name=model.head_name, n_rows=len(data))


def check_bundle_features(model: Bundle, store: FeatureStore) -> None:
    """Refuse a feature file whose features are not the space the bundle's head was trained in."""
    if len(model.recipes) > 1:
        raise FeatxError(f"{model.path} was trained on {len(model.recipes)} fused feature files; "
                         "evaluate it on the same files fused")
    differences = mismatch(model.recipe, store.recipe, FEATURE_KEYS)
    if differences:
        raise FeatxError(f"{store.path} holds features made differently from the model's ({differences}); "
                         "extract features with the model's recipe")
    expected = getattr(model.head, "n_features_in_", None)
    if expected is not None and store.dim != expected:
        raise FeatxError(f"{store.path} has {store.dim} features per row but the model expects {expected}; "
                         "extract features with the model's recipe")

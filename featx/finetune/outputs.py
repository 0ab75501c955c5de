"""What fine-tuning leaves behind: the weights file, bundles other stages read unchanged, and the score table."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import backbones
from featx.atomic import publish, write_error
from featx.bundle import save_bundle
from featx.heads import SoftmaxRegression, fitted_params
from featx.recipe import Recipe
from featx.report import leaderboard_table
from featx.scoring import leaderboard_row

__all__ = ["Outputs", "affine_map", "linear_head", "scored_rows", "write_outputs"]


@dataclass
class Outputs:
    """Where and under which names a fine-tuning run writes, and how it scores."""

    name: str
    folder: Path
    class_names: list[str]
    graded: bool
    maps_recipe: Recipe
    bootstrap: int = 1000
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def weights_file(self) -> Path:
        return self.folder / f"{self.name}-finetuned.weights.h5"

    def bundle_file(self, head: str) -> Path:
        return self.folder / f"{self.name}-finetuned-{head}.skops"

    def recipe(self, weights_sha256: str) -> Recipe:
        """The fine-tuned backbone's recipe: the maps' input handling, its own weights, pooled at the feature layer."""
        return self.maps_recipe.replace(weights_sha256=weights_sha256,
                                        weights_source=f"file:{self.weights_file.resolve()}",
                                        pooling="avg", layer="", augment=0)

    def report(self, rows, test_rows, result, weights_file: Path, bundles: dict, seconds: float) -> str:
        metric = "qwk" if self.graded else "accuracy"
        lines = [f"best epoch {result.best_epoch} (val {metric} {result.best_metric:.4f}); "
                 f"{seconds:.0f} s in all", "", f"val ({len(self.class_names)} classes):", leaderboard_table(rows)]
        if test_rows:
            lines += ["", "test:", leaderboard_table(test_rows)]
        lines += ["", f"fine-tuned weights: {weights_file}"]
        lines += [f"bundle ({head}): {path}" for head, path in bundles.items()]
        return "\n".join(lines)


def affine_map(estimator, dim: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (dim, n_classes), b) with x @ W + b = the estimator's class scores, any affine pipeline folded in.

    Scaling, rotation and the linear model compose into one affine map, read off exactly at the
    origin and the unit vectors. A class the estimator never saw gets a score that never wins.
    """
    probe = np.vstack([np.zeros((1, dim)), np.eye(dim)])
    scores = np.asarray(estimator.decision_function(probe), dtype=np.float64)
    if scores.ndim == 1:  # binary: one score, the second class's margin
        scores = np.column_stack([np.zeros_like(scores), scores])
    W, b = np.zeros((dim, n_classes)), np.full(n_classes, -30.0)
    classes = np.asarray(estimator.classes_, dtype=np.int64)
    W[:, classes], b[classes] = scores[1:] - scores[0], scores[0]
    return W, b


def linear_head(W: np.ndarray, b: np.ndarray) -> SoftmaxRegression:
    """The fine-tuned Dense layer as the multinomial logistic regression it is (a trusted bundle type)."""
    head = SoftmaxRegression()
    head.coef_ = np.ascontiguousarray(np.asarray(W, np.float64).T)
    head.intercept_ = np.asarray(b, np.float64)
    head.classes_ = np.arange(W.shape[1])
    head.n_features_in_ = W.shape[0]
    head.n_iter_ = 0
    return head


def scored_rows(outputs: Outputs, frozen_heads: dict, tuned_heads: dict, frozen: dict, tuned: dict, labels: dict,
                split: str) -> list[dict]:
    """Leaderboard rows (featx train's format): each head on the frozen, then on the fine-tuned features."""
    rows = []
    for features, heads, X in (("frozen", frozen_heads, frozen), ("fine-tuned", tuned_heads, tuned)):
        for head_name, head in heads.items():
            params = (fitted_params(head) if features == "frozen" or head_name != "logreg"
                      else {"epoch": outputs.extra.get("best_epoch")})
            row = leaderboard_row(head_name, labels[split], head.predict(X[split]),
                                  n_classes=len(outputs.class_names), with_qwk=outputs.graded, params=params,
                                  bootstrap=outputs.bootstrap, seed=outputs.seed)
            rows.append({"features": features, "dims": X[split].shape[1], **row})
    return rows


def write_outputs(outputs: Outputs, net, tuned_heads: dict, rows: list[dict]) -> tuple[Path, dict[str, Path]]:
    """The full model's weights (what `featx extract --weights FILE` loads) and one bundle per fine-tuned head."""
    outputs.folder.mkdir(parents=True, exist_ok=True)
    final = outputs.weights_file
    # Keras insists on the .weights.h5 ending, so the temporary name keeps it.
    temporary = final.with_name(f".{final.name[:-len('.weights.h5')]}.tmp-{os.getpid()}.weights.h5")
    try:
        net.full.save_weights(str(temporary))
        publish(temporary, final)
    except OSError as error:
        raise write_error(final, error, "then rerun the same command") from None
    finally:
        temporary.unlink(missing_ok=True)
    recipe = outputs.recipe(backbones.file_sha256(final))
    tuned_rows = {row["head"]: row for row in rows if row["features"] == "fine-tuned"}
    bundles = {}
    for head_name, head in tuned_heads.items():
        bundles[head_name] = save_bundle(outputs.bundle_file(head_name), head, label_names=outputs.class_names,
                                         recipes=[recipe], metrics=tuned_rows[head_name], head_name=head_name,
                                         graded=outputs.graded, extra=outputs.extra)
    return final, bundles

"""What a trained head is worth, and the images behind it.

- `metrics`: metrics with bootstrap intervals, the leaderboard and confusion matrix as text, the confusion PNG.
"""

from featx.report.metrics import (
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    confusion_text,
    f1_macro,
    leaderboard_cells,
    leaderboard_table,
    per_class_scores,
    quadratic_weighted_kappa,
    save_confusion_png,
)

__all__ = [
    "accuracy",
    "bootstrap_ci",
    "confusion_matrix",
    "confusion_text",
    "f1_macro",
    "leaderboard_cells",
    "leaderboard_table",
    "per_class_scores",
    "quadratic_weighted_kappa",
    "save_confusion_png",
]

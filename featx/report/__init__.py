"""What a trained head is worth, and the images behind it.

- `metrics`: metrics with bootstrap intervals, the leaderboard and confusion matrix as text, the confusion PNG.
- `label_issues`: likely label errors by confident learning on out-of-fold probabilities, and their CSV.
- `page`: the self-contained HTML report page (`ReportData` -> `write_report_page`).
- `feature_map`, `thumbnails`: the page's 2-D map of feature space and its embedded images.
- `build`: `build_report` for a fitted head and its rows, `report` for a saved bundle and a feature file.
"""

from featx.report.build import ReportResult, build_report, report
from featx.report.label_issues import (
    LabelIssues,
    find_label_issues,
    out_of_fold_probabilities,
    write_label_issues_csv,
)
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
from featx.report.page import FeatureMap, PageSection, Predictions, ReportData, write_report_page

__all__ = [
    "FeatureMap",
    "LabelIssues",
    "PageSection",
    "Predictions",
    "ReportData",
    "ReportResult",
    "accuracy",
    "bootstrap_ci",
    "build_report",
    "confusion_matrix",
    "confusion_text",
    "f1_macro",
    "find_label_issues",
    "leaderboard_cells",
    "leaderboard_table",
    "out_of_fold_probabilities",
    "per_class_scores",
    "quadratic_weighted_kappa",
    "report",
    "save_confusion_png",
    "write_label_issues_csv",
    "write_report_page",
]

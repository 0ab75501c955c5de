"""What a trained head is worth, in text: metrics with bootstrap intervals, the leaderboard, confusion matrices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from featx.atomic import atomic_output
from featx.metrics import (
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    confusion_text,
    f1_macro,
    quadratic_weighted_kappa,
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

# Leaderboard columns, in display order: (row key, header). Metric columns print "value [low, high]".
_METRIC_COLUMNS = (("accuracy", "accuracy"), ("f1_macro", "macro F1"), ("qwk", "QWK"))


def per_class_scores(cm) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class from a confusion matrix (0 where undefined, as sklearn)."""
    cm = np.asarray(cm, dtype=float)
    hits = np.diag(cm)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(len(hits)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(hits)), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(hits)), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def _format_number(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "nan" if not np.isfinite(value) else f"{value:.3f}"


def _format_metric(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "-"
    text = _format_number(row[key])
    interval = row.get(f"{key}_ci")
    if interval is not None:
        text += f" [{_format_number(interval[0])}, {_format_number(interval[1])}]"
    return text


def _format_params(params) -> str:
    if params is None or params == {} or params == "-":
        return "-"
    if isinstance(params, dict):
        return ", ".join(f"{name}={_format_param_value(value)}" for name, value in params.items())
    return str(params)


def _format_param_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_param_value(item) for item in value) + "]"
    return str(value)


def leaderboard_cells(rows: Sequence[dict]) -> list[list[str]]:
    """The leaderboard as text cells: the header line, then one line per head (the text and HTML tables show these).

    Rows use the keys `head`, `params` (dict or text), `cv_score`, `accuracy`, `f1_macro`, `qwk`
    (each metric optionally with `<metric>_ci` = (low, high)) and `fit_seconds`; a metric column
    appears only when some row has it. Rows of a comparison add `features` and `dims`.
    """
    columns: list[tuple[str, Callable[[dict], str]]] = []
    # A comparison across feature files (`featx compare`) also names each row's features and width.
    if any("features" in row for row in rows):
        columns += [("features", lambda row: str(row.get("features", "-"))),
                    ("dims", lambda row: str(row.get("dims", "-")))]
    columns += [
        ("head", lambda row: str(row.get("head", "-"))),
        ("params", lambda row: _format_params(row.get("params"))),
        ("cv score", lambda row: _format_number(row.get("cv_score"))),
    ]
    for key, header in _METRIC_COLUMNS:
        if any(row.get(key) is not None for row in rows):
            columns.append((header, lambda row, key=key: _format_metric(row, key)))
    columns.append(("fit s", lambda row: _format_seconds(row.get("fit_seconds"))))
    cells = [[header for header, _ in columns]]
    cells += [[render(row) for _, render in columns] for row in rows]
    return cells


def leaderboard_table(rows: Sequence[dict]) -> str:
    """Aligned plain-text table of leaderboard rows (one per head); see `leaderboard_cells` for the keys."""
    cells = leaderboard_cells(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _format_seconds(seconds) -> str:
    return "-" if seconds is None else f"{float(seconds):.2f}"


def save_confusion_png(cm, names: Sequence[str], path: str | Path, *, title: str | None = None) -> Path:
    """Draw the confusion matrix (counts, row-normalised colour) to a PNG file."""
    # A bare Figure with the Agg canvas, not pyplot: no global backend switch (safe in notebooks and
    # threads), and matplotlib is imported only when a picture is asked for.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    names = [str(name) for name in names]
    row_totals = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, row_totals, out=np.zeros(cm.shape), where=row_totals > 0)
    side = max(3.5, 0.6 * len(names) + 2.0)
    figure = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of true class")
    axes.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), labels=names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title)
    if len(names) <= 30:  # beyond that the numbers are unreadable anyway
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")  # the temporary name has no .png suffix
    return path

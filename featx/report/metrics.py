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


_FONT_SCALE = 0.45
# Matplotlib's "Blues" at 0, 0.5 and 1, as BGR: a row's share 0 is near white, 1 deep blue.
_BLUES = np.array([[255.0, 251.0, 247.0], [214.0, 174.0, 107.0], [107.0, 48.0, 8.0]])


def _text_size(text: str) -> tuple[int, int]:
    import cv2

    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)
    return width, height + baseline


def _put(canvas, text: str, x: int, y: int, colour=(0, 0, 0)) -> None:
    """`text` with its top left corner at (x, y)."""
    import cv2

    cv2.putText(canvas, text, (x, y + _text_size(text)[1] - 3), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, colour, 1,
                cv2.LINE_AA)


def _vertical(text: str) -> np.ndarray:
    """`text` on white, turned to read upwards."""
    import cv2

    width, height = _text_size(text)
    strip = np.full((height + 2, width + 2, 3), 255, dtype=np.uint8)
    _put(strip, text, 1, 1)
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)


def _paste(canvas, image, x: int, y: int) -> None:
    height, width = image.shape[:2]
    canvas[y:y + height, x:x + width] = image[: canvas.shape[0] - y, : canvas.shape[1] - x]


def save_confusion_png(cm, names: Sequence[str], path: str | Path, *, title: str | None = None) -> Path:
    """Draw the confusion matrix (counts, row-normalised colour) to a PNG file."""
    # With OpenCV, which the report's thumbnails load anyway: drawing it with matplotlib cost every
    # `featx train` 0.5 s of imports (issue 21).
    import cv2

    cm = np.asarray(cm)
    names = [str(name)[:30] for name in names]
    row_totals = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, row_totals, out=np.zeros(cm.shape), where=row_totals > 0)
    k = len(names)
    cell = 48 if k <= 12 else max(12, 576 // k)
    name_width = max(_text_size(name)[0] for name in names) + 8
    line = _text_size("Ag")[1] + 6
    left, top = line + name_width, 2 * line
    width, height = left + k * cell + line, top + k * cell + name_width + 2 * line
    legend = "predicted (colour: share of the true class)"
    width = max(width, _text_size(title or "")[0] + 16, left + _text_size(legend)[0] + 8)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(k):
        for j in range(k):
            colour = [float(np.interp(shares[i, j], [0.0, 0.5, 1.0], _BLUES[:, c])) for c in range(3)]
            x, y = left + j * cell, top + i * cell
            cv2.rectangle(canvas, (x, y), (x + cell - 1, y + cell - 1), colour, -1)
            if k <= 30:  # beyond that the numbers are unreadable anyway
                count = str(cm[i, j])
                text_width, text_height = _text_size(count)
                ink = (255, 255, 255) if shares[i, j] > 0.5 else (0, 0, 0)
                _put(canvas, count, x + (cell - text_width) // 2, y + (cell - text_height) // 2, ink)
        _put(canvas, names[i], line + name_width - 4 - _text_size(names[i])[0],
             top + i * cell + (cell - _text_size(names[i])[1]) // 2)
        column = _vertical(names[i])
        _paste(canvas, column, left + i * cell + (cell - column.shape[1]) // 2, top + k * cell + 4)
    _put(canvas, legend, left, top + k * cell + name_width + 4)
    label = _vertical("true")
    _paste(canvas, label, 2, top + (k * cell - label.shape[0]) // 2)
    if title:
        _put(canvas, title, 8, 6)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise OSError(f"could not encode {path}")
    path = Path(path)
    with atomic_output(path) as temporary:
        Path(temporary).write_bytes(encoded.tobytes())
    return path

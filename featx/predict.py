"""Stage 3: images -> the bundle's recorded extraction -> its head -> a predictions CSV.

The only stage-2+ module that runs a backbone (it imports the runner).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.atomic import atomic_output, writable_folder
from featx.backbones import from_recipe
from featx.bundle import Bundle, as_bundle
from featx.errors import FeatxError
from featx.heads import is_ordinal_head
from featx.images import image_files
from featx.rows import integer_names
from featx.runner import features_for_files

__all__ = ["PredictResult", "predict"]


@dataclass
class PredictResult:
    """Where the predictions CSV went, its rows, and the files that could not be decoded."""

    output: Path
    rows: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"wrote {len(self.rows)} predictions to {self.output}"
        if self.skipped:
            text += (f"; {len(self.skipped)} file(s) could not be read (listed in the CSV with their reason): "
                     + ", ".join(p for p, _ in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        return text


def predict(bundle, images, *, output=None, batch_size: int = 32, runtime: str = "auto",
            log: Callable[[str], object] = print) -> PredictResult:
    """Predict image files and folders with a saved bundle; write a CSV.

    Columns: path, predicted, p_<class>... (when the head has probabilities), expected_grade (ordinal
    heads), error (why a file could not be read; such files have no prediction). The CSV is written
    under a temporary name and renamed, so a CSV that exists is complete. runtime: as in `extract`.
    """
    model = as_bundle(bundle)
    files = _expand_images(images)
    output = Path("predictions.csv") if output is None else Path(output)
    writable_folder(output.parent, "-o", create=False)  # before the extraction, not after it
    recipes = _recipes(model)
    # Fused bundles: every backbone runs on one decoding of each image.
    backbones = [from_recipe(recipe, runtime=runtime) for recipe in recipes]
    log(f"extracting {len(files)} image(s) with {' + '.join(r.backbone for r in recipes)} for {model.head_name}")
    X, kept, skipped = features_for_files(files, backbones, tta=recipes[0].tta or None,
                                          crop=recipes[0].resize == "crop", decode=recipes[0].decode,
                                          batch_size=batch_size)
    for path, reason in skipped:
        log(f"skipped {path}: {reason}")
    if not kept:
        first = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise FeatxError(f"none of the {len(files)} file(s) could be decoded as an image{first}; pass image files")

    head, names = model.head, model.label_names
    predicted = np.asarray(head.predict(X), dtype=np.int64)
    columns = ["path", "predicted"]
    probabilities = None
    if hasattr(head, "predict_proba"):
        probabilities = np.zeros((len(kept), len(names)))
        probabilities[:, np.asarray(head.classes_, dtype=np.int64)] = head.predict_proba(X)
        columns += [f"p_{name}" for name in names]
    expected = _expected_grades(model, X)
    if expected is not None:
        columns.append("expected_grade")
    columns.append("error")

    rows = []
    for i, path in enumerate(kept):
        row = {"path": path, "predicted": names[predicted[i]]}
        if probabilities is not None:
            row.update({f"p_{name}": float(probabilities[i, j]) for j, name in enumerate(names)})
        if expected is not None:
            row["expected_grade"] = float(expected[i])
        rows.append(row)
    _write_csv(output, columns, rows + [{"path": path, "error": reason} for path, reason in skipped])
    return PredictResult(output=output, rows=rows, skipped=list(skipped))


def _recipes(model: Bundle):
    if not model.recipes:
        raise FeatxError(f"{model.path} records no feature recipe (it was trained on a file without one), so featx "
                         "cannot extract features for it; use `featx evaluate` on features made the same way")
    return model.recipes


def _expand_images(images) -> list[str]:
    """Files as given, folders expanded recursively to the image files extract would read (sorted)."""
    if isinstance(images, (str, Path)):
        images = [images]
    files = []
    for item in images:
        item = Path(item)
        if item.is_dir():
            found = [str(path) for path in image_files(item)]
            if not found:
                raise FeatxError(f"folder {item} has no image files; pass a folder of images or image files")
            files += found
        elif item.is_file():
            files.append(str(item))
        else:
            raise FeatxError(f"{item} not found; pass existing image files or folders")
    if not files:
        raise FeatxError("no images given; pass image files or folders")
    return files


def _expected_grades(model: Bundle, X) -> np.ndarray | None:
    if not (model.graded and is_ordinal_head(model.head_name) and hasattr(model.head, "expected_grade")):
        return None
    expected = np.asarray(model.head.expected_grade(X), dtype=float)
    names = model.label_names
    if integer_names(names):
        # The head works in class positions 0..K-1; report grades in the user's own numbers.
        return np.interp(expected, np.arange(len(names)), [int(name) for name in names])
    return expected


def _write_csv(path: Path, columns, rows) -> None:
    """Write to a temporary name, then rename: a partial CSV never looks complete."""
    with atomic_output(path, "or choose another -o, then rerun") as partial, \
            open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value
                             for key, value in row.items()})

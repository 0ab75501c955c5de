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
from featx.context import others_mean
from featx.errors import FeatxError
from featx.heads import is_ordinal_head
from featx.images import image_files
from featx.rows import integer_names
from featx.runner import features_for_files
from featx.store import subjects_of

__all__ = ["PredictResult", "predict"]


@dataclass
class PredictResult:
    """Where the predictions CSV went, its rows, the files that could not be decoded, and the per-subject summary."""

    output: Path
    rows: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    subjects_output: Path | None = None  # <output stem>-subjects.csv, for a bundle trained with --group
    subjects: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"wrote {len(self.rows)} predictions to {self.output}"
        if self.subjects_output is not None:
            text += f" and {len(self.subjects)} subjects to {self.subjects_output}"
        if self.skipped:
            text += (f"; {len(self.skipped)} file(s) could not be read (listed in the CSV with their reason): "
                     + ", ".join(p for p, _ in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        return text


def predict(bundle, images, *, output=None, batch_size: int = 32, runtime: str = "auto",
            group_unmatched: str | None = None, log: Callable[[str], object] = print) -> PredictResult:
    """Predict image files and folders with a saved bundle; write a CSV.

    Columns: path, subject (bundles trained with --group), predicted, p_<class>... (when the head has
    probabilities), expected_grade (ordinal heads), error (why a file could not be read; such files have
    no prediction). The CSV is written under a temporary name and renamed, so a CSV that exists is
    complete. runtime: as in `extract`.

    A bundle trained with --group names each image's subject with the same regex, on its path relative to
    the folder given (a file given alone: its path as given). group_unmatched overrides the bundle's
    policy, which only a bundle with context keeps (without, an unmatched image is its own subject). A
    bundle trained with --context builds each image's context from its subject's other images here.
    Beside the CSV, `<stem>-subjects.csv`: subject, images, each image's prediction, and the
    subject's call: the highest predicted grade for graded labels (the worse eye or knee grades the
    patient), else the class with the highest mean probability (the most predicted without probabilities).
    """
    model = as_bundle(bundle)
    files, relative = _expand_images(images)
    output = Path("predictions.csv") if output is None else Path(output)
    writable_folder(output.parent, "-o", create=False)  # before the extraction, not after it
    subject_of = _subjects(model, files, relative, group_unmatched)
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

    if model.context:
        X = np.hstack([X, others_mean(X, [subject_of[path] for path in kept], kept, fill=model.context_fill,
                                  value=model.context_fill_value)])
    head, names = model.head, model.label_names
    predicted = np.asarray(head.predict(X), dtype=np.int64)
    columns = ["path", "subject", "predicted"] if subject_of else ["path", "predicted"]
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
        if subject_of:
            row["subject"] = subject_of[path]
        if probabilities is not None:
            row.update({f"p_{name}": float(probabilities[i, j]) for j, name in enumerate(names)})
        if expected is not None:
            row["expected_grade"] = float(expected[i])
        rows.append(row)
    failed = [{"path": path, "error": reason, **({"subject": subject_of[path]} if subject_of else {})}
              for path, reason in skipped]
    _write_csv(output, columns, rows + failed)
    if not subject_of:
        return PredictResult(output=output, rows=rows, skipped=list(skipped))
    summary = _subject_summary(model, [relative[path] for path in kept], [subject_of[path] for path in kept],
                               predicted, probabilities)
    summary_path = output.with_name(f"{output.stem}-subjects.csv")
    _write_csv(summary_path, ["subject", "images", "predicted", "call"], summary)
    return PredictResult(output=output, rows=rows, skipped=list(skipped), subjects_output=summary_path,
                         subjects=summary)


def _recipes(model: Bundle):
    if not model.recipes:
        raise FeatxError(f"{model.path} records no feature recipe (it was trained on a file without one), so featx "
                         "cannot extract features for it; use `featx evaluate` on features made the same way")
    return model.recipes


def _expand_images(images) -> tuple[list[str], dict[str, str]]:
    """Files as given, folders expanded recursively to the image files extract would read (sorted); and each
    file's path relative to the folder it was found in (a file given alone: as given), as extract records paths."""
    if isinstance(images, (str, Path)):
        images = [images]
    files, relative = [], {}
    for item in images:
        item = Path(item)
        if item.is_dir():
            found = image_files(item)
            if not found:
                raise FeatxError(f"folder {item} has no image files; pass a folder of images or image files")
            relative.update((str(path), Path(path).relative_to(item).as_posix()) for path in found)
            files += [str(path) for path in found]
        elif item.is_file():
            files.append(str(item))
            relative[str(item)] = item.as_posix()
        else:
            raise FeatxError(f"{item} not found; pass existing image files or folders")
    if not files:
        raise FeatxError("no images given; pass image files or folders")
    return files, relative


def _subjects(model: Bundle, files: list[str], relative: dict[str, str], unmatched: str | None) -> dict[str, str]:
    """Each file's subject, named as the bundle's training rows were ({} for a bundle trained without --group).

    Only a head with context depends on the subjects: without context, a name the regex misses is its own subject.
    """
    if not model.group:
        return {}
    unmatched = unmatched or (model.group_unmatched if model.context else "own")
    subjects = subjects_of([relative[path] for path in files], model.group, unmatched)
    return dict(zip(files, subjects.tolist()))


def _subject_summary(model: Bundle, paths, subjects, predicted, probabilities) -> list[dict]:
    """One row per subject: its images, each image's prediction, and the subject's call (see `predict`)."""
    names = model.label_names
    subjects = np.asarray(subjects, dtype=object)
    summary = []
    for subject in dict.fromkeys(subjects.tolist()):
        rows = np.flatnonzero(subjects == subject)
        if model.graded:
            call = int(predicted[rows].max())  # class order is grade order
        elif probabilities is not None:
            call = int(probabilities[rows].mean(axis=0).argmax())
        else:
            call = int(np.bincount(predicted[rows], minlength=len(names)).argmax())
        summary.append({"subject": subject, "images": len(rows), "call": names[call],
                        "predicted": "; ".join(f"{paths[i]}={names[predicted[i]]}" for i in rows)})
    return summary


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

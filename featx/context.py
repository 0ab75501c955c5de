"""--context others: each row's features beside the mean features of its subject's other images.

Human graders look at a patient's other eye or knee; a head sees it only if it is in the row. The
context is a function of features alone (never of labels), computed over the rows of one set: a
training file's rows, a test file's rows, a predicted folder's images. Splits keep a subject on one
side, so computing it once before splitting gives every fold exactly what computing it inside the
fold would. Augmented copies of a row's own image are never its context; other images count by their
original rows only.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from featx.choices import CONTEXTS
from featx.errors import FeatxError
from featx.rows import Rows, row_groups

__all__ = ["CONTEXTS", "FILL", "FILLS", "check_context", "context_record", "fill_value", "others_mean",
           "single_image_rows", "with_context"]

FILLS = ("mean", "self", "zeros")
# A subject with one image gets the training rows' mean features as context: "an average other knee", which a
# standardizing head reads as no evidence either way. Measured on knee grades with half the val patients cut to
# one knee (bench/context_gain.py fill): the fills were within 0.05 QWK of each other and of no context, in
# opposite orders for logreg (zeros best, self worst) and ordinal (self best, zeros worst); "mean" lay between.
FILL = "mean"


def check_context(context: str | None) -> None:
    """Refuse an unknown --context before any file is read."""
    if context is not None and context not in CONTEXTS:
        raise FeatxError(f"unknown --context {context!r}: use {' or '.join(CONTEXTS)}, or leave it out")


def context_record(context: str | None, value=None) -> dict:
    """How a bundle's rows were given context, as bundles record it (value: the "mean" fill's features)."""
    if not context:
        return {"context": None}
    return {"context": context, "context_fill": FILL, "context_fill_value": np.asarray(value, dtype=np.float32)}


def fill_value(rows: Rows) -> np.ndarray:
    """The "mean" fill: the mean features of the rows' original images (labels play no part)."""
    return rows.X[rows.aug == 0].mean(axis=0, dtype=np.float64).astype(np.float32)


def others_mean(X, subjects, images, originals=None, *, fill: str = FILL, value=None) -> np.ndarray:
    """Per row, the mean features of the original rows of its subject's other images; `fill` where there are none.

    subjects, images: per-row keys (a subject's images; an image's augmented copies share its key).
    originals: a boolean mask of the rows that count as an image's features (default: every row).
    fill: "mean" (`value`, by default the mean of the original rows here), "self" (the row's own features)
    or "zeros".
    """
    if fill not in FILLS:
        raise FeatxError(f"unknown context fill {fill!r}: use {' or '.join(FILLS)}")
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    originals = np.ones(n, dtype=bool) if originals is None else np.asarray(originals, dtype=bool)
    _, subject = np.unique(np.asarray(subjects, dtype=object).astype(str), return_inverse=True)
    _, image = np.unique(np.asarray(images, dtype=object).astype(str), return_inverse=True)
    # Sums per subject and per image over the counted rows: a row's others are its subject less its own image.
    subject_sum, image_sum = _sums(X, subject, originals), _sums(X, image, originals)
    subject_count = np.bincount(subject, weights=originals, minlength=subject.max(initial=-1) + 1)
    image_count = np.bincount(image, weights=originals, minlength=image.max(initial=-1) + 1)
    count = subject_count[subject] - image_count[image]
    partnered = count > 0
    context = X.copy() if fill == "self" else np.zeros_like(X)
    if fill == "mean":
        context[:] = X[originals].mean(axis=0) if value is None else np.asarray(value, dtype=np.float32)
    others = subject_sum[subject[partnered]] - image_sum[image[partnered]]
    context[partnered] = others / count[partnered, None]
    return context


def _sums(X: np.ndarray, keys: np.ndarray, counted: np.ndarray) -> np.ndarray:
    sums = np.zeros((keys.max(initial=-1) + 1, X.shape[1]), dtype=np.float64)
    np.add.at(sums, keys[counted], X[counted])
    return sums


def single_image_rows(rows: Rows) -> int:
    """How many rows have no other image of their subject (their context is the fill)."""
    images = row_groups(rows.paths, len(rows))
    images_of = Counter(subject for subject, _ in set(zip(rows.groups.tolist(), images.tolist())))
    return sum(images_of[subject] == 1 for subject in rows.groups.tolist())


def with_context(rows: Rows, *, fill: str = FILL, value=None) -> Rows:
    """`rows` with each row's context (others_mean over its subject, rows.groups) beside its features.

    The rows' groups must be subjects. Fused files' widths gain one block per file, after theirs, so
    `Rows.blocks` can pick a file's features and its context together.
    """
    images = row_groups(rows.paths, len(rows))
    context = others_mean(rows.X, rows.groups, images, rows.aug == 0, fill=fill, value=value)  # column-wise
    widths = rows.widths or (rows.X.shape[1],)
    return dataclasses.replace(rows, X=np.hstack([rows.X, context]), widths=(*widths, *widths))

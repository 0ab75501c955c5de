"""Subjects: the rows that show one patient (two eyes, two knees), named by a regex on the image path.

A subject is the first capture group of `--group REGEX` searched in the image's path relative to
the dataset root, e.g. ``(\\d+)[LR]\\.`` names ``0/9003126L.png`` and ``3/9003126R.png`` subject ``9003126``.
Feature files record the regex and the unmatched policy as attributes and the subjects as a column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from featx.choices import UNMATCHED
from featx.errors import FeatxError

SHOWN = 5  # unmatched paths quoted in the refusal


def compile_group(regex: str) -> re.Pattern:
    """The compiled `--group` regex; FeatxError when it is invalid or has no capture group."""
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise FeatxError(f"--group {regex!r} is not a valid regular expression ({exc}); fix it") from None
    if pattern.groups < 1:
        raise FeatxError(f"--group {regex!r} has no capture group; put the subject's part of the path in "
                         r"parentheses, e.g. '(\d+)[LR]\.'")
    return pattern


def check_unmatched(unmatched: str) -> None:
    """Refuse a --group-unmatched policy other than UNMATCHED's."""
    if unmatched not in UNMATCHED:
        raise FeatxError(f"--group-unmatched must be one of {', '.join(UNMATCHED)}; got {unmatched!r}")


def subjects_of(paths: Sequence[str], regex: str, unmatched: str = "refuse") -> np.ndarray:
    """The subject of each path: the first capture group of `regex` searched in it (an object array of str).

    unmatched: "refuse" raises a FeatxError quoting examples; "own" makes such a path its own subject.
    """
    check_unmatched(unmatched)
    pattern = compile_group(regex)
    subjects = np.empty(len(paths), dtype=object)
    missed = []
    for i, path in enumerate(paths):
        path = str(path).replace("\\", "/")
        found = pattern.search(path) if path else None
        if found and found.group(1):
            subjects[i] = found.group(1)
        else:
            missed.append(path or f"<row {i} without a path>")
            # The path itself: nothing else can share it, so the row is a subject of its own.
            subjects[i] = f"<image {path or i}>"
    if missed and unmatched == "refuse":
        examples = ", ".join(repr(p) for p in missed[:SHOWN])
        raise FeatxError(f"--group {regex!r} names no subject in {len(missed)} of {len(paths)} image paths "
                         f"(e.g. {examples}); fix the regex, or pass --group-unmatched own to make each "
                         "such image its own subject")
    return subjects


def subject_counts(subjects: Sequence[str]) -> str:
    """A line for `featx info`: subjects and images per subject."""
    _, counts = np.unique(np.asarray(subjects, dtype=object).astype(str), return_counts=True)
    if not len(counts):
        return "subjects: none"
    sizes, how_many = np.unique(counts, return_counts=True)
    spread = ", ".join(f"{m} with {s}" for s, m in zip(sizes.tolist(), how_many.tolist()))
    return f"subjects: {len(counts)} ({spread} images each)"

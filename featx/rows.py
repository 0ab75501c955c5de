"""Labelled rows of feature files, in memory, for stage 2: class order, reading, splitting.

Every stage-2 command (train, evaluate, compare, report) reads rows the same way: labels are
mapped onto one class list by name, source images (the grouping key) come from the paths, and
scores are measured on original images only, never on augmented copies.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from featx.errors import FeatxError
from featx.store import FeatureStore, subjects_of

__all__ = ["Rows", "as_paths", "class_order", "grouped_train_test_split", "integer_names", "mapped_labels",
           "output_stem", "read_fused", "read_rows", "row_groups", "smallest_class", "store_paths", "store_subjects"]

_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass
class Rows:
    """Labelled rows: features, class indices in the training class order, and where each came from."""

    X: np.ndarray  # (n, D) float32
    y: np.ndarray  # class index of each row
    groups: np.ndarray  # what splits keep together: the subject (--group), else the source image
    aug: np.ndarray  # 0 = the original image, k = its k-th augmented copy
    paths: np.ndarray  # image path of each row, relative to `root` ("" when the file has none)
    root: str | None = None  # the dataset folder the paths are relative to, when recorded
    source: str = ""  # where the rows come from, in words
    widths: tuple[int, ...] = ()  # feature widths of fused files, side by side in X; () for one file

    @classmethod
    def of(cls, X, y, paths=None, *, aug=None, root=None, source="", subjects=None) -> Rows:
        """Rows from arrays; a row's group is its subject, else its source image (path), else the row itself."""
        n = len(y)
        paths = np.array([""] * n if paths is None else [str(p) for p in paths], dtype=object)
        aug = np.zeros(n, dtype=np.int64) if aug is None else np.asarray(aug, dtype=np.int64)
        return cls(X=np.asarray(X), y=np.asarray(y, dtype=np.int64), groups=row_groups(paths, n, subjects), aug=aug,
                   paths=paths, root=root, source=source)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, rows) -> Rows:
        return dataclasses.replace(self, X=self.X[rows], y=self.y[rows], groups=self.groups[rows],
                                   aug=self.aug[rows], paths=self.paths[rows])

    def blocks(self, indices) -> Rows:
        """Only the features of the fused files `indices` (positions in `widths`), side by side."""
        edges = np.cumsum((0, *self.widths))
        columns = np.concatenate([np.arange(edges[i], edges[i + 1]) for i in indices])
        return dataclasses.replace(self, X=self.X[:, columns], widths=tuple(self.widths[i] for i in indices))

    def originals(self) -> Rows:
        """Only the rows of original images: scores are measured on those, never on augmented copies."""
        return self.subset(np.flatnonzero(self.aug == 0)) if (self.aug > 0).any() else self

    @property
    def grouped(self) -> bool:
        """True when some rows share a source image (augmented copies): splits must keep them together."""
        return len(np.unique(self.groups)) < len(self.groups)


def row_groups(paths: Sequence[str] | None, n: int, subjects: Sequence[str] | None = None) -> np.ndarray:
    """The group of each of `n` rows, which splits never cut: its source image, so augmented copies stay together.

    A row without a path (files written through the seed-style API record none) is its own image. Where the
    file names subjects (`featx extract --group`), the subject is the group: a patient's images stay together.
    Every split and streamed fit takes its groups from here.
    """
    if subjects is not None:
        return np.array([f"subject {subject}" for subject in subjects], dtype=object)
    paths = [""] * n if paths is None else paths
    return np.array([str(path) or f"<row {i}>" for i, path in enumerate(paths)], dtype=object)


def store_paths(store: FeatureStore) -> Sequence[str] | None:
    """The image path of each row of a store, or None when it does not record one per row."""
    return store.paths if len(store.paths) == len(store.labels) else None


def integer_names(names: Sequence[str]) -> bool:
    """True when every class name is an integer: such names are grades."""
    return bool(names) and all(_INTEGER.match(str(name).strip()) for name in names)


def class_order(label_names: Sequence[str], ordinal: bool | None) -> tuple[list[str], bool]:
    """Class names in training order, and whether they are graded (ordered) labels."""
    names = [str(name) for name in label_names]
    if integer_names(names):
        # "10" must come after "9": grade order is numeric, whatever order the file stored.
        names = sorted(names, key=lambda name: int(name.strip()))
        return names, ordinal is not False
    return names, bool(ordinal)


def mapped_labels(store: FeatureStore, class_names: Sequence[str]) -> np.ndarray:
    """Every row's class index in `class_names` (matched by name), -1 for unlabelled rows; reads no features."""
    labels = np.asarray(store.labels, dtype=np.int64)
    labelled = labels >= 0
    file_names = [str(name) for name in store.label_names]
    if labelled.any() and not file_names:
        raise FeatxError(f"{store.path} has labels without class names; re-extract it with `featx extract`")
    position = {name: i for i, name in enumerate(class_names)}
    to_class = np.array([position.get(name, -1) for name in file_names], dtype=np.int64)
    mapped = np.full(len(labels), -1, dtype=np.int64)
    mapped[labelled] = to_class[labels[labelled]]
    unknown = labelled & (mapped < 0)
    if unknown.any():
        missing = sorted({file_names[i] for i in labels[unknown]})
        raise FeatxError(
            f"{store.path} has class(es) {', '.join(missing)} that the model does not know "
            f"(known: {', '.join(class_names)}); use feature files with the same class folders"
        )
    return mapped


def as_paths(files) -> list[Path]:
    """One feature file or several (fused, one per recipe), as a list of paths."""
    return [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]


def output_stem(files: list[Path]) -> str:
    """The name outputs are saved under: the file's stem, or the fused files' stems joined by '+'."""
    return "+".join(f.stem for f in files)


def store_subjects(store: FeatureStore, group: str | None = None, unmatched: str = "refuse") -> np.ndarray | None:
    """Each row's subject: named by the regex `group` on its path (--group), else as the file records, else None."""
    if group:
        return subjects_of(store_paths(store) or [""] * len(store.labels), group, unmatched)
    return None if store.subjects is None else np.asarray(store.subjects, dtype=object)


def read_rows(store: FeatureStore, class_names: Sequence[str], log: Callable[[str], object], *,
              group: str | None = None, unmatched: str = "refuse") -> Rows:
    """A store's labelled rows, in memory, with labels mapped onto `class_names` by name.

    group, unmatched: name the rows' subjects from their paths (see `store_subjects`).
    """
    mapped = mapped_labels(store, class_names)  # -1 exactly on the unlabelled rows (unknown classes raise)
    if (mapped < 0).any():
        log(f"{store.path}: leaving out {int((mapped < 0).sum())} unlabelled row(s)")
    rows = np.flatnonzero(mapped >= 0)
    # One contiguous read, then select: much faster than h5py's fancy indexing; heads need it all in memory.
    try:
        X = np.asarray(store.features[:], dtype=np.float32)
    except OSError as error:  # a file cut short or damaged after its header: HDF5 finds out here
        raise FeatxError(f"{store.path} is damaged: its features cannot be read ({' '.join(str(error).split())}); "
                         "recreate it with `featx extract`") from None
    X = _finite(X, store.path)
    every = Rows.of(X, mapped, store_paths(store), aug=store.aug, root=store.dataset_root, source=str(store.path),
                    subjects=store_subjects(store, group, unmatched))
    return every if len(rows) == len(mapped) else every.subset(rows)


def read_fused(stores: Sequence[FeatureStore], class_names: Sequence[str], log: Callable[[str], object], *,
               group: str | None = None, unmatched: str = "refuse") -> Rows:
    """Labelled rows of feature files of the same images, each file's features side by side in X.

    Rows are matched by image path and augmented copy, classes by name; files that do not hold
    exactly the same images, or label one differently, are refused.
    """
    parts = [read_rows(store, class_names, log, group=group, unmatched=unmatched) for store in stores]
    first = parts[0]
    if len(parts) == 1:  # nothing to match: rows without paths are fine alone
        return dataclasses.replace(first, widths=(first.X.shape[1],))
    keys = _row_keys(first)
    blocks = [first.X]
    for store, part in zip(stores[1:], parts[1:]):
        position = {key: i for i, key in enumerate(_row_keys(part))}
        missing = [key for key in keys if key not in position]
        if missing or len(position) != len(keys):
            extra = sorted(set(position) - set(keys))
            example = (missing or extra)[0][0]
            raise FeatxError(
                f"{stores[0].path} and {store.path} do not hold the same images ({len(missing)} only in the first, "
                f"{len(extra)} only in the second, e.g. {example}); fuse files extracted from one dataset "
                "(`featx extract DATASET --backbone a,b`)"
            )
        order = np.array([position[key] for key in keys])
        relabelled = np.flatnonzero(part.y[order] != first.y)
        if len(relabelled):
            row = relabelled[0]
            raise FeatxError(f"{stores[0].path} and {store.path} label {keys[row][0]} differently "
                             f"({class_names[first.y[row]]} vs {class_names[part.y[order][row]]}); "
                             "fuse files extracted from one dataset")
        blocks.append(part.X[order])
    return dataclasses.replace(first, X=np.hstack(blocks), widths=tuple(block.shape[1] for block in blocks),
                               source=" + ".join(str(store.path) for store in stores))


def _row_keys(rows: Rows) -> list[tuple[str, int]]:
    """(image path, augmented copy) of each row: what identifies a row across feature files."""
    keys = list(zip(rows.paths.tolist(), rows.aug.tolist()))
    if not all(path for path, _ in keys) or len(set(keys)) != len(keys):
        raise FeatxError(f"{rows.source} does not record one image path per row, so its rows cannot be matched "
                         "with another file's; re-extract it with `featx extract`")
    return keys


def _finite(X: np.ndarray, source) -> np.ndarray:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise FeatxError(f"{source} has {int(bad.sum())} row(s) with NaN or infinite features (first: row "
                         f"{int(np.flatnonzero(bad)[0])}); re-extract it with `featx extract --overwrite`")
    return X


def grouped_train_test_split(y, groups, *, test_size: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): seeded, stratified by class, whole source images on one side."""
    keys, first_row, group_of_row = np.unique(groups, return_index=True, return_inverse=True)
    try:
        train_groups, test_groups = train_test_split(
            np.arange(len(keys)), test_size=test_size, stratify=y[first_row], random_state=seed
        )
    except ValueError as error:
        raise FeatxError(
            f"cannot hold out {test_size:.0%} of {len(keys)} images stratified by class ({error}); "
            "add images, change --test-size, or pass a separate --test file"
        ) from None
    in_test = np.isin(group_of_row, test_groups)
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def smallest_class(y, groups) -> tuple[int, int]:
    """(class index, source images) of the labelled class with the fewest source images."""
    counts = {int(index): len(np.unique(groups[y == index])) for index in np.unique(y)}
    index = min(counts, key=counts.get)
    return index, counts[index]

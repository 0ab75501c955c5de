"""Reading a feature file: features stay on disk, the small columns come into memory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np

from featx.errors import FeatxError
from featx.recipe import FEATURE_KEYS, Recipe, mismatch
from featx.store._durable import list_shards, parts_dir
from featx.store._files import Contents, open_featx_file, rows_in_shards


class FeatureStore:
    """Read a feature file: features stay on disk (lazy), the small columns are in memory.

    The file is opened read-only; an extraction that appends to it meanwhile replaces the file
    atomically, so an open store keeps reading the consistent snapshot it opened.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FeatxError(self._missing_message(self.path))
        self._file, self.data_key = open_featx_file(self.path, allow_legacy=True)
        try:
            contents = Contents(self._file, self.data_key)
            contents.check()
            self.features = contents.features
            self.labels = contents.labels()
            self.label_names = contents.label_names()
            self.paths = contents.paths()
            self.aug = contents.aug() if "aug" in self._file else None
            self.subjects = contents.subjects()
            self.skipped = contents.skipped()
            self.attrs = contents.attrs
            self.recipe: Recipe | None = contents.recipe
        except Exception as exc:
            self._file.close()
            if isinstance(exc, FeatxError):
                raise FeatxError(f"{self.path}: {exc}") from None
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise FeatxError(f"{self.path} is damaged ({message}); recreate it with `featx extract`") from None

    @staticmethod
    def _missing_message(path: str) -> str:
        shards = list_shards(parts_dir(path))
        if shards:
            rows = rows_in_shards(shards)
            return (f"{path} is incomplete: the extraction stopped after {rows} rows; "
                    "rerun the same `featx extract` command to finish it")
        return f"{path} does not exist; create it with `featx extract`"

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.features.dtype

    @property
    def complete(self) -> bool:
        # Seeds-style files have no marker; they were written in one go. A marker that is not a flag
        # was not written by featx: the file cannot be called complete.
        marker = self.attrs.get("complete", True)
        return isinstance(marker, (bool, int)) and bool(marker)

    @property
    def dataset_root(self) -> str | None:
        """The folder the paths are relative to, when the file records it."""
        root = self.attrs.get("dataset_root")
        return root if isinstance(root, str) and root else None

    @property
    def group_regex(self) -> str | None:
        """The --group regex whose first group named the subjects, when the file records subjects."""
        regex = self.attrs.get("group_regex")
        return regex if isinstance(regex, str) and regex else None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def iter_batches(self, n) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Yield (features, labels, start) n rows at a time, reading only those rows."""
        n = int(n)
        if n < 1:
            raise ValueError(f"batch size must be at least 1, got {n}")
        for start in range(0, len(self), n):
            yield self.features[start:start + n], self.labels[start:start + n], start

    def check_compatible(self, other) -> None:
        """Raise FeatxError if ``other`` (a store or a Recipe) holds features of another space."""
        check_compatible([self, other])

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}, rows={len(self)}, dim={self.dim})"


def _described(item, index: int) -> tuple[str, Recipe | None, int | None]:
    if isinstance(item, FeatureStore):
        return item.path, item.recipe, item.dim
    if isinstance(item, Recipe):
        return f"recipe {index + 1}", item, None
    raise TypeError(f"expected a FeatureStore or a Recipe, got {type(item).__name__}")


def check_compatible(stores_or_recipes: Iterable, keys=FEATURE_KEYS) -> None:
    """Raise FeatxError unless all stores/recipes hold features of one space (recipe `keys`, width).

    A recipe recorded in one and missing in another counts as a difference: we cannot tell that the
    features are comparable. Class lists may differ: rows are matched to classes by name.
    """
    items = [_described(item, i) for i, item in enumerate(stores_or_recipes)]
    first_name, first, first_dim = items[0] if items else (None, None, None)
    for name, recipe, dim in items[1:]:
        problems = [mismatch(first, recipe, keys)]
        if first_dim is not None and dim is not None and first_dim != dim:
            problems.append(f"feature dim: {first_dim} vs {dim}")
        problems = [problem for problem in problems if problem]
        if problems:
            raise FeatxError(
                f"{first_name} and {name} hold features made differently ({'; '.join(problems)}); "
                "extract both with the same recipe"
            )

"""Reading one featx HDF5 file (a final feature file or a shard): open, validate, read lazily."""

from __future__ import annotations

import os

import h5py
import numpy as np

from featx.errors import FeatxError
from featx.recipe import Recipe

FORMAT = "featx-features/1"
SHARD_FORMAT = "featx-shard/1"
STR = h5py.string_dtype("utf-8")
# Attributes the writer owns (bookkeeping, not provenance): user attrs cannot set them.
WRITER_ATTRS = frozenset({"format", "featx_version", "data_key", "created", "complete", "parts_generation",
                          "has_aug", "shard_index"})


def plain(value):
    """An attribute value as a plain python value (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def plain_attrs(attrs) -> dict:
    return {key: plain(value) for key, value in attrs.items()}


def decode_strings(dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in dataset[()].ravel()]


class Contents:
    """What one final file or shard holds, read lazily except for the small columns."""

    def __init__(self, h5file: h5py.File, data_key: str):
        self.file = h5file
        self.data_key = data_key
        self.features = h5file[data_key]
        self.attrs = plain_attrs(h5file.attrs)

    def __len__(self):
        return int(self.features.shape[0])

    @property
    def recipe(self) -> Recipe | None:
        return Recipe.from_attrs(self.attrs)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def _span(self, start, stop) -> int:
        return len(range(len(self))[start:stop])

    def labels(self, start=0, stop=None) -> np.ndarray:
        if "labels" not in self.file:
            return np.full(self._span(start, stop), -1, dtype=np.int64)
        return np.asarray(self.file["labels"][start:stop], dtype=np.int64).ravel()

    def paths(self, start=0, stop=None) -> list[str]:
        if "paths" not in self.file:
            return [""] * self._span(start, stop)
        return [str(p) for p in self.file["paths"].asstr()[start:stop]]

    def subjects(self) -> list[str] | None:
        """The subject of each row (see featx.store.subjects), or None when the file records none."""
        return [str(s) for s in self.file["subjects"].asstr()[()]] if "subjects" in self.file else None

    def has_aug(self) -> bool:
        return "aug" in self.file and bool(self.attrs.get("has_aug", True))

    def aug(self, start=0, stop=None) -> np.ndarray:
        if "aug" not in self.file:
            return np.zeros(self._span(start, stop), dtype=np.int64)
        return np.asarray(self.file["aug"][start:stop], dtype=np.int64)

    def label_names(self) -> list[str]:
        return decode_strings(self.file["label_names"]) if "label_names" in self.file else []

    def skipped(self) -> list[tuple[str, str]]:
        if "skipped" not in self.file or self.file["skipped"].shape[0] == 0:
            return []
        rows = self.file["skipped"].asstr()[()]
        return [(str(p), str(r)) for p, r in rows]

    def check(self) -> None:
        """Raise ValueError unless the columns fit the features (reads only the small columns).

        A file from elsewhere may have any shapes and types; checking them once here keeps every
        reader (FeatureStore, resume, `featx info`) from failing later with a numpy or h5py error.
        """
        n = len(self)
        if self.features.ndim != 2:
            raise ValueError(f"features of shape {self.features.shape}, not (rows, dims)")
        if self.features.dtype.kind not in "fiu":
            raise ValueError(f"features of dtype {self.features.dtype}, not numbers")
        for name, kinds, ndim in (("labels", "iu", 1), ("aug", "iu", 1), ("paths", "SOU", 1), ("subjects", "SOU", 1),
                                  ("label_names", "SOU", 1), ("skipped", "SOU", 2)):
            column = self.file.get(name)
            if column is None:
                continue
            if not isinstance(column, h5py.Dataset) or column.ndim != ndim or column.dtype.kind not in kinds:
                what = "a group" if not isinstance(column, h5py.Dataset) else \
                    f"shape {column.shape}, dtype {column.dtype}"
                raise ValueError(f"column {name!r} is {what}")
            if name in ("labels", "aug", "paths", "subjects") and column.shape[0] != n:
                raise ValueError(f"{n} feature rows but {column.shape[0]} {name}")
        if "skipped" in self.file and self.file["skipped"].shape[1] != 2:
            raise ValueError(f"column 'skipped' of shape {self.file['skipped'].shape}, not (files, 2)")
        # Decoding checks the strings are utf-8; the names are few, the paths are needed by every reader.
        names, labels = self.label_names(), self.labels()
        self.paths(), self.skipped()
        if len(set(names)) != len(names):
            raise ValueError(f"class names repeated ({', '.join(names)})")
        labelled = labels[labels >= 0]
        if labelled.size and names and int(labelled.max()) >= len(names):
            raise ValueError(f"labels without class names (index {int(labelled.max())}, {len(names)} names)")


def open_featx_file(path: str, allow_legacy: bool) -> tuple[h5py.File, str]:
    """Open a feature file read-only; returns (file, data_key) or raises FeatxError."""
    if os.path.isdir(path):
        raise FeatxError(
            f"{path} is a folder, not a feature file; give the .h5 file made by `featx extract`"
        )
    if not h5py.is_hdf5(path):
        raise FeatxError(f"{path} is not an HDF5 file; give a feature file made by `featx extract`")
    try:
        h5file = h5py.File(path, "r")
    except OSError as exc:
        raise FeatxError(
            f"{path} cannot be opened as HDF5 ({_one_line(exc)}); recreate it with `featx extract`"
        ) from None
    try:
        fmt, data_key = _format_and_data_key(h5file, allow_legacy)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        # Attributes HDF5 or utf-8 cannot decode: the file is not one featx wrote.
        h5file.close()
        raise FeatxError(f"{path} is damaged ({_one_line(exc)}); recreate it with `featx extract`") from None
    if data_key is None:
        h5file.close()
        what = f"format {fmt!r}" if fmt else "no featx format attribute"
        raise FeatxError(
            f"{path} is not a featx feature file ({what}); create one with `featx extract`"
        )
    return h5file, data_key


def _format_and_data_key(h5file: h5py.File, allow_legacy: bool) -> tuple[object, str | None]:
    """The file's format attribute and its features' dataset name, None when it holds no usable features."""
    fmt = plain(h5file.attrs.get("format", ""))
    if fmt == FORMAT:
        data_key = plain(h5file.attrs.get("data_key", "features"))
    elif fmt == "" and allow_legacy:
        # A file from the seeds' HDF5DatasetWriter: features under "features" or "images".
        data_key = next((k for k in ("features", "images") if k in h5file), None)
    else:
        data_key = None
    ok = (
        isinstance(data_key, str)
        and isinstance(h5file.get(data_key), h5py.Dataset)
        and h5file[data_key].ndim == 2
        and (fmt == FORMAT or isinstance(h5file.get("labels"), h5py.Dataset))
    )
    return fmt, data_key if ok else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def open_shard(path: str) -> tuple[h5py.File, Contents]:
    remedy = "delete it to lose its rows, or start over with --overwrite"
    try:
        h5file = h5py.File(path, "r")
    except OSError as exc:
        raise FeatxError(f"shard {path} is unreadable ({_one_line(exc)}); {remedy}") from None
    try:
        data_key = plain(h5file.attrs["data_key"])
        if not isinstance(data_key, str) or not isinstance(h5file.get(data_key), h5py.Dataset):
            raise ValueError(f"no features under data_key {data_key!r}")
        contents = Contents(h5file, data_key)
        contents.check()
        contents.recipe  # noqa: B018 - a recipe that cannot be read is a damaged shard
    except FeatxError as exc:
        h5file.close()
        raise FeatxError(f"shard {path} is damaged ({exc}); {remedy}") from None
    except (OSError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        h5file.close()
        raise FeatxError(f"shard {path} is not a featx shard ({_one_line(exc)}); {remedy}") from None
    return h5file, contents


def rows_in_shards(shards: list[tuple[int, str]], assembled_generation=None) -> int:
    """Rows in the shards, leaving out those already assembled into a final file of that generation."""
    rows = 0
    for _, path in shards:
        h5file, shard = open_shard(path)
        with h5file:
            if assembled_generation is None or shard.attrs.get("parts_generation") != assembled_generation:
                rows += len(shard)
    return rows

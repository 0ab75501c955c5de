"""The writer's rows on their way to disk: checked columns, and the sink that assembles the final file."""

from __future__ import annotations

import h5py
import numpy as np

from featx.errors import FeatxError
from featx.store._files import STR, Contents

__all__ = ["FinalSink", "validated_aug", "validated_labels", "validated_paths"]

_CHUNK_BYTES = 512 * 1024  # within h5py's recommended 0.1-1 MiB chunk size
_COPY_BLOCK_BYTES = 16 * 1024 * 1024  # rows copied per step while assembling


def validated_labels(labels, n: int) -> np.ndarray:
    labels = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels).ravel()
    if labels.shape[0] != n:
        raise FeatxError(f"got {n} feature rows but {labels.shape[0]} labels; give one label per row")
    integral_floats = labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and \
        np.all(labels == np.round(labels))
    if labels.dtype.kind not in "iub" and not integral_floats:
        raise FeatxError(
            f"labels must be integer class indices (-1 = unlabeled), got dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def validated_paths(paths, n: int) -> list[str]:
    if paths is None:
        return [""] * n
    paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in paths]
    if len(paths) != n:
        raise FeatxError(f"got {n} feature rows but {len(paths)} paths; give one path per row")
    return paths


def validated_aug(aug, n: int) -> np.ndarray:
    if aug is None:
        return np.zeros(n, dtype=np.int64)
    aug = np.full(n, aug) if np.ndim(aug) == 0 else np.asarray(aug).ravel()
    if aug.shape[0] != n:
        raise FeatxError(f"got {n} feature rows but {aug.shape[0]} aug indices; give one per row")
    if aug.dtype.kind not in "iu":
        raise FeatxError(f"aug must be integer copy indices (0 = original), got dtype {aug.dtype}")
    return aug.astype(np.int64)


class FinalSink:
    """Streams rows into the final file's resizable datasets, dropping (path, aug) repeats."""

    def __init__(self, out: h5py.File, data_key: str, dim: int, dtype, with_aug: bool,
                 expected_rows: int, check=lambda: None):
        # Chunks of ~0.5 MiB, but no bigger than the data: a small file stays small.
        cap = max(1, expected_rows)
        chunk_rows = min(cap, max(1, _CHUNK_BYTES // (dim * dtype.itemsize)))
        column_rows = min(cap, 16384)
        self.features = out.create_dataset(data_key, shape=(0, dim), maxshape=(None, dim),
                                           dtype=dtype, chunks=(chunk_rows, dim))
        self.labels = out.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64,
                                         chunks=(column_rows,))
        self.paths = out.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR,
                                        chunks=(min(cap, 4096),))
        self.aug = (out.create_dataset("aug", shape=(0,), maxshape=(None,), dtype=np.int64,
                                       chunks=(column_rows,)) if with_aug else None)
        self.skipped = out.create_dataset("skipped", shape=(0, 2), maxshape=(None, 2), dtype=STR,
                                          chunks=(1024, 2))
        self.block_rows = max(1, _COPY_BLOCK_BYTES // (dim * dtype.itemsize))
        self.seen_rows: set[tuple[str, int]] = set()
        self.seen_skipped: set[str] = set()
        self.check = check  # raises once the disk refused a write: no point copying the rest

    def append(self, contents: Contents) -> None:
        for start in range(0, len(contents), self.block_rows):
            stop = min(start + self.block_rows, len(contents))
            paths = contents.paths(start, stop)
            aug = contents.aug(start, stop)
            keep = self._first_occurrences(paths, aug)
            if not keep.any():
                continue
            self._extend(self.features, contents.features[start:stop][keep])
            self._extend(self.labels, contents.labels(start, stop)[keep])
            self._extend(self.paths, np.array(paths, dtype=object)[keep])
            if self.aug is not None:
                self._extend(self.aug, aug[keep])
            self.check()
        skipped = [(p, r) for p, r in contents.skipped() if not (p and p in self.seen_skipped)]
        self.seen_skipped.update(p for p, _ in skipped)
        if skipped:
            self._extend(self.skipped, np.array(skipped, dtype=object).reshape(-1, 2))

    def _first_occurrences(self, paths: list[str], aug: np.ndarray) -> np.ndarray:
        keep = np.ones(len(paths), dtype=bool)
        for i, (path, copy) in enumerate(zip(paths, aug.tolist())):
            if not path:  # rows without a path cannot be told apart; keep them all
                continue
            key = (path, copy)
            if key in self.seen_rows:
                keep[i] = False
            else:
                self.seen_rows.add(key)
        return keep

    @staticmethod
    def _extend(dataset, values) -> None:
        start = dataset.shape[0]
        dataset.resize(start + len(values), axis=0)
        dataset[start:] = values

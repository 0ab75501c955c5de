"""The feature file (format ``featx-features/1``): a crash-safe, resumable writer and a lazy reader.

- `writer`: `HDF5DatasetWriter`, the seeds' contract made crash-safe (shards, atomic renames, a lock).
- `reader`: `FeatureStore` and `check_compatible`.
- `describe`: the text of `featx info`.
- `subjects`: which rows show one subject (patient), named by a `--group` regex on the paths.
- `_durable` and `_files`: atomic files, shards and locks; opening one HDF5 file.
"""

from featx.store._durable import parts_dir
from featx.store._files import FORMAT
from featx.store.describe import describe
from featx.store.reader import FeatureStore, check_compatible
from featx.store.subjects import UNMATCHED, subjects_of
from featx.store.writer import HDF5DatasetWriter

__all__ = ["FORMAT", "UNMATCHED", "FeatureStore", "HDF5DatasetWriter", "check_compatible", "describe", "parts_dir",
           "subjects_of"]

"""The feature file (format ``featx-features/1``): a crash-safe writer and a reader.

Writing never updates the final HDF5 file in place, because HDF5 is not journaled and a
process killed while it rewrites metadata can leave a file that no longer opens. Instead
every ``flush()`` writes one small shard file into ``<output>.parts/`` (temp name, fsync,
atomic rename) and ``close()`` assembles the old final file plus all shards into a temp
file that atomically replaces the output. A kill at any instant leaves either the old
state or the new one, and a writer opened with ``mode="a"`` picks up from there.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator

import h5py
import numpy as np

from featx import __version__
from featx.errors import FeatxError

try:  # flock is POSIX-only; without it we simply do not guard against a second writer.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

FORMAT = "featx-features/1"
SHARD_FORMAT = "featx-shard/1"
IDENTITY_KEYS = ("backbone", "weights_id", "pooling", "image_size", "layer", "tta")

_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.h5$")
_STR = h5py.string_dtype("utf-8")
# Attributes the writer owns; user attrs cannot override them.
_RESERVED_ATTRS = frozenset(
    {"format", "featx_version", "data_key", "created", "complete", "parts_generation",
     "has_aug", "shard_index"}
)
_CHUNK_BYTES = 512 * 1024  # within h5py's recommended 0.1-1 MiB chunk size
_COPY_BLOCK_BYTES = 16 * 1024 * 1024  # rows copied per step while assembling


# --------------------------------------------------------------------------- helpers


def _plain(value):
    """An attribute value as a plain python value (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _plain_attrs(attrs) -> dict:
    return {key: _plain(value) for key, value in attrs.items()}


def _check_attr_value(key: str, value) -> None:
    scalar = (str, int, float, bool, np.generic)
    if isinstance(value, scalar):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value):
        return
    raise TypeError(f"attribute {key!r} must be a str, int, float or bool (or a list of them), "
                    f"not {type(value).__name__}")


def _decode_strings(dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in dataset[()].ravel()]


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    # Makes a rename durable; not every platform lets a directory be opened.
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_publish(tmp_path: str, final_path: str) -> None:
    _fsync_file(tmp_path)
    os.replace(tmp_path, final_path)
    _fsync_dir(os.path.dirname(os.path.abspath(final_path)))


def _write_hdf5_atomically(final_path: str, tmp_path: str, fill) -> None:
    """Create tmp_path, ``fill(h5file)`` it, then publish it as final_path; never leave tmp_path."""
    try:
        with h5py.File(tmp_path, "w") as h5file:
            fill(h5file)
        _atomic_publish(tmp_path, final_path)
    except OSError as exc:
        raise FeatxError(
            f"could not write {final_path} ({exc}); free disk space, then rerun the same command to resume"
        ) from None
    finally:
        # Also after a FeatxError (an unreadable shard): a temp copy of the data can be large.
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def parts_dir(path) -> str:
    """Where the shards of an extraction into `path` live until the final file is assembled."""
    return str(path) + ".parts"


def _list_shards(folder: str) -> list[tuple[int, str]]:
    """(index, path) of every complete shard, in write order."""
    if not os.path.isdir(folder):
        return []
    shards = []
    for name in os.listdir(folder):
        match = _SHARD_NAME.match(name)
        if match:
            shards.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(shards)


def _remove_temp_leftovers(path: str) -> None:
    """Delete temp files a killed writer left behind (only call while holding the lock)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".tmp-"
    for name in os.listdir(directory):
        if name.startswith(prefix):
            os.remove(os.path.join(directory, name))
    parts = parts_dir(path)
    if os.path.isdir(parts):
        for name in os.listdir(parts):
            if not _SHARD_NAME.match(name):
                os.remove(os.path.join(parts, name))


def _identity_differences(old: dict, new: dict, keys: Iterable[str]) -> list[str]:
    """'key: old -> new' for each key recorded on both sides with different values."""
    return [
        f"{key}: {_plain(old[key])!r} -> {_plain(new[key])!r}"
        for key in keys
        if key in old and key in new and _plain(old[key]) != _plain(new[key])
    ]


class _Lock:
    """An exclusive, non-blocking flock on ``<output>.lock``; the OS drops it if we die."""

    def __init__(self, output_path: str):
        self.output_path = output_path
        self.path = output_path + ".lock"
        self._fd = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FeatxError(
                    f"{self.output_path} is being written by another process; "
                    "wait for it to finish or choose another output"
                ) from None
            # A previous holder may have unlinked the file between our open and flock;
            # a lock on an unlinked inode guards nothing, so try again on the new file.
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            held = os.fstat(fd)
            if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # safe while we hold it: a waiter that opened the old inode re-checks it
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


# --------------------------------------------------------------------------- reading one HDF5 file


class _Contents:
    """What one final file or shard holds, read lazily except for the small columns."""

    def __init__(self, h5file: h5py.File, data_key: str):
        self.file = h5file
        self.data_key = data_key
        self.features = h5file[data_key]
        self.attrs = _plain_attrs(h5file.attrs)

    def __len__(self):
        return int(self.features.shape[0])

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

    def has_aug(self) -> bool:
        return "aug" in self.file and bool(self.attrs.get("has_aug", True))

    def aug(self, start=0, stop=None) -> np.ndarray:
        if "aug" not in self.file:
            return np.zeros(self._span(start, stop), dtype=np.int64)
        return np.asarray(self.file["aug"][start:stop], dtype=np.int64)

    def label_names(self) -> list[str]:
        return _decode_strings(self.file["label_names"]) if "label_names" in self.file else []

    def skipped(self) -> list[tuple[str, str]]:
        if "skipped" not in self.file or self.file["skipped"].shape[0] == 0:
            return []
        rows = self.file["skipped"].asstr()[()]
        return [(str(p), str(r)) for p, r in rows]


def _open_featx_file(path: str, allow_legacy: bool) -> tuple[h5py.File, str]:
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
            f"{path} cannot be opened as HDF5 ({exc}); recreate it with `featx extract`"
        ) from None
    fmt = _plain(h5file.attrs.get("format", ""))
    if fmt == FORMAT:
        data_key = _plain(h5file.attrs.get("data_key", "features"))
    elif fmt == "" and allow_legacy:
        # A file from the seeds' HDF5DatasetWriter: features under "features" or "images".
        data_key = next((k for k in ("features", "images") if k in h5file), None)
    else:
        data_key = None
    ok = (
        data_key is not None
        and isinstance(h5file.get(data_key), h5py.Dataset)
        and h5file[data_key].ndim == 2
        and (fmt == FORMAT or isinstance(h5file.get("labels"), h5py.Dataset))
    )
    if not ok:
        h5file.close()
        what = f"format {fmt!r}" if fmt else "no featx format attribute"
        raise FeatxError(
            f"{path} is not a featx feature file ({what}); create one with `featx extract`"
        )
    return h5file, data_key


def _open_shard(path: str) -> tuple[h5py.File, _Contents]:
    try:
        h5file = h5py.File(path, "r")
    except OSError as exc:
        raise FeatxError(
            f"shard {path} is unreadable ({exc}); "
            "delete it to lose its rows, or start over with --overwrite"
        ) from None
    return h5file, _Contents(h5file, _plain(h5file.attrs["data_key"]))


# --------------------------------------------------------------------------- writer


class HDF5DatasetWriter:
    """Append feature rows to a ``featx-features/1`` file, crash-safely and resumably.

    The seeds' contract (``dims, outputPath, dataKey, bufSize``; ``add``, ``flush``,
    ``storeClassLabels``, ``close``) extended with paths, skipped files, provenance
    attributes and resume.

    Parameters
    ----------
    dims : (N, D) tuple or int
        Only the feature width D matters; the file grows by appending.
    mode : {"w-", "w", "a"}
        "w-" refuses an existing output, "w" starts over, "a" keeps what is there and appends.
    attrs : dict, optional
        Provenance attributes (str/int/float/bool). IDENTITY_KEYS must match existing data in mode "a".
    dtype : {"float32", "float16"}
    """

    def __init__(self, dims, outputPath, dataKey="images", bufSize=1000, *, mode="w-",
                 attrs=None, dtype="float32"):
        self.dim = self._feature_dim(dims)
        self.outputPath = os.fspath(outputPath)
        self.dataKey = str(dataKey)
        self.bufSize = int(bufSize)
        self.mode = mode
        self.dtype = np.dtype(dtype)
        if self.bufSize < 1:
            raise ValueError(f"bufSize must be at least 1, got {bufSize}")
        if mode not in ("w-", "w", "a"):
            raise ValueError(f"mode must be 'w-', 'w' or 'a', got {mode!r}")
        if self.dtype not in (np.dtype("float32"), np.dtype("float16")):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        if self.dataKey in ("labels", "label_names", "paths", "aug", "skipped"):
            raise ValueError(f"dataKey {self.dataKey!r} clashes with a dataset the format uses")

        self._parts = parts_dir(self.outputPath)
        self._attrs: dict = {}
        self._label_names: list[str] = []
        self._created = _now_iso()
        self._created_on_disk = False
        self._identity: dict = {}  # identity values that data on disk or in the buffer was made with
        self._done_paths: set[str] = set()
        self._final_rows = 0
        self._shard_rows = 0
        self._next_shard = 1
        self._generation = uuid.uuid4().hex
        self._has_final = False
        self._final_generation = None
        self._any_aug = False
        self._closed = False
        self._reset_buffer()

        directory = os.path.dirname(os.path.abspath(self.outputPath))
        os.makedirs(directory, exist_ok=True)
        self._lock = _Lock(self.outputPath)
        self._lock.acquire()
        try:
            _remove_temp_leftovers(self.outputPath)
            self._prepare_output()
            if attrs:
                self.set_attrs(**attrs)
        except BaseException:
            self._lock.release()
            raise

    # ---------------------------------------------------------------- setup

    @staticmethod
    def _feature_dim(dims) -> int:
        if isinstance(dims, (int, np.integer)):
            dim = int(dims)
        else:
            dims = tuple(dims)
            if len(dims) != 2:
                raise ValueError(f"dims must be (N, D) or an int D, got {dims}")
            dim = int(dims[1])
        if dim < 1:
            raise ValueError(f"feature dimension must be positive, got {dim}")
        return dim

    def _prepare_output(self) -> None:
        exists = os.path.exists(self.outputPath)
        shards = _list_shards(self._parts)
        if self.mode == "w-" and (exists or shards):
            what = self.outputPath if exists else f"an unfinished extraction at {self._parts}"
            raise FeatxError(
                f"{what} already exists; rerun `featx extract` to continue it (it resumes), or pass --overwrite to start over"
            )
        if self.mode == "w":
            if exists:
                os.remove(self.outputPath)
            shutil.rmtree(self._parts, ignore_errors=True)
            return
        if exists:
            self._load_final()
        self._load_shards(shards)

    def _load_final(self) -> None:
        try:
            h5file, data_key = _open_featx_file(self.outputPath, allow_legacy=False)
        except FeatxError as exc:
            raise FeatxError(f"cannot resume: {exc}; or pass --overwrite to replace it") from None
        with h5file:
            final = _Contents(h5file, data_key)
            self._check_layout(final, self.outputPath)
            self._absorb(final)
            self._final_rows = len(final)
            self._final_generation = final.attrs.get("parts_generation")
        self._has_final = True

    def _load_shards(self, shards: list[tuple[int, str]]) -> None:
        final_generation = self._final_generation
        for index, path in shards:
            h5file, shard = _open_shard(path)
            with h5file:
                generation = shard.attrs.get("parts_generation")
                if final_generation is not None and generation == final_generation:
                    # Already assembled into the final file by a writer killed before it
                    # removed the shards: reading it again would duplicate rows.
                    os.remove(path)
                    continue
                self._check_layout(shard, path)
                self._absorb(shard)
                self._shard_rows += len(shard)
                self._generation = generation or self._generation
                self._next_shard = index + 1

    def _check_layout(self, contents: _Contents, path: str) -> None:
        """Existing data must have the same feature width, key, dtype and recipe."""
        problems = []
        if contents.data_key != self.dataKey:
            problems.append(f"dataKey: {contents.data_key!r} -> {self.dataKey!r}")
        if contents.dim != self.dim:
            problems.append(f"feature dim: {contents.dim} -> {self.dim}")
        if contents.features.dtype != self.dtype:
            problems.append(f"dtype: {contents.features.dtype} -> {self.dtype}")
        if problems:
            raise FeatxError(
                f"{path} was made differently ({'; '.join(problems)}); "
                "pass --overwrite to start over or choose another output"
            )

    def _absorb(self, contents: _Contents) -> None:
        """Take over attrs, label names, done paths and the recipe from existing data."""
        attrs = {k: v for k, v in contents.attrs.items() if k not in _RESERVED_ATTRS}
        self._attrs.update(attrs)
        if not self._created_on_disk and "created" in contents.attrs:
            # Resuming keeps the time the extraction first started.
            self._created = contents.attrs["created"]
            self._created_on_disk = True
        for key in IDENTITY_KEYS:
            if key in attrs:
                self._identity[key] = attrs[key]
        names = contents.label_names()
        if names:
            self._label_names = names
        self._done_paths.update(p for p in contents.paths() if p)
        self._done_paths.update(p for p, _ in contents.skipped() if p)
        self._any_aug = self._any_aug or contents.has_aug()

    # ---------------------------------------------------------------- public API

    @property
    def done_paths(self) -> set[str]:
        """Paths already stored (rows and skipped files, including the unflushed buffer)."""
        return set(self._done_paths)

    @property
    def rows_written(self) -> int:
        """Rows durable on disk so far (final file plus shards)."""
        return self._final_rows + self._shard_rows

    def set_attrs(self, **attrs) -> None:
        """Record provenance attributes; identity keys may not contradict existing data."""
        self._ensure_open()
        for key, value in attrs.items():
            _check_attr_value(key, value)
            if key in _RESERVED_ATTRS:
                raise ValueError(f"attribute {key!r} is managed by the writer")
        self._check_identity(attrs)
        self._attrs.update(attrs)

    def storeClassLabels(self, classLabels) -> None:
        """Record the class names; label i means classLabels[i]."""
        self._ensure_open()
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in classLabels]
        has_rows = self.rows_written or self._buf_count
        if self._label_names and has_rows and names != self._label_names:
            raise FeatxError(
                f"{self.outputPath} has classes {self._label_names} but this run has {names}; "
                "pass --overwrite to start over or choose another output"
            )
        self._label_names = names

    def add(self, rows, labels, paths=None, aug=None) -> None:
        """Buffer n feature rows with their labels (-1 = unlabeled), paths and aug indices."""
        self._ensure_open()
        rows, labels, paths, aug_indices = self._validated_batch(rows, labels, paths, aug)
        self._any_aug = self._any_aug or aug is not None
        self._lock_identity()
        self._buf_rows.append(rows)
        self._buf_labels.append(labels)
        self._buf_paths.extend(paths)
        self._buf_aug.append(aug_indices)
        self._buf_count += len(rows)
        self._done_paths.update(p for p in paths if p)
        self._flush_if_full()

    def skip(self, path, reason) -> None:
        """Record a file that could not be used, and why."""
        self._ensure_open()
        self._lock_identity()
        self._buf_skipped.append((str(path), str(reason)))
        self._done_paths.add(str(path))
        self._flush_if_full()

    def flush(self) -> None:
        """Write the buffer as one shard file, atomically."""
        self._ensure_open()
        self._write_shard()

    def close(self, complete=True) -> None:
        """Flush, then assemble the final file; ``complete`` marks the extraction finished."""
        if self._closed:
            return
        try:
            self._write_shard()
            self._assemble(bool(complete))
        finally:
            self._closed = True
            self._lock.release()

    def abort(self) -> None:
        """Flush the buffer to a shard and release the lock without assembling."""
        if self._closed:
            return
        try:
            self._write_shard()
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # ---------------------------------------------------------------- internals

    def _ensure_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer for {self.outputPath} is closed")

    def _check_identity(self, attrs: dict) -> None:
        differences = _identity_differences(self._identity, attrs, IDENTITY_KEYS)
        if differences:
            raise FeatxError(
                f"{self.outputPath} was extracted with a different recipe ({'; '.join(differences)}); "
                "pass --overwrite to start over or choose another output name"
            )

    def _lock_identity(self) -> None:
        # Once data exists, the recipe it was made with may no longer change.
        for key in IDENTITY_KEYS:
            if key in self._attrs and key not in self._identity:
                self._identity[key] = self._attrs[key]

    def _validated_batch(self, rows, labels, paths, aug):
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise FeatxError(
                f"feature rows have shape {rows.shape} but {self.outputPath} holds (n, {self.dim}); "
                "check the backbone and pooling that produced them"
            )
        if not np.issubdtype(rows.dtype, np.number) or np.issubdtype(rows.dtype, np.complexfloating):
            raise FeatxError(f"feature rows must be real numbers, got dtype {rows.dtype}")
        n = rows.shape[0]
        # Copy: the caller may reuse its batch array while ours waits in the buffer.
        return (np.array(rows, dtype=self.dtype, copy=True), _validated_labels(labels, n),
                _validated_paths(paths, n), _validated_aug(aug, n))

    def _reset_buffer(self) -> None:
        self._buf_rows: list[np.ndarray] = []
        self._buf_labels: list[np.ndarray] = []
        self._buf_paths: list[str] = []
        self._buf_aug: list[np.ndarray] = []
        self._buf_skipped: list[tuple[str, str]] = []
        self._buf_count = 0

    def _flush_if_full(self) -> None:
        if self._buf_count + len(self._buf_skipped) >= self.bufSize:
            self._write_shard()

    def _write_shard(self) -> None:
        if self._buf_count == 0 and not self._buf_skipped:
            return
        os.makedirs(self._parts, exist_ok=True)
        name = f"shard-{self._next_shard:06d}.h5"
        _write_hdf5_atomically(os.path.join(self._parts, name),
                               os.path.join(self._parts, f".{name}.tmp-{os.getpid()}"), self._fill_shard)
        self._shard_rows += self._buf_count
        self._next_shard += 1
        self._reset_buffer()

    def _fill_shard(self, h5file: h5py.File) -> None:
        rows = (np.concatenate(self._buf_rows) if self._buf_rows
                else np.empty((0, self.dim), dtype=self.dtype))
        h5file.create_dataset(self.dataKey, data=rows)
        h5file.create_dataset("labels", data=np.concatenate(self._buf_labels)
                              if self._buf_labels else np.empty(0, np.int64))
        h5file.create_dataset("paths", data=np.array(self._buf_paths, dtype=object), dtype=_STR)
        h5file.create_dataset("aug", data=np.concatenate(self._buf_aug)
                              if self._buf_aug else np.empty(0, np.int64))
        h5file.create_dataset("skipped", data=np.array(self._buf_skipped, dtype=object)
                              .reshape(-1, 2), dtype=_STR)
        h5file.create_dataset("label_names", data=np.array(self._label_names, dtype=object),
                              dtype=_STR)
        self._write_attrs(h5file.attrs)
        h5file.attrs.update({"format": SHARD_FORMAT, "shard_index": self._next_shard,
                             "has_aug": self._any_aug, "parts_generation": self._generation})

    def _write_attrs(self, target) -> None:
        target.update(self._attrs)
        target.update({"format": FORMAT, "featx_version": __version__, "data_key": self.dataKey,
                       "created": self._created, "complete": False})

    # ---------------------------------------------------------------- assembly

    def _assemble(self, complete: bool) -> None:
        def fill(out: h5py.File) -> None:
            sink = _FinalSink(out, self.dataKey, self.dim, self.dtype, self._any_aug,
                              expected_rows=self.rows_written)
            for contents, h5file in self._sources():
                with h5file:
                    sink.append(contents)
            self._write_attrs(out.attrs)
            out.attrs["complete"] = complete
            out.attrs["parts_generation"] = self._generation
            out.create_dataset("label_names", data=np.array(self._label_names, dtype=object),
                               dtype=_STR)

        _write_hdf5_atomically(self.outputPath, f"{self.outputPath}.tmp-{os.getpid()}", fill)
        # The final file now records this generation, so a kill during removal is harmless.
        shutil.rmtree(self._parts, ignore_errors=True)

    def _sources(self) -> Iterator[tuple[_Contents, h5py.File]]:
        if self._has_final:
            h5file, data_key = _open_featx_file(self.outputPath, allow_legacy=False)
            yield _Contents(h5file, data_key), h5file
        for _, path in _list_shards(self._parts):
            h5file, shard = _open_shard(path)
            yield shard, h5file


def _validated_labels(labels, n: int) -> np.ndarray:
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


def _validated_paths(paths, n: int) -> list[str]:
    if paths is None:
        return [""] * n
    paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in paths]
    if len(paths) != n:
        raise FeatxError(f"got {n} feature rows but {len(paths)} paths; give one path per row")
    return paths


def _validated_aug(aug, n: int) -> np.ndarray:
    if aug is None:
        return np.zeros(n, dtype=np.int64)
    aug = np.full(n, aug) if np.ndim(aug) == 0 else np.asarray(aug).ravel()
    if aug.shape[0] != n:
        raise FeatxError(f"got {n} feature rows but {aug.shape[0]} aug indices; give one per row")
    if aug.dtype.kind not in "iu":
        raise FeatxError(f"aug must be integer copy indices (0 = original), got dtype {aug.dtype}")
    return aug.astype(np.int64)


class _FinalSink:
    """Streams rows into the final file's resizable datasets, dropping (path, aug) repeats."""

    def __init__(self, out: h5py.File, data_key: str, dim: int, dtype, with_aug: bool,
                 expected_rows: int):
        # Chunks of ~0.5 MiB, but no bigger than the data: a small file stays small.
        cap = max(1, expected_rows)
        chunk_rows = min(cap, max(1, _CHUNK_BYTES // (dim * dtype.itemsize)))
        column_rows = min(cap, 16384)
        self.features = out.create_dataset(data_key, shape=(0, dim), maxshape=(None, dim),
                                           dtype=dtype, chunks=(chunk_rows, dim))
        self.labels = out.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64,
                                         chunks=(column_rows,))
        self.paths = out.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR,
                                        chunks=(min(cap, 4096),))
        self.aug = (out.create_dataset("aug", shape=(0,), maxshape=(None,), dtype=np.int64,
                                       chunks=(column_rows,)) if with_aug else None)
        self.skipped = out.create_dataset("skipped", shape=(0, 2), maxshape=(None, 2), dtype=_STR,
                                          chunks=(1024, 2))
        self.block_rows = max(1, _COPY_BLOCK_BYTES // (dim * dtype.itemsize))
        self.seen_rows: set[tuple[str, int]] = set()
        self.seen_skipped: set[str] = set()

    def append(self, contents: _Contents) -> None:
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


# --------------------------------------------------------------------------- reader


class FeatureStore:
    """Read a feature file: features stay on disk (lazy), the small columns are in memory."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FeatxError(self._missing_message(self.path))
        self._file, self.data_key = _open_featx_file(self.path, allow_legacy=True)
        try:
            contents = _Contents(self._file, self.data_key)
            self.features = contents.features
            self.labels = contents.labels()
            self.label_names = contents.label_names()
            self.paths = contents.paths()
            self.aug = contents.aug() if "aug" in self._file else None
            self.skipped = contents.skipped()
            self.attrs = contents.attrs
        except Exception as exc:
            self._file.close()
            raise FeatxError(
                f"{self.path} is damaged ({exc}); recreate it with `featx extract`"
            ) from None
        if len(self.labels) != len(self.features):
            n_labels, n_rows = len(self.labels), len(self.features)
            self._file.close()
            raise FeatxError(f"{self.path} has {n_rows} feature rows but {n_labels} labels; "
                             "recreate it with `featx extract`")

    @staticmethod
    def _missing_message(path: str) -> str:
        shards = _list_shards(parts_dir(path))
        if shards:
            rows = _rows_in_shards(shards)
            return (f"{path} is incomplete: the extraction stopped after {rows} rows; "
                    "rerun the same `featx extract` command to finish it")
        return f"{path} does not exist; create it with `featx extract`"

    @property
    def recipe(self) -> dict:
        """The identity keys (backbone, weights, pooling, ...) this file was made with."""
        return {key: self.attrs[key] for key in IDENTITY_KEYS if key in self.attrs}

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.features.dtype

    @property
    def complete(self) -> bool:
        # Seeds-style files have no marker; they were written in one go.
        return bool(self.attrs.get("complete", True))

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
        """Raise FeatxError if ``other`` (a store or recipe) was made with a different recipe."""
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


def _rows_in_shards(shards: list[tuple[int, str]], assembled_generation=None) -> int:
    """Rows in the shards, leaving out those already assembled into a final file of that generation."""
    rows = 0
    for _, path in shards:
        h5file, shard = _open_shard(path)
        with h5file:
            if assembled_generation is None or shard.attrs.get("parts_generation") != assembled_generation:
                rows += len(shard)
    return rows


def _describe_source(item, index: int) -> tuple[str, dict, int | None, list[str]]:
    if isinstance(item, FeatureStore):
        return item.path, item.recipe, item.dim, item.label_names
    if isinstance(item, dict):
        return f"recipe {index + 1}", {k: item[k] for k in IDENTITY_KEYS if k in item}, None, []
    raise TypeError(f"expected a FeatureStore or a recipe dict, got {type(item).__name__}")


def check_compatible(stores_or_recipes) -> None:
    """Raise FeatxError unless all stores/recipes share one recipe, feature width and classes.

    A key recorded in one and missing in another counts as a difference: we cannot tell
    that the features are comparable.
    """
    items = list(stores_or_recipes)
    if len(items) < 2:
        return
    first_name, first, first_dim, first_names = _describe_source(items[0], 0)
    for index, item in enumerate(items[1:], start=1):
        name, recipe, dim, label_names = _describe_source(item, index)
        problems = [
            f"{key}: {first.get(key, '(not recorded)')!r} vs {recipe.get(key, '(not recorded)')!r}"
            for key in IDENTITY_KEYS
            if _plain(first.get(key)) != _plain(recipe.get(key))
        ]
        if first_dim is not None and dim is not None and first_dim != dim:
            problems.append(f"feature dim: {first_dim} vs {dim}")
        if first_names and label_names and first_names != label_names:
            problems.append(f"classes: {first_names} vs {label_names}")
        if problems:
            raise FeatxError(
                f"{first_name} and {name} were made differently ({'; '.join(problems)}); "
                "extract both with the same backbone, weights and pooling"
            )


# --------------------------------------------------------------------------- describe


def describe(path, max_skipped: int = 5) -> str:
    """A readable summary of a feature file (or of an unfinished extraction) for ``featx info``."""
    path = os.fspath(path)
    shards = _list_shards(parts_dir(path))
    if not os.path.exists(path) and shards:
        return _describe_in_progress(path, shards, max_skipped)
    with FeatureStore(path) as store:
        lines = _describe_store(store, max_skipped)
        pending = _rows_in_shards(shards, store.attrs.get("parts_generation"))
    if pending:
        lines.append(f"in progress: {pending} more rows waiting in {parts_dir(path)} "
                     "(rerun the same `featx extract` command to add them)")
    return "\n".join(lines)


def _describe_store(store: FeatureStore, max_skipped: int) -> list[str]:
    fmt = store.attrs.get("format", "seeds-style HDF5 (no format attribute)")
    state = "complete" if store.complete else "INCOMPLETE (rerun the same `featx extract` command to finish it)"
    lines = [
        f"{store.path}: {fmt}, {state}",
        f"rows: {len(store)}",
        f"feature dim: {store.dim} ({store.dtype}, dataset {store.data_key!r})",
    ]
    lines += _class_lines(store.labels, store.label_names)
    if store.aug is not None:
        lines.append(f"augmented copies: {int(np.count_nonzero(store.aug))} "
                     f"of {len(store)} rows (max aug index {int(store.aug.max(initial=0))})")
    lines += _attr_lines(store.attrs)
    lines += _skipped_lines(store.skipped, max_skipped)
    return lines


def _describe_in_progress(path: str, shards, max_skipped: int) -> str:
    rows, labels, skipped, attrs, names = 0, [], [], {}, []
    for _, shard_path in shards:
        h5file, shard = _open_shard(shard_path)
        with h5file:
            rows += len(shard)
            labels.append(shard.labels())
            skipped += shard.skipped()
            attrs = shard.attrs
            names = shard.label_names() or names
            dim, dtype = shard.dim, shard.features.dtype
    lines = [
        f"{path}: INCOMPLETE extraction in progress ({len(shards)} shards in {parts_dir(path)}); "
        "rerun the same `featx extract` command to finish it",
        f"rows so far: {rows}",
        f"feature dim: {dim} ({dtype})",
    ]
    lines += _class_lines(np.concatenate(labels), names)
    lines += _attr_lines(attrs)
    lines += _skipped_lines(skipped, max_skipped)
    return "\n".join(lines)


def _class_lines(labels: np.ndarray, label_names: list[str]) -> list[str]:
    labeled = labels[labels >= 0]
    counts = np.bincount(labeled, minlength=len(label_names)) if labeled.size else \
        np.zeros(len(label_names), dtype=np.int64)
    lines = [f"classes: {len(counts)}"]
    width = max((len(n) for n in label_names), default=1)
    for index, count in enumerate(counts):
        name = label_names[index] if index < len(label_names) else f"(class {index}, no name)"
        lines.append(f"  {name:<{width}}  {int(count)}")
    unlabeled = int(np.count_nonzero(labels < 0))
    if unlabeled:
        lines.append(f"  {'(unlabeled)':<{width}}  {unlabeled}")
    return lines


def _attr_lines(attrs: dict) -> list[str]:
    shown = {"backbone": "backbone", "weights_id": "weights", "pooling": "pooling",
             "image_size": "image size", "layer": "layer", "tta": "tta"}
    # An empty layer / tta means "none": say so instead of printing a blank value.
    lines = [f"{label}: {attrs[key] if attrs[key] != '' else 'none'}" for key, label in shown.items()
             if key in attrs]
    hidden = set(shown) | _RESERVED_ATTRS - {"created", "featx_version"}
    lines += [f"{key}: {attrs[key]}" for key in sorted(attrs) if key not in hidden]
    return lines


def _skipped_lines(skipped: list[tuple[str, str]], max_skipped: int) -> list[str]:
    lines = [f"skipped files: {len(skipped)}"]
    lines += [f"  {p}: {r}" for p, r in skipped[:max_skipped]]
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more")
    return lines

"""The feature file writer: the seeds' HDF5DatasetWriter contract, made crash-safe and resumable.

Writing never updates the final HDF5 file in place. Every ``flush()`` writes one small shard
file into ``<output>.parts/`` (temp name, fsync, atomic rename) and ``close()`` assembles the
old final file plus all shards into a temp file that atomically replaces the output. A kill at
any instant leaves either the old state or the new one, and a writer opened with ``mode="a"``
picks up from there; a generation id keeps a kill between assembly and shard removal from
duplicating rows.
"""

from __future__ import annotations

import datetime
import os
import shutil
import uuid
from collections.abc import Iterator

import h5py
import numpy as np

from featx._version import __version__
from featx.atomic import write_error
from featx.errors import FeatxError
from featx.recipe import Recipe, mismatch
from featx.store._durable import Lock, list_shards, parts_dir, remove_temp_leftovers, write_hdf5_atomically
from featx.store._files import FORMAT, SHARD_FORMAT, STR, WRITER_ATTRS, Contents, open_featx_file, open_shard
from featx.store._sink import FinalSink, validated_aug, validated_labels, validated_paths
from featx.store.subjects import subjects_of


class HDF5DatasetWriter:
    """Append feature rows to a ``featx-features/1`` file, crash-safely and resumably.

    The seeds' contract (``dims, outputPath, dataKey, bufSize``; ``add``, ``flush``,
    ``storeClassLabels``, ``close``) extended with paths, skipped files, provenance
    attributes and resume. The seeds' camelCase names remain as aliases of the snake_case
    ones: ``outputPath``, ``dataKey``, ``bufSize`` (arguments and attributes) and
    ``storeClassLabels``.

    Parameters
    ----------
    dims : (N, D) tuple or int
        Only the feature width D matters; the file grows by appending.
    output_path : path of the feature file
    data_key : name of the features dataset (default "features", as the file format says)
    buffer_size : rows per flush; a crash loses at most this many
    mode : {"w-", "w", "a"}
        "w-" refuses an existing output, "w" starts over, "a" keeps what is there and appends.
    recipe : featx.recipe.Recipe, optional
        How the rows are made; in mode "a" every recipe key must match the existing data.
    attrs : dict, optional
        Further provenance attributes (str/int/float/bool, or lists of them).
    dtype : {"float32", "float16"}
    """

    def __init__(self, dims, output_path=None, data_key="features", buffer_size=1000, *, mode="w-",
                 recipe: Recipe | None = None, attrs=None, dtype="float32",
                 outputPath=None, dataKey=None, bufSize=None):  # noqa: N803 - the seeds' names
        output_path = _one_of("output_path", output_path, "outputPath", outputPath, None)
        if output_path is None:
            raise TypeError("HDF5DatasetWriter needs output_path")
        self.dim = self._feature_dim(dims)
        self.output_path = os.fspath(output_path)
        self.data_key = str(_one_of("data_key", data_key, "dataKey", dataKey, "features"))
        self.buffer_size = int(_one_of("buffer_size", buffer_size, "bufSize", bufSize, 1000))
        self.mode = mode
        self.dtype = np.dtype(dtype)
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {self.buffer_size}")
        if mode not in ("w-", "w", "a"):
            raise ValueError(f"mode must be 'w-', 'w' or 'a', got {mode!r}")
        if self.dtype not in (np.dtype("float32"), np.dtype("float16")):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        if self.data_key in ("labels", "label_names", "paths", "aug", "skipped"):
            raise ValueError(f"data_key {self.data_key!r} clashes with a dataset the format uses")

        self._parts = parts_dir(self.output_path)
        self._attrs: dict = {}
        self._label_names: list[str] = []
        self._created = _now_iso()
        self._created_on_disk = False
        self._recipe: Recipe | None = None  # the recipe the rows on disk or in the buffer were made with
        # What this run will make, checked against existing data before anything else about it.
        self._requested = recipe if recipe is not None else Recipe.from_attrs(attrs or {})
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

        directory = os.path.dirname(os.path.abspath(self.output_path))
        self._lock = Lock(self.output_path)
        try:
            os.makedirs(directory, exist_ok=True)
            self._lock.acquire()
        except OSError as exc:  # a folder without write permission, a full disk
            raise write_error(self.output_path, exc, "then rerun the same command") from None
        try:
            remove_temp_leftovers(self.output_path)
            self._prepare_output()
            self.set_attrs(**(recipe.to_attrs() if recipe is not None else {}), **(attrs or {}))
        except BaseException:
            self._lock.release()
            raise

    # The seeds' names for the same things.
    outputPath = property(lambda self: self.output_path)  # noqa: N815
    dataKey = property(lambda self: self.data_key)  # noqa: N815
    bufSize = property(lambda self: self.buffer_size)  # noqa: N815

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
        if os.path.lexists(self._parts) and not os.path.isdir(self._parts):
            raise FeatxError(f"{self._parts} is a file, not the folder featx keeps unfinished rows in; "
                             "move or delete it, then rerun")
        exists = os.path.exists(self.output_path)
        shards = list_shards(self._parts)
        if self.mode == "w-" and (exists or shards):
            what = self.output_path if exists else f"an unfinished extraction at {self._parts}"
            raise FeatxError(
                f"{what} already exists; rerun `featx extract` to continue it (it resumes), "
                "or pass --overwrite to start over"
            )
        if self.mode == "w":
            if exists:
                os.remove(self.output_path)
            shutil.rmtree(self._parts, ignore_errors=True)
            return
        if exists:
            self._load_final()
        self._load_shards(shards)

    def _load_final(self) -> None:
        try:
            h5file, data_key = open_featx_file(self.output_path, allow_legacy=False)
        except FeatxError as exc:
            raise FeatxError(f"cannot resume: {exc}; or pass --overwrite to replace it") from None
        with h5file:
            try:
                final = Contents(h5file, data_key)  # decodes the attributes: they may not be utf-8
                final.check()
                final.recipe  # noqa: B018 - a recipe that cannot be read is damage too
            except (FeatxError, OSError, ValueError, TypeError, KeyError) as exc:
                raise FeatxError(f"cannot resume: {self.output_path} is damaged ({' '.join(str(exc).split())}); "
                                 "pass --overwrite to replace it") from None
            self._check_layout(final, self.output_path)
            self._absorb(final, self.output_path)
            self._final_rows = len(final)
            self._final_generation = final.attrs.get("parts_generation")
        self._has_final = True

    def _load_shards(self, shards: list[tuple[int, str]]) -> None:
        final_generation = self._final_generation
        for index, path in shards:
            h5file, shard = open_shard(path)
            with h5file:
                generation = shard.attrs.get("parts_generation")
                if final_generation is not None and generation == final_generation:
                    # Already assembled into the final file by a writer killed before it
                    # removed the shards: reading it again would duplicate rows.
                    os.remove(path)
                    continue
                self._check_layout(shard, path)
                self._absorb(shard, path)
                self._shard_rows += len(shard)
                self._generation = generation or self._generation
                self._next_shard = index + 1

    def _check_layout(self, contents: Contents, path: str) -> None:
        """Existing data must have the same recipe, feature width, key and dtype."""
        _refuse_other_recipe(self.output_path, contents.recipe, self._requested, "this run")
        problems = []
        if contents.data_key != self.data_key:
            problems.append(f"data_key: {contents.data_key!r} -> {self.data_key!r}")
        if contents.dim != self.dim:
            problems.append(f"feature dim: {contents.dim} -> {self.dim}")
        if contents.features.dtype != self.dtype:
            problems.append(f"dtype: {contents.features.dtype} -> {self.dtype}")
        if problems:
            raise FeatxError(
                f"{path} was made differently ({'; '.join(problems)}); "
                "pass --overwrite to start over or choose another output"
            )

    def _absorb(self, contents: Contents, path_or_file: str) -> None:
        """Take over attrs, label names, done paths and the recipe from existing data."""
        _refuse_other_recipe(self.output_path, self._recipe, contents.recipe, path_or_file)
        self._recipe = self._recipe or contents.recipe
        attrs = {k: v for k, v in contents.attrs.items() if k not in WRITER_ATTRS}
        self._attrs.update(attrs)
        if not self._created_on_disk and "created" in contents.attrs:
            # Resuming keeps the time the extraction first started.
            self._created = contents.attrs["created"]
            self._created_on_disk = True
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
        """Record provenance attributes; recipe keys may not contradict existing data."""
        self._ensure_open()
        for key, value in attrs.items():
            _check_attr_value(key, value)
            if key in WRITER_ATTRS:
                raise ValueError(f"attribute {key!r} is managed by the writer")
        merged = {**self._attrs, **attrs}
        if "weights_sha256" in attrs:
            merged.pop("weights_id", None)  # the old one-string form of the same fact
        _refuse_other_recipe(self.output_path, self._recipe, Recipe.from_attrs(merged), "this run")
        self._attrs = merged

    @property
    def recipe(self) -> Recipe | None:
        """The recipe recorded so far (None until one is given)."""
        return Recipe.from_attrs(self._attrs)

    def store_class_labels(self, class_labels) -> None:
        """Record the class names; label i means class_labels[i]."""
        self._ensure_open()
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in class_labels]
        has_rows = self.rows_written or self._buf_count
        if self._label_names and has_rows and names != self._label_names:
            raise FeatxError(
                f"{self.output_path} has classes {self._label_names} but this run has {names}; "
                "pass --overwrite to start over or choose another output"
            )
        self._label_names = names

    storeClassLabels = store_class_labels  # noqa: N815 - the seeds' name

    def add(self, rows, labels, paths=None, aug=None) -> None:
        """Buffer n feature rows with their labels (-1 = unlabeled), paths and aug indices."""
        self._ensure_open()
        rows, labels, paths, aug_indices = self._validated_batch(rows, labels, paths, aug)
        self._any_aug = self._any_aug or aug is not None
        self._lock_recipe()
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
        self._lock_recipe()
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
            raise ValueError(f"writer for {self.output_path} is closed")

    def _lock_recipe(self) -> None:
        # Once rows exist, the recipe they were made with may no longer change.
        if self._recipe is None:
            self._recipe = self.recipe

    def _validated_batch(self, rows, labels, paths, aug):
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise FeatxError(
                f"feature rows have shape {rows.shape} but {self.output_path} holds (n, {self.dim}); "
                "check the backbone and pooling that produced them"
            )
        if not np.issubdtype(rows.dtype, np.number) or np.issubdtype(rows.dtype, np.complexfloating):
            raise FeatxError(f"feature rows must be real numbers, got dtype {rows.dtype}")
        n = rows.shape[0]
        # Copy: the caller may reuse its batch array while ours waits in the buffer.
        return (np.array(rows, dtype=self.dtype, copy=True), validated_labels(labels, n),
                validated_paths(paths, n), validated_aug(aug, n))

    def _reset_buffer(self) -> None:
        self._buf_rows: list[np.ndarray] = []
        self._buf_labels: list[np.ndarray] = []
        self._buf_paths: list[str] = []
        self._buf_aug: list[np.ndarray] = []
        self._buf_skipped: list[tuple[str, str]] = []
        self._buf_count = 0

    def _flush_if_full(self) -> None:
        if self._buf_count + len(self._buf_skipped) >= self.buffer_size:
            self._write_shard()

    def _write_shard(self) -> None:
        if self._buf_count == 0 and not self._buf_skipped:
            return
        try:
            os.makedirs(self._parts, exist_ok=True)
        except OSError as exc:
            raise write_error(self._parts, exc, "then rerun the same command to resume") from None
        name = f"shard-{self._next_shard:06d}.h5"
        write_hdf5_atomically(os.path.join(self._parts, name),
                               os.path.join(self._parts, f".{name}.tmp-{os.getpid()}"), self._fill_shard)
        self._shard_rows += self._buf_count
        self._next_shard += 1
        self._reset_buffer()

    def _fill_shard(self, h5file: h5py.File, check) -> None:
        rows = (np.concatenate(self._buf_rows) if self._buf_rows
                else np.empty((0, self.dim), dtype=self.dtype))
        h5file.create_dataset(self.data_key, data=rows)
        h5file.create_dataset("labels", data=np.concatenate(self._buf_labels)
                              if self._buf_labels else np.empty(0, np.int64))
        h5file.create_dataset("paths", data=np.array(self._buf_paths, dtype=object), dtype=STR)
        h5file.create_dataset("aug", data=np.concatenate(self._buf_aug)
                              if self._buf_aug else np.empty(0, np.int64))
        h5file.create_dataset("skipped", data=np.array(self._buf_skipped, dtype=object)
                              .reshape(-1, 2), dtype=STR)
        h5file.create_dataset("label_names", data=np.array(self._label_names, dtype=object),
                              dtype=STR)
        self._write_attrs(h5file.attrs)
        h5file.attrs.update({"format": SHARD_FORMAT, "shard_index": self._next_shard,
                             "has_aug": self._any_aug, "parts_generation": self._generation})

    def _write_attrs(self, target) -> None:
        target.update(self._attrs)
        target.update({"format": FORMAT, "featx_version": __version__, "data_key": self.data_key,
                       "created": self._created, "complete": False})

    # ---------------------------------------------------------------- assembly

    def _assemble(self, complete: bool) -> None:
        def fill(out: h5py.File, check) -> None:
            sink = FinalSink(out, self.data_key, self.dim, self.dtype, self._any_aug,
                              expected_rows=self.rows_written, check=check)
            for contents, h5file in self._sources():
                with h5file:
                    sink.append(contents)
            self._write_attrs(out.attrs)
            out.attrs["complete"] = complete
            out.attrs["parts_generation"] = self._generation
            out.create_dataset("label_names", data=np.array(self._label_names, dtype=object),
                               dtype=STR)
            if self._attrs.get("group_regex"):
                # From the final paths, so a resumed or re-grouped file always names the subjects of its rows.
                subjects = subjects_of(sink.paths.asstr()[()], self._attrs["group_regex"],
                                       self._attrs.get("group_unmatched", "refuse"))
                out.create_dataset("subjects", data=subjects, dtype=STR)

        write_hdf5_atomically(self.output_path, f"{self.output_path}.tmp-{os.getpid()}", fill)
        # The final file now records this generation, so a kill during removal is harmless.
        shutil.rmtree(self._parts, ignore_errors=True)

    def _sources(self) -> Iterator[tuple[Contents, h5py.File]]:
        if self._has_final:
            h5file, data_key = open_featx_file(self.output_path, allow_legacy=False)
            yield Contents(h5file, data_key), h5file
        for _, path in list_shards(self._parts):
            h5file, shard = open_shard(path)
            yield shard, h5file


def _refuse_other_recipe(output_path: str, existing: Recipe | None, new: Recipe | None, what: str) -> None:
    """Refuse rows of a recipe that differs in any key from the one existing rows were made with."""
    differences = mismatch(existing, new) if existing is not None and new is not None else ""
    if differences:
        raise FeatxError(
            f"{output_path} holds rows extracted with another recipe than {what} ({differences}); "
            "rerun with the options it was made with to continue (featx info lists them; files from before "
            "--decode existed need --decode full), pass --overwrite to start over, or choose another output (-o)"
        )


def _one_of(name, value, alias, alias_value, default):
    """The value given under `name` or under its seeds-era `alias` (not both)."""
    if alias_value is not None:
        if value not in (None, default):
            raise TypeError(f"give {name} or {alias}, not both")
        return alias_value
    return default if value is None else value


def _check_attr_value(key: str, value) -> None:
    scalar = (str, int, float, bool, np.generic)
    if isinstance(value, scalar):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value):
        return
    raise TypeError(f"attribute {key!r} must be a str, int, float or bool (or a list of them), "
                    f"not {type(value).__name__}")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

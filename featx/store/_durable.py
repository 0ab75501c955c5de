"""Durable files: atomic publication, the shard folder of an unfinished extraction, one writer per output.

HDF5 is not journaled: a process killed while it rewrites metadata can leave a file that no longer
opens. So nothing is updated in place: every file is written under a temporary name, fsynced and
renamed over its final name, and the rename is made durable by fsyncing the folder.
"""

from __future__ import annotations

import io
import os
import re

import h5py

from featx.atomic import disk_is_full, publish, write_error
from featx.errors import FeatxError

try:  # flock is POSIX-only; without it we simply do not guard against a second writer.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

SHARD_NAME = re.compile(r"^shard-(\d{6,})\.h5$")
TEMP_SHARD_NAME = re.compile(r"^\.shard-\d{6,}\.h5\.tmp-\d+$")


class _TemporaryHDF5(io.RawIOBase):
    """The file HDF5 writes a temporary file through (h5py's file-object driver).

    HDF5 cannot close a file whose writes failed: on a full disk it leaves the file open and the
    process crashes at exit; and h5py reports a failed write made while it frees an object as a
    traceback it cannot raise. So no write fails for HDF5: the first refused one is recorded, it and
    every later one are dropped (the file is deleted anyway), and `check()` raises the recorded error
    where featx can stop cleanly.
    """

    def __init__(self, path: str):
        super().__init__()
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset, whence=io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def check(self) -> None:
        """Raise the first write the disk refused, if any."""
        if self.error is not None:
            raise self.error

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.error is None:
            try:
                while view:  # a raw write may be short (e.g. up to a file size limit): finish or fail
                    view = view[self._file.write(view):]
            except OSError as error:
                self.error = error
        if self.error is not None:
            self._file.seek(len(view), io.SEEK_CUR)  # where HDF5 expects the file position to be
        return size

    def truncate(self, size=None) -> int:
        if self.error is None:
            try:
                return self._file.truncate(size)
            except OSError as error:
                self.error = error
        return self.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: every write already reached the operating system

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def write_hdf5_atomically(final_path: str, tmp_path: str, fill) -> None:
    """Create tmp_path, ``fill(h5file, check)`` it, then publish it as final_path; never leave tmp_path.

    `check()` raises once the disk has refused a write: a long fill calls it to stop early. A full disk
    is one FeatxError that says so; rows already published (earlier shards) stay readable.
    """
    remedy = "then rerun the same command to resume (rows written so far are kept)"
    sink = None
    try:
        sink = _TemporaryHDF5(tmp_path)
        with sink, h5py.File(sink, "w") as h5file:
            fill(h5file, sink.check)
        sink.check()  # HDF5 writes most of a file when it closes it
        publish(tmp_path, final_path)
    except RuntimeError:
        # h5py words some failed flushes as RuntimeError; after a refused write that is the disk too.
        if sink is None or sink.error is None:
            raise
        raise write_error(final_path, sink.error, remedy) from None
    except OSError as error:
        if sink is not None and sink.error is None and not disk_is_full(error):
            # Not our write: reading the rows to copy failed (a damaged shard or final file).
            raise FeatxError(f"could not assemble {final_path} ({' '.join(str(error).split())}); a shard or the "
                             f"existing file is damaged: run `featx info {final_path}`, or start over with "
                             "--overwrite") from None
        raise write_error(final_path, sink.error if sink is not None and sink.error else error, remedy) from None
    finally:
        # Also after a FeatxError (an unreadable shard): a temp copy of the data can be large.
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def parts_dir(path) -> str:
    """Where the shards of an extraction into `path` live until the final file is assembled."""
    return str(path) + ".parts"


def list_shards(folder: str) -> list[tuple[int, str]]:
    """(index, path) of every complete shard, in write order."""
    if not os.path.isdir(folder):
        return []
    shards = []
    for name in os.listdir(folder):
        match = SHARD_NAME.match(name)
        if match:
            shards.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(shards)


def remove_temp_leftovers(path: str) -> None:
    """Delete temp files a killed writer left behind (only call while holding the lock)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".tmp-"
    for name in os.listdir(directory):
        if name.startswith(prefix) and os.path.isfile(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    parts = parts_dir(path)
    if os.path.isdir(parts):
        # Only our own temp shards: anything else someone put there is left alone (and never read).
        for name in os.listdir(parts):
            if TEMP_SHARD_NAME.match(name) and os.path.isfile(os.path.join(parts, name)):
                os.remove(os.path.join(parts, name))


class Lock:
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

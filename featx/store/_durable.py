"""Durable files: atomic publication, the shard folder of an unfinished extraction, one writer per output.

HDF5 is not journaled: a process killed while it rewrites metadata can leave a file that no longer
opens. So nothing is updated in place: every file is written under a temporary name, fsynced and
renamed over its final name, and the rename is made durable by fsyncing the folder.
"""

from __future__ import annotations

import os
import re

import h5py

from featx.errors import FeatxError

try:  # flock is POSIX-only; without it we simply do not guard against a second writer.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

SHARD_NAME = re.compile(r"^shard-(\d{6,})\.h5$")


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


def write_hdf5_atomically(final_path: str, tmp_path: str, fill) -> None:
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
        if name.startswith(prefix):
            os.remove(os.path.join(directory, name))
    parts = parts_dir(path)
    if os.path.isdir(parts):
        for name in os.listdir(parts):
            if not SHARD_NAME.match(name):
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

"""Output files that appear whole or not at all, and one clear message when the disk refuses a write.

Every file featx writes (feature files and their shards, bundles, PNGs, CSVs, the report page) is
written under a temporary name in its own folder, fsynced and renamed over its final name: a reader,
or a user after a crash or a full disk, finds the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featx.errors import FeatxError

__all__ = ["atomic_output", "fsync_dir", "fsync_file", "publish", "writable_folder", "write_error"]

# EFBIG: a file size limit (ulimit -f, or the filesystem's) refuses a write just as a full disk does.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Make a rename in folder `path` durable; not every platform lets a folder be opened."""
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


def publish(temporary, final) -> None:
    """Rename a written temporary file over `final`, durably (fsync the file, then its folder)."""
    fsync_file(temporary)
    os.replace(temporary, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


def disk_is_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def write_error(path, error: OSError, remedy: str = "then rerun the same command") -> FeatxError:
    """The one-line FeatxError for an OSError met while writing `path`; says "disk full" when it is."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in _NO_SPACE:
        return FeatxError(f"disk full: could not write {path} ({reason}); free space there, {remedy}")
    if error.errno in _NO_PERMISSION:
        return FeatxError(f"cannot write {path} ({reason}); choose a folder you can write to (-o), {remedy}")
    return FeatxError(f"could not write {path} ({' '.join(reason.split())}); {remedy}")


def temporary_name(path: Path) -> Path:
    # Hidden, and named after its process: never mistaken for an output, never shared by two writers.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_output(path, remedy: str = "then rerun the same command") -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; publish it whole, or raise one FeatxError.

    An OSError inside the block (a full disk, a folder without write permission) becomes a FeatxError
    that names `path`; the temporary file never outlives the block.
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        publish(temporary, path)
    except OSError as error:
        raise write_error(path, error, remedy) from None
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - the folder vanished; nothing left to tidy
            pass


def writable_folder(folder, option: str = "-o", *, create: bool = True) -> Path:
    """Prove a file can be created in `folder` (made if `create`), before any long work starts.

    create=False probes the nearest folder that exists instead, and leaves nothing behind: for a
    command that may still fail before it writes. A permission check (os.access) is not enough:
    root passes it on a read-only filesystem.
    """
    folder = Path(folder)
    where = folder
    if not create:
        while not where.exists() and where.parent != where:
            where = where.parent
    probe = where / f".featx-write-test-{os.getpid()}"
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno in _NO_SPACE:
            raise FeatxError(f"disk full: cannot write in {where} ({reason}); free space there or choose "
                             f"another folder ({option})") from None
        raise FeatxError(f"cannot write in {where} ({reason}); choose a folder you can write to ({option})") from None
    return folder

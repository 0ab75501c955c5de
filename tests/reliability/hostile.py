"""The reliability suite's helpers: real files made here, a clean-outcome check, a hostile-case count.

A "hostile case" is one damaged input handed to one featx entry point. Each must end cleanly: a
result, or one FeatxError / one `featx: error:` line (exit 1), within a deadline, and without changing
the input. The count per kind is printed at the end of the run (and is what the issue asks to report).
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import io
import signal
import struct
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from featx import FeatxError

# Hostile cases run, by kind, and measurements worth reading; printed by pytest_terminal_summary.
HOSTILE: Counter = Counter()
MEASURED: dict[str, str] = {}
SIZE = 32  # the smallest input the backbones take: random-weight extraction stays fast, the plumbing is the same
BACKBONE = "efficientnet_lite0"
EXTRACT_ARGS = ["--weights", "none", "--image-size", str(SIZE), "-q"]
DEADLINE_S = 120  # generous for a loaded 2-core machine; a hang is minutes, not seconds


class Hang(Exception):
    """An entry point ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds: float = DEADLINE_S):
    """Fail a call that runs longer than `seconds`; a hard stop (with tracebacks) if C code never returns."""
    def expired(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    # SIGALRM only interrupts Python code; a loop inside HDF5 or OpenCV would never see it.
    faulthandler.dump_traceback_later(seconds + 60, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def clean_call(kind: str, function, *args, **kwargs):
    """Run a library entry point on hostile input: (result, None) or (None, FeatxError); anything else fails."""
    HOSTILE[kind] += 1
    with deadline():
        try:
            return function(*args, **kwargs), None
        except FeatxError as error:
            assert "\n" not in str(error) and str(error).strip(), f"not a one-line message: {error!r}"
            return None, error


def run_cli(*args) -> tuple[int, str, str]:
    """`featx ARGS` in this process (no TensorFlow start-up per call): (exit code, stdout, stderr)."""
    from featx.cli import main

    out, err = io.StringIO(), io.StringIO()
    # featx's log handler writes to the current sys.stderr, so redirecting it catches the log lines too.
    with deadline(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(code: int, stderr: str, *, must_fail: bool = False) -> str | None:
    """A CLI run ended in success or in exactly one `featx: error:` line with exit 1; returns that line."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("featx: error:")]
    if code == 0 and not must_fail:
        assert not errors, stderr
        return None
    assert code == 1 and len(errors) == 1, f"exit {code}, stderr:\n{stderr}"
    return errors[0]


def clean_cli(kind: str, *args, must_fail: bool = False) -> str | None:
    """Count one hostile case run through the CLI; returns its error line (None on success)."""
    HOSTILE[kind] += 1
    code, _, stderr = run_cli(*args)
    return assert_clean_exit(code, stderr, must_fail=must_fail)


def file_digest(path) -> str:
    """sha256 of a file, or of a folder's relative names and contents (a .parts folder)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(path.rglob("*")):
            digest.update(str(item.relative_to(path)).encode())
            if item.is_file():
                digest.update(item.read_bytes())
    elif path.exists():
        digest.update(path.read_bytes())
    else:
        digest.update(b"<absent>")
    return digest.hexdigest()


def tree(folder) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256): what "nothing written" compares."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_images(folder: Path, n: int, brightness: int, seed: int, size: int = 40) -> list[Path]:
    """n noisy PNGs of one brightness, written by OpenCV: two brightnesses make two learnable classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = np.clip(rng.normal(brightness, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def make_dataset(root: Path, n: int = 8, seed: int = 0) -> Path:
    write_images(root / "dark", n, 50, seed)
    write_images(root / "light", n, 200, seed + 1)
    return root


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def black_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of any size, made without ever holding its pixels.

    Each row is a filter byte and 3 x width zero bytes. zlib's full flush makes a block of rows
    compress to the same bytes every time, so the image data is one compressed block repeated; the
    checksum of n zero bytes is known in closed form (Adler-32: A = 1, B = n mod 65521).
    """
    row = b"\0" * (3 * width + 1)
    rows_per_block = max(1, (1 << 20) // len(row))
    compressor = zlib.compressobj(9)
    first = compressor.compress(row * rows_per_block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(row * rows_per_block) + compressor.flush(zlib.Z_FULL_FLUSH)
    header = first[: len(first) - len(repeat)]  # the two-byte zlib header, then the same block
    blocks, rest = divmod(height, rows_per_block)
    tail = compressor.compress(row * rest) + compressor.flush(zlib.Z_FULL_FLUSH) if rest else b""
    size = len(row) * height
    data = header + repeat * blocks + tail + b"\x03\x00" + struct.pack(">I", ((size % 65521) << 16) | 1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 48 x 64 JPEG whose start-of-frame header claims width x height."""
    ok, encoded = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))
    data = bytearray(encoded.tobytes())
    frame = data.find(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)

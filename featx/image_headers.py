"""What an image file's bytes declare before any decoding: its size, JPEG segments, truncation, EXIF orientation.

Plain byte parsing (no OpenCV), so featx can refuse a huge or cut-off file and choose a reduced-scale
decode before the decoder allocates anything.
"""

from __future__ import annotations

import struct

__all__ = ["exif_orientation", "image_header_size", "is_jpeg", "is_truncated_jpeg", "jpeg_header_segments"]


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that an image's header declares (PNG, JPEG, BMP, GIF, WebP); None when not known."""
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if is_jpeg(data):
            for marker, start, _ in jpeg_header_segments(data):
                if marker in _JPEG_FRAME_MARKERS:  # start of frame: precision, height, width
                    height, width = struct.unpack(">HH", data[start + 1 : start + 5])
                    return width, height
            return None
        if data[:2] == b"BM":
            if int.from_bytes(data[14:18], "little") == 12:  # the old OS/2 header: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)  # a negative height means rows stored top-down
        if data[:4] in (b"GIF8",):
            return struct.unpack("<HH", data[6:10])
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:  # a header cut short: let the decoder say what is wrong
        return None
    return None


# SOF0..SOF15 but DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if kind == b"VP8L":  # lossless: 14-bit width-1 and height-1 after a signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def jpeg_header_segments(data: bytes):
    """(marker, payload start, payload end) of each JPEG segment up to and including start-of-scan."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        yield marker, i + 4, i + 2 + length
        if marker == 0xDA:
            return
        i += 2 + length


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def is_truncated_jpeg(data: bytes) -> bool:
    """True when a JPEG has no end-of-image marker after its first scan (trailing data is fine)."""
    if not is_jpeg(data):
        return False
    scan_start = next((start for marker, start, _ in jpeg_header_segments(data) if marker == 0xDA), None)
    return scan_start is None or data.rfind(b"\xff\xd9") < scan_start


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _exif_block(data: bytes) -> bytes | None:
    """The TIFF-structured EXIF data of a JPEG (APP1) or PNG (eXIf chunk), if any."""
    if is_jpeg(data):
        for marker, start, end in jpeg_header_segments(data):
            if marker == 0xE1 and data[start : start + 6] == b"Exif\x00\x00":
                return data[start + 6 : end]
        return None
    if data.startswith(_PNG_SIGNATURE):
        i = len(_PNG_SIGNATURE)
        while i + 8 <= len(data):
            length = int.from_bytes(data[i : i + 4], "big")
            kind = data[i + 4 : i + 8]
            if kind == b"eXIf":
                return data[i + 8 : i + 8 + length]
            if kind == b"IEND":
                return None
            i += 12 + length
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation tag (1..8); 1 (upright) when absent or unreadable."""
    tiff = _exif_block(data)
    if not tiff or tiff[:2] not in (b"II", b"MM"):
        return 1
    endian = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(endian + "I", tiff, 4)
        (count,) = struct.unpack_from(endian + "H", tiff, ifd)
        for k in range(count):
            tag, kind = struct.unpack_from(endian + "HH", tiff, ifd + 2 + 12 * k)
            if tag == 0x0112 and kind == 3:  # Orientation, SHORT
                (value,) = struct.unpack_from(endian + "H", tiff, ifd + 2 + 12 * k + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1

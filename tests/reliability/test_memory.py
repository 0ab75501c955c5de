"""Images whose size would exhaust memory: decoded smaller, or skipped with a reason, in bounded memory.

A 20,000 x 20,000 PNG decodes to 1.2 GB (and a second copy while its colours are converted); a JPEG
may declare 30,000 x 30,000 pixels in a header of a few bytes. featx reads the header first.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from hostile import HOSTILE, MEASURED, black_png, jpeg_declaring, write_images

import featx
from featx.images import MAX_IMAGE_PIXELS, image_header_size, try_load_image

REPO = str(Path(featx.__file__).resolve().parents[1])


def test_the_png_maker_makes_real_pngs():
    # The 20,000 x 20,000 file below is only honest if the maker writes what OpenCV reads.
    for width, height in ((7, 5), (300, 2000)):
        image = cv2.imdecode(np.frombuffer(black_png(width, height), np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape == (height, width, 3) and not image.any()


def test_headers_over_the_limit_are_skipped_with_a_reason_before_decoding(tmp_path):
    huge = 30_000
    riff = b"RIFF" + struct.pack("<I", 30) + b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0"
    headers = {
        "huge.png": black_png(20_000, 20_000),
        "huge.bmp": b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, huge, -huge) + b"\0" * 40,
        "huge.gif": b"GIF89a" + struct.pack("<HH", 65_000, 65_000) + b"\0" * 20,
        "huge.webp": riff + (huge - 1).to_bytes(3, "little") + (huge - 1).to_bytes(3, "little"),
        "huge-even-at-an-eighth.jpg": jpeg_declaring(65_000, 65_000),
    }
    for name, data in headers.items():
        HOSTILE["memory: header over the pixel limit (try_load_image)"] += 1
        width, height = image_header_size(data)
        assert width * height > MAX_IMAGE_PIXELS, name
        (tmp_path / name).write_bytes(data)
        image, reason = try_load_image(tmp_path / name)
        assert image is None and f"{width} x {height} pixels" in reason and "downscale" in reason, (name, reason)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    # 7,000 x 6,000 = 42 million pixels: over the limit, so libjpeg decodes it at half size.
    big = np.zeros((6000, 7000, 3), np.uint8)
    big[:, :3500] = (0, 0, 255)  # left half red (OpenCV writes BGR)
    path = tmp_path / "big.jpg"
    assert cv2.imwrite(str(path), big)
    del big
    image, reason = try_load_image(path)
    assert reason is None and image.shape == (3000, 3500, 3)
    assert image[1500, 100, 0] > 240 and image[1500, 100, 1:].max() < 15  # red, in RGB
    assert image[1500, 3400].max() < 15  # the right half stays black: the image is scaled, not cropped


PEAK_SCRIPT = """
import json, resource, sys
from featx.extract import extract

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

options = dict(backbone="efficientnet_lite0", weights="none", image_size=32, progress=False, log=lambda *a: None)
extract(sys.argv[1], sys.argv[3], **options)
plain = peak_mib()
# ru_maxrss only grows: after the plain run it is the plain run's peak, after this one it is the larger of
# the two; the hostile run also pays for a second backbone build, so the comparison is on the strict side.
result = extract(sys.argv[2], sys.argv[4], **options)
print(json.dumps({"plain": plain, "hostile": peak_mib(), "rows": result.rows,
                  "skipped": [list(item) for item in result.files[0].skipped]}))
"""


def test_huge_images_keep_an_extraction_within_one_and_a_half_times_its_memory(tmp_path):
    plain, hostile = tmp_path / "plain", tmp_path / "hostile"
    for root in (plain, hostile):
        write_images(root / "dark", 4, 50, seed=0)
        write_images(root / "light", 4, 200, seed=1)
    (hostile / "dark" / "poster.png").write_bytes(black_png(20_000, 20_000))
    (hostile / "dark" / "lying-header.jpg").write_bytes(jpeg_declaring(30_000, 30_000))
    big = np.full((6000, 7000, 3), 90, np.uint8)
    assert cv2.imwrite(str(hostile / "light" / "camera.jpg"), big)
    del big
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(plain), str(hostile), str(tmp_path / "p.h5"),
                           str(tmp_path / "h.h5")], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    HOSTILE["memory: huge images in an extraction (child process)"] += 3
    MEASURED["peak RSS, extraction without / with the huge images (MiB)"] = (
        f"{peaks['plain']:.0f} / {peaks['hostile']:.0f}")
    skipped = dict(peaks["skipped"])
    assert "20000 x 20000 pixels" in skipped["dark/poster.png"]
    # The JPEG that lies about its size is decoded at an eighth (its data then runs out) or skipped: either way
    # bounded. The camera-sized JPEG is decoded at half size and becomes a row.
    assert "light/camera.jpg" not in skipped and peaks["rows"] + len(skipped) == 11
    assert peaks["hostile"] <= 1.5 * peaks["plain"], peaks

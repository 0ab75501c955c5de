"""Small JPEG thumbnails of the original images, as data URLs a page can embed."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from featx.cores import usable_cores
from featx.images import try_load_image

__all__ = ["Thumbnail", "make_thumbnails"]

THUMBNAIL_SIDE = 96  # pixels, longer side: enough to recognise a picture, ~3 KB as JPEG
_JPEG_QUALITY = 75


@dataclass(frozen=True)
class Thumbnail:
    """An embeddable picture of one image, or why there is none."""

    url: str | None  # data:image/jpeg;base64,...
    missing: str | None = None  # e.g. "file not found"


def _thumbnail(path: str, side: int) -> Thumbnail:
    # A large JPEG decodes at 1/2 to 1/8 scale (as the extractor decodes), never below the thumbnail's side.
    image, reason = try_load_image(path, reduce_to=side)
    if image is None:
        return Thumbnail(None, reason)
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        return Thumbnail(None, "could not encode a thumbnail")
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii"))


def make_thumbnails(paths: Iterable[str], *, side: int = THUMBNAIL_SIDE,
                    workers: int | None = None) -> dict[str, Thumbnail]:
    """Thumbnail of each distinct path (absolute, or relative to the working directory).

    Decoding dominates; OpenCV releases the GIL while it decodes, so threads use every core.
    """
    unique = list(dict.fromkeys(os.fspath(path) for path in paths))
    if not unique:
        return {}
    workers = workers or min(8, usable_cores())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(lambda path: _thumbnail(path, side), unique)))

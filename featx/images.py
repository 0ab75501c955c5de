"""Images: find them in class folders, decode them robustly, resize and augment them."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from imutils.paths import list_files

from featx.errors import FeatxError
from featx.image_headers import exif_orientation, image_header_size, is_jpeg, is_truncated_jpeg

logger = logging.getLogger(__name__)

# imutils.paths.image_types plus the formats OpenCV also decodes (GIF only in recent builds).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}

# Transparent pixels become this gray: it is neutral for every ImageNet preprocessing.
ALPHA_BACKGROUND = 128

# Decoding takes 3 bytes a pixel, and several times that for 16-bit or transparent images (they pass
# through float32), per decoding thread: a 20,000 x 20,000 PNG would take 1.2 GB before featx shrinks it
# to a few hundred pixels. Larger images are decoded at 1/2, 1/4 or 1/8 scale when JPEG (libjpeg scales
# while it decodes), and skipped with a reason otherwise; their header is read before any decoding.
# The formats whose header featx does not read (TIFF) get OpenCV's own refusal at the same size: featx
# sets OPENCV_IO_MAX_IMAGE_PIXELS to it on import (OpenCV reads it once, when it is first imported).
MAX_IMAGE_PIXELS = 40_000_000  # e.g. 7,700 x 5,200: any camera's JPEG, and most scans


class UnreadableImage(FeatxError):
    """An image file that cannot be decoded; `reason` says why in a few words."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}; fix or remove the file")


# --------------------------------------------------------------------------- finding images


@dataclass
class Dataset:
    """Image files under `root`, with their class labels (-1 when unlabeled)."""

    root: Path
    paths: list[str]  # POSIX paths relative to root
    labels: np.ndarray  # int64, -1 for unlabeled
    label_names: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return len(self.labels) > 0 and bool(np.all(self.labels >= 0))

    def __len__(self) -> int:
        return len(self.paths)


def _visible_images(root: Path) -> Iterator[Path]:
    """Every image under root that is not in a hidden file or folder, relative to root, lazily."""
    for found in list_files(str(root), validExts=IMAGE_EXTENSIONS):
        relative = Path(found).relative_to(root)
        if not any(part.startswith(".") for part in relative.parts):
            yield relative


def _relative_image_paths(root: Path) -> list[Path]:
    """Every non-hidden image under root, relative to root, in sorted order."""
    return sorted(_visible_images(root), key=lambda p: p.as_posix())


def image_files(root) -> list[Path]:
    """Every image file featx reads under `root` (its extensions, hidden files and folders left out), sorted."""
    root = Path(root)
    return [root / relative for relative in _relative_image_paths(root)]


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Sorted names; numerically when every name is an integer, so grade "10" follows "9"."""
    names = set(names)
    if names and all(re.fullmatch(r"[0-9]+", name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def _require_folder(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FeatxError(f"image folder not found: {root}; check the path")
    return root


def list_dataset(root, *, seed: int | None = None, label_names: Sequence[str] | None = None) -> Dataset:
    """List the images under `root`: one sub-folder per class, or a flat folder of unlabeled images.

    seed: None keeps sorted order; an int shuffles reproducibly.
    label_names: the class list to use (so train/val/test of one dataset share it); a class
    folder not in it is an error. With a flat folder it is kept as the dataset's label_names.
    """
    root = _require_folder(root)
    files = _relative_image_paths(root)
    if not files:
        raise FeatxError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
            "point to a folder of class folders or of images"
        )

    in_class_folders = [p for p in files if len(p.parts) > 1]
    if in_class_folders:
        loose = len(files) - len(in_class_folders)
        if loose:
            logger.warning("ignoring %d image(s) directly in %s: only images in class folders are used", loose, root)
        files = in_class_folders
        names = _class_names(root, {p.parts[0] for p in files}, label_names)
        index = {name: i for i, name in enumerate(names)}
        labels = np.array([index[p.parts[0]] for p in files], dtype=np.int64)
    else:
        names = _checked_label_names(label_names) if label_names is not None else []
        labels = np.full(len(files), -1, dtype=np.int64)

    paths = [p.as_posix() for p in files]
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(paths))
        paths = [paths[i] for i in order]
        labels = labels[order]
    return Dataset(root=root, paths=paths, labels=labels, label_names=names)


def _checked_label_names(label_names: Sequence[str]) -> list[str]:
    # Names read back from HDF5 may be bytes.
    names = [name.decode() if isinstance(name, bytes) else str(name) for name in label_names]
    if len(set(names)) != len(names):
        raise FeatxError(f"label names must be unique, got {names}")
    return names


def _class_names(root: Path, found: set[str], label_names: Sequence[str] | None) -> list[str]:
    if label_names is None:
        return sort_class_names(found)
    names = _checked_label_names(label_names)
    unknown = sorted(found - set(names))
    if unknown:
        raise FeatxError(
            f"class folder(s) {', '.join(unknown)} in {root} are not among the expected classes "
            f"{', '.join(names)}; rename or remove them"
        )
    return names


def _has_images(folder: Path) -> bool:
    return next(_visible_images(folder), None) is not None


def find_splits(root) -> dict[str, Path]:
    """The train/val/test folders of a split dataset, e.g. {"train": root/"train", "val": root/"valid"}.

    Returns {} unless root holds split folders with images and nothing else with images.
    """
    root = _require_folder(root)
    splits: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file():
            if child.name.lower().endswith(IMAGE_EXTENSIONS):
                return {}
            continue
        if not _has_images(child):
            continue
        split = SPLIT_ALIASES.get(child.name.lower())
        if split is None:
            return {}
        if split in splits:
            raise FeatxError(
                f"{root} has two {split!r} split folders ({splits[split].name}, {child.name}); keep one"
            )
        splits[split] = child
    # train, val, test: the order people read them in, whatever the folder names sort to
    return {name: splits[name] for name in ("train", "val", "test") if name in splits}


# --------------------------------------------------------------------------- decoding


def load_image(path, *, reduce_to: int | None = None) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), upright per its EXIF orientation.

    reduce_to: let a JPEG at least 2x this size on both sides decode at 1/2, 1/4 or 1/8 scale (libjpeg
    scales in the DCT domain, several times cheaper), never below `reduce_to` on either side.
    """
    try:
        data = Path(path).read_bytes()  # not cv2.imread: it fails on non-ASCII paths on Windows
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found") from None
    except IsADirectoryError:
        raise UnreadableImage(path, "is a folder, not a file") from None
    except PermissionError:
        raise UnreadableImage(path, "permission denied") from None
    except OSError as error:
        raise UnreadableImage(path, f"cannot read file ({error.strerror or error})") from None
    return decode_image(data, path, reduce_to=reduce_to)


def decode_image(data: bytes, path="<bytes>", *, reduce_to: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H, W, 3); `path` only names the image in errors.

    reduce_to: as in `load_image`.
    """
    if len(data) == 0:
        raise UnreadableImage(path, "empty file")
    if is_truncated_jpeg(data):
        # Some libjpeg builds decode a cut-off file silently, padding it with gray.
        raise UnreadableImage(path, "truncated JPEG (file ends before the image data does)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _decoding_flags(data, path, reduce_to))
    except cv2.error:
        image = None
    if image is None:
        raise UnreadableImage(path, "cannot decode image (not an image or corrupt)")
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise UnreadableImage(path, "image has zero width or height")
    rgb = _to_rgb_uint8(image, path)
    return np.ascontiguousarray(_apply_orientation(rgb, exif_orientation(data)))


# libjpeg's scales while decoding, smallest reduction first.
_REDUCED_JPEG = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _decoding_flags(data: bytes, path, reduce_to: int | None = None) -> int:
    """How to decode: as stored, or a JPEG at a reduced scale (asked for, or over MAX_IMAGE_PIXELS)."""
    # UNCHANGED keeps alpha and 16-bit depth (and never applies EXIF orientation: we do that).
    size = image_header_size(data)
    if size is None:
        return cv2.IMREAD_UNCHANGED
    width, height = size
    jpeg = is_jpeg(data)
    scale = 1
    if jpeg and reduce_to:
        # Both sides keep at least reduce_to pixels: the image is never enlarged afterwards, so a crop or a
        # stretch to the input size sees the same content.
        scale = max((s for s in _REDUCED_JPEG if min(width, height) >= s * reduce_to), default=1)
    if width * height > MAX_IMAGE_PIXELS:
        fitting = [s for s in _REDUCED_JPEG if -(-width // s) * -(-height // s) <= MAX_IMAGE_PIXELS] if jpeg else []
        if not fitting:
            raise UnreadableImage(path, f"image is {width} x {height} pixels, more than featx decodes "
                                        f"({MAX_IMAGE_PIXELS // 1_000_000} million); downscale it")
        scale = max(scale, fitting[0])
    return cv2.IMREAD_UNCHANGED if scale == 1 else _REDUCED_JPEG[scale] | cv2.IMREAD_IGNORE_ORIENTATION


def try_load_image(path, *, reduce_to: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, reason) when the file cannot be used; never raises."""
    try:
        return load_image(path, reduce_to=reduce_to), None
    except UnreadableImage as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - a decoder bug must quarantine one file, not stop a run
        message = " ".join(str(error).split()) or type(error).__name__
        return None, f"unexpected decoding error: {message}"[:200]


def _to_rgb_uint8(image: np.ndarray, path) -> np.ndarray:
    """OpenCV's BGR(A)/gray in any depth -> RGB uint8, alpha composited over gray."""
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels not in (1, 2, 3, 4):
        raise UnreadableImage(path, f"unsupported number of channels ({channels})")
    has_alpha = channels in (2, 4)
    if image.dtype == np.uint8 and not has_alpha:  # the common case: no float round trip
        code = cv2.COLOR_GRAY2RGB if channels == 1 else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(image, code)

    unit = _to_unit_float(image, path)
    colour, alpha = (unit[:, :, :-1], unit[:, :, -1:]) if has_alpha else (unit, None)
    if alpha is not None:
        colour = colour * alpha + (ALPHA_BACKGROUND / 255.0) * (1.0 - alpha)
    colour = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour[:, :, ::-1]
    return np.clip(np.rint(colour * 255.0), 0, 255).astype(np.uint8)


def _to_unit_float(image: np.ndarray, path) -> np.ndarray:
    """Pixel values scaled to [0, 1] as float32 (16-bit is rescaled, not clipped)."""
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    if image.dtype in (np.uint8, np.uint16):
        return image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    raise UnreadableImage(path, f"unsupported pixel type {image.dtype}")


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Undo the camera's EXIF orientation so the image is upright."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.transpose(1, 0, 2)
    if orientation == 6:
        return image.transpose(1, 0, 2)[:, ::-1]  # 90 degrees clockwise
    if orientation == 7:
        return image[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return image.transpose(1, 0, 2)[::-1]  # 90 degrees counter-clockwise
    return image


# --------------------------------------------------------------------------- resizing


def _target_size(size) -> tuple[int, int]:
    """(width, height) from an int or a (width, height) pair."""
    width, height = (size, size) if np.isscalar(size) else tuple(size)
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise FeatxError(f"image size must be a positive integer or (width, height), got {size!r}")
    return int(width), int(height)


def _interpolation(source_hw: tuple[int, int], target_wh: tuple[int, int]) -> int:
    # INTER_AREA averages when shrinking (no aliasing) but degrades to nearest-like when enlarging.
    (height, width), (new_width, new_height) = source_hw, target_wh
    return cv2.INTER_AREA if new_width <= width and new_height <= height else cv2.INTER_LINEAR


def resize(image: np.ndarray, size, *, crop: bool = False) -> np.ndarray:
    """Resize to `size` (int or (width, height)).

    crop=False stretches to the size, ignoring aspect (as the seeds do); crop=True scales the
    shorter side to fit and cuts the center, keeping aspect.
    """
    width, height = _target_size(size)
    if not crop:
        return cv2.resize(image, (width, height), interpolation=_interpolation(image.shape[:2], (width, height)))
    source_height, source_width = image.shape[:2]
    scale = max(width / source_width, height / source_height)
    scaled = (max(width, round(source_width * scale)), max(height, round(source_height * scale)))
    image = cv2.resize(image, scaled, interpolation=_interpolation(image.shape[:2], scaled))
    top, left = (scaled[1] - height) // 2, (scaled[0] - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


# --------------------------------------------------------------------------- augmenting


def augment(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    horizontal_flip: bool = True,
    vertical_flip: bool = True,
    rotation: float = 20.0,
    shift: float = 0.1,
    zoom: tuple[float, float] = (0.8, 1.2),
) -> np.ndarray:
    """A random affine variant of `image` like Keras' ImageDataGenerator: flips, rotation (degrees,
    +-rotation), shift (fraction of width/height), zoom (per axis); borders are reflected.
    """
    # Draw every number on every call, so one image's flips don't shift the next image's stream.
    flips = rng.random(2) < 0.5
    angle = rng.uniform(-rotation, rotation)
    shift_x, shift_y = rng.uniform(-shift, shift, size=2)
    zoom_x, zoom_y = rng.uniform(zoom[0], zoom[1], size=2)

    if horizontal_flip and flips[0]:
        image = image[:, ::-1]
    if vertical_flip and flips[1]:
        image = image[::-1]

    height, width = image.shape[:2]
    center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    theta = np.deg2rad(angle)
    rotate_zoom = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag(
        [zoom_x, zoom_y]
    )
    offset = center + np.array([shift_x * width, shift_y * height]) - rotate_zoom @ center
    matrix = np.hstack([rotate_zoom, offset[:, None]])
    warped = cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return warped.reshape(image.shape)  # warpAffine drops a trailing channel axis of size 1


def tta_flip(image: np.ndarray) -> np.ndarray:
    """The horizontal mirror image, for test-time augmentation."""
    return np.ascontiguousarray(image[:, ::-1])

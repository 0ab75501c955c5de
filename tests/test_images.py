"""featx.images on tiny images written in the test: decoding, listing, resizing, augmenting."""

from __future__ import annotations

import logging
import re
import struct
import zlib

import cv2
import numpy as np
import pytest

from featx.errors import FeatxError
from featx.images import (
    IMAGE_EXTENSIONS,
    Dataset,
    UnreadableImage,
    augment,
    find_splits,
    list_dataset,
    load_image,
    resize,
    sort_class_names,
    try_load_image,
    tta_flip,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # RGB


def write_bgr(path, rgb_image, params=()):
    """cv2.imwrite wants BGR; tests think in RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb_image[:, :, ::-1]), list(params))
    return path


def png_bytes(width, height, color_type, bit_depth, pixel_rows, palette=b""):
    """A minimal PNG written by hand, for kinds cv2.imwrite cannot make (palette, gray+alpha)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(row) for row in pixel_rows)  # filter type 0 on every row
    body = chunk(b"IHDR", header) + (chunk(b"PLTE", palette) if palette else b"") + chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment holding only the Orientation tag right after SOI."""
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# --------------------------------------------------------------------------- decoding


def test_colour_png_reads_back_as_rgb(tmp_path):
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, :4] = RED
    image[:, 4:] = BLUE
    loaded = load_image(write_bgr(tmp_path / "rb.png", image))
    assert loaded.shape == (6, 8, 3) and loaded.dtype == np.uint8
    assert tuple(loaded[0, 0]) == RED and tuple(loaded[0, -1]) == BLUE


@pytest.mark.parametrize("extension", [".jpg", ".bmp", ".tif", ".webp"])
def test_other_formats_read_back_as_rgb(tmp_path, extension):
    image = np.full((8, 8, 3), RED, np.uint8)
    loaded = load_image(write_bgr(tmp_path / f"red{extension}", image))
    assert loaded.shape == (8, 8, 3)
    assert loaded[..., 0].min() > 240 and loaded[..., 1:].max() < 15  # lossy formats are close


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    loaded = load_image(path)
    assert loaded.shape == (4, 6, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_palette_png_is_expanded_to_its_colours(tmp_path):
    palette = bytes(RED + GREEN)
    rows = [[0, 1, 0], [1, 1, 0]]  # 8-bit indices into the palette
    path = tmp_path / "palette.png"
    path.write_bytes(png_bytes(3, 2, 3, 8, rows, palette))
    loaded = load_image(path)
    assert loaded.shape == (2, 3, 3)
    assert tuple(loaded[0, 0]) == RED and tuple(loaded[0, 1]) == GREEN and tuple(loaded[1, 0]) == GREEN


def test_rgba_png_is_composited_over_mid_gray(tmp_path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[:, :2] = (0, 0, 255, 255)  # opaque red
    bgra[:, 2:] = (0, 0, 255, 0)  # fully transparent red: must not show
    bgra[0, 0] = (0, 0, 255, 128)  # half transparent red
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), bgra)
    loaded = load_image(path)
    assert loaded.shape == (4, 4, 3)
    assert tuple(loaded[1, 0]) == RED
    assert tuple(loaded[1, 3]) == (128, 128, 128)
    assert abs(int(loaded[0, 0, 0]) - 191) <= 1 and abs(int(loaded[0, 0, 1]) - 64) <= 1


def test_gray_alpha_png_is_composited_over_mid_gray(tmp_path):
    rows = [[255, 255, 255, 0]]  # white opaque, white transparent (gray, alpha pairs)
    path = tmp_path / "la.png"
    path.write_bytes(png_bytes(2, 1, 4, 8, rows))
    loaded = load_image(path)
    assert tuple(loaded[0, 0]) == (255, 255, 255) and tuple(loaded[0, 1]) == (128, 128, 128)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    bgr16 = np.zeros((2, 3, 3), np.uint16)
    bgr16[0] = 65535
    bgr16[1] = 257 * 100
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), bgr16)
    loaded = load_image(path)
    assert loaded.dtype == np.uint8
    assert np.all(loaded[0] == 255) and np.all(loaded[1] == 100)


def test_16_bit_rgba_png_is_rescaled_and_composited(tmp_path):
    bgra16 = np.zeros((1, 2, 4), np.uint16)
    bgra16[0, 0] = (0, 65535, 0, 65535)  # opaque green
    bgra16[0, 1] = (0, 65535, 0, 0)  # transparent
    path = tmp_path / "deep-alpha.png"
    cv2.imwrite(str(path), bgra16)
    loaded = load_image(path)
    assert tuple(loaded[0, 0]) == GREEN and tuple(loaded[0, 1]) == (128, 128, 128)


def test_cmyk_jpeg_comes_out_rgb(tmp_path):
    # OpenCV cannot write CMYK; Pillow comes with scikit-image, a test dependency.
    pil_image = pytest.importorskip("PIL.Image")
    path = tmp_path / "cmyk.jpg"
    pil_image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(path, quality=95)  # red in CMYK
    loaded = load_image(path)
    assert loaded.shape == (6, 8, 3)
    assert loaded[..., 0].min() > 240 and loaded[..., 1:].max() < 15


def wide_jpeg_turned_by_exif(path, height, width, corner):
    """A wide JPEG, red in its top-left corner x corner pixels, whose EXIF says: turn 90 degrees clockwise (6)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:corner, :corner] = RED
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    path.write_bytes(with_exif_orientation(jpeg.tobytes(), 6))
    return path


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    path = wide_jpeg_turned_by_exif(tmp_path / "rotated.jpg", 20, 40, corner=8)
    loaded = load_image(path)
    assert loaded.shape == (40, 20, 3)  # tall now
    assert loaded[2, -3, 0] > 200 and loaded[2, 2, 0] < 50  # top-left went to top-right


@pytest.mark.parametrize("reduce_to, shape", [(None, (1000, 1200, 3)), (100, (125, 150, 3)), (224, (250, 300, 3)),
                                              (300, (500, 600, 3)), (600, (1000, 1200, 3))])
def test_a_jpeg_decodes_reduced_never_below_the_size_asked(tmp_path, reduce_to, shape):
    image = np.zeros((1000, 1200, 3), np.uint8)
    image[:, :600] = RED
    assert cv2.imwrite(str(tmp_path / "photo.jpg"), image[:, :, ::-1])
    assert cv2.imwrite(str(tmp_path / "photo.png"), image[:, :, ::-1])
    loaded = load_image(tmp_path / "photo.jpg", reduce_to=reduce_to)
    assert loaded.shape == shape  # the largest of 1/2, 1/4, 1/8 keeping both sides >= reduce_to
    assert loaded[shape[0] // 2, 2, 0] > 240 and loaded[shape[0] // 2, -3].max() < 15  # scaled, not cropped
    assert load_image(tmp_path / "photo.png", reduce_to=reduce_to).shape == (1000, 1200, 3)  # PNGs: always in full


def test_reduced_decoding_keeps_exif_orientation(tmp_path):
    path = wide_jpeg_turned_by_exif(tmp_path / "rotated.jpg", 400, 800, corner=100)
    loaded = load_image(path, reduce_to=100)
    assert loaded.shape == (200, 100, 3)  # a quarter, then turned tall
    assert loaded[5, -5, 0] > 200 and loaded[5, 5, 0] < 50  # top-left went to top-right


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv_auto_orientation(orientation):
    from featx.images import decode_image

    image = np.zeros((12, 20, 3), np.uint8)
    image[:4, :4] = RED
    image[:4, -4:] = GREEN
    image[-4:, :4] = BLUE
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 100])
    data = with_exif_orientation(jpeg.tobytes(), orientation)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(decode_image(data), expected)


def test_unicode_path(tmp_path):
    path = write_bgr(tmp_path / "ünïcødé 画像" / "фото.png", np.full((3, 3, 3), GREEN, np.uint8))
    assert tuple(load_image(path)[1, 1]) == GREEN


def test_gif_never_raises(tmp_path):
    # A 1x1 red GIF. OpenCV 5 decodes GIF, older builds do not: both must end without an exception.
    path = tmp_path / "red.gif"
    path.write_bytes(
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    image, reason = try_load_image(path)
    if image is None:
        assert reason
    else:
        assert reason is None and image.shape == (1, 1, 3) and tuple(image[0, 0]) == RED


def _truncated_jpeg(path):
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    path.write_bytes(jpeg.tobytes()[: len(jpeg) * 2 // 3])


def _text_as_jpeg(path):
    path.write_text("this is not an image\n")


def _empty(path):
    path.write_bytes(b"")


def _zero_width_png(path):
    path.write_bytes(png_bytes(0, 1, 0, 8, [[]]))


@pytest.mark.parametrize("make_bad_file", [_truncated_jpeg, _text_as_jpeg, _empty, _zero_width_png])
def test_bad_files_give_a_one_line_reason(tmp_path, make_bad_file):
    path = tmp_path / "bad.jpg"
    make_bad_file(path)
    image, reason = try_load_image(path)
    assert image is None
    assert isinstance(reason, str) and reason and "\n" not in reason
    with pytest.raises(UnreadableImage, match=re.escape(reason)) as raised:
        load_image(path)
    assert isinstance(raised.value, FeatxError) and raised.value.reason == reason


def test_missing_file_gives_a_reason(tmp_path):
    assert try_load_image(tmp_path / "nope.jpg") == (None, "file not found")


def test_jpeg_with_data_after_the_image_still_loads(tmp_path):
    # Phones append data (motion photos) after the end-of-image marker; that is not truncation.
    ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 200, np.uint8))
    path = tmp_path / "appended.jpg"
    path.write_bytes(jpeg.tobytes() + b"trailing data from a phone" * 10)
    assert load_image(path).shape == (8, 8, 3)


# --------------------------------------------------------------------------- listing


def make_tree(root, relative_paths):
    tiny = np.zeros((2, 2, 3), np.uint8)
    for relative in relative_paths:
        path = root / relative
        if relative.endswith(IMAGE_EXTENSIONS):
            write_bgr(path, tiny)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not an image")
    return root


def test_class_folders(tmp_path, caplog):
    root = make_tree(
        tmp_path / "pets",
        [
            "dog/b.jpg",
            "dog/puppies/c.png",  # nested: still class "dog"
            "cat/a.png",
            "cat/.hidden.png",
            ".cache/x.png",
            "cat/notes.txt",
            "loose.png",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="featx.images"):
        dataset = list_dataset(root)
    assert isinstance(dataset, Dataset) and dataset.root == root
    assert dataset.label_names == ["cat", "dog"]
    assert dataset.paths == ["cat/a.png", "dog/b.jpg", "dog/puppies/c.png"]
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [0, 1, 1]
    assert dataset.labeled and len(dataset) == 3
    assert "ignoring 1 image" in caplog.text


def test_integer_class_names_are_ordered_by_value(tmp_path):
    root = make_tree(tmp_path / "grades", [f"{grade}/x.png" for grade in ["10", "2", "0", "9", "1"]])
    dataset = list_dataset(root)
    assert dataset.label_names == ["0", "1", "2", "9", "10"]
    assert dict(zip(dataset.paths, dataset.labels.tolist()))["10/x.png"] == 4


def test_mixed_class_names_are_ordered_as_text(tmp_path):
    root = make_tree(tmp_path / "mixed", ["10/x.png", "2/x.png", "b/x.png"])
    assert list_dataset(root).label_names == ["10", "2", "b"]
    assert sort_class_names({"10", "9", "0"}) == ["0", "9", "10"]  # runner merges split class lists


def test_flat_folder_is_unlabeled(tmp_path):
    root = make_tree(tmp_path / "flat", ["b.png", "a.jpg", "c.webp"])
    dataset = list_dataset(root)
    assert dataset.paths == ["a.jpg", "b.png", "c.webp"]
    assert dataset.labels.tolist() == [-1, -1, -1] and dataset.label_names == []
    assert not dataset.labeled


def test_seeded_shuffle_is_reproducible_and_keeps_labels_with_paths(tmp_path):
    root = make_tree(tmp_path / "many", [f"{name}/{i:02d}.png" for name in "abc" for i in range(8)])
    sorted_paths = list_dataset(root).paths
    first, again, other = (list_dataset(root, seed=seed) for seed in (7, 7, 8))
    assert first.paths == again.paths and first.labels.tolist() == again.labels.tolist()
    assert first.paths != sorted_paths and first.paths != other.paths
    assert sorted(first.paths) == sorted_paths
    for path, label in zip(first.paths, first.labels):
        assert first.label_names[label] == path.split("/")[0]


def test_label_names_force_one_class_list(tmp_path):
    root = make_tree(tmp_path / "val", ["dog/a.png", "cat/b.png"])
    dataset = list_dataset(root, label_names=["bird", "cat", "dog"])
    assert dataset.label_names == ["bird", "cat", "dog"]
    assert dataset.labels.tolist() == [1, 2]  # cat/b.png, dog/a.png
    assert list_dataset(root, label_names=[b"bird", b"cat", b"dog"]).label_names == ["bird", "cat", "dog"]
    with pytest.raises(FeatxError, match="fish"):
        list_dataset(make_tree(root, ["fish/c.png"]), label_names=["bird", "cat", "dog"])


def test_missing_or_empty_folder_is_a_featx_error(tmp_path):
    with pytest.raises(FeatxError, match="nowhere"):
        list_dataset(tmp_path / "nowhere")
    empty = make_tree(tmp_path / "empty", ["readme.txt", "sub/notes.txt"])
    with pytest.raises(FeatxError, match="no images found in .*empty"):
        list_dataset(empty)


def test_find_splits(tmp_path):
    root = make_tree(tmp_path / "split", ["train/a/1.png", "valid/a/2.png", "test/3.png", "README.txt"])
    assert find_splits(root) == {"train": root / "train", "val": root / "valid", "test": root / "test"}
    assert find_splits(make_tree(tmp_path / "classes", ["cat/1.png", "dog/2.png"])) == {}
    assert find_splits(make_tree(tmp_path / "extra", ["train/a/1.png", "other/2.png"])) == {}
    assert find_splits(make_tree(tmp_path / "loose", ["train/a/1.png", "3.png"])) == {}
    hidden_only = make_tree(tmp_path / "hidden", ["train/a/1.png", "other/.thumbs/x.png", ".cache/y.png"])
    assert find_splits(hidden_only) == {"train": hidden_only / "train"}  # hidden images do not count
    with pytest.raises(FeatxError, match="val"):
        find_splits(make_tree(tmp_path / "twice", ["train/a/1.png", "val/a/2.png", "validation/a/3.png"]))


# --------------------------------------------------------------------------- resizing and augmenting


def test_resize_shapes():
    image = np.zeros((30, 50, 3), np.uint8)
    assert resize(image, 224).shape == (224, 224, 3)
    assert resize(image, 16).shape == (16, 16, 3)
    assert resize(image, (40, 20)).shape == (20, 40, 3)  # (width, height)
    assert resize(image, 24, crop=True).shape == (24, 24, 3)
    assert resize(image, 299, crop=True).shape == (299, 299, 3)
    with pytest.raises(FeatxError):
        resize(image, 0)


def test_crop_keeps_aspect_and_the_center():
    wide = np.zeros((50, 100, 3), np.uint8)
    wide[:, :25] = RED
    wide[:, 25:75] = GREEN
    wide[:, 75:] = BLUE
    cropped = resize(wide, 20, crop=True)
    assert np.all(cropped == GREEN)  # the center square, undistorted
    stretched = resize(wide, 20)
    assert tuple(stretched[10, 0]) == RED and tuple(stretched[10, -1]) == BLUE


def test_resize_averages_when_shrinking_and_interpolates_when_enlarging():
    sparse = np.zeros((64, 64, 3), np.uint8)
    sparse[::4, ::4] = 255  # one bright pixel per 4x4 block: point sampling would miss them all
    small = resize(sparse, 16)
    np.testing.assert_array_equal(small, cv2.resize(sparse, (16, 16), interpolation=cv2.INTER_AREA))
    assert np.all(np.abs(small.astype(int) - 16) <= 1)
    tiny = np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize(tiny, 12), cv2.resize(tiny, (12, 12), interpolation=cv2.INTER_LINEAR))


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(3)
    return cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0)


def test_augment_is_reproducible_and_varies(photo):
    first = augment(photo, np.random.default_rng(1))
    assert first.shape == photo.shape and first.dtype == photo.dtype
    np.testing.assert_array_equal(first, augment(photo, np.random.default_rng(1)))
    assert not np.array_equal(first, augment(photo, np.random.default_rng(2)))
    assert not np.array_equal(first, photo)
    rng = np.random.default_rng(5)
    assert not np.array_equal(augment(photo, rng), augment(photo, rng))  # successive draws differ


def test_augment_without_randomness_is_the_identity_and_flip_is_the_mirror(photo):
    still = dict(vertical_flip=False, rotation=0.0, shift=0.0, zoom=(1.0, 1.0))
    np.testing.assert_array_equal(augment(photo, np.random.default_rng(0), horizontal_flip=False, **still), photo)
    # rng.random(2)[0] < 0.5 for seed 1 but not for seed 0: one flips, the other does not
    draws = {seed: np.random.default_rng(seed).random(2)[0] < 0.5 for seed in range(10)}
    flipping_seed = next(seed for seed, flips in draws.items() if flips)
    np.testing.assert_array_equal(augment(photo, np.random.default_rng(flipping_seed), **still), tta_flip(photo))


def test_tta_flip_mirrors_horizontally():
    image = np.zeros((2, 3, 3), np.uint8)
    image[:, 0] = RED
    flipped = tta_flip(image)
    assert tuple(flipped[0, 2]) == RED and tuple(flipped[0, 0]) == (0, 0, 0)
    np.testing.assert_array_equal(tta_flip(flipped), image)


def test_truncation_check_guards_lenient_jpeg_decoders():
    # OpenCV 5 already refuses a JPEG without its end marker; OpenCV 4 decodes it padded with gray.
    from featx.image_headers import is_truncated_jpeg

    ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))
    complete = with_exif_orientation(jpeg.tobytes(), 1)
    assert not is_truncated_jpeg(complete) and not is_truncated_jpeg(complete + b"appended")
    assert is_truncated_jpeg(complete[:-2]) and is_truncated_jpeg(complete[: len(complete) // 2])

"""Each backbone's input recipe as plain numpy, and the real photos that checks run on.

The same float32 operations, in the same order, as Keras' preprocess_input, so a LiteRT run never
imports Keras to preprocess.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from featx.errors import FeatxError

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "lite", "none")


def preprocessing_mode(preprocessing: str) -> str:
    """The numpy preprocessing mode of a backbone's preprocessing text ("keras resnet caffe" -> "caffe")."""
    from featx.backbones.efficientnet_lite import PREPROCESSING as LITE_PREPROCESSING

    if preprocessing == LITE_PREPROCESSING:
        return "lite"
    words = preprocessing.split()
    if len(words) >= 3 and words[0] == "keras":
        mode = words[2]
        if mode in ("caffe", "tf", "torch"):
            return mode
        if mode == "none":  # "none (in model)": EfficientNet & co rescale inside the network
            return "none"
    raise FeatxError(f"no numpy preprocessing for {preprocessing!r}: use the Keras runtime for this backbone")


def preprocess(batch, mode: str) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> float32 model input, exactly as Keras' preprocess_input for `mode`."""
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[0] < 1:
        raise FeatxError(f"expected a batch of RGB images shaped (N, H, W, 3), got {batch.shape}")
    if batch.dtype != np.uint8:
        raise FeatxError(f"expected uint8 pixels, got {batch.dtype}; decode images with featx.images")
    if mode not in PREPROCESSING_MODES:
        raise FeatxError(f"unknown preprocessing mode {mode!r}: use one of {', '.join(PREPROCESSING_MODES)}")
    x = batch.astype(np.float32)  # a new array: the arithmetic below may work in place
    if mode == "lite":
        x -= np.float32(127.0)
        x /= np.float32(128.0)
    elif mode == "tf":
        x /= np.float32(127.5)
        x -= np.float32(1.0)
    elif mode == "torch":
        x /= np.float32(255.0)
        x -= _TORCH_MEAN
        x /= _TORCH_STD
    elif mode == "caffe":
        x = x[..., ::-1] - _CAFFE_MEAN_BGR  # RGB -> BGR, then the BGR means
    return x



def float_batch(batch, size: int) -> np.ndarray:
    """A preprocessed batch checked for shape (N, size, size, 3); FeatxError for raw pixels or another size."""
    batch = np.asarray(batch)
    if batch.dtype == np.uint8:
        raise FeatxError("backbone got uint8 pixels: call backbone.preprocess(batch) first")
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3) or batch.shape[0] < 1:
        raise FeatxError(f"expected a batch shaped (N, {size}, {size}, 3), got {batch.shape}; resize images first")
    return batch


def default_check_image() -> Path:
    """A photo that ships with scikit-learn (a main dependency): china.jpg."""
    return Path(str(resources.files("sklearn.datasets").joinpath("images", "china.jpg")))


def check_images(size: int) -> np.ndarray:
    """Four real photos (scikit-learn's china and flower, and their mirror images), uint8 (4, size, size, 3)."""
    from featx.images import load_image, resize

    folder = default_check_image().parent
    photos = [resize(load_image(folder / name), size) for name in ("china.jpg", "flower.jpg")]
    return np.stack(photos + [np.ascontiguousarray(photo[:, ::-1]) for photo in photos])

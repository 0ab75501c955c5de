"""A built backbone: a frozen model that turns preprocessed images into pooled feature vectors, on a runtime."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources

import numpy as np

from featx.backbones.preprocessing import float_batch, preprocess, preprocessing_mode
from featx.errors import FeatxError
from featx.recipe import Recipe


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, index order, from the packaged JSON."""
    text = resources.files("featx.backbones").joinpath("imagenet_classes.json").read_text(encoding="utf-8")
    names = json.loads(text)
    return [names[str(i)] for i in range(len(names))]


class Backbone:
    """A frozen ImageNet model that turns preprocessed images into pooled feature vectors.

    It runs on a runtime: Keras/TensorFlow (the reference, and the fast path on a GPU) or LiteRT (the
    same network converted once, ~3x faster on a CPU, same features). Preprocessing is numpy, the
    same operations as Keras' preprocess_input, so a LiteRT run never imports TensorFlow.
    """

    def __init__(self, name, features_fn, *, input_size, feature_dim, pooling, layer, weights_source, weights_sha256,
                 preprocessing, runtime="keras", precision="float32", model=None, classifier=None):
        self.name = name
        self.input_size = int(input_size)
        self.feature_dim = int(feature_dim)
        self.pooling = pooling
        self.layer = layer
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256  # "" for seeded random weights
        self.preprocessing = preprocessing
        self.runtime = runtime  # "keras" or "litert"
        self.precision = precision
        self.model = model  # the pooled Keras model, when it was built (not for a cached LiteRT run)
        self._features_fn = features_fn
        self._mode = preprocessing_mode(preprocessing)
        self._classifier = classifier  # a callable building the classifier model, or None
        self._classifier_model = None
        self._classify_fn = None

    @classmethod
    def from_keras(cls, name, model, **facts) -> Backbone:
        return cls(name, _compiled(model), input_size=model.input_shape[1], feature_dim=model.output_shape[-1],
                   model=model, **facts)

    def on_litert(self, litert) -> Backbone:
        """The same backbone run by a LiteRT runtime (a LiteRTBackbone converted from it)."""
        twin = copy.copy(self)
        twin._features_fn, twin.runtime, twin.precision = litert, "litert", litert.precision
        return twin

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, input_size={self.input_size}, feature_dim={self.feature_dim}, "
                f"pooling={self.pooling!r}, layer={self.layer!r}, weights={self.weights_source!r}, "
                f"runtime={self.runtime!r}, precision={self.precision!r})")

    def preprocess(self, batch) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> float32, with this model's own input recipe."""
        return preprocess(batch, self._mode)

    def __call__(self, batch) -> np.ndarray:
        """Preprocessed float batch (N, input_size, input_size, 3) -> features (N, feature_dim) float32."""
        batch = float_batch(batch, self.input_size)
        return np.asarray(self._features_fn(batch.astype(np.float32, copy=False)), dtype=np.float32)

    def recipe(self, **extraction) -> Recipe:
        """This extractor as a Recipe; `extraction` adds how images are fed (resize, tta, augment, seed)."""
        return Recipe(backbone=self.name, weights_sha256=self.weights_sha256, weights_source=self.weights_source,
                      image_size=self.input_size, preprocessing=self.preprocessing, pooling=self.pooling,
                      layer=self.layer or "", precision=self.precision, **extraction)

    def classify(self, batch_uint8, top: int = 5) -> list[list[tuple[str, float]]]:
        """ImageNet top-k (class name, probability) per image; images are resized to fit."""
        if self._classifier is None:
            raise FeatxError(
                f"{self.name} built with weights {self.weights_source} on {self.runtime} has no ImageNet classifier; "
                "use weights='auto' and runtime='keras'"
            )
        if self._classifier_model is None:
            self._classifier_model = self._classifier()
            self._classify_fn = _compiled(self._classifier_model)
        size = int(self._classifier_model.input_shape[1])
        batch = _resize_batch(_as_rgb_batch(batch_uint8), size)
        probabilities = np.asarray(self._classify_fn(self.preprocess(batch)))
        names = imagenet_class_names()
        results = []
        for row in probabilities:
            best = np.argsort(row)[::-1][:top]
            results.append([(names[i], float(row[i])) for i in best])
        return results


def _compiled(model):
    """model(x, training=False) in one tf.function, traced once for any batch size."""
    import tensorflow as tf

    size = int(model.input_shape[1])
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32)]
    # A partial per model (not one shared lambda): TF tracks retracing per code object and would
    # warn about "frequent retracing" when several backbones are built in one process.
    return tf.function(functools.partial(_run_model, model), input_signature=signature)


def _run_model(model, batch):
    return model(batch, training=False)


def _as_rgb_batch(batch) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[0] < 1:
        raise FeatxError(f"expected a batch of RGB images shaped (N, H, W, 3), got {batch.shape}")
    if batch.dtype != np.uint8:
        raise FeatxError(f"expected uint8 pixels, got {batch.dtype}; decode images with featx.images")
    return batch


def _resize_batch(batch: np.ndarray, size: int) -> np.ndarray:
    if batch.shape[1:3] == (size, size):
        return batch
    from featx.images import resize

    return np.stack([resize(image, size) for image in batch])

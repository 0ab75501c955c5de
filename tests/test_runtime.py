"""featx.backbones.runtime: conversion to LiteRT, its cache, its self-check, and running without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from featx.backbones import get_backbone, keras_apps
from featx.backbones import runtime as rt
from featx.errors import FeatxError

pytest.importorskip("ai_edge_litert")

# An early feature map of EfficientNet-Lite0 at 64 px: a real featx backbone (padding, depthwise
# convolutions, batch norm, ReLU6, pooling) that converts in about a second.
# runtime="keras": the reference these tests compare LiteRT with, whatever "auto" would pick.
SMALL = {"weights": "none", "image_size": 64, "layer": "block2a_expand_activation", "runtime": "keras"}
RANDOM_SHA = ""  # featx's seeded random weights have no file and no sha256


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "litert"


@pytest.fixture(scope="module")
def small():
    return get_backbone("efficientnet_lite0", **SMALL)


@pytest.fixture(scope="module")
def photos():
    return rt.check_images(64)


def relative_error(found, reference) -> float:
    return float((np.abs(found - reference).max(axis=1) / np.abs(reference).max(axis=1)).max())


def cached_files(cache):
    return sorted(p.name for p in cache.iterdir())


# ----------------------------------------------------------------------------- preprocessing


def pixels(seed=0, n=3, size=8):
    batch = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    batch[0, 0, 0] = (0, 128, 255)  # the extremes and the middle, per channel
    return batch


@pytest.mark.parametrize("name,mode", [("vgg16", "caffe"), ("resnet50", "caffe"), ("mobilenet_v2", "tf"),
                                       ("inception_v3", "tf"), ("densenet121", "torch"),
                                       ("efficientnet_b0", "none")])
def test_numpy_preprocessing_equals_keras(name, mode):
    batch = pixels()
    assert rt.preprocessing_mode(keras_apps.preprocessing_text(name)) == mode
    keras_input = keras_apps.preprocess_function(name)(batch.astype(np.float32))
    found = rt.preprocess(batch, mode)
    assert found.dtype == np.float32
    np.testing.assert_array_equal(found, np.asarray(keras_input, np.float32))


def test_numpy_preprocessing_equals_lite_backbone(small):
    assert rt.preprocessing_mode(small.preprocessing) == "lite"
    np.testing.assert_array_equal(rt.preprocess(pixels(1), "lite"), small.preprocess(pixels(1)))


def test_preprocessing_refuses_what_it_cannot_repeat():
    with pytest.raises(FeatxError, match="Keras runtime"):
        rt.preprocessing_mode("keras mystery lanczos")
    with pytest.raises(FeatxError, match="uint8"):
        rt.preprocess(pixels().astype(np.float32), "tf")
    with pytest.raises(FeatxError, match="unknown preprocessing mode"):
        rt.preprocess(pixels(), "bgr")


# ----------------------------------------------------------------------------- choosing the runtime


def test_runtime_choice(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # TensorFlow's own switch: no GPU for this process
    assert not rt.gpu_visible()
    assert rt.resolve_runtime("auto") == "litert"
    assert rt.resolve_runtime("keras") == "keras"
    assert rt.resolve_runtime("keras", "float32") == "keras"
    assert rt.resolve_runtime("auto", "int8") == rt.resolve_runtime("litert", "int8") == "litert"
    with pytest.raises(FeatxError, match="LiteRT runtime only"):
        rt.resolve_runtime("keras", "int8")
    with pytest.raises(FeatxError, match="unknown runtime"):
        rt.resolve_runtime("tflite")
    with pytest.raises(FeatxError, match="unknown precision"):
        rt.resolve_runtime("auto", "bf16")


# ----------------------------------------------------------------------------- conversion and cache


def test_conversion_matches_keras_and_is_cached(small, photos, cache):
    runtime = rt.to_litert(small, RANDOM_SHA)
    assert (runtime.name, runtime.input_size, runtime.feature_dim) == ("efficientnet_lite0", 64, small.feature_dim)
    reference = small(small.preprocess(photos))
    found = runtime(runtime.preprocess(photos))
    assert found.dtype == np.float32 and found.shape == reference.shape
    assert relative_error(found, reference) <= rt.CHECK_TOLERANCE

    tflite, sidecar = sorted(cache.iterdir(), key=lambda p: p.suffix)[::-1]
    assert tflite.suffix == ".tflite" and sidecar.suffix == ".json"
    meta = json.loads(sidecar.read_text())
    assert meta["check"]["passed"] and meta["check"]["max_relative_error"] <= rt.CHECK_TOLERANCE
    assert (meta["feature_dim"], meta["image_size"], meta["layer"]) == (small.feature_dim, 64, SMALL["layer"])
    assert meta["preprocessing"] == small.preprocessing

    # A second request converts nothing: same files, untouched, same features.
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = rt.to_litert(small, RANDOM_SHA)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    np.testing.assert_array_equal(again(again.preprocess(photos)), found)
    loaded = rt.cached_litert("efficientnet_lite0", RANDOM_SHA, 64, layer=SMALL["layer"])
    np.testing.assert_array_equal(loaded(loaded.preprocess(photos)), found)


def test_cache_key_separates_what_changes_features(small, cache):
    rt.to_litert(small, RANDOM_SHA)
    assert rt.cached_litert("efficientnet_lite0", RANDOM_SHA, 64, layer=SMALL["layer"]) is not None
    key = {"name": "efficientnet_lite0", "weights_sha256": RANDOM_SHA, "image_size": 64, "layer": SMALL["layer"]}
    for other in ({"weights_sha256": "ab" * 32}, {"image_size": 96}, {"pooling": "max"}, {"layer": None}):
        assert rt.cached_litert(**(key | other)) is None, other


@pytest.mark.parametrize("damage", ["truncate", "garbage", "sidecar"])
def test_damaged_cache_is_rebuilt(small, photos, cache, damage):
    expected = rt.to_litert(small, RANDOM_SHA)(small.preprocess(photos))
    tflite = next(cache.glob("*.tflite"))
    whole = tflite.read_bytes()
    if damage == "truncate":  # a copy cut short, e.g. a full disk before atomic writes
        tflite.write_bytes(whole[: len(whole) // 2])
    elif damage == "garbage":
        tflite.write_bytes(b"\0" * len(whole))
    else:
        tflite.with_suffix(".json").write_text("{not json")
    assert rt.cached_litert("efficientnet_lite0", RANDOM_SHA, 64, layer=SMALL["layer"]) is None

    rebuilt = rt.to_litert(small, RANDOM_SHA)
    found = rebuilt(rebuilt.preprocess(photos))
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert len(tflite.read_bytes()) == len(whole)
    assert rt.cached_litert("efficientnet_lite0", RANDOM_SHA, 64, layer=SMALL["layer"]) is not None
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- self-check


def test_check_refuses_features_of_another_model(small, cache):
    runtime = rt.to_litert(small, RANDOM_SHA)
    max_pooled = get_backbone("efficientnet_lite0", pooling="max", **SMALL)  # same shapes, other features
    with pytest.raises(FeatxError, match="differ from Keras.*use the Keras runtime"):
        rt.check_against(runtime, max_pooled)


def test_failed_check_is_recorded_and_refused_without_converting_again(small, cache):
    # No float32 conversion is bit-exact against TensorFlow's kernels: a zero tolerance must fail.
    with pytest.raises(FeatxError, match="failed its check against Keras"):
        rt.to_litert(small, RANDOM_SHA, tolerance=0.0)
    sidecar = next(cache.glob("*.json"))
    check = json.loads(sidecar.read_text())["check"]
    assert check["passed"] is False and check["max_relative_error"] > 0
    stamp = sidecar.stat().st_mtime_ns
    with pytest.raises(FeatxError, match="use the Keras runtime"):
        rt.cached_litert("efficientnet_lite0", RANDOM_SHA, 64, layer=SMALL["layer"])
    with pytest.raises(FeatxError, match="failed its check"):
        rt.to_litert(small, RANDOM_SHA)
    assert sidecar.stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- reduced precision


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_is_calibrated_cached_apart_and_checked_by_cosine(small, photos, cache):
    exact = rt.to_litert(small, RANDOM_SHA)
    with pytest.raises(FeatxError, match="calibration images"):
        rt.to_litert(small, RANDOM_SHA, precision="int8")
    with pytest.raises(FeatxError, match="unknown precision"):
        rt.to_litert(small, RANDOM_SHA, precision="bf8")
    runtime = rt.to_litert(small, RANDOM_SHA, precision="int8", calibration=photos)
    assert runtime.precision == "int8"
    assert runtime.meta["check"]["passed"] and runtime.meta["check"]["min_cosine"] >= rt.REDUCED_MIN_COSINE
    found, reference = runtime(runtime.preprocess(photos)), exact(exact.preprocess(photos))
    assert cosines(found, reference).min() >= rt.REDUCED_MIN_COSINE
    assert not np.array_equal(found, reference)  # quantized, not the float32 file again
    assert len(list(cache.glob("*.tflite"))) == 2
    key = {"name": "efficientnet_lite0", "weights_sha256": RANDOM_SHA, "image_size": 64, "layer": SMALL["layer"],
           "precision": "int8"}
    assert rt.cached_litert(**key, calibration_id=rt.calibration_digest(photos)) is not None
    assert rt.cached_litert(**key, calibration_id=rt.calibration_digest(photos[:2])) is None


@pytest.mark.skipif(not rt.fp16_native(), reason="fp16 is refused on CPUs without fp16 arithmetic")
def test_fp16_computes_in_half_precision(small, photos, cache):
    exact = rt.to_litert(small, RANDOM_SHA)
    runtime = rt.to_litert(small, RANDOM_SHA, precision="fp16", n_jobs=2)
    assert runtime.meta["check"]["passed"]
    x = runtime.preprocess(photos)
    found, reference = runtime(x), exact(x)
    assert cosines(found, reference).min() >= 0.999
    assert relative_error(found, reference) > rt.CHECK_TOLERANCE  # half precision, not float32 under another name
    one_then_rest = np.concatenate([runtime(x[:1]), runtime(x[1:])])  # re-planned for a new batch size
    np.testing.assert_allclose(one_then_rest, found, rtol=0, atol=1e-2 * np.abs(found).max())


@pytest.mark.skipif(rt.fp16_native(), reason="this CPU has fp16 arithmetic")
def test_fp16_is_refused_without_fp16_arithmetic(small, cache):
    with pytest.raises(FeatxError, match="no fp16 arithmetic"):
        rt.to_litert(small, RANDOM_SHA, precision="fp16")


# ----------------------------------------------------------------------------- running


def test_runtime_checks_its_input(small, cache):
    runtime = rt.to_litert(small, RANDOM_SHA)
    with pytest.raises(FeatxError, match="preprocess"):
        runtime(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(FeatxError, match=r"\(N, 64, 64, 3\)"):
        runtime(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(FeatxError, match="n_jobs"):
        rt.cached_litert("efficientnet_lite0", RANDOM_SHA, 64, layer=SMALL["layer"], n_jobs=0)


def test_batch_sizes_and_threads_give_the_same_features(small, photos, cache):
    runtime = rt.to_litert(small, RANDOM_SHA, n_jobs=2)
    x = runtime.preprocess(np.concatenate([photos] * 3))
    whole = runtime(x)
    one_by_one = np.concatenate([runtime(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=1e-6 * np.abs(whole).max())

    # Threads calling one runtime each get their own interpreter: no shared buffers, same rows.
    results = [None] * 4
    start = threading.Barrier(4)

    def work(k):
        start.wait()
        results[k] = [runtime(x[i:i + 2]) for i in range(0, len(x), 2)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rows in results:
        np.testing.assert_allclose(np.concatenate(rows), whole, rtol=0, atol=1e-6 * np.abs(whole).max())


CHILD = """
import json, sys
import numpy as np
from featx.backbones.runtime import cached_litert, check_images
runtime = cached_litert("efficientnet_lite0", "", 64, layer=sys.argv[1], n_jobs=1)
features = runtime(runtime.preprocess(check_images(64)))
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "features": features.tolist()}))
"""


def test_cached_runtime_needs_no_tensorflow(small, photos, cache):
    expected = rt.to_litert(small, RANDOM_SHA)(small.preprocess(photos))
    env = dict(os.environ, FEATX_CACHE_DIR=str(cache.parent))
    child = subprocess.run([sys.executable, "-c", CHILD, SMALL["layer"]], capture_output=True, text=True, env=env,
                           timeout=120, check=False)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert not result["tensorflow"] and not result["keras"]
    np.testing.assert_array_equal(np.asarray(result["features"], np.float32), expected)

"""The LiteRT runtime: a built backbone converted once to a .tflite, run on CPU without TensorFlow.

On a CPU the backbone is most of stage 1's time, and LiteRT's XNNPACK kernels run the same float32
network ~3x faster than Keras/TensorFlow with the same features (relative error ~1e-6). Conversion
needs TensorFlow and is done once per (backbone, weights sha256, image size, pooling, layer,
precision); the .tflite and a JSON sidecar are cached in featx's cache dir, so a later run loads
them with `ai_edge_litert` alone: no TensorFlow import, no TensorFlow start-up.

    runtime = to_litert(backbone, weights_sha256)          # converts and self-checks the first time
    runtime = cached_litert("efficientnet_lite0", sha, 224)  # later: None unless a checked file is cached
    features = runtime(runtime.preprocess(uint8_batch))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from featx.backbones.preprocessing import check_images, float_batch, preprocess, preprocessing_mode
from featx.errors import FeatxError

log = logging.getLogger(__name__)

FORMAT = "featx-litert/1"  # part of the cache key: a change in how featx converts makes new files
# float32 gives Keras' features; fp16 (XNNPACK computing in half precision, on CPUs with native fp16
# arithmetic) and int8 (full-integer, calibrated on the dataset) change them a little: never the default.
PRECISIONS = ("float32", "fp16", "int8")
_XNNPACK_FORCE_FP16 = 0x4  # TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16 in tflite/delegates/xnnpack/xnnpack_delegate.h
CHECK_TOLERANCE = 1e-4  # max |litert - keras| / max |keras| per image, float32
REDUCED_MIN_COSINE = 0.9  # reduced precision never matches to 1e-4; refuse only a conversion that broke it

# ----------------------------------------------------------------------------- the runtime


class LiteRTBackbone:
    """A converted backbone run by LiteRT (XNNPACK); called like Backbone: preprocessed batch -> features.

    Thread-safe: each calling thread gets its own interpreter with `n_jobs` threads, so decode
    workers can each run inference (n_jobs=1), or one thread can use them all.
    """

    def __init__(self, model_content: bytes, meta: dict, *, n_jobs: int = 1):
        self.model_content = model_content
        self.meta = meta
        self.name = meta["backbone"]
        self.input_size = int(meta["image_size"])
        self.feature_dim = int(meta["feature_dim"])
        self.pooling = meta["pooling"]
        self.layer = meta["layer"] or None
        self.preprocessing = meta["preprocessing"]
        self.precision = meta["precision"]
        self.n_jobs = _checked_n_jobs(n_jobs)
        self._mode = preprocessing_mode(self.preprocessing)
        self._local = threading.local()
        self._environment = None  # fp16: one LiteRT environment for every thread's compiled model
        self._lock = threading.Lock()
        self._runner()  # fail here, not in a worker thread, if the bytes do not load

    def __repr__(self) -> str:
        return (f"LiteRTBackbone({self.name!r}, input_size={self.input_size}, feature_dim={self.feature_dim}, "
                f"pooling={self.pooling!r}, layer={self.layer!r}, precision={self.precision!r}, n_jobs={self.n_jobs})")

    def preprocess(self, batch) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> float32, with this model's own input recipe (numpy only)."""
        return preprocess(batch, self._mode)

    def __call__(self, batch) -> np.ndarray:
        """Preprocessed float batch (N, input_size, input_size, 3) -> features (N, feature_dim) float32."""
        batch = float_batch(batch, self.input_size)
        return self._runner()(np.ascontiguousarray(batch, dtype=np.float32))

    def _runner(self):
        runner = getattr(self._local, "runner", None)
        if runner is None:
            try:
                if self.precision == "fp16":
                    with self._lock:
                        if self._environment is None:
                            from ai_edge_litert.environment import Environment

                            self._environment = Environment.create()
                    runner = _CompiledRunner(self.model_content, self.n_jobs, self._environment, self.feature_dim)
                else:
                    runner = _InterpreterRunner(self.model_content, self.n_jobs)
            except (ValueError, RuntimeError) as error:
                raise FeatxError(f"LiteRT cannot load the converted {self.name} ({error}); "
                                 f"delete it from {cache_dir()} to convert again") from error
            self._local.runner = runner
        return runner


class _InterpreterRunner:
    """One thread's LiteRT interpreter; re-plans only when the batch size changes (a few ms each time)."""

    def __init__(self, model_content: bytes, n_jobs: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=model_content, num_threads=n_jobs)
        self.interpreter.allocate_tensors()
        details = self.interpreter.get_input_details()[0]
        self.input, self.batch = details["index"], int(details["shape"][0])
        self.output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n != self.batch:
            self.interpreter.resize_tensor_input(self.input, list(batch.shape), strict=True)
            self.interpreter.allocate_tensors()
            self.batch = n
        self.interpreter.set_tensor(self.input, batch)
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.output), dtype=np.float32).reshape(n, -1)


class _CompiledRunner:
    """One thread's LiteRT compiled model with XNNPACK forced to fp16 arithmetic (the Interpreter API has no
    such switch; an fp16-weights .tflite alone still computes in float32, measured no faster)."""

    def __init__(self, model_content: bytes, n_jobs: int, environment, feature_dim: int):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import Options

        options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                          cpu_options=CpuOptions(num_threads=n_jobs, xnnpack_flags=_XNNPACK_FORCE_FP16))
        self.model = CompiledModel.from_buffer(model_content, environment=environment, options=options)
        self.feature_dim, self.batch = feature_dim, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n != self.batch:
            self.model.resize_input_tensor(0, list(batch.shape))
            self.inputs, self.outputs = self.model.create_input_buffers(0), self.model.create_output_buffers(0)
            self.batch = n
        self.inputs[0].write(batch)
        self.model.run_by_index(0, self.inputs, self.outputs)
        return self.outputs[0].read(n * self.feature_dim, np.float32).reshape(n, self.feature_dim)


def _checked_n_jobs(n_jobs) -> int:
    """n_jobs as an int, checked, once we know LiteRT is there to use them."""
    if not litert_available():
        raise FeatxError("the LiteRT runtime needs the ai-edge-litert package: pip install ai-edge-litert, "
                         "or use the Keras runtime")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise FeatxError(f"n_jobs must be an integer of at least 1 (interpreter threads), got {n_jobs!r}")
    return int(n_jobs)


def fp16_native() -> bool:
    """Whether this CPU has fp16 arithmetic (x86 AVX512-FP16, ARM FP16 SIMD); elsewhere XNNPACK would emulate it."""
    import platform
    import sys

    if sys.platform == "darwin":
        return platform.machine() == "arm64"  # every Apple silicon core
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith(("flags", "Features"))
             for flag in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_fp16", "asimdhp"})


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and not fp16_native():
        raise FeatxError("this CPU has no fp16 arithmetic (x86 AVX512-FP16 or ARM FP16), so fp16 would be slower "
                         "than float32: use --precision float32")


def litert_available() -> bool:
    """Whether the ai-edge-litert package is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


RUNTIMES = ("auto", "keras", "litert")


def resolve_runtime(runtime: str = "auto", precision: str = "float32") -> str:
    """"keras" or "litert" for a requested runtime; "auto" is LiteRT on a CPU-only machine where it is installed.

    A visible GPU keeps Keras/TensorFlow (the fast path there); reduced precision exists only in LiteRT.
    """
    if runtime not in RUNTIMES:
        raise FeatxError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    _check_precision(precision)
    reduced = precision != "float32"
    if runtime == "keras" and reduced:
        raise FeatxError(f"precision {precision} runs on the LiteRT runtime only: drop --runtime keras")
    if runtime == "litert" or (runtime == "auto" and reduced):
        if not litert_available():
            raise FeatxError("the LiteRT runtime needs the ai-edge-litert package: pip install ai-edge-litert, "
                             "or use the Keras runtime")
        return "litert"
    if runtime == "auto" and litert_available() and not gpu_visible():
        return "litert"
    return "keras"


def gpu_visible() -> bool:
    """Whether TensorFlow would see an NVIDIA GPU, told without importing it (importing takes seconds)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None and devices.strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


# ----------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """featx's cache dir ($FEATX_CACHE_DIR, else $XDG_CACHE_HOME/featx, else ~/.cache/featx), read at call time."""
    from featx.backbones.efficientnet_lite import cache_dir as featx_cache_dir

    return featx_cache_dir()


def cache_key(name: str, weights_sha256: str, image_size: int, pooling: str = "avg", layer: str | None = None,
              precision: str = "float32", calibration_id: str = "") -> dict:
    """Everything that makes one converted model differ from another."""
    if precision not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return {"format": FORMAT, "backbone": str(name), "weights_sha256": str(weights_sha256),
            "image_size": int(image_size), "pooling": str(pooling), "layer": layer or "",
            "precision": precision, "calibration": calibration_id if precision == "int8" else ""}


def cached_path(key: dict) -> Path:
    """The .tflite file for a cache key: readable name, digest of the whole key for uniqueness."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    layer = f"-{key['layer']}" if key["layer"] else ""
    return cache_dir() / "litert" / (f"{key['backbone']}-{key['image_size']}-{key['pooling']}{layer}-"
                                     f"{key['precision']}-{digest}.tflite")


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def cached_litert(name: str, weights_sha256: str, image_size: int, pooling: str = "avg", layer: str | None = None,
                  precision: str = "float32", *, calibration_id: str = "", n_jobs: int = 1) -> LiteRTBackbone | None:
    """The cached, checked runtime for this key, or None when there is none (or it is damaged); no TensorFlow.

    A cached conversion whose self-check failed raises FeatxError: converting again would fail again.
    """
    _checked_n_jobs(n_jobs)
    _check_precision(precision)
    key = cache_key(name, weights_sha256, image_size, pooling, layer, precision, calibration_id)
    loaded = _load_cached(cached_path(key), key)
    if loaded is None:
        return None
    content, meta = loaded
    _refuse_failed_check(meta)
    try:
        return LiteRTBackbone(content, meta, n_jobs=n_jobs)
    except FeatxError as error:
        log.debug("cached LiteRT model for %s does not load (%s); it will be converted again", name, error)
        return None


def _load_cached(path: Path, key: dict) -> tuple[bytes, dict] | None:
    """(tflite bytes, sidecar) when both are present, whole and of this key; None otherwise."""
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        content = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in key.items()):
        return None
    # The sha256 catches a truncated or overwritten file before its bytes reach LiteRT's C++ parser.
    if meta.get("tflite_sha256") != hashlib.sha256(content).hexdigest():
        log.debug("cached %s does not match its sidecar; converting again", path.name)
        return None
    return content, meta


def _refuse_failed_check(meta: dict) -> None:
    check = meta.get("check") or {}
    if not check.get("passed"):
        raise FeatxError(f"the LiteRT conversion of {meta.get('backbone')} failed its check against Keras "
                         f"({check.get('summary', 'no check recorded')}); use the Keras runtime")


def _write_atomic(path: Path, data: bytes) -> None:
    # Temp name + fsync + rename: a reader sees the old file or the whole new one, even after a crash.
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a folder; the rename is still atomic
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


# ----------------------------------------------------------------------------- converting and checking


def to_litert(backbone, weights_sha256: str, *, precision: str = "float32", calibration=None,
              n_jobs: int = 1, tolerance: float = CHECK_TOLERANCE) -> LiteRTBackbone:
    """The LiteRT runtime of a built Backbone: from the cache, else converted, self-checked and cached.

    weights_sha256: the sha256 of the backbone's weights file (part of the cache key).
    calibration: for precision="int8", uint8 images (N, S, S, 3) of the dataset (~200) to calibrate on.
    """
    _checked_n_jobs(n_jobs)
    _check_precision(precision)
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise FeatxError("precision int8 needs calibration images: pass ~200 images of the dataset")
        calibration = np.asarray(calibration)
    calibration_id = calibration_digest(calibration) if precision == "int8" else ""
    key = cache_key(backbone.name, weights_sha256, backbone.input_size, backbone.pooling, backbone.layer,
                    precision, calibration_id)
    path = cached_path(key)
    loaded = _load_cached(path, key)
    if loaded is not None:
        content, meta = loaded
        _refuse_failed_check(meta)
        try:
            return LiteRTBackbone(content, meta, n_jobs=n_jobs)
        except FeatxError as error:
            log.debug("cached %s does not load (%s); converting again", path.name, error)

    t0 = time.perf_counter()
    content = convert(backbone, precision=precision, calibration=calibration)
    meta = dict(key, feature_dim=backbone.feature_dim, preprocessing=backbone.preprocessing,
                tflite_sha256=hashlib.sha256(content).hexdigest(), converter=_converter_version())
    runtime = LiteRTBackbone(content, meta, n_jobs=n_jobs)
    log.debug("converted %s to LiteRT %s in %.1f s", backbone.name, precision, time.perf_counter() - t0)
    try:
        check = check_against(runtime, backbone, tolerance=tolerance)
        error = None
    except _CheckFailed as failed:
        check, error = failed.check, failed
    meta["check"] = check
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, content)
        _write_atomic(_sidecar(path), json.dumps(meta, indent=1, sort_keys=True).encode())
    except OSError as write_error:  # a read-only cache costs a conversion per run, not the run
        log.warning("cannot cache the LiteRT model in %s (%s)", path.parent, write_error)
    if error is not None:
        _refuse_failed_check(meta)
    return runtime


def calibration_digest(calibration) -> str:
    """A short digest of int8 calibration images (uint8 (N, S, S, 3)): part of the int8 cache key."""
    return hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:16]


def convert(backbone, *, precision: str = "float32", calibration=None) -> bytes:
    """The backbone's pooled Keras model as .tflite bytes (imports TensorFlow)."""
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="featx-export-") as folder:
        # Through a SavedModel: Keras 3's model.export keeps the weights as constants, where
        # from_concrete_functions leaves them as resource variables, and verbose=False keeps
        # from_keras_model's listing of every captured tensor off stdout.
        backbone.model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if precision == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = _representative(backbone, calibration)
        elif precision not in ("float32", "fp16"):  # fp16 is a way to run the float32 file
            raise FeatxError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        try:
            return bytes(converter.convert())
        except Exception as error:  # the converter raises ConverterError and plain exceptions alike
            reason = " ".join(str(error).split())[:200]
            raise FeatxError(f"cannot convert {backbone.name} to LiteRT ({reason}); use the Keras runtime") from error


def _representative(backbone, calibration):
    mode = preprocessing_mode(backbone.preprocessing)

    def images():
        for image in calibration:
            yield [preprocess(image[None], mode)]

    return images


def _converter_version() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


class _CheckFailed(FeatxError):
    def __init__(self, message: str, check: dict):
        super().__init__(message)
        self.check = check


def check_against(runtime: LiteRTBackbone, backbone, *, images=None, tolerance: float = CHECK_TOLERANCE) -> dict:
    """Compare the runtime's features with the Keras backbone's on real photos; FeatxError beyond tolerance.

    Returns the check as recorded in the sidecar. The error per image is max |litert - keras| /
    max |keras| (elementwise relative error explodes on features near zero).
    """
    images = check_images(backbone.input_size) if images is None else np.asarray(images)
    reference = backbone(backbone.preprocess(images))
    found = runtime(runtime.preprocess(images))
    if reference.shape != found.shape:
        check = {"images": len(images), "passed": False,
                 "summary": f"feature shapes differ: {found.shape} vs Keras {reference.shape}"}
        raise _CheckFailed(check["summary"], check)
    scale = np.maximum(np.abs(reference).max(axis=1), np.finfo(np.float32).tiny)
    relative = float((np.abs(found - reference).max(axis=1) / scale).max())
    cosine = float(min(_cosine(a, b) for a, b in zip(found, reference)))
    if runtime.precision == "float32":
        passed, limit = relative <= tolerance, f"relative error <= {tolerance:g}"
    else:
        passed, limit = cosine >= REDUCED_MIN_COSINE, f"cosine >= {REDUCED_MIN_COSINE:g}"
    summary = f"max relative error {relative:.2e}, min cosine {cosine:.6f} on {len(images)} images; needs {limit}"
    log.debug("LiteRT %s vs Keras %s: %s", runtime.precision, backbone.name, summary)
    check = {"images": len(images), "max_relative_error": relative, "min_cosine": cosine,
             "tolerance": tolerance, "passed": bool(passed), "summary": summary}
    if not passed:
        raise _CheckFailed(f"LiteRT features of {backbone.name} differ from Keras' ({summary}); "
                           "use the Keras runtime", check)
    return check


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b)) / norm if norm > 0 else float(np.array_equal(a, b))

"""featx: transfer learning by feature extraction.

    from featx import extract, train, evaluate, predict
    extract("datasets/flowers")                       # images -> features/flowers.h5
    result = train("features/flowers.h5", heads="all")  # heads, leaderboard, bundles in models/
    predict(result.bundles[result.best], ["new/"])    # images -> predictions.csv

The public names are imported on first use, so `import featx` stays fast and loads neither
TensorFlow nor scikit-learn until a stage needs them.
"""

import importlib as _importlib
import os as _os
import sys as _sys
import types as _types

# TensorFlow's C++ start-up chatter hides featx's own messages; users can still set their own level.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# OpenCV's own limit on the pixels of an image it decodes (read when cv2 is first imported): the same
# as featx.images.MAX_IMAGE_PIXELS, for the formats whose header featx does not check itself (TIFF).
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")

from featx._version import __version__  # noqa: E402
from featx.errors import FeatxError  # noqa: E402

_PUBLIC = {
    "extract": "featx.extract",
    "ExtractOptions": "featx.extract",
    "train": "featx.train",
    "evaluate": "featx.evaluate",
    "predict": "featx.predict",
    "audit": "featx.audit",
    "finetune": "featx.finetune",
    "FeatureStore": "featx.store",
    "HDF5DatasetWriter": "featx.store",
    "load_bundle": "featx.bundle",
    "Recipe": "featx.recipe",
}

__all__ = ["FeatxError", "__version__", *_PUBLIC]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


class _Package(_types.ModuleType):
    """featx.train, .evaluate and .predict name both a function and the module defining it.

    Importing a submodule binds it as an attribute of its package; here that would hide the
    function `from featx import train` promises. The modules stay reachable as
    ``sys.modules["featx.train"]`` and through ``from featx.train import ...``.
    """

    def __setattr__(self, name, value):
        if isinstance(value, _types.ModuleType) and _PUBLIC.get(name) == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

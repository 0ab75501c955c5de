"""featx: transfer learning by feature extraction."""

import os as _os

# TensorFlow's C++ start-up chatter hides featx's own messages; users can still set their own level.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

from featx.errors import FeatxError  # noqa: E402
from featx.runner import extract, features_for_files  # noqa: E402

__all__ = ["FeatxError", "__version__", "extract", "features_for_files"]

"""featx: transfer learning by feature extraction."""

__version__ = "0.1.0"

from featx.errors import FeatxError  # noqa: E402

__all__ = ["FeatxError", "__version__"]

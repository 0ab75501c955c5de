"""A trained head saved with everything needed to predict from raw images, loaded without running code."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import skops.io
from skops.io.exceptions import UntrustedTypesFoundException

import featx
from featx.errors import FeatxError

__all__ = ["BUNDLE_FORMAT", "Bundle", "load_bundle", "save_bundle", "trusted_types"]

BUNDLE_FORMAT = "featx-bundle/1"
_REQUIRED_KEYS = ("head", "head_name", "label_names", "recipe", "metrics", "graded", "featx_version")

# Types train adds around a featx.heads head (whose own list is featx.heads.TRUSTED_TYPES): the
# scorers of each --metric and the grouped splitter used when augmented copies share an image.
# Reviewed by hand. Never extend this from a file's own contents.
_TRAIN_TYPES = (
    "sklearn.metrics._classification.accuracy_score",
    "sklearn.metrics._classification.f1_score",
    "sklearn.model_selection._split.StratifiedGroupKFold",
)


def trusted_types() -> list[str]:
    """The fixed list of type names `load_bundle` lets skops construct (besides skops' defaults)."""
    from featx.heads import TRUSTED_TYPES, quadratic_weighted_kappa

    # The --metric qwk scorer, named from the function so a module move in featx.heads follows it.
    qwk = f"{quadratic_weighted_kappa.__module__}.{quadratic_weighted_kappa.__qualname__}"
    return sorted({*TRUSTED_TYPES, *_TRAIN_TYPES, qwk})


@dataclass
class Bundle:
    """A fitted head and the recipe that turns an image into the features it expects."""

    head: object
    label_names: list[str]
    recipe: dict
    metrics: dict
    head_name: str
    graded: bool
    featx_version: str
    extra: dict = field(default_factory=dict)
    path: Path | None = None


def save_bundle(
    path: str | Path,
    head,
    *,
    label_names,
    recipe: dict,
    metrics: dict,
    head_name: str,
    graded: bool,
    extra: dict | None = None,
) -> Path:
    """Write a fitted head with its label names, feature recipe and test metrics to a .skops file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "format": BUNDLE_FORMAT,
        "featx_version": featx.__version__,
        "head": head,
        "head_name": str(head_name),
        "label_names": [str(name) for name in label_names],
        "recipe": dict(recipe),
        "metrics": dict(metrics),
        "graded": bool(graded),
        "extra": dict(extra or {}),
    }
    skops.io.dump(content, path)
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle written by `save_bundle`; refuse (FeatxError) missing, corrupt or untrusted files."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"model bundle {path} not found; train one with `featx train` or check the path")
    try:
        content = skops.io.load(path, trusted=trusted_types())
    except UntrustedTypesFoundException as error:
        raise FeatxError(
            f"{path} holds types featx does not trust ({_untrusted_names(error)}); "
            "only load bundles made by featx train"
        ) from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, ImportError, OSError) as error:
        raise FeatxError(
            f"{path} is not a readable featx model bundle ({type(error).__name__}); retrain it with `featx train`"
        ) from None
    if not isinstance(content, dict) or content.get("format") != BUNDLE_FORMAT:
        raise FeatxError(f"{path} is not a featx model bundle; pass a .skops file written by `featx train`")
    missing = [key for key in _REQUIRED_KEYS if key not in content]
    if missing:
        raise FeatxError(
            f"{path} is an incomplete featx model bundle (no {', '.join(missing)}); retrain it with `featx train`"
        )
    return Bundle(
        head=content["head"],
        label_names=list(content["label_names"]),
        recipe=dict(content["recipe"]),
        metrics=dict(content["metrics"]),
        head_name=content["head_name"],
        graded=bool(content["graded"]),
        featx_version=content["featx_version"],
        extra=dict(content.get("extra") or {}),
        path=path,
    )


def _untrusted_names(error: Exception) -> str:
    text = str(error)
    # skops words it as "Untrusted types found in the file: [...]"; keep just the list.
    return text.split(":", 1)[1].strip().rstrip(".") if ":" in text else text

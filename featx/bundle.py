"""A trained head saved with everything needed to predict from raw images, loaded without running code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException

from featx._version import __version__
from featx.atomic import atomic_output
from featx.backbones import list_backbones
from featx.context import CONTEXTS, FILL, FILLS, with_context
from featx.errors import FeatxError
from featx.heads import TRUSTED_TYPES
from featx.recipe import FEATURE_KEYS, Recipe, mismatch
from featx.rows import Rows, read_fused

__all__ = ["BUNDLE_FORMAT", "Bundle", "as_bundle", "load_bundle", "save_bundle", "trusted_types"]

BUNDLE_FORMAT = "featx-bundle/2"
# featx-bundle/1 held one recipe under "recipe" (weights as one "weights_id" string); still readable.
_READABLE_FORMATS = ("featx-bundle/1", BUNDLE_FORMAT)
_REQUIRED_KEYS = ("head", "head_name", "label_names", "metrics", "graded", "featx_version")


def trusted_types() -> list[str]:
    """The fixed list of type names `load_bundle` lets skops construct (besides skops' defaults).

    Reviewed by hand in featx.heads; never extended from a file's own contents.
    """
    return sorted(set(TRUSTED_TYPES))


@dataclass
class Bundle:
    """A fitted head and the recipe that turns an image into the features it expects."""

    head: object
    label_names: list[str]
    recipes: list[Recipe]  # one per feature file the head was trained on (several when fused)
    metrics: dict
    head_name: str
    graded: bool
    featx_version: str
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def recipe(self) -> Recipe | None:
        """The recipe of a head trained on one feature file (None when that file recorded none)."""
        if len(self.recipes) > 1:
            raise FeatxError(f"{self.path or 'this bundle'} was trained on {len(self.recipes)} fused feature files; "
                             "use .recipes")
        return self.recipes[0] if self.recipes else None

    @property
    def group(self) -> str | None:
        """The --group regex that named the training rows' subjects (None: not grouped, or an older bundle)."""
        return self.extra.get("group") or None

    @property
    def group_unmatched(self) -> str:
        return self.extra.get("group_unmatched") or "refuse"

    @property
    def context(self) -> str | None:
        """The --context the head was trained with: its rows hold their features, then their context."""
        return self.extra.get("context") or None

    @property
    def context_fill(self) -> str:
        return self.extra.get("context_fill") or FILL

    @property
    def context_fill_value(self):
        """The features the "mean" fill gives a row whose subject has no other image (the training rows' mean)."""
        return self.extra.get("context_fill_value")

    def labelled_rows(self, stores, log) -> Rows:
        """The labelled rows of `stores` (checked by `check_features`) as the head reads them: with context, if
        trained with it, from the rows' subjects named as in training."""
        self.check_features(stores)
        if not self.context:
            return read_fused(stores, self.label_names, log)
        rows = read_fused(stores, self.label_names, log, group=self.group, unmatched=self.group_unmatched)
        return with_context(rows, fill=self.context_fill, value=self.context_fill_value)

    def check_features(self, stores) -> None:
        """Refuse feature files (FeatureStores; one per fused recipe) that are not the space this head knows."""
        stores = list(stores) if isinstance(stores, (list, tuple)) else [stores]
        if len(stores) != max(1, len(self.recipes)):
            raise FeatxError(f"{self.path or 'the model'} was trained on {len(self.recipes)} fused feature file(s) "
                             f"but got {len(stores)}; give one file per recipe, in the order trained "
                             f"({', '.join(recipe.backbone for recipe in self.recipes)})")
        for recipe, store in zip(self.recipes or [None], stores):
            differences = mismatch(recipe, store.recipe, FEATURE_KEYS)
            if differences:
                raise FeatxError(f"{store.path} holds features made differently from the model's ({differences}); "
                                 "extract features with the model's recipe")
        dim, expected = sum(store.dim for store in stores), getattr(self.head, "n_features_in_", None)
        if self.context:
            dim *= 2  # each row's context beside it
        if expected is not None and dim != expected:
            raise FeatxError(f"{', '.join(str(s.path) for s in stores)}: {dim} features per row but the model "
                             f"expects {expected}; extract features with the model's recipe")


def save_bundle(
    path: str | Path,
    head,
    *,
    label_names,
    recipes: list[Recipe],
    metrics: dict,
    head_name: str,
    graded: bool,
    extra: dict | None = None,
) -> Path:
    """Write a fitted head with its label names, feature recipe(s) and test metrics to a .skops file."""
    path = Path(path)
    content = {
        "format": BUNDLE_FORMAT,
        "featx_version": __version__,
        "head": head,
        "head_name": str(head_name),
        "label_names": [str(name) for name in label_names],
        "recipes": [recipe.to_attrs() for recipe in recipes],
        "metrics": dict(metrics),
        "graded": bool(graded),
        "extra": dict(extra or {}),
    }
    # A bundle cut short by a full disk must not sit there under its final name: written whole, then renamed.
    with atomic_output(path, "then rerun `featx train`") as temporary:
        skops.io.dump(content, temporary)
    return path


def as_bundle(bundle) -> Bundle:
    """A Bundle as given, or loaded from its path."""
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


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
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged zip fails in many ways (zlib, json, zipfile, numpy)
        # Only skops' parsing ran (untrusted types are refused before anything is built): any failure
        # here means the file is damaged, not that featx is.
        raise FeatxError(
            f"{path} is not a readable featx model bundle ({type(error).__name__}); retrain it with `featx train`"
        ) from None
    fmt = content.get("format") if isinstance(content, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("featx-bundle/"):
        raise FeatxError(f"{path} is not a featx model bundle; pass a .skops file written by `featx train`")
    if fmt not in _READABLE_FORMATS:
        raise FeatxError(f"{path} is a {fmt} bundle, newer than this featx {__version__} reads "
                         f"({', '.join(_READABLE_FORMATS)}); upgrade featx (pip install -U featx)")
    missing = [key for key in _REQUIRED_KEYS if key not in content]
    if missing:
        raise FeatxError(
            f"{path} is an incomplete featx model bundle (no {', '.join(missing)}); retrain it with `featx train`"
        )
    wrong = _wrong_types(content)
    if wrong:
        raise FeatxError(f"{path} is a damaged featx model bundle ({wrong}); retrain it with `featx train`")
    _check_context(content.get("extra") or {}, path)
    return Bundle(
        head=content["head"],
        label_names=list(content["label_names"]),
        recipes=_recipes(content, path),
        metrics=dict(content["metrics"]),
        head_name=content["head_name"],
        graded=bool(content["graded"]),
        featx_version=content["featx_version"],
        extra=dict(content.get("extra") or {}),
        path=path,
    )


def _wrong_types(content: dict) -> str:
    """What in a loaded bundle's content does not have the type featx wrote ('' when all do)."""
    names = content["label_names"]
    recipes = content.get("recipes", [])
    extra = content.get("extra") or {}
    problems = [
        "head without predict()" if not callable(getattr(content["head"], "predict", None)) else "",
        "label_names not a list of names" if not isinstance(names, list) or not names
        or not all(isinstance(name, str) for name in names) else "",
        "metrics not a dict" if not isinstance(content["metrics"], dict) else "",
        "head_name not a name" if not isinstance(content["head_name"], str) else "",
        "recipes not a list" if not isinstance(recipes, list) else "",
        "extra not a dict" if not isinstance(extra, dict) else "",
        "group not a regex" if isinstance(extra, dict) and not isinstance(extra.get("group") or "", str) else "",
    ]
    return ", ".join(problem for problem in problems if problem)


def _check_context(extra: dict, path: Path) -> None:
    context, fill = extra.get("context"), extra.get("context_fill")
    if context not in (None, *CONTEXTS) or fill not in (None, *FILLS):
        raise FeatxError(f"{path} gives its rows a context this featx {__version__} does not know "
                         f"({context!r}, fill {fill!r}); upgrade featx (pip install -U featx)")
    value = extra.get("context_fill_value")
    if context and fill == "mean" and (not isinstance(value, np.ndarray) or value.ndim != 1):
        raise FeatxError(f"{path} is a damaged featx model bundle (no context fill features); retrain it with "
                         "`featx train`")


def _untrusted_names(error: Exception) -> str:
    text = str(error)
    # skops words it as "Untrusted types found in the file: [...]"; keep just the list.
    return text.split(":", 1)[1].strip().rstrip(".") if ":" in text else text


def _recipes(content: dict, path: Path) -> list[Recipe]:
    # A head trained on a file without a recipe (a seeds-style file) has none: it can be evaluated,
    # but predict cannot repeat an extraction it knows nothing about.
    recorded = content.get("recipes", [content["recipe"]] if content.get("recipe") else [])
    recipes = [Recipe.from_attrs(attrs) if isinstance(attrs, dict) else None for attrs in recorded]
    if any(recipe is None for recipe in recipes):
        raise FeatxError(f"{path} holds a damaged feature recipe; retrain it with `featx train`")
    unknown = [recipe.backbone for recipe in recipes if recipe.backbone not in list_backbones()]
    if unknown:
        raise FeatxError(f"{path} was trained on features of backbone {unknown[0]!r}, which this featx does not "
                         "know (`featx backbones` lists them); use the featx version that made it")
    return recipes

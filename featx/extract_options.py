"""What one extraction is asked to do, as small frozen objects that cli, extract, the runner and Ray pass along.

`ExtractOptions.from_keywords(...)` takes `featx.extract`'s keyword arguments, checks them once and
groups them: which backbones, how images are fed (the runner's `Feeding`), how rows are written, and
which engine runs. Nothing downstream takes the loose keywords again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from featx import backbones as registry
from featx.errors import FeatxError
from featx.recipe import DECODE_CHOICES
from featx.runner import Feeding, decode_workers

ENGINES = ("local", "ray")
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class BackboneChoice:
    """Which extractors to build: one per name, all with the same weights, pooling, size, layer and runtime."""

    names: tuple[str, ...] = (registry.DEFAULT_BACKBONE,)
    weights: object = "auto"  # "auto", "none" or a weights file (e.g. a fine-tuned .weights.h5)
    pooling: str = "avg"
    image_size: int | None = None
    layer: str | None = None
    runtime: str = "auto"
    precision: str = "float32"

    def build(self, log: Callable[[str], object] = print) -> list:
        """The Backbones, in name order; each says what it loaded."""
        models = []
        for name in self.names:
            model = registry.get_backbone(name, weights=self.weights, pooling=self.pooling, image_size=self.image_size,
                                          layer=self.layer, runtime=self.runtime, precision=self.precision)
            log(f"loaded backbone {name} (weights: {self.weights}; runtime: {model.runtime} {model.precision})")
            models.append(model)
        return models


@dataclass(frozen=True)
class Writing:
    """How rows reach the feature files."""

    buffer_size: int = 1000  # rows per flush: a crash loses at most this many
    dtype: str = "float32"
    overwrite: bool = False
    progress: bool = True
    group: str | None = None  # --group REGEX: its first group on each path names the row's subject
    group_unmatched: str = "refuse"  # or "own": a path the regex misses is its own subject

    def group_attrs(self) -> dict:
        """What the feature files record about subjects (the writer names them from these)."""
        return {"group_regex": self.group, "group_unmatched": self.group_unmatched} if self.group else {}


@dataclass(frozen=True)
class Engine:
    """What runs the work: local decoding threads, or Ray Data (`workers` backbone actors there)."""

    name: str = "local"
    address: str | None = None
    workers: int | None = None  # Ray: backbone actors; local: decoding threads (in Feeding)
    gpus_per_worker: float = 0


@dataclass(frozen=True)
class ExtractOptions:
    backbones: BackboneChoice = field(default_factory=BackboneChoice)
    feeding: Feeding = field(default_factory=Feeding)
    writing: Writing = field(default_factory=Writing)
    engine: Engine = field(default_factory=Engine)
    augment: int = 0  # augmented copies per training image (the feeding of each split decides)

    @classmethod
    def from_keywords(cls, *, backbone=None, weights="auto", pooling="avg", image_size=None,
                      layer=None, batch_size=32, buffer_size=1000, dtype="float32", augment=0, tta=None, crop=False,
                      decode="reduced", seed=0, workers=None, runtime="auto", precision="float32", engine="local",
                      address=None, gpus_per_worker=0, overwrite=False, progress=True, group=None,
                      group_unmatched="refuse") -> ExtractOptions:
        """`featx.extract`'s keywords, checked: a FeatxError names the option to fix. backbone None: the default."""
        if tta not in (None, "", "none", "flip"):
            raise FeatxError(f"unknown --tta {tta!r}: use 'flip'")
        if decode not in DECODE_CHOICES:
            raise FeatxError(f"unknown --decode {decode!r}: use {' or '.join(DECODE_CHOICES)}")
        if augment < 0:
            raise FeatxError(f"--augment must be 0 or more, got {augment}")
        if batch_size < 1 or buffer_size < 1:
            raise FeatxError(f"--batch-size and --buffer-size must be at least 1, got {batch_size} and {buffer_size}")
        if dtype not in DTYPES:
            raise FeatxError(f"unknown --dtype {dtype!r}: use float32 or float16")
        if engine not in ENGINES:
            raise FeatxError(f"unknown --engine {engine!r}: use local or ray")
        if engine != "ray" and (address or gpus_per_worker):
            raise FeatxError("--address and --gpus-per-worker are options of --engine ray")
        if engine == "ray" and (gpus_per_worker or 0) < 0:
            raise FeatxError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
        return cls(
            backbones=BackboneChoice(names=backbone_names(backbone or registry.DEFAULT_BACKBONE), weights=weights,
                                     pooling=pooling, image_size=image_size, layer=layer, runtime=runtime,
                                     precision=precision),
            feeding=Feeding(batch_size=batch_size, workers=decode_workers(workers),
                            tta="flip" if tta == "flip" else None, crop=bool(crop), seed=int(seed), decode=decode),
            writing=Writing(buffer_size=buffer_size, dtype=dtype, overwrite=bool(overwrite), progress=bool(progress),
                            group=group or None, group_unmatched=group_unmatched),
            engine=Engine(name=engine, address=address, workers=workers, gpus_per_worker=float(gpus_per_worker or 0)),
            augment=int(augment),
        )


def backbone_names(backbone) -> tuple[str, ...]:
    """A name, a comma-separated list or a sequence of names, each once."""
    names = [b.strip() for b in (backbone.split(",") if isinstance(backbone, str) else backbone) if b.strip()]
    if not names:
        raise FeatxError("no backbone given")
    if len(set(names)) != len(names):
        raise FeatxError(f"backbone listed twice: {','.join(names)}")
    return tuple(names)

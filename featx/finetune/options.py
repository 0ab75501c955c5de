"""What one `featx finetune` run is asked to do: one frozen object the CLI fills and `finetune` checks once."""

from __future__ import annotations

from dataclasses import dataclass, fields

from featx.errors import FeatxError

__all__ = ["DEFAULTS", "TRAINING", "FinetuneOptions", "VAL_SIZE"]

# The training recipe's options: recorded in the bundles and compared on resume (featx.finetune.top.TopConfig).
TRAINING = ("epochs", "lr", "warmup", "weight_decay", "patience", "batch_size", "shift", "dropout", "label_smoothing",
            "ordinal_loss", "select", "mixup")
SELECT = ("argmax", "expected")
VAL_SIZE = 0.2


@dataclass(frozen=True)
class FinetuneOptions:
    """Every option of `featx.finetune`; `checked()` raises a FeatxError naming the one to fix."""

    backbone: str | None = None  # None: featx's default backbone
    weights: object = "auto"  # "auto", "none" or a weights file
    train_from: str | None = None  # the cut layer; None: the backbone's default; "input": every layer
    # The training defaults, chosen by measurement on knee grades and ants/bees (README, "Fine-tuning"): on 973
    # knees the top overfits within 3 epochs at lr 3e-4 unless the maps move, the pooled features drop out
    # and the targets spread to the neighbouring grades; the expected-grade loss makes its features ordinal.
    epochs: int = 6
    lr: float = 2e-4
    warmup: float = 0.5  # epochs of linear warm-up before the cosine decay
    weight_decay: float = 1e-4
    patience: int = 3
    batch_size: int = 32
    shift: int = 2  # maps move by up to this many cells each way
    dropout: float = 0.3
    label_smoothing: float = 0.2
    ordinal_loss: float = 0.5
    select: str = "expected"
    mixup: float = 0.0
    class_weight: str | None = None
    image_size: int | None = None
    val_size: float = VAL_SIZE
    # float32: the probe sees the very features `featx extract` gives, so epoch 0 is `featx train`'s logreg;
    # float16 halves the maps file (100,000 images of 14x14x112: 4.4 GB instead of 8.8 GB).
    maps_dtype: str = "float32"
    group: str | None = None  # --group REGEX: a subject's images stay on one side of the hold-out
    group_unmatched: str = "refuse"
    seed: int = 0
    features: object = "features"  # folder of the cached maps
    output: object = "models"  # folder of the weights file, bundles and checkpoint
    runtime: str = "auto"
    overwrite: bool = False
    bootstrap: int = 1000
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    progress: bool = True

    def checked(self) -> FinetuneOptions:
        if int(self.epochs) < 1 or int(self.batch_size) < 1 or int(self.patience) < 1:
            raise FeatxError(f"--epochs, --batch-size and --patience must be at least 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.patience}")
        if not float(self.lr) > 0 or float(self.warmup) < 0:
            raise FeatxError(f"--lr must be positive and --warmup 0 or more, got {self.lr} and {self.warmup}")
        if not 0 < float(self.val_size) < 1:
            raise FeatxError(f"--val-size must be between 0 and 1, got {self.val_size}")
        if not (0 <= float(self.dropout) < 1 and 0 <= float(self.label_smoothing) < 1):
            raise FeatxError(f"--dropout and --label-smoothing must be in [0, 1), got {self.dropout} and "
                             f"{self.label_smoothing}")
        if int(self.shift) < 0 or float(self.ordinal_loss) < 0 or float(self.mixup) < 0:
            raise FeatxError(f"--shift, --ordinal-loss and --mixup must be 0 or more, got {self.shift}, "
                             f"{self.ordinal_loss} and {self.mixup}")
        if self.maps_dtype not in ("float32", "float16"):
            raise FeatxError(f"unknown --maps-dtype {self.maps_dtype!r}: use float32 or float16")
        if self.select not in SELECT:
            raise FeatxError(f"unknown --select {self.select!r}: use {' or '.join(SELECT)}")
        if self.class_weight not in (None, "balanced"):
            raise FeatxError(f"unknown --class-weight {self.class_weight!r}: use balanced")
        from featx.store.subjects import check_unmatched, compile_group

        check_unmatched(self.group_unmatched)
        if self.group:
            compile_group(self.group)
        return self

    def training(self) -> dict:
        """The training recipe (TRAINING) with this run's values, as TopConfig takes them."""
        return {name: type(DEFAULTS[name])(getattr(self, name)) for name in TRAINING}


DEFAULTS = {f.name: f.default for f in fields(FinetuneOptions) if f.name in TRAINING}

"""The training function: the top of a backbone (cut -> feature map -> pool -> Dense) trained on cached maps.

`train_top` takes plain options and file paths, so one function serves this process, a
MirroredStrategy over local GPUs and Ray Train workers (featx.finetune.distributed): the
model is built inside `strategy.scope()` when a strategy is given. Batches stream from the
HDF5 maps file a block at a time, so memory does not grow with the number of images.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import backbones
from featx.atomic import atomic_output
from featx.errors import FeatxError
from featx.finetune.loss import accuracy_of_first_label, training_loss
from featx.metrics import accuracy, quadratic_weighted_kappa

__all__ = ["MapRows", "TopConfig", "TopResult", "TopNetwork", "map_batches", "map_dataset", "mixed", "train_top"]

BLOCK_ROWS = 512  # rows read from HDF5 at once: ~45 MB of 14x14x112 float32 maps
# Tracing the train step into a graph costs 10-40 s on a busy 2-core CPU; a run this short is faster eagerly.
EAGER_STEPS = 16


@dataclass(frozen=True)
class TopConfig:
    """Everything that decides a training run; plain values, so it pickles to Ray workers."""

    backbone: str
    weights: str  # "auto", "none" or a file: what the top starts from
    image_size: int
    cut: str  # the layer the top starts after; "input" trains the whole network from images
    n_classes: int
    graded: bool  # the val metric: QWK when True, accuracy otherwise
    # The training recipe (featx.finetune.options.TRAINING; its defaults are FinetuneOptions').
    epochs: int
    batch_size: int
    lr: float  # AdamW's peak learning rate
    warmup: float  # epochs of linear warm-up before the cosine decay
    weight_decay: float
    patience: int  # epochs without a better val metric before stopping
    shift: int  # maps move by up to this many cells each way (edges repeated): translation augmentation
    dropout: float  # dropout on the pooled features before the Dense layer
    label_smoothing: float  # graded: spread to the neighbouring grades; else to every class
    ordinal_loss: float  # graded: weight of (expected grade - grade)^2 beside the cross-entropy
    select: str  # graded: keep the epoch by the QWK of the "argmax", or of the rounded "expected" grade
    mixup: float  # alpha of the Beta(alpha, alpha) weight that blends each training map with another one
    seed: int = 0
    class_weight: tuple[float, ...] | None = None

    @property
    def metric(self) -> str:
        return "qwk" if self.graded else "accuracy"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class MapRows:
    """Rows of a maps file (featx.extract with pooling='flatten' at the cut): all of them, or `rows`."""

    path: str
    labels: tuple[int, ...]  # class index of each used row, in the training class order
    shape: tuple[int, int, int]  # one row's map (H, W, C)
    rows: tuple[int, ...] | None = None  # sorted row indices; None = every row

    def indices(self) -> np.ndarray:
        if self.rows is not None:
            return np.asarray(self.rows, dtype=np.int64)
        return np.arange(len(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TopResult:
    """What training gave: the best epoch's weights (TopNetwork.model.get_weights() order) and the history."""

    weights: list[np.ndarray]
    best_epoch: int  # 0: the linear probe itself scored best
    best_metric: float
    history: list[dict] = field(default_factory=list)
    finished: bool = True  # every epoch ran or early stopping ended it
    interrupted: bool = False  # Ctrl-C: the best epoch so far is kept


class TopNetwork:
    """The full backbone, its trainable top from the cut, and a Dense classification layer on the pooled map."""

    def __init__(self, config: TopConfig):
        import keras
        from keras import layers

        self.full = backbones.build_keras_model(config.backbone, weights=config.weights, image_size=config.image_size)
        feature = self.full.get_layer(backbones.feature_layer(config.backbone)).output
        start = self.full.input if config.cut == "input" else self.full.get_layer(config.cut).output
        # Layers are shared with `full`: training the top trains the full model saved afterwards.
        self.top = keras.Model(start, feature, name="featx_top")
        for layer in self.top.layers:
            # Small batches give noisy statistics: BatchNorm keeps ImageNet's (inference mode).
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
        self.map_shape = tuple(int(d) for d in start.shape[1:])
        inputs = keras.Input(self.map_shape, name="featx_maps")
        pooled = layers.GlobalAveragePooling2D(name="featx_pool")(self.top(inputs))
        self.pooled = keras.Model(inputs, pooled, name="featx_pooled")
        dropped = layers.Dropout(config.dropout, seed=config.seed, name="featx_dropout")(pooled) \
            if config.dropout else pooled
        logits = layers.Dense(config.n_classes, name="featx_head")(dropped)
        self.model = keras.Model(inputs, logits, name="featx_finetune")
        self.head = self.model.get_layer("featx_head")
        self._graphs: dict = {}

    def set_head(self, W: np.ndarray, b: np.ndarray) -> None:
        self.head.set_weights([np.asarray(W, np.float32), np.asarray(b, np.float32)])

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        W, b = self.head.get_weights()
        return np.asarray(W, np.float64), np.asarray(b, np.float64)

    def predict(self, data: MapRows, batch_size: int, *, pooled: bool = False) -> np.ndarray:
        """Logits (or pooled features) of every row of `data`, in order, read a block at a time."""
        forward = self._forward(pooled)
        out = [np.asarray(forward(batch)) for batch, _ in map_batches(data, batch_size)]
        return np.concatenate(out).astype(np.float32)

    def _forward(self, pooled: bool):
        """The model's inference call as one traced graph: eager calls cost about 3x as much per batch of 32."""
        import tensorflow as tf

        key = "pooled" if pooled else "logits"
        if key not in self._graphs:
            model = self.pooled if pooled else self.model
            self._graphs[key] = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        return self._graphs[key]


# ----------------------------------------------------------------------------- data


def map_batches(data: MapRows, batch_size: int, *, shuffle: bool = False, seed: int = 0, flip: bool = False,
                shift: int = 0, augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(maps (B, H, W, C) float32, labels (B,)) batches of `data`; shuffled blocks when `shuffle`.

    Shuffling permutes blocks of rows and the rows of what is pending: reads stay contiguous (fast
    in HDF5) and memory stays at about two blocks, while batches still mix across the file.
    flip: mirror each map left-right with probability 1/2. shift: move each map by up to `shift` cells
    up/down and left/right, repeating the edge. augment: (image, rng) -> image, per row.
    """
    import h5py

    rng = np.random.default_rng(seed)
    indices, labels, shape = data.indices(), np.asarray(data.labels, dtype=np.int64), tuple(data.shape)
    blocks = [np.arange(i, min(i + BLOCK_ROWS, len(indices))) for i in range(0, len(indices), BLOCK_ROWS)]
    if shuffle:
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    with h5py.File(data.path, "r") as handle:
        features = handle["features"]
        if features.shape[1] != math.prod(shape):
            raise FeatxError(f"{data.path} holds rows of {features.shape[1]} values, not maps of {shape}; "
                             "rerun `featx finetune` with --overwrite")
        pending_x, pending_y = np.empty((0, *shape), np.float32), np.empty(0, np.int64)
        for n, block in enumerate(blocks):
            rows = indices[block]
            chunk = features[int(rows[0]):int(rows[-1]) + 1][rows - rows[0]]
            x = np.concatenate([pending_x, chunk.astype(np.float32).reshape(len(rows), *shape)])
            y = np.concatenate([pending_y, labels[block]])
            last = n == len(blocks) - 1
            if shuffle:
                order = rng.permutation(len(y))
                x, y = x[order], y[order]
            # Shuffling keeps half of the pool back for the next block, so blocks mix.
            keep = len(y) if last else (len(y) // (2 if shuffle else 1) // batch_size) * batch_size
            for start in range(0, keep, batch_size):
                yield _augmented(x[start:start + batch_size], rng, flip, shift, augment), y[start:start + batch_size]
            pending_x, pending_y = x[keep:], y[keep:]


def _augmented(batch, rng, flip, shift, augment):
    if flip:
        mirrored = rng.random(len(batch)) < 0.5
        batch[mirrored] = batch[mirrored][:, :, ::-1]
    if shift:
        height, width = batch.shape[1:3]
        padded = np.pad(batch, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
        dy, dx = rng.integers(0, 2 * shift + 1, size=(2, len(batch)))
        batch = np.stack([padded[i, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(len(batch))])
    if augment is not None:
        batch = np.stack([augment(image, rng) for image in batch])
    return batch


def mixed(batches, alpha: float, rng: np.random.Generator):
    """(maps, targets (B, 3): label, other label, weight of the first): mixup when alpha > 0, else weight 1.

    Each map is blended with another of its batch; the weight, from Beta(alpha, alpha), is folded
    above 1/2 so the first label is the one that dominates (train accuracy is counted against it).
    """
    for x, y in batches:
        weight, other = np.ones(len(y), np.float32), np.arange(len(y))
        if alpha:
            weight = rng.beta(alpha, alpha, len(y)).astype(np.float32)
            weight = np.maximum(weight, 1 - weight)
            other = rng.permutation(len(y))
            w = weight[:, None, None, None]
            x = w * x + (1 - w) * x[other]
        yield x, np.stack([y, y[other], weight], axis=1).astype(np.float32)


def map_dataset(data: MapRows, config: TopConfig, *, first_epoch: int = 0, train: bool = True):
    """A tf.data.Dataset of `map_batches`, repeated: pass k of the file is epoch first_epoch + k, seeded by it.

    Every pass yields ceil(rows / batch_size) batches, so steps_per_epoch = that count ends each epoch
    exactly at the end of one pass.
    """
    import itertools

    import tensorflow as tf

    from featx.images import augment as affine

    image_augment = affine if (train and config.cut == "input") else None

    def generate():
        # A counter per start: Keras starts the generator again under MultiWorkerMirroredStrategy (its build pulls
        # one batch, then resets), and each start must see the same epoch seeds as one process does.
        for epoch in itertools.count(first_epoch):
            seed = config.seed * 1_000_003 + epoch
            batches = map_batches(data, config.batch_size, shuffle=train, seed=seed, augment=image_augment,
                                  flip=train and config.cut != "input", shift=config.shift if train else 0)
            yield from mixed(batches, config.mixup if train else 0.0, np.random.default_rng([seed, 1]))

    signature = (tf.TensorSpec((None, *data.shape), tf.float32), tf.TensorSpec((None, 3), tf.float32))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)


# ----------------------------------------------------------------------------- training


def train_top(config: TopConfig, train: MapRows, val: MapRows, *, head: tuple[np.ndarray, np.ndarray],
              checkpoint: str | Path | None = None, strategy=None, log: Callable[[str], object] = print,
              network: TopNetwork | None = None, progress: bool = False) -> TopResult:
    """Fine-tune the top and its Dense layer (initialised from `head` = (W (D, C), b (C,))); keep the best epoch.

    checkpoint: a file written (atomically) after every epoch and resumed from when it exists.
    strategy: a tf.distribute strategy; the network is built in its scope. network: an already
    built TopNetwork for `config` (its weights are replaced), to save building it twice. progress: a tqdm bar of
    each epoch's batches (with the running loss) on stderr, gone when the epoch's line is logged.
    """
    import contextlib

    import keras

    keras.utils.set_random_seed(config.seed)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        net = network if network is not None else TopNetwork(config)
        net.set_head(*head)
        steps = max(1, math.ceil(len(train.indices()) / config.batch_size))
        optimizer = keras.optimizers.AdamW(learning_rate=_schedule(config, steps), weight_decay=config.weight_decay)
        net.model.compile(optimizer=optimizer, jit_compile=False, metrics=[accuracy_of_first_label],
                          run_eagerly=steps * config.epochs <= EAGER_STEPS,
                          loss=training_loss(config))
    state = _Progress(config, net, val, log)
    if checkpoint is not None and Path(checkpoint).exists():
        state.resume(Path(checkpoint), optimizer)
    else:
        state.score_probe()
    if not state.finished:
        callback = _epoch_end(state, checkpoint, optimizer, steps if progress else 0)
        try:
            net.model.fit(map_dataset(train, config, first_epoch=state.epoch), steps_per_epoch=steps, verbose=0,
                          epochs=config.epochs, initial_epoch=state.epoch,
                          shuffle=False, callbacks=[callback])
            state.finished = True
        except KeyboardInterrupt:
            callback.close_bar()
            log(f"interrupted: keeping epoch {state.best_epoch} ({config.metric} {state.best_metric:.4f})")
            return state.result(interrupted=True)
    return state.result()


def _schedule(config: TopConfig, steps_per_epoch: int):
    import keras

    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(config.warmup * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.lr * 0.01 if warmup else config.lr, decay_steps=max(1, total - warmup),
        warmup_target=config.lr if warmup else None, warmup_steps=warmup)


class _Progress:
    """The val metric per epoch, the best weights so far, early stopping, and the checkpoint's content."""

    def __init__(self, config: TopConfig, net: TopNetwork, val: MapRows, log):
        self.config, self.net, self.val, self.log = config, net, val, log
        self.y_val = np.asarray(val.labels, dtype=np.int64)
        self.epoch, self.best_epoch, self.best_metric = 0, 0, -math.inf
        self.best_weights: list[np.ndarray] = []
        self.history: list[dict] = []
        self.finished = False

    def val_scores(self) -> dict[str, float]:
        """The val metrics: accuracy, or when graded the QWK of the argmax and of the rounded expected grade."""
        from scipy.special import softmax

        from featx.heads.ordinal import expected_grades

        logits = self.net.predict(self.val, self.config.batch_size)
        if not self.config.graded:
            return {"accuracy": float(accuracy(self.y_val, np.argmax(logits, axis=1)))}
        labels = np.arange(self.config.n_classes)
        expected = np.clip(np.rint(expected_grades(softmax(logits, axis=1))), 0, labels[-1]).astype(np.int64)
        return {"argmax": float(quadratic_weighted_kappa(self.y_val, np.argmax(logits, axis=1), labels=labels)),
                "expected": float(quadratic_weighted_kappa(self.y_val, expected, labels=labels))}

    def chosen(self, scores: dict[str, float]) -> float:
        """The score that picks the epoch: accuracy, or the QWK `select` names."""
        return scores[self.config.select] if self.config.graded else scores["accuracy"]

    def score_probe(self) -> None:
        started = time.perf_counter()
        self.best_metric = self.chosen(self.val_scores())
        self.best_weights = self.net.model.get_weights()
        self.history.append({"epoch": 0, "loss": None, "train_accuracy": None, "val_metric": self.best_metric,
                             "seconds": time.perf_counter() - started})
        self.log(f"epoch 0 (linear probe): val {self.config.metric} {self.best_metric:.4f}")

    def end_epoch(self, epoch: int, logs: dict, seconds: float) -> list[str]:
        """Score the epoch, keep it when best, decide whether to stop; the lines to log."""
        scores = self.val_scores()
        metric = self.chosen(scores)
        self.epoch = epoch
        entry = {"epoch": epoch, "loss": float(logs.get("loss", math.nan)),
                 "train_accuracy": float(logs.get("accuracy_of_first_label", math.nan)), "val_metric": metric,
                 "seconds": seconds}
        self.history.append(entry)
        if metric > self.best_metric:
            self.best_epoch, self.best_metric, self.best_weights = epoch, metric, self.net.model.get_weights()
        best = " (best)" if self.best_epoch == epoch else ""
        extra = f" (argmax {scores['argmax']:.4f}, expected {scores['expected']:.4f})" if self.config.graded else ""
        lines = [f"epoch {epoch}/{self.config.epochs}: loss {entry['loss']:.4f}, train accuracy "
                 f"{entry['train_accuracy']:.4f}, val {self.config.metric} {metric:.4f}{extra}{best}, {seconds:.1f} s"]
        if epoch - self.best_epoch >= self.config.patience and epoch < self.config.epochs:
            lines.append(f"stopping early: no better val {self.config.metric} for {self.config.patience} epoch(s)")
        self.finished = epoch >= self.config.epochs or epoch - self.best_epoch >= self.config.patience
        return lines

    def result(self, interrupted: bool = False) -> TopResult:
        return TopResult(weights=self.best_weights, best_epoch=self.best_epoch, best_metric=self.best_metric,
                         history=list(self.history), finished=self.finished, interrupted=interrupted)

    def save(self, path: Path, optimizer) -> None:
        arrays = {f"current_{i}": w for i, w in enumerate(self.net.model.get_weights())}
        arrays.update({f"best_{i}": w for i, w in enumerate(self.best_weights)})
        arrays.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
        meta = {"config": self.config.to_json(), "epoch": self.epoch, "best_epoch": self.best_epoch,
                "best_metric": self.best_metric, "history": self.history, "finished": self.finished}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        with atomic_output(path, "then rerun the same command to resume") as temporary:
            temporary.write_bytes(buffer.getvalue())

    def resume(self, path: Path, optimizer) -> None:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            arrays = {key: saved[key] for key in saved.files if key != "meta"}
        changed = option_changes(json.loads(meta["config"]), dataclasses.asdict(self.config))
        if changed:
            raise FeatxError(f"{path} was trained with {changed}; rerun with the same options to resume, or pass "
                             "--overwrite to start training over (the cached maps are kept)")
        count = len(self.net.model.get_weights())
        self.net.model.set_weights([arrays[f"current_{i}"] for i in range(count)])
        self.best_weights = [arrays[f"best_{i}"] for i in range(count)]
        optimizer.build(self.net.model.trainable_variables)
        for i, variable in enumerate(optimizer.variables):
            variable.assign(arrays[f"optimizer_{i}"])
        self.epoch, self.best_epoch, self.best_metric = meta["epoch"], meta["best_epoch"], meta["best_metric"]
        self.history, self.finished = meta["history"], meta["finished"]
        if not self.finished:
            self.log(f"resuming after epoch {self.epoch} from {path} (best: epoch {self.best_epoch}, "
                     f"val {self.config.metric} {self.best_metric:.4f})")


def option_changes(saved: dict, now: dict) -> str:
    """'--lr 0.001, not 0.0003; ...' for each option whose value differs; '' when none does."""
    return "; ".join(f"--{key.replace('_', '-')} {saved.get(key)!r}, not {now[key]!r}"
                     for key in now if saved.get(key) != _jsonable(now[key]))


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _epoch_end(state: _Progress, checkpoint, optimizer, steps: int = 0):
    """A Keras callback: after each epoch the val metric, the best weights, a checkpoint, early stopping.

    steps > 0: a progress bar of the epoch's `steps` batches while it trains.
    """
    import keras
    from tqdm import tqdm

    class EpochEnd(keras.callbacks.Callback):
        bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()
            if steps:
                self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{state.config.epochs}", unit="batch",
                                leave=False, dynamic_ncols=True)

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                if logs and "loss" in logs:
                    self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)
                self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            self.close_bar()
            lines = state.end_epoch(epoch + 1, logs or {}, time.perf_counter() - self.started)
            if checkpoint is not None:
                state.save(Path(checkpoint), optimizer)
            for line in lines:
                state.log(line)
            if state.finished:
                self.model.stop_training = True

        def close_bar(self):
            """Take the epoch's bar off the terminal: before its line is logged, or when Ctrl-C stops training."""
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return EpochEnd()

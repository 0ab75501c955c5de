"""What the top trains against: (smoothed) targets, the cross-entropy and the expected grade's squared error."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy_of_first_label", "soft_targets", "training_loss"]


def training_loss(config):
    """Cross-entropy on (smoothed) targets, plus the squared error of the expected grade when graded.

    config: a featx.finetune.top.TopConfig. y_true: (label, other label, weight of the first) per row
    (featx.finetune.top.mixed); class weights apply here.
    """
    from keras import ops

    n = config.n_classes
    targets = soft_targets(n, config.label_smoothing, config.graded)
    grades = np.arange(n, dtype=np.float32)
    ordinal = config.ordinal_loss if config.graded else 0.0
    class_weight = None if config.class_weight is None else np.asarray(config.class_weight, np.float32)

    def loss(y_true, logits):
        first, other = ops.cast(y_true[:, 0], "int32"), ops.cast(y_true[:, 1], "int32")
        weight = y_true[:, 2]
        log_p = ops.log_softmax(logits, axis=-1)
        target = weight[:, None] * ops.take(targets, first, axis=0) \
            + (1 - weight[:, None]) * ops.take(targets, other, axis=0)
        value = -ops.sum(target * log_p, axis=-1)
        if ordinal:
            expected = ops.sum(ops.exp(log_p) * grades, axis=-1)
            value = value + ordinal * (weight * ops.square(expected - y_true[:, 0])
                                       + (1 - weight) * ops.square(expected - y_true[:, 1]))
        if class_weight is not None:
            value = value * (weight * ops.take(class_weight, first) + (1 - weight) * ops.take(class_weight, other))
        return value

    return loss


def accuracy_of_first_label(y_true, logits):
    """Train accuracy against each row's dominant label (the `mixed` targets' first column)."""
    from keras import ops

    return ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(y_true[:, 0], "int64")), "float32")


def soft_targets(n: int, smoothing: float, graded: bool) -> np.ndarray:
    """Row k: the target distribution of class k; graded classes give the smoothed mass to grades k-1 and k+1."""
    eye = np.eye(n, dtype=np.float32)
    if not smoothing:
        return eye
    if graded:
        spread = (np.abs(np.subtract.outer(np.arange(n), np.arange(n))) == 1).astype(np.float32)
    else:
        spread = 1.0 - eye
    spread /= np.maximum(spread.sum(axis=1, keepdims=True), 1.0)
    return ((1.0 - smoothing) * eye + smoothing * spread).astype(np.float32)

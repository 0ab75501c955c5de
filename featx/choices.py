"""The names a user picks from: heads, metrics, subject and context policies, each defined once.

Standard library only, so the CLI builds its --heads help and --metric choices from these without
loading numpy or scikit-learn. Adding a head is an entry here and its builder in featx.heads.registry.
"""

from __future__ import annotations

__all__ = ["CONTEXTS", "HEADS", "HEAD_NAMES", "METRICS", "ORDINAL_HEAD_NAMES", "STREAMED_HEAD", "UNMATCHED",
           "heads_help"]

# The test metrics of a leaderboard row, in display order.
METRICS = ("accuracy", "f1_macro", "qwk")

# --group-unmatched: what a path the --group regex does not match becomes: an error, or its own subject.
UNMATCHED = ("refuse", "own")
# --context: what goes beside each row's features (featx.context).
CONTEXTS = ("others",)

# Head name -> what it is, in a few words. The order is the order of --heads all.
HEADS = {
    "logreg": "logistic regression, C searched",
    "svm": "linear SVM with calibrated probabilities",
    "svm-rbf": "linear SVM on approximate RBF-kernel features",
    "ridge": "ridge regression rounded to the nearest grade, for graded labels",
    "ordinal": "logreg's expected grade cut by tuned thresholds, for graded labels",
    "mlp": "a small neural network",
    "sgd": "out-of-core logistic regression; alone on one file it streams files larger than memory",
    "knn": "k nearest neighbours by cosine, k by leave-one-out; names the training images behind a prediction",
}
HEAD_NAMES = tuple(HEADS)
# Heads that treat the labels as ordered grades: they need integer class names or ordinal=True.
ORDINAL_HEAD_NAMES = ("ridge", "ordinal")
# The head that can read a feature file a chunk at a time.
STREAMED_HEAD = "sgd"


def heads_help() -> str:
    """The --heads help text: every head with its description."""
    return "comma-separated heads, or all. " + "; ".join(f"{name}: {text}" for name, text in HEADS.items())

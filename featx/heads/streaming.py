"""The out-of-core head (`sgd`): a standardised logistic regression fitted by SGD over chunks.

A feature file larger than RAM is never loaded: the scaler learns mean and spread in one pass
(`StandardScaler.partial_fit`), then each epoch reads the training rows a chunk at a time
(`features[start:stop]` spans, which h5py reads from disk alone) and updates one
`SGDClassifier(loss="log_loss").partial_fit` per penalty in `Cs`: one read serves the whole
search. A held-out chunk of whole source images stops each model once its log loss stops
improving; the best epoch of the best penalty is kept. Memory is a few chunks, whatever the rows.

`fit(X, y)` runs the same code on an array, so the head also sits on the leaderboard beside the
in-memory heads; `fit_store` and `predict_proba_store` are the streaming entry points.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.errors import FeatxError

__all__ = ["SGDHead"]

# In LogisticRegression's terms, as the logreg head's grid: SGD's alpha is 1 / (C * rows), so one grid
# suits a thousand rows and a million alike. Pooled CNN features want strong penalties: the held-out
# loss picked 3e-4 on knee grades (5,778 rows) and 1e-3 on the bench's generated rows; every value
# costs one more model per chunk, hence half-decades around those only.
CS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
# Rows per step are drawn from this many places in the file: a file sorted by class still gives
# each step a mix of classes, while each read stays a contiguous span.
_BLOCKS_PER_STEP = 8


class SGDHead(ClassifierMixin, BaseEstimator):
    """Standardised logistic regression fitted by SGD over chunks: the out-of-core head.

    Parameters
    ----------
    Cs : tuple of float
        Inverse L2 penalties, as LogisticRegression's C (SGD's alpha = 1 / (C * rows)), tried side by
        side on the same chunks; the held-out log loss picks one.
    chunk_rows : int
        Rows per SGD step (and per read): memory is a few chunks of features.
    max_epochs, patience, tol :
        A model stops when its held-out log loss has not improved by `tol` for `patience` epochs.
    validation_rows : int
        At most this many rows (10% of the source images, whole images) are held out to stop on.
    class_weight : None, "balanced" or dict (class -> weight)
    n_jobs : int or None
        Threads for the one-vs-rest models of a multiclass fit (None: all cores); SGD releases the GIL.
    seed : int
        Seeds the held-out split, the order of chunks and SGD.
    """

    def __init__(self, Cs=CS, chunk_rows=4096, max_epochs=20, patience=2, tol=1e-4, validation_rows=4096,
                 class_weight=None, n_jobs=None, seed=0):
        self.Cs = Cs
        self.chunk_rows = chunk_rows
        self.max_epochs = max_epochs
        self.patience = patience
        self.tol = tol
        self.validation_rows = validation_rows
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.seed = seed

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y, groups=None):
        """Fit on arrays (the same chunked code as `fit_store`); `groups`: source image of each row."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        return self._fit(X, np.arange(len(y)), y, groups)

    def fit_store(self, store, rows=None, y=None, groups=None):
        """Fit on rows of a feature file (a FeatureStore or a path) without loading its features.

        rows: row indices to train on (default: every labelled row). y: their class labels (default:
        the file's). groups: what the held-out split keeps together (default: the file's own groups,
        featx.rows.row_groups: subjects, else source images, so augmented copies stay on one side).
        """
        from featx.rows import row_groups, store_paths  # the one definition of a row's group

        with _Opened(store) as opened:
            rows = np.flatnonzero(opened.labels >= 0) if rows is None else np.asarray(rows, dtype=np.int64)
            y = np.asarray(opened.labels)[rows] if y is None else np.asarray(y)
            if groups is None:
                groups = row_groups(store_paths(opened), len(opened.labels), opened.subjects)[rows]
            order = np.argsort(rows, kind="stable")  # reads go forward through the file
            rows, y = rows[order], y[order]
            groups = None if groups is None else np.asarray(groups, dtype=object)[order]
            check_classification_targets(y)
            self.n_features_in_ = opened.dim
            return self._fit(opened.features, rows, y, groups)

    def _fit(self, features, rows, y, groups):
        self._check_params()
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"SGDHead needs at least 2 classes to train; got 1 class ({self.classes_[0]!r})")
        rng = np.random.default_rng(self.seed)
        fit_at, held_out = _held_out_split(y_index, groups, self.validation_rows, self.seed)
        weights = _class_weights(y_index, self.classes_, self.class_weight)

        self.scaler_ = StandardScaler()
        for start in range(0, len(fit_at), self.chunk_rows):
            self.scaler_.partial_fit(_read(features, rows[fit_at[start:start + self.chunk_rows]], self.chunk_rows))
        # Held out once, in memory: one chunk at most. Without one (too few images), the training rows stop it.
        check = held_out if len(held_out) else fit_at[:self.validation_rows]
        X_check = self.scaler_.transform(_read(features, rows[check], self.chunk_rows))
        y_check = y_index[check]

        n_jobs = -1 if self.n_jobs is None else self.n_jobs
        models = [SGDClassifier(loss="log_loss", alpha=1.0 / (C * len(fit_at)), average=True, n_jobs=n_jobs,
                                random_state=self.seed) for C in self.Cs]
        best = [(np.inf, None, None, 0)] * len(models)  # (loss, coef, intercept, epoch)
        waiting = [0] * len(models)
        blocks = np.array_split(fit_at, max(1, -(-len(fit_at) * _BLOCKS_PER_STEP // self.chunk_rows)))
        epoch = 0
        for epoch in range(1, self.max_epochs + 1):
            active = [m for m in range(len(models)) if waiting[m] < self.patience]
            if not active:
                break
            for step in np.array_split(rng.permutation(len(blocks)), max(1, len(blocks) // _BLOCKS_PER_STEP)):
                at = np.sort(np.concatenate([blocks[b] for b in step]))
                X_step = self.scaler_.transform(_read(features, rows[at], self.chunk_rows))
                shuffle = rng.permutation(len(at))
                X_step, y_step = X_step[shuffle], y_index[at][shuffle]
                for m in active:
                    models[m].partial_fit(X_step, y_step, classes=np.arange(len(self.classes_)),
                                          sample_weight=weights[y_step])
            for m in active:
                loss = _log_loss(models[m].predict_proba(X_check), y_check, weights)
                if loss < best[m][0] - self.tol:
                    best[m] = (loss, models[m].coef_.copy(), models[m].intercept_.copy(), epoch)
                    waiting[m] = 0
                else:
                    waiting[m] += 1
        chosen = int(np.argmin([loss for loss, *_ in best]))
        loss, coef, intercept, best_epoch = best[chosen]
        model = models[chosen]
        model.coef_, model.intercept_ = coef, intercept
        self.estimator_ = model
        # Named as the searches' and MLPHead's are, so the leaderboard shows "C=..., epochs=..." for it too.
        self.best_params_ = {"C": float(self.Cs[chosen])}
        self.validation_loss_ = float(loss)
        self.best_epoch_ = best_epoch
        self.held_out_rows_ = int(len(held_out))
        return self

    def _check_params(self):
        if not len(self.Cs) or min(self.Cs) <= 0:
            raise ValueError(f"Cs must be positive, got {self.Cs!r}")
        for name in ("chunk_rows", "max_epochs", "patience", "validation_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not (self.class_weight in (None, "balanced") or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {self.class_weight!r}")

    # ------------------------------------------------------------------ predicting

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return self.estimator_.decision_function(self.scaler_.transform(X))

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return self.estimator_.predict_proba(self.scaler_.transform(X))

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_proba_store(self, store, rows=None):
        """Class probabilities of rows of a feature file (default: all), read a chunk at a time."""
        check_is_fitted(self)
        with _Opened(store) as opened:
            rows = np.arange(len(opened.features)) if rows is None else np.asarray(rows, dtype=np.int64)
            if opened.dim != self.n_features_in_:
                raise FeatxError(f"{opened.path} has {opened.dim} features per row but the sgd head was trained on "
                                 f"{self.n_features_in_}; use a file extracted with the same recipe")
            order = np.argsort(rows, kind="stable")
            proba = np.empty((len(rows), len(self.classes_)))
            for start in range(0, len(rows), self.chunk_rows):
                at = order[start:start + self.chunk_rows]
                X = _read(opened.features, rows[at], self.chunk_rows)
                proba[at] = self.estimator_.predict_proba(self.scaler_.transform(X))
            return proba


# ----------------------------------------------------------------------------------------------
# reading and splitting


def _read(features, rows: np.ndarray, span: int) -> np.ndarray:
    """features[rows] as float32 for sorted `rows`, read as contiguous spans of at most ~`span` rows.

    h5py reads a slice from disk alone but is slow at fancy indexing; a span holding a few unused
    rows is much cheaper than one selection per row.
    """
    out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    start = 0
    while start < len(rows):
        first = int(rows[start])
        stop = max(start + 1, int(np.searchsorted(rows, first + span, side="left")))
        block = np.asarray(features[first:int(rows[stop - 1]) + 1], dtype=np.float32)
        out[start:stop] = block[rows[start:stop] - first]
        start = stop
    if not np.isfinite(out).all():
        raise FeatxError("the features hold NaN or infinite values; re-extract them with `featx extract --overwrite`")
    return out


def _held_out_split(y, groups, validation_rows: int, seed: int):
    """(positions to fit on, positions held out): whole source images, stratified by class, at most
    `validation_rows` rows; nothing is held out when some class has too few images to spare one."""
    positions = np.arange(len(y))
    if groups is None:
        groups = positions
    keys, first, group_of = np.unique(np.asarray(groups).astype(str), return_index=True, return_inverse=True)
    classes = np.unique(y)
    rows_per_group = len(y) / len(keys)
    n_held = min(int(0.1 * len(keys)), int(validation_rows / rows_per_group))
    counts = np.bincount(np.searchsorted(classes, y[first]))
    if n_held < len(classes) or counts.min() < 2 or len(keys) - n_held < len(classes):
        return positions, positions[:0]
    _, held_groups = train_test_split(np.arange(len(keys)), test_size=n_held, stratify=y[first], random_state=seed)
    held = np.isin(group_of, held_groups)
    return positions[~held], positions[held]


def _class_weights(y, classes, class_weight) -> np.ndarray:
    """A weight per class index. partial_fit cannot take class_weight="balanced": the same, as sample weights."""
    if isinstance(class_weight, dict):
        return np.array([float(class_weight.get(c, 1.0)) for c in classes])
    if class_weight != "balanced":
        return np.ones(len(classes))
    counts = np.bincount(y, minlength=len(classes)).astype(float)
    return np.where(counts > 0, len(y) / (len(classes) * np.maximum(counts, 1)), 0.0)


def _log_loss(proba: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    picked = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    w = weights[y]
    return float(-(w * np.log(picked)).sum() / w.sum())


class _Opened:
    """A FeatureStore given or opened from a path (and then closed again)."""

    def __init__(self, store):
        self.given = store

    def __enter__(self):
        from featx.store import FeatureStore

        if isinstance(self.given, FeatureStore):
            self.store, self.owned = self.given, False
        elif isinstance(self.given, (str, os.PathLike)):
            self.store, self.owned = FeatureStore(self.given), True
        else:
            raise TypeError(f"expected a FeatureStore or a path, got {type(self.given).__name__}")
        return self.store

    def __exit__(self, *exc):
        if self.owned:
            self.store.close()
        return False

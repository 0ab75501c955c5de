"""Where the rows sit in feature space: a 2-D layout (PCA, then t-SNE) of a bounded sample of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MapLayout", "layout_2d"]

MAX_POINTS = 2000  # t-SNE of 2,000 rows takes a few seconds on 2 cores; the page stays small
TSNE_MAX_ROWS = 20_000  # beyond this t-SNE takes minutes: PCA alone
_PCA_DIMENSIONS = 50  # the usual step before t-SNE: removes noise, makes neighbour search cheap


@dataclass
class MapLayout:
    """Positions of the drawn rows in [0, 1]^2 and how they were found."""

    xy: np.ndarray  # (drawn rows, 2)
    rows: np.ndarray  # index of each drawn row in the rows given
    method: str  # in words, for the page


def _sample(n_rows: int, flagged: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Row indices to draw: every row if they fit, else a seeded random sample with flagged rows first."""
    if n_rows <= max_points:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    marked = rng.permutation(np.flatnonzero(flagged))
    others = rng.permutation(np.flatnonzero(~flagged))
    return np.sort(np.concatenate([marked, others])[:max_points])


def layout_2d(features, *, flagged=None, max_points: int = MAX_POINTS, tsne_max_rows: int = TSNE_MAX_ROWS,
              seed: int = 0) -> MapLayout:
    """Lay out at most `max_points` rows (flagged ones first) in 2-D: PCA, then t-SNE when few enough."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n_rows = len(features)
    flagged = np.zeros(n_rows, dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    rows = _sample(n_rows, flagged, max_points, seed)
    X = np.asarray(features[rows] if len(rows) < n_rows else features, dtype=np.float32)
    sample = f"{len(rows):,} of {n_rows:,} rows (a random sample, marked rows first)" if len(rows) < n_rows \
        else f"all {n_rows:,} rows"
    if len(rows) < 3:
        # Too few rows for any projection to mean something: spread them on a line.
        xy = np.column_stack([np.linspace(0.0, 1.0, len(rows)), np.full(len(rows), 0.5)])
        return MapLayout(xy=xy, rows=rows, method=sample)
    components = min(_PCA_DIMENSIONS, len(rows), X.shape[1])
    # One thread: on 2 cores shared with other work, spinning BLAS/OpenMP threads made PCA 12x and
    # t-SNE 4x slower than one thread (2,000 rows: 2.6 s vs 0.2 s, 19 s vs 5 s).
    with threadpool_limits(limits=1):
        reduced = PCA(n_components=components, random_state=seed).fit_transform(X)
        if len(rows) <= tsne_max_rows:
            perplexity = min(30.0, (len(rows) - 1) / 3.0)
            # 500 iterations (250 of them early exaggeration) settle a map of a few thousand points.
            xy = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500,
                      random_state=seed).fit_transform(reduced)
            method = f"t-SNE of {sample}, after PCA to {components} dimensions"
        else:
            xy = reduced[:, :2] if reduced.shape[1] >= 2 else np.column_stack([reduced[:, 0], np.zeros(len(rows))])
            method = f"PCA (first two components) of {sample}; t-SNE is used up to {tsne_max_rows:,} rows"
    return MapLayout(xy=_unit_square(xy), rows=rows, method=method)


def _unit_square(xy: np.ndarray) -> np.ndarray:
    """Scale both axes by the same factor into [0, 1] (t-SNE distances mean the same in x and y)."""
    xy = np.asarray(xy, dtype=float)
    low = xy.min(axis=0)
    span = float((xy.max(axis=0) - low).max())
    centred = (xy - low) / span if span > 0 else np.zeros_like(xy)
    # Centre the shorter axis so the cloud sits in the middle of the square.
    return centred + (1.0 - centred.max(axis=0)) / 2.0

"""Where the rows sit in feature space: a 2-D layout (PCA) of a bounded sample of them.

Measured on 10,000 x 1,280 rows on 2 busy cores (bench/report_speed.py): PCA of a 2,000-row sample
takes about 0.1 s; t-SNE of the same sample 2.6-5 s (scikit-learn, after PCA to 50 dimensions),
openTSNE 7-8 s, UMAP 14 s (35 s with its first compilation). The page has 2 s in all, so the map is PCA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["MapLayout", "layout_2d"]

MAX_POINTS = 2000  # the page stays small and its hover images few


@dataclass
class MapLayout:
    """Positions of the drawn rows in [0, 1]^2 and how they were found."""

    xy: np.ndarray  # (drawn rows, 2)
    rows: np.ndarray  # index of each drawn row in the rows given
    method: str  # in words, for the page
    seconds: float = 0.0  # what the layout cost


def _sample(n_rows: int, flagged: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Row indices to draw: every row if they fit, else a seeded random sample with flagged rows first."""
    if n_rows <= max_points:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    marked = rng.permutation(np.flatnonzero(flagged))
    others = rng.permutation(np.flatnonzero(~flagged))
    return np.sort(np.concatenate([marked, others])[:max_points])


def layout_2d(features, *, flagged=None, max_points: int = MAX_POINTS, seed: int = 0) -> MapLayout:
    """Lay out at most `max_points` rows (flagged ones first) in 2-D: their first two principal components."""
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    n_rows = len(features)
    flagged = np.zeros(n_rows, dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    rows = _sample(n_rows, flagged, max_points, seed)
    X = np.asarray(features[rows] if len(rows) < n_rows else features, dtype=np.float32)
    sample = f"{len(rows):,} of {n_rows:,} rows (a random sample, marked rows first)" if len(rows) < n_rows \
        else f"all {n_rows:,} rows"
    if len(rows) < 3 or X.shape[1] < 2:
        # Too few rows or columns for a projection to mean something: spread them on a line.
        xy = np.column_stack([np.linspace(0.0, 1.0, len(rows)), np.full(len(rows), 0.5)])
        return MapLayout(xy=xy, rows=rows, method=sample, seconds=time.perf_counter() - started)
    # One thread: on 2 cores shared with other work, spinning BLAS threads made PCA several times slower.
    with threadpool_limits(limits=1):
        xy = PCA(n_components=2, svd_solver="randomized", random_state=seed).fit_transform(X)
    return MapLayout(xy=_unit_square(xy), rows=rows, method=f"PCA (first two principal components) of {sample}",
                     seconds=time.perf_counter() - started)


def _unit_square(xy: np.ndarray) -> np.ndarray:
    """Scale both axes by the same factor into [0, 1] (distances mean the same in x and y)."""
    xy = np.asarray(xy, dtype=float)
    low = xy.min(axis=0)
    span = float((xy.max(axis=0) - low).max())
    centred = (xy - low) / span if span > 0 else np.zeros_like(xy)
    # Centre the shorter axis so the cloud sits in the middle of the square.
    return centred + (1.0 - centred.max(axis=0)) / 2.0

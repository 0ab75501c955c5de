"""RBF kernel features: a linear model on them approximates a kernel SVM, at a linear model's cost."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class RBFFeatures(TransformerMixin, BaseEstimator):
    """Rows mapped so that inner products of mapped rows approximate ``exp(-gamma |x - x'|^2)``.

    The kernel factors as ``e(x) e(x') exp(2 gamma x.x')`` with ``e(x) = exp(-gamma |x|^2)``. Its
    constant and linear Taylor terms, ``e(x) e(x') (1 + 2 gamma x.x')``, are mapped exactly (D + 1
    columns); the rest (degree 2 and up) by Nystroem's method on `n_components` landmark rows, exact
    on the landmarks' span. On standardised 1,280-d features with gamma = 1/D the linear term carries
    most of the kernel and has rank D: Nystroem alone, with 1,000 landmarks, cannot hold it.

    Kernel SVC needs kernel values between all pairs of rows, outside BLAS (hours on 10,000 rows
    with a search); these columns cost one N x M x D matrix product.

    Parameters
    ----------
    n_components : int, default=1000
        Landmarks: rows drawn at random without replacement (all rows when there are fewer).
    gamma : float or None, default=None
        None means 1 / n_features: SVC's gamma="scale" on standardised features.
    seed : int, default=0
        Seed of the landmark draw.
    """

    def __init__(self, n_components=1000, gamma=None, seed=0):
        self.n_components = n_components
        self.gamma = gamma
        self.seed = seed

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be at least 1; got {self.n_components}.")
        rng = np.random.default_rng(self.seed)
        chosen = np.sort(rng.choice(len(X), size=min(int(self.n_components), len(X)), replace=False))
        self.landmarks_ = X[chosen].copy()
        self.gamma_ = 1.0 / X.shape[1] if self.gamma is None else float(self.gamma)
        # remainder^(-1/2) on the landmarks by eigendecomposition; landmark kernels are nearly singular.
        eigenvalues, vectors = np.linalg.eigh(self._remainder(self.landmarks_))
        keep = eigenvalues > eigenvalues.max() * 1e-10  # drop (near-)duplicate landmarks' directions
        self.normalization_ = vectors[:, keep] / np.sqrt(eigenvalues[keep])
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        envelope = np.exp(-self.gamma_ * _row_norms(X))[:, None]
        linear = envelope * np.hstack([np.ones((len(X), 1)), np.sqrt(2.0 * self.gamma_) * X])
        rest = self._remainder(X) @ self.normalization_
        return np.hstack([linear, rest]).astype(X.dtype, copy=False)

    def _remainder(self, X):
        """e(x) e(l) (exp(t) - 1 - t), t = 2 gamma x.l, between rows and landmarks, in float64.

        As the kernel minus its first Taylor terms, exp(-gamma |x - l|^2) - e(x) e(l) (1 + t): neither
        part overflows for long rows. The product x.l in X's precision (float32 halves the work).
        """
        landmarks = self.landmarks_.astype(X.dtype, copy=False)
        products = (X @ landmarks.T).astype(np.float64)
        norms = _row_norms(X)[:, None] + _row_norms(self.landmarks_)[None, :]
        kernel = np.exp(-self.gamma_ * np.maximum(norms - 2.0 * products, 0.0))
        return kernel - np.exp(-self.gamma_ * norms) * (1.0 + 2.0 * self.gamma_ * products)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        n_out = 1 + self.n_features_in_ + self.normalization_.shape[1]
        return np.array([f"rbffeatures{i}" for i in range(n_out)], dtype=object)


def _row_norms(X):
    """Squared Euclidean norm of each row, in float64."""
    return np.einsum("ij,ij->i", X, X, dtype=np.float64)

"""Ridge regression with its penalty chosen by exact leave-one-out error, every penalty from one decomposition."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._validation import check_sample_weight

# Wide because pooled CNN features have 10^2..10^3 dimensions and often more dimensions than rows.
RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15).tolist())


class RidgeLOO(RegressorMixin, BaseEstimator):
    """Ridge regression (with intercept) whose alpha minimises the leave-one-out squared error.

    The smaller of the covariance X'X (D x D) and the Gram matrix XX' (N x N) is decomposed once;
    each alpha then costs a few matrix-vector products. The choice equals RidgeCV's efficient
    leave-one-out, which decomposes the N x D design itself: several times slower for N >> D.

    Parameters
    ----------
    alphas : sequence of float, default=RIDGE_ALPHAS
        Candidate penalties (positive).
    """

    def __init__(self, alphas=RIDGE_ALPHAS):
        self.alphas = alphas

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if len(alphas) == 0 or np.any(alphas <= 0):
            raise ValueError(f"alphas must be positive and at least one; got {self.alphas!r}.")
        weights = check_sample_weight(sample_weight, X, dtype=np.float64)
        # Rows scaled by sqrt(weight) after weighted centring: a weight of 2 acts as a repeated row
        # in the fit (not in the leave-one-out choice, which leaves out one row, not one copy).
        x_mean = np.average(X, axis=0, weights=weights)
        y_mean = float(np.average(y, weights=weights))
        root = np.sqrt(weights)
        # float64: tiny eigenvalues of correlated features decide the weakest penalties' solutions.
        design = (X - x_mean).astype(np.float64) * root[:, None]
        target = (np.asarray(y, dtype=np.float64) - y_mean) * root

        n_rows, n_features = design.shape
        if n_rows >= n_features:
            eigenvalues, vectors = np.linalg.eigh(design.T @ design)
            eigenvalues = np.clip(eigenvalues, 0.0, None)
            projected = design @ vectors  # its columns are orthogonal with squared norms `eigenvalues`
        else:
            eigenvalues, vectors = np.linalg.eigh(design @ design.T)
            eigenvalues = np.clip(eigenvalues, 0.0, None)
            projected = vectors * np.sqrt(eigenvalues)  # the same in the dual: projected @ projected.T = XX'
        along = projected.T @ target
        squared = projected * projected
        # The intercept adds each row's share of the total weight to its leverage.
        intercept_leverage = weights / weights.sum()

        errors = np.empty(len(alphas))
        for i, alpha in enumerate(alphas):
            shrink = 1.0 / (eigenvalues + alpha)
            residual = target - projected @ (along * shrink)
            leverage = squared @ shrink + intercept_leverage
            errors[i] = np.mean((residual / np.clip(1.0 - leverage, 1e-12, None)) ** 2)
        best = int(np.argmin(errors))
        self.alpha_ = float(alphas[best])
        self.best_score_ = -float(errors[best])  # as RidgeCV: higher is better
        solution = along / (eigenvalues + self.alpha_)
        if n_rows >= n_features:
            coef = vectors @ solution
        else:
            # Dual: coef = X' (XX' + alpha I)^-1 y; directions with eigenvalue 0 have X'u = 0.
            root_eigen = np.sqrt(eigenvalues)
            dual = np.divide(solution, root_eigen, out=np.zeros_like(solution), where=root_eigen > 1e-12)
            coef = design.T @ (vectors @ dual)
        self.coef_ = coef
        self.intercept_ = y_mean - float(x_mean @ coef)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_ + self.intercept_

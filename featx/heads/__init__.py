"""Classifier heads: scikit-learn estimators trained on pooled backbone features."""

from featx.heads.ensemble import FoldEnsemble
from featx.heads.fitting import cv_score, fit_head, fitted_params
from featx.heads.kernel import RBFFeatures
from featx.heads.linear import LinearSVM, Rotation, SoftmaxRegression
from featx.heads.metrics import quadratic_weighted_kappa
from featx.heads.mlp import MLPHead
from featx.heads.ordinal import OrdinalThresholds, RoundedRegression
from featx.heads.registry import (
    HEAD_NAMES,
    METRICS,
    MIN_TRAIN_IMAGES_PER_CLASS,
    TRUSTED_TYPES,
    is_ordinal_head,
    make_head,
    min_images_per_class,
)
from featx.heads.ridge import RidgeLOO
from featx.heads.search import PathSearchCV

__all__ = [
    "HEAD_NAMES",
    "METRICS",
    "MIN_TRAIN_IMAGES_PER_CLASS",
    "TRUSTED_TYPES",
    "FoldEnsemble",
    "LinearSVM",
    "MLPHead",
    "OrdinalThresholds",
    "RBFFeatures",
    "PathSearchCV",
    "RidgeLOO",
    "RoundedRegression",
    "Rotation",
    "SoftmaxRegression",
    "cv_score",
    "fit_head",
    "fitted_params",
    "is_ordinal_head",
    "make_head",
    "min_images_per_class",
    "quadratic_weighted_kappa",
]

"""Classifier heads: scikit-learn estimators trained on pooled backbone features."""

from featx.heads.ensemble import FoldEnsemble
from featx.heads.metrics import quadratic_weighted_kappa
from featx.heads.mlp import MLPHead
from featx.heads.ordinal import OrdinalThresholds, RoundedRegression
from featx.heads.registry import HEAD_NAMES, TRUSTED_TYPES, is_ordinal_head, make_head

__all__ = [
    "HEAD_NAMES",
    "FoldEnsemble",
    "MLPHead",
    "OrdinalThresholds",
    "RoundedRegression",
    "TRUSTED_TYPES",
    "is_ordinal_head",
    "make_head",
    "quadratic_weighted_kappa",
]

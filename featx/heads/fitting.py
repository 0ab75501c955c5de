"""Fitting a head within the cores, and reading back what its fit chose."""

from __future__ import annotations

import numpy as np

from featx.heads._parallel import within_cores
from featx.heads._validation import takes_groups


def fit_head(head, X, y, groups=None, *, n_jobs=None):
    """Fit `head` (in place, and return it), passing `groups` where it takes them.

    BLAS threads x parallel fits stay within `n_jobs` cores (None: all).
    """
    with within_cores(n_jobs):
        if groups is not None and takes_groups(head):
            return head.fit(X, y, groups=groups)
        return head.fit(X, y)


def fitted_params(head) -> dict:
    """What the fit chose: searched values (C, ...), ridge alpha, ordinal thresholds, MLP epochs.

    Fold ensembles list one value per fold where the folds disagree.
    """
    per_member = []
    for member in _members(head):
        chosen = {}
        for model in _inner_models(member):
            if hasattr(model, "best_params_"):
                # "logisticregression__C" -> "C": the step path is noise in a table.
                chosen.update({key.split("__")[-1]: _plain(value) for key, value in model.best_params_.items()})
            if hasattr(model, "alpha_"):
                chosen["alpha"] = _plain(model.alpha_)
            if hasattr(model, "best_epoch_"):
                chosen["epochs"] = int(model.best_epoch_)
        per_member.append(chosen)
    params = {}
    for key in dict.fromkeys(key for chosen in per_member for key in chosen):
        values = [chosen.get(key) for chosen in per_member]
        params[key] = values[0] if all(value == values[0] for value in values) else values
    thresholds = getattr(head, "thresholds_", None)
    if thresholds is not None:
        params["thresholds"] = [round(float(t), 3) for t in np.ravel(thresholds)]
    return params


def cv_score(head) -> float | None:
    """The head's own search's best cross-validated score in its reported metric (mean over fold models).

    None for heads without a search of their own; searches nested deeper (the ordinal head's)
    score something else, such as log loss, so they are not reported beside the test metric.
    """
    scores = [_reported_score(member) for member in _members(head) if hasattr(member, "best_score_")]
    scores = [score for score in scores if score is not None]
    return float(np.mean(scores)) if scores else None


def _reported_score(search) -> float | None:
    report = getattr(search, "report", None) or getattr(search, "scoring", None)
    results = getattr(search, "cv_results_", {})
    if isinstance(report, str) and f"mean_test_{report}" in results:
        return float(results[f"mean_test_{report}"][search.best_index_])
    return float(search.best_score_) if isinstance(report, str) else None


def _members(head) -> list:
    """The fitted models a head consists of: the fold models of a FoldEnsemble, else the head itself."""
    return list(getattr(head, "estimators_", None) or [head])


def _inner_models(model) -> list:
    """`model` and the fitted estimators nested in it (search winners, wrapped models, pipeline steps)."""
    found, queue = [], [model]
    while queue:
        current = queue.pop(0)
        found.append(current)
        for attribute in ("best_estimator_", "estimator_"):
            inner = getattr(current, attribute, None)
            if inner is not None:
                queue.append(inner)
        queue += [step for _, step in getattr(current, "steps", []) if hasattr(step, "fit")]
    return found


def _plain(value):
    """numpy scalars as plain Python numbers, for tables and JSON."""
    return value.item() if isinstance(value, np.generic) else value

"""A cross-validated search that walks one parameter as a path: warm starts, early stop, out-of-fold outputs."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._parallel import parallel_map
from featx.heads._validation import encode_classes, nested_splits, require_groups
from featx.heads.metrics import SEARCH_METRICS, search_score


def _has_probabilities(search):
    return search.calibration is not None or hasattr(_final_step(search.estimator), "predict_proba")


class PathSearchCV(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """Choose one parameter of a classifier by K-fold cross-validation, walking its values in order.

    In each fold the steps before the last of a Pipeline are fitted once; the last step is then
    fitted at each value in turn, starting from the previous value's solution where it can
    (``warm_start``): LogisticRegressionCV's regularisation path, for any head. A fold stops once
    its score has not improved for `patience` values (judged on raw decision values when
    calibrating). The chosen value is refitted on all rows.

    The out-of-fold class probabilities at the chosen value are kept (``oof_proba_``): the ordinal
    head sets its thresholds on them, and calibration learns from them, without further fits.

    Parameters
    ----------
    estimator : classifier, or Pipeline ending in one
    param : str
        Parameter of the (last step of the) estimator to choose, e.g. "C".
    values : sequence
        Candidate values in path order: the strongest regularisation first.
    scoring : {"accuracy", "f1_macro", "qwk", "neg_log_loss"}, default="accuracy"
        Chooses the value (mean over folds; the first of equals wins).
    report : same choices or None, default=None
        The score that featx reports for the search (``cv_results_["mean_test_<report>"]``); None: scoring.
    cv : int or splitter, default=3
        An int means seeded StratifiedKFold, or StratifiedGroupKFold when fit is given groups.
    patience : int or None, default=None
        Values without improvement after which a fold stops walking; None walks every value.
    calibration : None or "logistic", default=None
        "logistic": probabilities from a (standardised) multinomial logistic regression on the
        decision values, for heads without probabilities. Each value is scored on cross-fitted
        calibrated out-of-fold probabilities; the kept calibrator learns from all out-of-fold
        decision values at the chosen value. No model is fitted for calibration alone.
    labels : sequence or None, default=None
        Every class in grade order, for "qwk": a class missing from the training rows still counts
        in the grade distances. None: the training rows' classes, sorted.
    n_jobs : int or None, default=None
        Folds fitted at once, on threads; None means all cores (within the BLAS thread limit).
    seed : int, default=0
        Seed of the fold shuffle when cv is an int.
    """

    def __init__(self, estimator, param, values, *, scoring="accuracy", report=None, cv=3, patience=None,
                 calibration=None, labels=None, n_jobs=None, seed=0):
        self.estimator = estimator
        self.param = param
        self.values = values
        self.scoring = scoring
        self.report = report
        self.cv = cv
        self.patience = patience
        self.calibration = calibration
        self.labels = labels
        self.n_jobs = n_jobs
        self.seed = seed

    def fit(self, X, y, groups=None):
        """Walk the path in every fold, choose the value, refit it on all rows.

        groups: rows of one group (e.g. an image and its augmented copies) stay on one side of every split.
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        self._check_params()
        self.classes_, columns = encode_classes(y)
        splits = list(self._splitter(groups).split(X, columns, groups))
        grades = self._grades()
        walks = parallel_map(lambda split: self._walk(X, y, *split, grades), splits, self.n_jobs)

        # Every fold walked at least this far; a fold stops only `patience` values past its own best.
        walked = min(len(outputs) for outputs in walks)
        # Out-of-fold outputs of every row, one array per value walked.
        oof = [np.zeros((len(y), walks[0][0].shape[1])) for _ in range(walked)]
        for outputs, (_, test) in zip(walks, splits):
            for i in range(walked):
                oof[i][test] = outputs[i]
        if self.calibration is not None:
            # Each value is judged by the probabilities it would predict, as a search over a calibrated
            # model is: each fold's decision values calibrated by a model of the other folds' (cross-fitting).
            oof = [self._cross_calibrated(decisions, y, splits) for decisions in oof]

        self.n_splits_ = len(splits)
        self.cv_results_ = {f"param_{self.param}": list(self.values[:walked])}
        for metric in dict.fromkeys([self.scoring, self._reported_metric()]):
            fold_scores = np.array([
                [search_score(metric, columns[test], outputs[test], grades) for outputs in oof] for _, test in splits
            ])
            self.cv_results_[f"mean_test_{metric}"] = fold_scores.mean(axis=0)
            for fold, scores in enumerate(fold_scores):
                self.cv_results_[f"split{fold}_test_{metric}"] = scores
        self.best_index_ = int(np.argmax(self.cv_results_[f"mean_test_{self.scoring}"]))
        self.best_params_ = {self.param: self.values[self.best_index_]}
        self.best_score_ = float(self.cv_results_[f"mean_test_{self.scoring}"][self.best_index_])

        if self.calibration is not None:
            decisions = np.zeros((len(y), walks[0][0].shape[1]))
            for outputs, (_, test) in zip(walks, splits):
                decisions[test] = outputs[self.best_index_]
            self.calibrator_ = self._calibrator().fit(decisions, y)
        if _has_probabilities(self):
            self.oof_proba_ = oof[self.best_index_]
        # A cold refit: the folds' solutions live in their own rotations (a PCA step), not this one's.
        self.best_estimator_ = clone(self.estimator).set_params(**{self._param_path(): self.best_params_[self.param]})
        self.best_estimator_.fit(X, y)
        return self

    def _check_params(self):
        if len(self.values) == 0:
            raise ValueError("values must hold at least one candidate.")
        for metric in (self.scoring, self._reported_metric()):
            if metric not in SEARCH_METRICS:
                raise ValueError(f"Unknown metric {metric!r}; choose one of {', '.join(SEARCH_METRICS)}.")
        if self.calibration not in (None, "logistic"):
            raise ValueError(f"calibration must be None or 'logistic'; got {self.calibration!r}.")
        uses_log_loss = "neg_log_loss" in (self.scoring, self._reported_metric())
        if uses_log_loss and (self.calibration is not None or not _has_probabilities(self)):
            raise ValueError("neg_log_loss scores probabilities; search an estimator with predict_proba.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be None or at least 1; got {self.patience}.")

    def _grades(self):
        """The grade number of each class in classes_ (its place in `labels`), for qwk."""
        if self.labels is None:
            return np.arange(len(self.classes_))
        place = {label: i for i, label in enumerate(np.asarray(self.labels).tolist())}
        unknown = [label for label in self.classes_.tolist() if label not in place]
        if unknown:
            raise ValueError(f"Classes {unknown} are not in labels {list(self.labels)}.")
        return np.array([place[label] for label in self.classes_.tolist()])

    def _reported_metric(self):
        return self.scoring if self.report is None else self.report

    def _splitter(self, groups):
        if not isinstance(self.cv, (int, np.integer)):
            return require_groups(self.cv, groups)
        if groups is None:
            return StratifiedKFold(n_splits=int(self.cv), shuffle=True, random_state=self.seed)
        return StratifiedGroupKFold(n_splits=int(self.cv), shuffle=True, random_state=self.seed)

    def _calibrator(self):
        # Weighted as the estimator weighs classes: an unweighted calibrator would learn the class
        # frequencies back and undo class_weight="balanced". Standardised, so that its penalty does not
        # depend on the decision values' scale (tiny under a strong penalty such as C=1e-5).
        class_weight = _final_step(self.estimator).get_params().get("class_weight")
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight=class_weight, max_iter=1000))

    def _cross_calibrated(self, decisions, y, splits):
        """Probabilities of out-of-fold decision values, each fold's from a calibrator fitted on the others'."""
        probabilities = np.zeros((len(y), len(self.classes_)))
        for train, test in splits:
            calibrator = self._calibrator().fit(decisions[train], y[train])
            columns = np.searchsorted(self.classes_, calibrator.classes_)  # a class may miss a fold's rows
            probabilities[np.ix_(test, columns)] = calibrator.predict_proba(decisions[test])
        return probabilities

    def _param_path(self):
        """The searched parameter's name on the whole estimator (step__param in a Pipeline)."""
        if isinstance(self.estimator, Pipeline):
            return f"{self.estimator.steps[-1][0]}__{self.param}"
        return self.param

    def _walk(self, X, y, train, test, grades):
        """One fold: the outputs on its test rows of each value walked."""
        model = clone(self.estimator)
        prepare, final = _split_final_step(model)
        X_train, X_test = X[train], X[test]
        if prepare is not None:
            X_train = prepare.fit_transform(X_train, y[train])
            X_test = prepare.transform(X_test)
        if "warm_start" in final.get_params():
            final.set_params(warm_start=True)
        outputs, best, best_at = [], -np.inf, 0
        for at, value in enumerate(self.values):
            final.set_params(**{self.param: value})
            final.fit(X_train, y[train])
            missing = np.setdiff1d(self.classes_, final.classes_)
            if len(missing):
                raise ValueError(
                    f"A search fold has no training rows of class(es) {missing.tolist()}; "
                    "use fewer folds or gather more rows (groups) of those classes."
                )
            outputs.append(self._outputs(final, X_test))
            if self.patience is not None:
                score = search_score(self.scoring, np.searchsorted(self.classes_, y[test]), outputs[-1], grades)
                if score > best:
                    best, best_at = score, at
                elif at - best_at >= self.patience:
                    break
        return outputs

    def _outputs(self, model, X):
        """Class probabilities, or decision values (one column per class) when calibrating."""
        if self.calibration is None and hasattr(model, "predict_proba"):
            return model.predict_proba(X)
        scores = model.decision_function(X)
        # Binary decision values are one column; as two, argmax and calibration treat every K alike.
        return np.column_stack([-scores, scores]) if scores.ndim == 1 else scores

    @available_if(_has_probabilities)
    def predict_proba(self, X):
        """Class probabilities of the model refitted at the chosen value (calibrated where asked)."""
        X = self._validated(X)
        if self.calibration is None:
            return self.best_estimator_.predict_proba(X)
        return self.calibrator_.predict_proba(self._outputs(self.best_estimator_, X))

    def predict(self, X):
        if _has_probabilities(self):
            probabilities = self.predict_proba(X)
            return self.classes_[np.argmax(probabilities, axis=1)]
        X = self._validated(X)
        return self.best_estimator_.predict(X)

    def _validated(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def nested_splits(self):
        """This search's k-fold split and those nested in its estimator: [(k, purpose), ...], outermost first."""
        n_splits = int(self.cv) if isinstance(self.cv, (int, np.integer)) else int(self.cv.get_n_splits())
        return [(n_splits, "search"), *nested_splits(self.estimator)]


def _final_step(estimator):
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def _split_final_step(model):
    """(the steps before the last as a Pipeline, or None; the last step) of a model."""
    if isinstance(model, Pipeline) and len(model.steps) > 1:
        return model[:-1], model.steps[-1][1]
    return None, _final_step(model)

"""Detectors of adversarial inputs from their sharpness: the estimators, fitting and cross-validation.

Appendix D.4 of the paper thresholds the relative sharpness of clean and adversarial inputs with a
decision stump and reports 0.92 accuracy in 5-fold cross-validation. This module is that experiment
as a library, in pure numpy + scikit-learn (no torch), on per-input features already computed:
labels are ``0`` for clean inputs and ``1`` for adversarial ones.

Five methods:

``stump`` (default)
    One score per input (e.g. relative sharpness), ``X`` of shape ``(n,)``. An *exact* threshold
    search: sort the distinct scores, consider every boundary between consecutive distinct values and
    both directions (``"above"`` flags ``score > threshold``, ``"below"`` flags
    ``score < threshold``), and keep the candidate with the highest *balanced* training accuracy
    ``(TPR + TNR) / 2`` (equal to plain accuracy when the classes are balanced). Ties are broken
    deterministically: wider gap between the two neighbouring values first (the max-margin choice),
    then ``"above"`` before ``"below"``, then the smaller threshold. The threshold is the midpoint of
    the gap. This is a depth-1 decision tree, but optimal for accuracy rather than Gini impurity, and
    explained by two numbers.

``components``
    Logistic regression on the logs of the three label-free factors of sharpness, ``X`` of shape
    ``(n, 3)``: ``sum_j p_j (1 - p_j)``, ``||phi||^2`` and ``||W phi||^2`` (columns in that order,
    :data:`COMPONENT_NAMES`). Logs are taken with a floor of :data:`LOG_FLOOR` so that zeros do not
    give ``-inf``; inputs are standardised with the training mean and standard deviation;
    ``class_weight="balanced"``, ``random_state=seed``. The detector stores the coefficients of the
    standardised problem, so applying it needs only numpy.

``mahalanobis``
    The baseline of Lee et al. (2018) on the head's input ``phi``: class means ``mu_c`` and one
    shared covariance ``Sigma`` fitted on clean labelled data (:class:`MahalanobisModel`), score
    ``min_c (phi - mu_c)^T Sigma^+ (phi - mu_c)``; a stump on that score, ``X`` of shape ``(n,)``.

``profile`` and ``ensemble``
    The logistic regression of ``components`` (standardised logs, balanced, seeded) on named columns
    (``features``): the curvature profile (:func:`profile_names`: sharpness, loss w.r.t. the
    predicted class, confidence and feature norm at the input and after each probe step, see
    :mod:`flatcli.core.detection_features`), and for ``ensemble`` also the components and the
    Mahalanobis score (:func:`ensemble_names`). ``X`` of shape ``(n, len(features))``.

``Detector.decision`` is a real-valued score, larger = more adversarial, and ``predict`` is
``decision > 0``: for a stump (and ``mahalanobis``) ``score - threshold`` (above) or ``threshold -
score`` (below), for the logistic methods the logit. A detector also carries what computing its
features needs: the :class:`MahalanobisModel` and the probe settings.

A detector is plain data (:meth:`Detector.to_json` / :meth:`Detector.from_json`, ``kind:
"flatrob-detector"``, ``schema_version``); :mod:`flatcli.inputs.detector_file` writes and reads the file.
Floats keep ``repr`` precision, so a loaded detector reproduces the fitted predictions bit for bit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flatcli.errors import DetectorError, UsageError

__all__ = [
    "COMPONENT_NAMES",
    "DETECTOR_KIND",
    "LOG_FLOOR",
    "METHODS",
    "PROFILE_MEASURES",
    "SCHEMA_VERSION",
    "CVResult",
    "Detector",
    "MahalanobisModel",
    "balance",
    "cross_validate",
    "ensemble_names",
    "fit",
    "mahalanobis_model",
    "profile_names",
]

SCHEMA_VERSION = 1
DETECTOR_KIND = "flatrob-detector"
METHODS = ("stump", "components", "mahalanobis", "profile", "ensemble")
#: Methods that threshold one score, and methods that are a logistic regression on logs of columns.
THRESHOLD_METHODS = ("stump", "mahalanobis")
LOGISTIC_METHODS = ("components", "profile", "ensemble")
DIRECTIONS = ("above", "below")
LOG_FLOOR = 1e-300
COMPONENT_NAMES = ("p_var_sum", "phi_norm_sq", "w_phi_norm_sq")
"""Column order for ``components``: ``sum_j p_j(1-p_j)``, ``||phi||^2``, ``||W phi||^2``."""
MAHALANOBIS = "mahalanobis"
"""The name of the Mahalanobis score (a column of ``ensemble``, the score of ``mahalanobis``)."""
PROFILE_MEASURES = ("relative_sharpness", "loss", "confidence", "feature_norm")
"""What the curvature profile measures at each probed point (the loss is w.r.t. the class predicted at the input)."""
MAX_PROBE_STEPS = 3

_DEFAULT_SCORE = {"stump": "relative_sharpness", "components": "components", "mahalanobis": MAHALANOBIS,
                  "profile": "profile", "ensemble": "ensemble"}
_FPR_TARGET = 0.05


def profile_names(steps: int) -> tuple[str, ...]:
    """Columns of the curvature profile with ``steps`` probe steps: ``measure@t`` for t = 0 (the input) .. steps."""
    return tuple(f"{m}@{t}" for t in range(steps + 1) for m in PROFILE_MEASURES)


def ensemble_names(steps: int) -> tuple[str, ...]:
    """Columns of ``ensemble``: the components, the profile, the Mahalanobis score."""
    return COMPONENT_NAMES + profile_names(steps) + (MAHALANOBIS,)


def feature_names(method: str, probe_steps: int | None = None) -> tuple[str, ...]:
    """The columns a logistic method reads, in order (``probe_steps`` for ``profile``/``ensemble``)."""
    if method == "components":
        return COMPONENT_NAMES
    if method == "profile":
        return profile_names(probe_steps)
    if method == "ensemble":
        return ensemble_names(probe_steps)
    raise ValueError(f"{method} is not a logistic method")


# --------------------------------------------------------------------------------------------
# The Mahalanobis model (Lee et al. 2018): class means and a shared covariance of the features
# --------------------------------------------------------------------------------------------


@dataclass
class MahalanobisModel:
    """Class means ``means`` (k, m) and the precision ``precision`` (m, m), the pseudo-inverse of the
    shared covariance of the class-centred features; ``counts`` (k,) fit inputs per class.

    The score of a feature vector is ``min_c (phi - mu_c)^T precision (phi - mu_c)`` (computed in
    torch by :func:`flatcli.core.detection_features.mahalanobis_scores`).
    """

    means: np.ndarray
    precision: np.ndarray
    counts: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def to_json(self) -> dict:
        return {"class_means": self.means.tolist(), "precision": self.precision.tolist(),
                "counts": [int(c) for c in self.counts]}

    @classmethod
    def from_json(cls, doc: Any) -> "MahalanobisModel":
        if not isinstance(doc, dict):
            raise DetectorError("detector 'mahalanobis' must be a JSON object; re-create it")
        means = _finite_matrix(doc, "class_means")
        precision = _finite_matrix(doc, "precision")
        k, m = means.shape
        if k < 2 or precision.shape != (m, m):
            raise DetectorError(
                f"detector 'mahalanobis' holds {k} class means of dimension {m} and a precision of shape "
                f"{precision.shape}; expected at least 2 means and an (m, m) precision; re-create it"
            )
        counts = doc.get("counts")
        if not isinstance(counts, list) or len(counts) != k or not all(_is_int(c) and c > 0 for c in counts):
            raise DetectorError(f"detector 'mahalanobis' needs 'counts', {k} positive integers; re-create it")
        return cls(means, precision, np.asarray(counts, dtype=np.int64))


def class_sums(phi: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts (k,), sums (k, m))`` of the features per class: the first pass of :func:`mahalanobis_model`."""
    phi = np.asarray(phi, dtype=np.float64)
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = 1.0
    return onehot.sum(0).astype(np.int64), onehot.T @ phi


def centred_scatter(phi: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``sum_i (phi_i - mu_{y_i}) (phi_i - mu_{y_i})^T`` (m, m): the second pass of :func:`mahalanobis_model`."""
    d = np.asarray(phi, dtype=np.float64) - means[labels]
    return d.T @ d


def class_means(counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """``mu_c = sums_c / counts_c`` (k, m); :class:`UsageError` when a class has no input."""
    counts = np.asarray(counts, dtype=np.int64)
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise UsageError(
            f"the fit data hold no input of class {int(missing[0])} ({len(missing)} class(es) missing); the "
            "Mahalanobis detector needs every class: pass more --fit-data"
        )
    return np.asarray(sums, dtype=np.float64) / counts[:, None]


def mahalanobis_model(counts: np.ndarray, sums: np.ndarray, scatter: np.ndarray) -> MahalanobisModel:
    """The model from streamed statistics: ``mu_c = sums_c / counts_c``; the shared covariance is the
    maximum-likelihood one of the class-centred features, ``Sigma = scatter / n`` (what
    ``sklearn.covariance.EmpiricalCovariance(assume_centered=True)`` fits on ``phi_i - mu_{y_i}``, as
    Lee et al. do), and the precision its pseudo-inverse ``scipy.linalg.pinvh(Sigma)`` (as scikit-learn
    computes ``precision_``). :class:`UsageError` when a class has no input.
    """
    from scipy.linalg import pinvh

    counts = np.asarray(counts, dtype=np.int64)
    means = class_means(counts, sums)
    covariance = np.asarray(scatter, dtype=np.float64) / int(counts.sum())
    covariance = 0.5 * (covariance + covariance.T)
    return MahalanobisModel(means, pinvh(covariance, check_finite=False), counts)


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """A fitted detector; ``decision`` > 0 means "adversarial".

    Stump (and ``mahalanobis``) fields: ``threshold``, ``direction``. Logistic fields (``components``,
    ``profile``, ``ensemble``): ``coef``, ``intercept``, ``mean``, ``scale`` (logistic regression on
    ``(log(max(X, LOG_FLOOR)) - mean) / scale``) and, but for ``components``, the column names
    ``features``. What computing the features needs: ``mahalanobis`` (``mahalanobis``, ``ensemble``)
    and ``probe`` (``profile``, ``ensemble``: ``{"norm", "steps", "size"}``).
    ``meta`` is free-form JSON-able information (training statistics, versions; the caller adds
    layer, weight norm, checkpoint sha256, ...).
    """

    method: str
    score: str
    threshold: float | None = None
    direction: str | None = None
    coef: list[float] | None = None
    intercept: float | None = None
    mean: list[float] | None = None
    scale: list[float] | None = None
    features: list[str] | None = None
    mahalanobis: MahalanobisModel | None = None
    probe: dict | None = None
    meta: dict = field(default_factory=dict)

    def columns(self) -> tuple[str, ...]:
        """The feature columns :meth:`decision` reads, in order (the score for a threshold method)."""
        if self.method in THRESHOLD_METHODS:
            return (self.score,)
        if self.method == "components":
            return COMPONENT_NAMES
        return tuple(self.features)

    def decision(self, X: Any) -> np.ndarray:
        """Real-valued score per input, larger = more adversarial; ``(n,)`` float64.

        ``X`` is ``(n,)`` (or ``(n, 1)``) for a threshold method and ``(n, len(columns()))`` otherwise.
        Raises :class:`UsageError` on a wrong shape or non-finite values.
        """
        X = _check_features(X, self.method, self.columns())
        if self.method in THRESHOLD_METHODS:
            if self.direction == "above":
                return X - self.threshold
            return self.threshold - X
        Z = (_log_components(X) - np.asarray(self.mean, dtype=np.float64)) / np.asarray(
            self.scale, dtype=np.float64
        )
        # a row-wise sum, not Z @ coef: a matrix product may change in the last bits with the number of
        # rows, and a saved detector must reproduce the fitted decisions whatever the batching
        return (Z * np.asarray(self.coef, dtype=np.float64)).sum(axis=1) + float(self.intercept)

    def predict(self, X: Any) -> np.ndarray:
        """Boolean flags, ``True`` = adversarial (``decision(X) > 0``)."""
        return self.decision(X) > 0

    def to_json(self) -> dict:
        """The JSON document saved by :func:`save_detector` (plain Python types only)."""
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": DETECTOR_KIND,
            "method": self.method,
            "score": self.score,
        }
        if self.method in THRESHOLD_METHODS:
            doc["threshold"] = float(self.threshold)
            doc["direction"] = self.direction
        else:
            if self.method != "components":
                doc["features"] = list(self.features)
            doc["coef"] = [float(c) for c in self.coef]
            doc["intercept"] = float(self.intercept)
            doc["mean"] = [float(c) for c in self.mean]
            doc["scale"] = [float(c) for c in self.scale]
        if self.probe is not None:
            doc["probe"] = dict(self.probe)
        if self.mahalanobis is not None:
            doc["mahalanobis"] = self.mahalanobis.to_json()
        doc["meta"] = _jsonable(self.meta)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Detector:
        """Rebuild a detector from :meth:`to_json`'s document; :class:`DetectorError` if malformed."""
        if not isinstance(doc, dict):
            raise DetectorError(
                f"a detector file must hold a JSON object, not {type(doc).__name__}; "
                "create one with `flatrob detect ... --save FILE`"
            )
        kind = doc.get("kind")
        if kind != DETECTOR_KIND:
            raise DetectorError(
                f"not a flatrob detector (kind is {kind!r}, expected {DETECTOR_KIND!r}); "
                "create one with `flatrob detect ... --save FILE`"
            )
        version = doc.get("schema_version")
        if not _is_int(version):
            raise DetectorError("detector file has no integer 'schema_version'; re-create it")
        if version > SCHEMA_VERSION:
            raise DetectorError(
                f"detector file has schema_version {version}, newer than this flatrob understands "
                f"({SCHEMA_VERSION}); upgrade flatrob or re-create the detector"
            )
        if version < 1:
            raise DetectorError(f"detector file has invalid schema_version {version}; re-create it")
        method = doc.get("method")
        if method not in METHODS:
            raise DetectorError(
                f"detector method is {method!r}, expected one of {', '.join(METHODS)}; re-create it"
            )
        score = doc.get("score")
        if not isinstance(score, str):
            raise DetectorError("detector file lacks a string 'score'; re-create it")
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            raise DetectorError("detector 'meta' must be a JSON object; re-create it")
        if method in ("mahalanobis", "profile", "ensemble") and score != _DEFAULT_SCORE[method]:
            raise DetectorError(f"a {method} detector scores {_DEFAULT_SCORE[method]!r}, not {score!r}; re-create it")
        probe = _probe_settings(doc) if method in ("profile", "ensemble") else None
        mahalanobis = MahalanobisModel.from_json(doc.get("mahalanobis")) if method in ("mahalanobis", "ensemble") else None
        if method in THRESHOLD_METHODS:
            threshold = _finite_number(doc, "threshold")
            direction = doc.get("direction")
            if direction not in DIRECTIONS:
                raise DetectorError(
                    f"stump direction is {direction!r}, expected 'above' or 'below'; re-create it"
                )
            return cls(method, score, threshold=threshold, direction=direction, mahalanobis=mahalanobis, meta=meta)
        names = feature_names(method, probe["steps"] if probe else None)
        features = None
        if method != "components":
            features = doc.get("features")
            if features != list(names):
                raise DetectorError(
                    f"a {method} detector with {probe['steps']} probe step(s) reads the columns "
                    f"{', '.join(names)}; the file lists {features!r}; re-create it"
                )
        n = len(names)
        coef = _finite_list(doc, "coef", n)
        mean = _finite_list(doc, "mean", n)
        scale = _finite_list(doc, "scale", n)
        if any(s <= 0 for s in scale):
            raise DetectorError("detector 'scale' entries must be positive; re-create it")
        intercept = _finite_number(doc, "intercept")
        return cls(
            method, score, coef=coef, intercept=intercept, mean=mean, scale=scale, features=features,
            mahalanobis=mahalanobis, probe=probe, meta=meta,
        )


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _class_counts(y: np.ndarray, what: str) -> tuple[int, int]:
    """``(clean, adversarial)`` counts; :class:`UsageError` naming ``what`` when a class is missing."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        missing = "clean (0)" if n0 == 0 else "adversarial (1)"
        raise UsageError(f"cannot {what}: no {missing} inputs; both classes are needed")
    return n0, n1


def fit(
    X: Any,
    labels: Any,
    method: str = "stump",
    seed: int = 0,
    *,
    score: str | None = None,
    mahalanobis: MahalanobisModel | None = None,
    probe: dict | None = None,
) -> Detector:
    """Fit a detector on features ``X`` and labels (0 clean, 1 adversarial).

    ``method="stump"`` (and ``"mahalanobis"``): exact balanced-accuracy threshold search on ``X`` of
    shape ``(n,)``. The logistic methods: seeded logistic regression on standardised logs of ``X``,
    ``(n, 3)`` for ``components`` and ``(n, len(feature_names(method, probe["steps"])))`` for
    ``profile``/``ensemble``. ``score`` names the feature (default per method: ``"relative_sharpness"``,
    ``"components"``, ...). ``mahalanobis`` (the model the Mahalanobis score came from) and ``probe`` (the
    probe settings, ``{"norm", "steps", "size"}``) are stored in the detector for methods that need them.
    ``meta`` receives training statistics (sizes, training accuracy, balanced accuracy) and versions.
    Raises :class:`UsageError` on bad input (unknown method, shapes, NaN, a missing class).
    """
    method = _check_method(method)
    seed = _check_seed(seed)
    needs_probe = method in ("profile", "ensemble")
    if needs_probe != (probe is not None):
        raise UsageError(f"the {method} detector {'needs' if needs_probe else 'takes no'} probe settings")
    if (method in ("mahalanobis", "ensemble")) != (mahalanobis is not None):
        raise UsageError(f"the {method} detector {'needs' if mahalanobis is None else 'takes no'} Mahalanobis model")
    names = _columns_of(method, probe)
    X = _check_features(X, method, names)
    y = _check_labels(labels, len(X))
    n0, n1 = _class_counts(y, "fit a detector")
    if score is None:
        score = _DEFAULT_SCORE[method]
    if method in THRESHOLD_METHODS:
        det = _fit_stump(X, y, score)
        det.method = method
    else:
        det = _fit_logistic(X, y, seed, method, score)
        if method != "components":
            det.features = list(names)
    det.mahalanobis = mahalanobis
    det.probe = dict(probe) if probe is not None else None
    pred = det.predict(X)
    tpr = float(np.mean(pred[y == 1]))
    tnr = float(np.mean(~pred[y == 0]))
    det.meta = {
        "n_train": int(len(y)),
        "n_clean": n0,
        "n_adversarial": n1,
        "train_accuracy": float(np.mean(pred == (y == 1))),
        "train_balanced_accuracy": (tpr + tnr) / 2,
        "seed": seed,
        "versions": _versions(),
    }
    if method == "components":
        det.meta["features"] = list(COMPONENT_NAMES)
    if method in LOGISTIC_METHODS:
        det.meta["log_floor"] = LOG_FLOOR
    return det


def _fit_stump(x: np.ndarray, y: np.ndarray, score: str) -> Detector:
    """Exact search over all boundaries between consecutive distinct values, both directions.

    Criterion (integer, exact): ``tp * n0 + tn * n1`` = ``2 n0 n1 * balanced accuracy``.
    """
    n1 = int(y.sum())
    n0 = len(y) - n1
    values, inverse = np.unique(x, return_inverse=True)
    if len(values) == 1:
        # No boundary: flag nothing (balanced accuracy 1/2, the best any threshold can do here).
        return Detector("stump", score, threshold=float(values[0]), direction="above")
    c1 = np.bincount(inverse, weights=y, minlength=len(values)).astype(np.int64)
    c0 = np.bincount(inverse, minlength=len(values)).astype(np.int64) - c1
    cum0 = np.cumsum(c0)[:-1]  # clean inputs with value <= values[i], boundary i after values[i]
    cum1 = np.cumsum(c1)[:-1]
    lo, hi = values[:-1], values[1:]
    # "above" flags values > boundary: tp = n1 - cum1, tn = cum0. "below" is the complement.
    crit_above = (n1 - cum1) * n0 + cum0 * n1
    crit_below = cum1 * n0 + (n0 - cum0) * n1
    mid = 0.5 * lo + 0.5 * hi  # no overflow; lo <= mid <= hi
    gap = 0.5 * hi - 0.5 * lo
    # Adjacent floats have no midpoint strictly between them: pick the end that keeps the split.
    t_above = np.where(mid < hi, mid, lo)  # need lo <= t < hi
    t_below = np.where(mid > lo, mid, hi)  # need lo < t <= hi
    crit = np.concatenate([crit_above, crit_below])
    gaps = np.concatenate([gap, gap])
    dir_rank = np.concatenate([np.zeros(len(mid)), np.ones(len(mid))])  # 0 = above first
    thresholds = np.concatenate([t_above, t_below])
    # lexsort: last key is primary. Max crit, then max gap, then above, then smallest threshold.
    order = np.lexsort((thresholds, dir_rank, -gaps, -crit))
    best = int(order[0])
    direction = "above" if best < len(mid) else "below"
    return Detector("stump", score, threshold=float(thresholds[best]), direction=direction)


def _fit_logistic(X: np.ndarray, y: np.ndarray, seed: int, method: str, score: str) -> Detector:
    """Logistic regression (balanced, seeded) on the standardised logs of the columns of ``X``."""
    from sklearn.linear_model import LogisticRegression

    L = _log_components(X)
    mean = L.mean(axis=0)
    scale = L.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant column carries no information
    Z = (L - mean) / scale
    clf = LogisticRegression(class_weight="balanced", random_state=seed, max_iter=10_000)
    clf.fit(Z, y)
    return Detector(
        method,
        score,
        coef=[float(c) for c in clf.coef_[0]],
        intercept=float(clf.intercept_[0]),
        mean=[float(m) for m in mean],
        scale=[float(s) for s in scale],
    )


def balance(X: Any, labels: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger class to the size of the smaller one.

    The kept inputs of the larger class are drawn without replacement by
    ``numpy.random.default_rng(seed)``; the smaller class is kept whole, and the original order
    of the kept rows is preserved. Same seed, same subset. Returns ``(X, labels)`` as arrays.
    """
    X = np.asarray(X)
    y = _check_labels(labels, len(X))
    seed = _check_seed(seed)
    idx0 = np.flatnonzero(y == 0)
    idx1 = np.flatnonzero(y == 1)
    if len(idx0) == len(idx1):
        return X, y
    small, large = (idx0, idx1) if len(idx0) < len(idx1) else (idx1, idx0)
    rng = np.random.default_rng(seed)
    kept = rng.choice(large, size=len(small), replace=False)
    keep = np.sort(np.concatenate([small, kept]))
    return X[keep], y[keep]


# --------------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------------


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    ``fold_accuracies``: plain accuracy on each held-out fold, in fold order.
    ``accuracy_mean`` / ``accuracy_std``: their mean and population standard deviation (ddof=0).
    ``auc`` and ``tpr_at_5fpr``: from the pooled out-of-fold decision values (each input scored by
    the detector that did not see it). ``tpr_at_5fpr`` is the largest TPR on the ROC curve at an
    operating point with FPR <= 0.05 (achievable, not interpolated).
    ``detector``: fitted on all inputs. ``fold_index[i]``: the fold in which input ``i`` was held
    out; ``oof_decision[i]``: its out-of-fold decision value; ``fold_detectors[k]``: the detector
    fitted without fold ``k`` (the one that scored it).
    """

    fold_accuracies: list[float]
    accuracy_mean: float
    accuracy_std: float
    auc: float
    tpr_at_5fpr: float
    detector: Detector
    fold_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    oof_decision: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    fold_detectors: list[Detector] = field(default_factory=list, repr=False)


def cross_validate(
    X: Any,
    labels: Any,
    *,
    folds: int = 5,
    method: str = "stump",
    seed: int = 0,
    score: str | None = None,
    mahalanobis: MahalanobisModel | None = None,
    probe: dict | None = None,
) -> CVResult:
    """Stratified k-fold cross-validation of :func:`fit`, then a final fit on everything.

    Folds come from ``StratifiedKFold(folds, shuffle=True, random_state=seed)``; each fold's
    detector is fitted on the other folds (with the same ``seed``) and scored by accuracy on its
    own fold. ``mahalanobis`` and ``probe`` go to every :func:`fit`. Raises :class:`UsageError` when
    ``folds < 2``, a class has fewer inputs than ``folds``, only one class is present, or scores are NaN/inf.
    """
    from sklearn.model_selection import StratifiedKFold

    method = _check_method(method)
    seed = _check_seed(seed)
    if not _is_int(folds) or folds < 2:
        raise UsageError(f"--folds must be an integer >= 2, got {folds!r}")
    X = _check_features(X, method, _columns_of(method, probe))
    y = _check_labels(labels, len(X))
    n0, n1 = _class_counts(y, "cross-validate")
    if min(n0, n1) < folds:
        raise UsageError(
            f"--folds {folds} needs at least {folds} inputs per class, got {n0} clean and "
            f"{n1} adversarial; lower --folds or use more data"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_index = np.empty(len(y), dtype=np.int64)
    oof = np.empty(len(y), dtype=np.float64)
    accuracies: list[float] = []
    fold_detectors: list[Detector] = []
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        det = fit(X[train], y[train], method=method, seed=seed, score=score, mahalanobis=mahalanobis, probe=probe)
        fold_detectors.append(det)
        d = det.decision(X[test])
        oof[test] = d
        fold_index[test] = k
        accuracies.append(float(np.mean((d > 0) == (y[test] == 1))))
    auc, tpr_at = roc_summary(y, oof)
    final = fit(X, y, method=method, seed=seed, score=score, mahalanobis=mahalanobis, probe=probe)
    final.meta["cv"] = {
        "folds": int(folds),
        "seed": seed,
        "fold_accuracies": accuracies,
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "auc": auc,
        "tpr_at_5fpr": tpr_at,
    }
    return CVResult(
        fold_accuracies=accuracies,
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        auc=auc,
        tpr_at_5fpr=tpr_at,
        detector=final,
        fold_index=fold_index,
        oof_decision=oof,
        fold_detectors=fold_detectors,
    )


def roc_summary(labels: Any, decision: Any) -> tuple[float, float]:
    """``(auc, tpr_at_5fpr)`` of decision values (larger = adversarial) against labels (1 = adversarial):
    the ROC-AUC, and the largest TPR on the ROC curve at an operating point with FPR <= 0.05."""
    from sklearn.metrics import roc_auc_score, roc_curve

    auc = float(roc_auc_score(labels, decision))
    fpr, tpr, _ = roc_curve(labels, decision, drop_intermediate=False)
    return auc, float(np.max(tpr[fpr <= _FPR_TARGET]))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise UsageError(f"unknown detector method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def _check_seed(seed: Any) -> int:
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def _columns_of(method: str, probe: dict | None) -> tuple[str, ...] | None:
    """The columns of a logistic method (``None`` for a threshold method, or when the probe is missing)."""
    if method == "components":
        return COMPONENT_NAMES
    if method in LOGISTIC_METHODS and probe is not None:
        return feature_names(method, probe["steps"])
    return None


def _check_features(X: Any, method: str, names: tuple[str, ...] | None = None) -> np.ndarray:
    """``X`` as float64: ``(n,)`` for a threshold method, ``(n, len(names))`` (names: the columns;
    the components by default) for a logistic one; :class:`UsageError` on a wrong shape or NaN/inf."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"detector features must be numeric: {exc}") from exc
    if method in THRESHOLD_METHODS:
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise UsageError(
                f"the {method} detector takes one score per input, shape (n,); got {X.shape}"
            )
    else:
        if method != "components" and names is None:
            raise UsageError(f"the {method} detector needs probe settings to know its columns")
        names = COMPONENT_NAMES if names is None else names
        n = len(names)
        if X.ndim != 2 or X.shape[1] != n:
            shown = ", ".join(names) if n <= 4 else f"{', '.join(names[:3])}, ..."
            raise UsageError(
                f"the {method} detector takes {n} columns per input "
                f"({shown}), shape (n, {n}); got {X.shape}"
            )
    bad = ~np.isfinite(X)
    if bad.any():
        rows = int(bad.reshape(len(X), -1).any(axis=1).sum())
        raise UsageError(
            f"{rows} input(s) have NaN or infinite scores; drop them or check the model "
            "(e.g. overflow in the logits)"
        )
    return X


def _check_labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise UsageError(f"labels must be a vector of length {n} (one per input), got {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise UsageError("labels must be 0 (clean) or 1 (adversarial)")
    ok = (y == 0) | (y == 1)
    if not ok.all():
        raise UsageError(
            f"labels must be 0 (clean) or 1 (adversarial); found {np.unique(y[~ok])[:5].tolist()}"
        )
    return y.astype(np.int64)


def _log_components(X: np.ndarray) -> np.ndarray:
    """``log(max(X, LOG_FLOOR))``: the components are non-negative, zero maps to log(1e-300)."""
    return np.log(np.maximum(X, LOG_FLOOR))


def _finite_number(doc: dict, key: str) -> float:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DetectorError(f"detector '{key}' must be a finite number, got {v!r}; re-create it")
    return float(v)


def _finite_matrix(doc: dict, key: str) -> np.ndarray:
    """A non-empty list of equally long lists of finite numbers, as a float64 array."""
    v = doc.get(key)
    ok = isinstance(v, list) and v and all(isinstance(r, list) and r and len(r) == len(v[0]) for r in v)
    if ok:
        ok = all(not isinstance(e, bool) and isinstance(e, (int, float)) and math.isfinite(e) for r in v for e in r)
    if not ok:
        raise DetectorError(f"detector '{key}' must be a matrix (a list of equal lists) of finite numbers; re-create it")
    return np.asarray(v, dtype=np.float64)


def _probe_settings(doc: dict) -> dict:
    """The ``probe`` entry: ``{"norm": "linf", "steps": 1..3, "size": > 0}``."""
    p = doc.get("probe")
    if not isinstance(p, dict) or set(p) != {"norm", "steps", "size"}:
        raise DetectorError("detector 'probe' must be an object with norm, steps and size; re-create it")
    steps, size = p["steps"], p["size"]
    if p["norm"] != "linf" or not _is_int(steps) or not 1 <= steps <= MAX_PROBE_STEPS:
        raise DetectorError(f"detector 'probe' must have norm 'linf' and 1 to {MAX_PROBE_STEPS} steps; re-create it")
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) or size <= 0:
        raise DetectorError("detector probe 'size' must be a finite number > 0; re-create it")
    return {"norm": "linf", "steps": int(steps), "size": float(size)}


def _finite_list(doc: dict, key: str, n: int) -> list[float]:
    v = doc.get(key)
    if (
        not isinstance(v, list)
        or len(v) != n
        or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in v)
        or not all(math.isfinite(e) for e in v)
    ):
        raise DetectorError(
            f"detector '{key}' must be a list of {n} finite numbers, got {v!r}; re-create it"
        )
    return [float(e) for e in v]


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _versions() -> dict[str, str]:
    import sklearn

    from flatcli import __version__

    return {"flatrob": __version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}

"""Detectors of adversarial inputs from their sharpness: the estimators, fitting and cross-validation.

Appendix D.4 of the paper thresholds the relative sharpness of clean and adversarial inputs with a
decision stump and reports 0.92 accuracy in 5-fold cross-validation. This module is that experiment
as a library, in pure numpy + scikit-learn (no torch), on per-input features already computed:
labels are ``0`` for clean inputs and ``1`` for adversarial ones.

Two methods:

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

``Detector.decision`` is a real-valued score, larger = more adversarial, and ``predict`` is
``decision > 0``: for a stump ``score - threshold`` (above) or ``threshold - score`` (below), for
components the logit.

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
    "SCHEMA_VERSION",
    "CVResult",
    "Detector",
    "balance",
    "cross_validate",
    "fit",
]

SCHEMA_VERSION = 1
DETECTOR_KIND = "flatrob-detector"
METHODS = ("stump", "components")
DIRECTIONS = ("above", "below")
LOG_FLOOR = 1e-300
COMPONENT_NAMES = ("p_var_sum", "phi_norm_sq", "w_phi_norm_sq")
"""Column order for ``components``: ``sum_j p_j(1-p_j)``, ``||phi||^2``, ``||W phi||^2``."""

_DEFAULT_SCORE = {"stump": "relative_sharpness", "components": "components"}
_FPR_TARGET = 0.05


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """A fitted detector; ``decision`` > 0 means "adversarial".

    Stump fields: ``threshold``, ``direction``. Components fields: ``coef``, ``intercept``,
    ``mean``, ``scale`` (logistic regression on ``(log(max(X, LOG_FLOOR)) - mean) / scale``).
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
    meta: dict = field(default_factory=dict)

    def decision(self, X: Any) -> np.ndarray:
        """Real-valued score per input, larger = more adversarial; ``(n,)`` float64.

        ``X`` is ``(n,)`` (or ``(n, 1)``) for a stump and ``(n, 3)`` for components.
        Raises :class:`UsageError` on a wrong shape or non-finite values.
        """
        X = _check_features(X, self.method)
        if self.method == "stump":
            if self.direction == "above":
                return X - self.threshold
            return self.threshold - X
        Z = (_log_components(X) - np.asarray(self.mean, dtype=np.float64)) / np.asarray(
            self.scale, dtype=np.float64
        )
        return Z @ np.asarray(self.coef, dtype=np.float64) + float(self.intercept)

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
        if self.method == "stump":
            doc["threshold"] = float(self.threshold)
            doc["direction"] = self.direction
        else:
            doc["coef"] = [float(c) for c in self.coef]
            doc["intercept"] = float(self.intercept)
            doc["mean"] = [float(c) for c in self.mean]
            doc["scale"] = [float(c) for c in self.scale]
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
        if method == "stump":
            threshold = _finite_number(doc, "threshold")
            direction = doc.get("direction")
            if direction not in DIRECTIONS:
                raise DetectorError(
                    f"stump direction is {direction!r}, expected 'above' or 'below'; re-create it"
                )
            return cls(method, score, threshold=threshold, direction=direction, meta=meta)
        n = len(COMPONENT_NAMES)
        coef = _finite_list(doc, "coef", n)
        mean = _finite_list(doc, "mean", n)
        scale = _finite_list(doc, "scale", n)
        if any(s <= 0 for s in scale):
            raise DetectorError("detector 'scale' entries must be positive; re-create it")
        intercept = _finite_number(doc, "intercept")
        return cls(
            method, score, coef=coef, intercept=intercept, mean=mean, scale=scale, meta=meta
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
) -> Detector:
    """Fit a detector on features ``X`` and labels (0 clean, 1 adversarial).

    ``method="stump"``: exact balanced-accuracy threshold search on ``X`` of shape ``(n,)``.
    ``method="components"``: seeded logistic regression on standardised logs of ``X`` ``(n, 3)``.
    ``score`` names the feature (default ``"relative_sharpness"`` / ``"components"``).
    ``meta`` receives training statistics (sizes, training accuracy, balanced accuracy) and versions.
    Raises :class:`UsageError` on bad input (unknown method, shapes, NaN, a missing class).
    """
    method = _check_method(method)
    seed = _check_seed(seed)
    X = _check_features(X, method)
    y = _check_labels(labels, len(X))
    n0, n1 = _class_counts(y, "fit a detector")
    if score is None:
        score = _DEFAULT_SCORE[method]
    if method == "stump":
        det = _fit_stump(X, y, score)
    else:
        det = _fit_components(X, y, seed, score)
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


def _fit_components(X: np.ndarray, y: np.ndarray, seed: int, score: str) -> Detector:
    from sklearn.linear_model import LogisticRegression

    L = _log_components(X)
    mean = L.mean(axis=0)
    scale = L.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant column carries no information
    Z = (L - mean) / scale
    clf = LogisticRegression(class_weight="balanced", random_state=seed, max_iter=10_000)
    clf.fit(Z, y)
    return Detector(
        "components",
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
    out; ``oof_decision[i]``: its out-of-fold decision value.
    """

    fold_accuracies: list[float]
    accuracy_mean: float
    accuracy_std: float
    auc: float
    tpr_at_5fpr: float
    detector: Detector
    fold_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    oof_decision: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


def cross_validate(
    X: Any,
    labels: Any,
    *,
    folds: int = 5,
    method: str = "stump",
    seed: int = 0,
    score: str | None = None,
) -> CVResult:
    """Stratified k-fold cross-validation of :func:`fit`, then a final fit on everything.

    Folds come from ``StratifiedKFold(folds, shuffle=True, random_state=seed)``; each fold's
    detector is fitted on the other folds (with the same ``seed``) and scored by accuracy on its
    own fold. Raises :class:`UsageError` when ``folds < 2``, a class has fewer inputs than
    ``folds``, only one class is present, or scores are NaN/inf.
    """
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.model_selection import StratifiedKFold

    method = _check_method(method)
    seed = _check_seed(seed)
    if not _is_int(folds) or folds < 2:
        raise UsageError(f"--folds must be an integer >= 2, got {folds!r}")
    X = _check_features(X, method)
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
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        det = fit(X[train], y[train], method=method, seed=seed, score=score)
        d = det.decision(X[test])
        oof[test] = d
        fold_index[test] = k
        accuracies.append(float(np.mean((d > 0) == (y[test] == 1))))
    auc = float(roc_auc_score(y, oof))
    fpr, tpr, _ = roc_curve(y, oof, drop_intermediate=False)
    tpr_at = float(np.max(tpr[fpr <= _FPR_TARGET]))
    final = fit(X, y, method=method, seed=seed, score=score)
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
    )


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


def _check_features(X: Any, method: str) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"detector features must be numeric: {exc}") from exc
    if method == "stump":
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise UsageError(
                f"the stump detector takes one score per input, shape (n,); got {X.shape}"
            )
    else:
        n = len(COMPONENT_NAMES)
        if X.ndim != 2 or X.shape[1] != n:
            raise UsageError(
                f"the components detector takes {n} columns per input "
                f"({', '.join(COMPONENT_NAMES)}), shape (n, {n}); got {X.shape}"
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

"""Evaluating a detection method: balancing the classes, stratified k-fold cross-validation, the ROC summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flatcli.core.detectors.base import (
    Detector,
    MahalanobisModel,
    check_labels,
    check_seed,
    class_counts,
    fit,
    is_int,
    prepared,
)
from flatcli.errors import OptionError

_FPR_TARGET = 0.05


def balance(X: Any, labels: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger class to the size of the smaller one.

    The kept inputs of the larger class are drawn without replacement by
    ``numpy.random.default_rng(seed)``; the smaller class is kept whole, and the original order
    of the kept rows is preserved. Same seed, same subset. Returns ``(X, labels)`` as arrays.
    """
    X = np.asarray(X)
    y = check_labels(labels, len(X))
    seed = check_seed(seed)
    idx0 = np.flatnonzero(y == 0)
    idx1 = np.flatnonzero(y == 1)
    if len(idx0) == len(idx1):
        return X, y
    small, large = (idx0, idx1) if len(idx0) < len(idx1) else (idx1, idx0)
    rng = np.random.default_rng(seed)
    kept = rng.choice(large, size=len(small), replace=False)
    keep = np.sort(np.concatenate([small, kept]))
    return X[keep], y[keep]


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
    """Stratified k-fold cross-validation of :func:`~flatcli.core.detectors.base.fit`, then a final fit on everything.

    Folds come from ``StratifiedKFold(folds, shuffle=True, random_state=seed)``; each fold's
    detector is fitted on the other folds (with the same ``seed``) and scored by accuracy on its
    own fold. ``score``, ``mahalanobis`` and ``probe`` go to every fit. Raises
    :class:`~flatcli.errors.UsageError` when ``folds < 2``, a class has fewer inputs than ``folds``, only
    one class is present, or scores are NaN/inf.
    """
    from sklearn.model_selection import StratifiedKFold

    if not is_int(folds) or folds < 2:
        raise OptionError("folds", f"{{}} must be an integer >= 2, got {folds!r}")
    _, seed, score, X, y = prepared(X, labels, method, seed, score, mahalanobis, probe)
    n0, n1 = class_counts(y, "cross-validate")
    if min(n0, n1) < folds:
        raise OptionError(
            ("folds", "folds"),
            f"{{}} {folds} needs at least {folds} inputs per class, got {n0} clean and {n1} adversarial; lower {{}} "
            "or use more data",
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

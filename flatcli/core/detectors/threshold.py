"""Threshold methods: one score per input against a threshold found by an exact search (``stump``, ``mahalanobis``).

The search sorts the distinct scores, considers every boundary between consecutive distinct values and
both directions (``"above"`` flags ``score > threshold``, ``"below"`` flags ``score < threshold``), and
keeps the candidate with the highest *balanced* training accuracy ``(TPR + TNR) / 2`` (equal to plain
accuracy when the classes are balanced). Ties are broken deterministically: wider gap between the two
neighbouring values first (the max-margin choice), then ``"above"`` before ``"below"``, then the smaller
threshold. The threshold is the midpoint of the gap. This is a depth-1 decision tree, but optimal for
accuracy rather than Gini impurity, and explained by two numbers.

``decision`` is ``score - threshold`` (above) or ``threshold - score`` (below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flatcli.core.detectors.base import Detector, ParameterReader
from flatcli.core.detectors.columns import MAHALANOBIS, PROMPT_SCORES, SCORES
from flatcli.errors import UsageError

DIRECTIONS = ("above", "below")


def best_threshold(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """``(threshold, direction)`` of the search in the module docstring, on scores ``x`` and labels ``y``.

    Criterion (integer, exact): ``tp * n0 + tn * n1`` = ``2 n0 n1 * balanced accuracy``. With a single
    distinct value there is no boundary: nothing is flagged (balanced accuracy 1/2, the best any
    threshold can do there).
    """
    n1 = int(y.sum())
    n0 = len(y) - n1
    values, inverse = np.unique(x, return_inverse=True)
    if len(values) == 1:
        return float(values[0]), "above"
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
    return float(thresholds[best]), "above" if best < len(mid) else "below"


@dataclass(kw_only=True)
class ThresholdDetector(Detector):
    """A threshold method: ``threshold`` and ``direction`` on the one column named by ``score``."""

    threshold: float
    direction: str

    @classmethod
    def columns_for(cls, score: str, probe: dict | None) -> tuple[str, ...]:
        return (score,)

    @classmethod
    def shaped(cls, X: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
        """``(n,)``; an ``(n, 1)`` column is taken as its vector."""
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise UsageError(f"the {cls.method} detector takes one score per input, shape (n,); got {X.shape}")
        return X

    @classmethod
    def fitted(cls, X: np.ndarray, y: np.ndarray, seed: int) -> dict:
        threshold, direction = best_threshold(X, y)
        return {"threshold": threshold, "direction": direction}

    @classmethod
    def read_parameters(cls, read: ParameterReader, columns: tuple[str, ...]) -> dict:
        return {"threshold": read.number("threshold"), "direction": read.choice("direction", DIRECTIONS)}

    def parameters_json(self) -> dict:
        return {"threshold": float(self.threshold), "direction": self.direction}

    def decide(self, X: np.ndarray) -> np.ndarray:
        if self.direction == "above":
            return X - self.threshold
        return self.threshold - X

    def decision_tensor(self, X):
        s = X[:, 0]
        return s - self.threshold if self.direction == "above" else self.threshold - s

    def thresholded(self, X: Any) -> np.ndarray:
        """The score itself."""
        return self.shaped(np.asarray(X, dtype=np.float64), self.columns())

    def operating_point(self) -> tuple[float, str]:
        return self.threshold, self.direction


@dataclass(kw_only=True)
class Stump(ThresholdDetector):
    """Paper D.4: a threshold on one label-free score (default relative sharpness; on a language model's prompts
    one of :data:`~flatcli.core.detectors.columns.PROMPT_SCORES`)."""

    method = "stump"
    summary = "threshold on one score (default relative_sharpness)"
    conventions = "exact threshold search maximising balanced accuracy; flags score > threshold (above) or < (below)"
    scores = SCORES + PROMPT_SCORES


@dataclass(kw_only=True)
class MahalanobisStump(ThresholdDetector):
    """Lee et al. (2018): a threshold on ``min_c (phi - mu_c)^T Sigma^+ (phi - mu_c)``."""

    method = "mahalanobis"
    summary = "threshold on the minimum Mahalanobis distance of phi to the class means of the fit data"
    conventions = ("stump on min_c (phi - mu_c)^T Sigma^+ (phi - mu_c); class means and the maximum-likelihood "
                   "covariance of the class-centred features of the clean, labelled {fit_data} (Lee et al. 2018)")
    scores = (MAHALANOBIS,)
    needs_mahalanobis = True

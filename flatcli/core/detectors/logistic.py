"""Logistic methods: a logistic regression on the standardised logs of named columns (``components``, ``profile``, ``ensemble``).

Logs are taken with a floor of :data:`LOG_FLOOR`, ``L = log(max(X, LOG_FLOOR))``, so that zeros do not give
``-inf``; they are standardised with the training mean and standard deviation (a constant column gets
scale 1), ``Z = (L - mean) / scale``; the regression is scikit-learn's ``LogisticRegression`` with
``class_weight="balanced"`` and ``random_state=seed``. The detector stores the coefficients of the
standardised problem, so applying it needs only numpy: ``decision = sum_j Z_j coef_j + intercept``, the
logit, flagged when above 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from flatcli.core.detectors.base import Detector, ParameterReader
from flatcli.core.detectors.columns import COMPONENT_NAMES, ensemble_names, profile_names
from flatcli.errors import UsageError

LOG_FLOOR = 1e-300


def log_features(X: np.ndarray) -> np.ndarray:
    """``log(max(X, LOG_FLOOR))``: the columns are non-negative, zero maps to log(1e-300)."""
    return np.log(np.maximum(X, LOG_FLOOR))


@dataclass(kw_only=True)
class LogisticDetector(Detector):
    """A logistic method: ``coef``, ``intercept``, ``mean`` and ``scale`` (one per column) of the module docstring."""

    #: Whether the saved detector lists its columns (``features``): they depend on the probe settings.
    lists_features: ClassVar[bool] = True
    #: The summary key of the fitted parameters.
    parameters_key: ClassVar[str] = "logistic"

    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]

    @classmethod
    def shaped(cls, X: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
        """``(n, len(columns))``."""
        n = len(columns)
        if X.ndim != 2 or X.shape[1] != n:
            shown = ", ".join(columns) if n <= 4 else f"{', '.join(columns[:3])}, ..."
            raise UsageError(f"the {cls.method} detector takes {n} columns per input ({shown}), shape (n, {n}); "
                             f"got {X.shape}")
        return X

    @classmethod
    def fitted(cls, X: np.ndarray, y: np.ndarray, seed: int) -> dict:
        from sklearn.linear_model import LogisticRegression

        L = log_features(X)
        mean = L.mean(axis=0)
        scale = L.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)  # a constant column carries no information
        clf = LogisticRegression(class_weight="balanced", random_state=seed, max_iter=10_000)
        clf.fit((L - mean) / scale, y)
        return {"coef": [float(c) for c in clf.coef_[0]], "intercept": float(clf.intercept_[0]),
                "mean": [float(m) for m in mean], "scale": [float(s) for s in scale]}

    @classmethod
    def read_parameters(cls, read: ParameterReader, columns: tuple[str, ...]) -> dict:
        if cls.lists_features:
            read.names("features", columns)
        n = len(columns)
        coef, mean, scale = read.numbers("coef", n), read.numbers("mean", n), read.numbers("scale", n, positive=True)
        return {"coef": coef, "mean": mean, "scale": scale, "intercept": read.number("intercept")}

    def parameters_json(self) -> dict:
        doc: dict[str, Any] = {"features": list(self.columns())} if self.lists_features else {}
        doc["coef"] = [float(c) for c in self.coef]
        doc["intercept"] = float(self.intercept)
        doc["mean"] = [float(c) for c in self.mean]
        doc["scale"] = [float(c) for c in self.scale]
        return doc

    def decide(self, X: np.ndarray) -> np.ndarray:
        Z = (log_features(X) - np.asarray(self.mean, dtype=np.float64)) / np.asarray(self.scale, dtype=np.float64)
        # a row-wise sum, not Z @ coef: a matrix product may change in the last bits with the number of
        # rows, and a saved detector must reproduce the fitted decisions whatever the batching
        return (Z * np.asarray(self.coef, dtype=np.float64)).sum(axis=1) + float(self.intercept)

    def decision_tensor(self, X):
        Z = (X.clamp(min=LOG_FLOOR).log() - X.new_tensor(self.mean)) / X.new_tensor(self.scale)
        return Z @ X.new_tensor(self.coef) + float(self.intercept)

    def thresholded(self, X: Any) -> np.ndarray:
        """The logit (the decision)."""
        return self.decision(X)

    def operating_point(self) -> tuple[float, str]:
        return 0.0, "above"

    def parameters(self) -> dict:
        names = self.columns()
        return {
            self.parameters_key: {
                "features": list(names),
                "coef": dict(zip(names, self.coef)),
                "intercept": self.intercept,
                "log_mean": dict(zip(names, self.mean)),
                "log_scale": dict(zip(names, self.scale)),
            },
            **super().parameters(),
        }

    def fit_meta(self) -> dict:
        return {"log_floor": LOG_FLOOR}


@dataclass(kw_only=True)
class Components(LogisticDetector):
    """The three label-free factors of sharpness, :data:`~flatcli.core.detectors.columns.COMPONENT_NAMES`."""

    method = "components"
    summary = "logistic regression on the logs of sum_j p_j(1-p_j), ||phi||^2, ||W phi||^2"
    conventions = ("logistic regression (class_weight=balanced) on standardised logs of sum_j p_j(1-p_j), "
                   "||phi||^2, ||W phi||^2; flags logit > 0")
    scores = ("components",)
    lists_features = False
    parameters_key = "components"

    @classmethod
    def columns_for(cls, score: str, probe: dict | None) -> tuple[str, ...]:
        return COMPONENT_NAMES

    def fit_meta(self) -> dict:
        return {"features": list(COMPONENT_NAMES), **super().fit_meta()}


@dataclass(kw_only=True)
class Profile(LogisticDetector):
    """The curvature profile: sharpness, loss w.r.t. the predicted class, confidence and ``||phi||`` at the
    input and after each probe step (:func:`~flatcli.core.detectors.columns.profile_names`)."""

    method = "profile"
    summary = ("logistic regression on the curvature profile: sharpness, loss, confidence, ||phi|| at the input and "
               "after each probe step of gradient ascent on the predicted class's loss")
    conventions = ("logistic regression like components on the logs of relative sharpness, loss w.r.t. the predicted "
                   "class, confidence and ||phi|| at x_0 = x and x_t = clamp(x_{t-1} + size sign(grad CE(x_{t-1}, "
                   "pred)), 0, 1)")
    scores = ("profile",)
    needs_probe = True

    @classmethod
    def columns_for(cls, score: str, probe: dict | None) -> tuple[str, ...]:
        return profile_names(probe["steps"])


@dataclass(kw_only=True)
class Ensemble(LogisticDetector):
    """The components, the profile and the Mahalanobis score (:func:`~flatcli.core.detectors.columns.ensemble_names`)."""

    method = "ensemble"
    summary = "logistic regression on the components, the curvature profile and the Mahalanobis score"
    conventions = ("logistic regression like components on the logs of the components, the profile and the "
                   "Mahalanobis score")
    scores = ("ensemble",)
    needs_probe = True
    needs_mahalanobis = True

    @classmethod
    def columns_for(cls, score: str, probe: dict | None) -> tuple[str, ...]:
        return ensemble_names(probe["steps"])

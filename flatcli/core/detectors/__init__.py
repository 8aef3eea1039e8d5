"""Detectors of adversarial inputs from their sharpness: the methods as classes over a registry, fitting, cross-validation.

Appendix D.4 of the paper thresholds the relative sharpness of clean and adversarial inputs with a
decision stump and reports 0.92 accuracy in 5-fold cross-validation. This package is that experiment
as a library, in pure numpy + scikit-learn (no torch), on per-input features already computed (by
:mod:`flatcli.core.detection_features`): labels are ``0`` for clean inputs and ``1`` for adversarial ones.

The methods, in registry order (:data:`METHODS`; the first is the default):

``stump`` (:class:`~.threshold.Stump`)
    One score per input (e.g. relative sharpness), an exact balanced-accuracy threshold search
    (:mod:`.threshold`).
``components`` (:class:`~.logistic.Components`)
    Logistic regression on the logs of the three label-free factors of sharpness,
    ``sum_j p_j (1 - p_j)``, ``||phi||^2`` and ``||W phi||^2`` (:mod:`.logistic`).
``mahalanobis`` (:class:`~.threshold.MahalanobisStump`)
    The baseline of Lee et al. (2018) on the head's input ``phi``: a stump on
    ``min_c (phi - mu_c)^T Sigma^+ (phi - mu_c)`` (:mod:`.mahalanobis` fits the model).
``profile`` and ``ensemble`` (:class:`~.logistic.Profile`, :class:`~.logistic.Ensemble`)
    The logistic regression on the curvature profile (sharpness, loss w.r.t. the predicted class,
    confidence and feature norm at the input and after each probe step), and on everything.

What a method states (its columns, what it needs, its default score, its conventions) and how to add
one: :mod:`.base`. A detector is plain data (:meth:`~.base.Detector.to_json`, ``kind:
"flatrob-detector"``, ``schema_version``); :mod:`flatcli.inputs.detector_file` writes, reads and
validates the file. Floats keep ``repr`` precision, so a loaded detector reproduces the fitted
predictions bit for bit.
"""

from __future__ import annotations

from flatcli.core.detectors.base import (
    DETECTOR_KIND,
    METHODS,
    SCHEMA_VERSION,
    Detector,
    ParameterReader,
    fit,
    method_class,
    method_names,
    register,
)
from flatcli.core.detectors.columns import (
    COMPONENT_NAMES,
    MAHALANOBIS,
    MAX_PROBE_STEPS,
    PROFILE_MEASURES,
    PROMPT_SCORES,
    SCORES,
    ensemble_names,
    profile_names,
)
from flatcli.core.detectors.logistic import LOG_FLOOR, Components, Ensemble, LogisticDetector, Profile
from flatcli.core.detectors.mahalanobis import (
    MahalanobisModel,
    centred_scatter,
    class_means,
    class_sums,
    mahalanobis_model,
)
from flatcli.core.detectors.threshold import DIRECTIONS, MahalanobisStump, Stump, ThresholdDetector
from flatcli.core.detectors.validation import CVResult, balance, cross_validate, roc_summary

for _method in (Stump, Components, MahalanobisStump, Profile, Ensemble):
    register(_method)

__all__ = [
    "COMPONENT_NAMES",
    "DETECTOR_KIND",
    "DIRECTIONS",
    "LOG_FLOOR",
    "MAHALANOBIS",
    "MAX_PROBE_STEPS",
    "METHODS",
    "PROFILE_MEASURES",
    "SCHEMA_VERSION",
    "SCORES",
    "CVResult",
    "Components",
    "Detector",
    "Ensemble",
    "LogisticDetector",
    "MahalanobisModel",
    "MahalanobisStump",
    "ParameterReader",
    "Profile",
    "Stump",
    "ThresholdDetector",
    "balance",
    "centred_scatter",
    "class_means",
    "class_sums",
    "cross_validate",
    "ensemble_names",
    "fit",
    "mahalanobis_model",
    "method_class",
    "method_names",
    "profile_names",
    "register",
    "roc_summary",
]

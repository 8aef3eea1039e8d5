"""The options of detect: which detector method, how it is cross-validated, probed and attacked adaptively.

The methods and scores come from their registries (:mod:`flatcli.core.detectors`,
:mod:`flatcli.core.detection_features`), read when an option is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, choice, integer, number, switch

#: The method that cross-validates every method on the same folds and keeps the best.
ALL = "all"


def method_names() -> tuple[str, ...]:
    """The methods of the registry, then ``all``."""
    from flatcli.core import detectors

    return (*detectors.method_names(), ALL)


def score_names() -> tuple[str, ...]:
    """The scores the stump thresholds, of images and of prompts (the other methods have their own fixed score)."""
    from flatcli.core import detectors

    return tuple(detectors.Stump.scores)


@dataclass(frozen=True)
class DetectOptions(Group):
    """How a detector is fitted: method, score, folds, probes, and the adaptive attack against it."""

    title = "Detector"
    key = "detection"

    method: str | None = choice(None, "stump (threshold on one score; default), components (logistic regression on "
                                "the logs of sum_j p_j(1-p_j), ||phi||^2, ||W phi||^2), mahalanobis (threshold on the "
                                "minimum Mahalanobis distance of phi to the class means of --fit-data), profile "
                                "(logistic regression on the curvature profile: sharpness, loss, confidence, ||phi|| at "
                                "the input and after each probe step of gradient ascent on the predicted class's loss), "
                                "ensemble (logistic regression on all of them), or all (every method on the same "
                                "folds; the best is kept).", method_names)
    score: str | None = choice(None, "Label-free score the stump thresholds (default relative_sharpness; on a language "
                               "model's prompts trace_h_prompt, trace_h_last or log_perplexity, default "
                               "trace_h_prompt).", score_names)
    folds: int | None = integer(None, "Stratified cross-validation folds, >= 2 (default 5).")
    only_successful: bool = switch(False, "Keep only adversarials whose prediction differs from their clean input's.")
    probe_steps: int | None = integer(None, "Probe steps of the curvature profile, 1 to 3 (default 3).")
    probe_size: float | None = number(None, "Size of a probe step (linf, inputs in [0, 1]; default 0.03).")
    adaptive: bool = switch(False, "Also attack model and detector together (PGD with the attack's settings on the "
                            "cross-entropy minus the detector's normalised decision) and report the detector against "
                            "it.")
    adaptive_weight: float | None = number(None, "Weight of the detector's decision in the adaptive attack "
                                           "(default 3).")

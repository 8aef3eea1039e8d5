"""The names of the label-free feature columns detectors read: the scores (of images and of prompts), the components, the profile, Mahalanobis.

The columns are computed in torch by :func:`flatcli.core.detection_features.detection_features`; a
detector reads them by name (:meth:`flatcli.core.detectors.base.Detector.columns`).
"""

from __future__ import annotations

#: Label-free measures a stump can threshold (``score``); the first is the default.
SCORES = ("relative_sharpness", "trace_h", "confidence", "relative_flatness_full")
#: Label-free measures of a language model's prompt a stump can threshold (computed by
#: :func:`flatcli.core.token_curvature.prompt_means`); the first is the default, the last the perplexity filter.
PROMPT_SCORES = ("trace_h_prompt", "trace_h_last", "log_perplexity")
COMPONENT_NAMES = ("p_var_sum", "phi_norm_sq", "w_phi_norm_sq")
"""The three factors of sharpness: ``sum_j p_j(1-p_j)``, ``||phi||^2``, ``||W phi||^2``."""
MAHALANOBIS = "mahalanobis"
"""The name of the Mahalanobis score (a column of ``ensemble``, the score of ``mahalanobis``)."""
PROFILE_MEASURES = ("relative_sharpness", "loss", "confidence", "feature_norm")
"""What the curvature profile measures at each probed point (the loss is w.r.t. the class predicted at the input)."""
#: The most probe steps of the curvature profile.
MAX_PROBE_STEPS = 3


def profile_names(steps: int) -> tuple[str, ...]:
    """Columns of the curvature profile with ``steps`` probe steps: ``measure@t`` for t = 0 (the input) .. steps."""
    return tuple(f"{m}@{t}" for t in range(steps + 1) for m in PROFILE_MEASURES)


def ensemble_names(steps: int) -> tuple[str, ...]:
    """Columns of ``ensemble``: the components, the profile, the Mahalanobis score."""
    return COMPONENT_NAMES + profile_names(steps) + (MAHALANOBIS,)

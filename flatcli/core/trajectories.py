"""Statistics of attack trajectories (paper §6.1, §6.2): pure functions on ``(T+1, B)`` tensors.

A trajectory is the sequence of iterates ``x_0 .. x_T`` of one sample, with per-step losses and
sharpness in the columns of ``(T+1, B)`` tensors. :func:`normalized_loss` and :func:`takeoff` give the
take-off step and basin width (censored when the loss never rises), :func:`sharpness_peaks`,
:func:`valley_mask` and :func:`valley_of_mean` the uncanny valley, and :func:`finite_samples` which
samples stayed finite (NaN/Inf in the logits or gradients are flagged, never averaged in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: A trajectory whose loss never rises by more than this is censored (no take-off on it).
MIN_RISE = 1e-6
#: A sample is in the uncanny valley when its sharpness ends below this share of its own peak.
VALLEY_RATIO = 0.5


def normalized_loss(losses: Tensor, min_rise: float = MIN_RISE) -> Tensor:
    """``n_t = (l_t - l_0) / (max_t l_t - l_0)`` per trajectory (columns of ``losses``, shape (T+1, B)).

    Columns whose loss never rises by more than ``min_rise`` are censored: all ``NaN``.
    """
    rise = losses.max(dim=0).values - losses[0]
    n = (losses - losses[0]) / torch.where(rise > min_rise, rise, torch.ones_like(rise))
    return torch.where((rise > min_rise)[None, :], n, torch.full_like(n, float("nan")))


@dataclass
class Takeoff:
    """Per sample: ``step`` t* (-1 if censored), ``width`` ``||x_{t*-1} - x_0||_2`` (NaN if censored),
    ``censored`` (bool), and ``lower_bound``: the final distance, which a censored width is at least."""

    step: Tensor
    width: Tensor
    censored: Tensor
    lower_bound: Tensor


def takeoff(losses: Tensor, dist_l2: Tensor, tau: float = 0.1, min_rise: float = MIN_RISE) -> Takeoff:
    """Take-off point and basin width (paper §6.1, Fig. 2; docs/commands/attack.md).

    ``t* = min{t : n_t >= tau}`` on the normalised loss; the width is the distance reached just before
    take-off, ``dist_l2[t* - 1]`` (``dist_l2[t] = ||x_t - x_0||_2``, shape (T+1, B)). Since ``n_0 = 0 < tau``
    and ``n = 1`` at the loss maximum, ``1 <= t* <= T`` on every uncensored trajectory.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    n = normalized_loss(losses, min_rise)
    censored = torch.isnan(n[0])
    hit = n >= tau  # NaN compares False
    step = hit.to(torch.int8).argmax(dim=0)  # first True
    before = (step - 1).clamp_min(0)
    width = dist_l2.gather(0, before[None, :]).squeeze(0).to(torch.float64)
    width = torch.where(censored, torch.full_like(width, float("nan")), width)
    step = torch.where(censored, torch.full_like(step, -1), step)
    return Takeoff(step=step, width=width, censored=censored, lower_bound=dist_l2[-1].to(torch.float64))


def sharpness_peaks(sharpness: Tensor) -> tuple[Tensor, Tensor]:
    """Per trajectory (columns of (T+1, B)): the step of the highest value (first one) and that value."""
    peak, step = sharpness.max(dim=0)
    return step, peak


def valley_mask(sharpness: Tensor, ratio: float = VALLEY_RATIO) -> Tensor:
    """Samples whose own sharpness peaks strictly inside the trajectory (0 < t < T) and ends below
    ``ratio`` times that peak (the uncanny valley of paper §6.2, Fig. 3)."""
    last = sharpness.shape[0] - 1
    step, peak = sharpness_peaks(sharpness)
    return (step > 0) & (step < last) & (sharpness[-1] < ratio * peak)


def valley_of_mean(mean_by_step) -> dict:
    """Peak step of the mean sharpness curve and the ratio of its final value to the peak."""
    curve = np.asarray(mean_by_step, dtype=np.float64)
    peak_step = int(np.argmax(curve))
    peak = curve[peak_step]
    return {
        "sharpness_peak_step": peak_step,
        "sharpness_final_over_peak": float(curve[-1] / peak) if peak > 0 else float("nan"),
    }


#: Per-step measures :func:`finite_samples` checks by default (those ``flatrob attack`` records).
STEP_MEASURES = ("loss", "relative_sharpness", "trace_h", "confidence", "p_true")
#: Clean-input measures :func:`finite_samples` checks by default.
CLEAN_MEASURES = ("loss", "relative_sharpness")


def finite_samples(m: dict, clean: dict, *distances: Tensor, step_keys=STEP_MEASURES, clean_keys=CLEAN_MEASURES) -> Tensor:
    """(B,) bool: every recorded measure of the sample, at every step and at the clean input, is finite.

    ``m[key]`` for ``key`` in ``step_keys``: per-step measures (T+1, B); ``clean[key]`` for ``key`` in
    ``clean_keys``: clean-input measures (B,); ``distances``: per-step distances (T+1, B). NaN/Inf in the
    logits or in the gradient (which makes the next iterate NaN) shows up here; such samples are flagged
    in the rows and counted in the summary instead of poisoning its means (``flatrob attack`` and
    ``flatrob sweep-scale``).
    """
    finite = torch.ones_like(m[step_keys[0]][0], dtype=torch.bool)
    for key in step_keys:
        finite &= torch.isfinite(m[key]).all(0)
    for key in clean_keys:
        finite &= torch.isfinite(clean[key]).to(finite.device)
    for d in distances:
        finite &= torch.isfinite(d).all(0).to(finite.device)
    return finite

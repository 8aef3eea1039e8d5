"""Take-off, basin width and uncanny valley (flatcli.core.trajectories) on hand-made trajectories."""

from __future__ import annotations

import pytest
import torch

from flatcli.core.trajectories import normalized_loss, sharpness_peaks, takeoff, valley_mask, valley_of_mean


def test_takeoff_on_hand_made_trajectories():
    # columns are samples: rising late, rising at once, flat (censored), peak before the end, tiny rise
    losses = torch.tensor(
        [
            [1.0, 0.0, 2.0, 0.0, 5.0],
            [1.0, 1.0, 2.0, 0.2, 5.0],
            [1.02, 2.0, 2.0, 2.0, 5.0 + 5e-7],
            [1.5, 3.0, 2.0, 0.5, 5.0],
            [2.0, 4.0, 2.0, 0.1, 5.0],
        ],
        dtype=torch.float64,
    )
    dist = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64)[:, None].expand(5, 5)
    n = normalized_loss(losses)
    assert n[:, 0].tolist() == pytest.approx([0, 0, 0.02, 0.5, 1])
    assert torch.isnan(n[:, 2]).all() and torch.isnan(n[:, 4]).all()
    to = takeoff(losses, dist, tau=0.1)
    assert to.step.tolist() == [3, 1, -1, 1, -1]
    assert to.width[0] == pytest.approx(0.2) and to.width[1] == 0.0 and to.width[3] == 0.0
    assert torch.isnan(to.width[2]) and torch.isnan(to.width[4])
    assert to.censored.tolist() == [False, False, True, False, True]
    assert to.lower_bound.tolist() == pytest.approx([0.4] * 5)
    assert takeoff(losses, dist, tau=0.6).step.tolist()[:2] == [4, 3]
    with pytest.raises(ValueError):
        takeoff(losses, dist, tau=0.0)


def test_valley_mask_and_peaks():
    s = torch.tensor(
        [
            [5.0, 1.0, 1.0, 1.0, 1.0],
            [4.0, 2.0, 4.0, 4.0, 1.0],
            [3.0, 3.0, 2.5, 3.0, 1.0],
            [2.0, 4.0, 1.0, 3.0, 1.0],
        ]
    )
    step, peak = sharpness_peaks(s)
    assert step.tolist() == [0, 3, 1, 1, 0]
    # peak at the start, peak at the end, inside and below half, inside but above half, flat
    assert valley_mask(s).tolist() == [False, False, True, False, False]
    assert valley_of_mean([1.0, 4.0, 1.0]) == {"sharpness_peak_step": 1, "sharpness_final_over_peak": 0.25}

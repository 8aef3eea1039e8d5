"""The attack losses (flatcli.core.attack_losses): written-out formulas, their gradients, DLR's scale invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from flatcli.core.attack_losses import attack_loss, check_loss, cw_loss, dlr_loss, succeeded
from flatcli.errors import UsageError


def _reference(z: torch.Tensor, y: int, t: int | None, loss: str) -> torch.Tensor:
    """The formulas as the module docstring writes them, one sample at a time with Python indexing."""
    k = z.shape[0]
    ordered = sorted(range(k), key=lambda j: float(z[j].detach()), reverse=True)
    if loss == "cw":
        if t is None:
            return max(z[j] for j in range(k) if j != y) - z[y]
        return z[t] - max(z[j] for j in range(k) if j != t)
    if t is None:
        return -(z[y] - max(z[j] for j in range(k) if j != y)) / (z[ordered[0]] - z[ordered[2]] + 1e-12)
    return -(z[y] - z[t]) / (z[ordered[0]] - (z[ordered[2]] + z[ordered[3]]) / 2 + 1e-12)


def _logits(seed: int, n: int = 6, k: int = 7) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@pytest.mark.parametrize("loss", ["cw", "dlr"])
@pytest.mark.parametrize("targeted", [False, True])
def test_value_and_gradient_match_autograd_of_the_written_formula(loss, targeted):
    z = _logits(1).requires_grad_(True)
    y = torch.tensor([0, 3, 6, 2, 1, 5])
    t = torch.tensor([4, 0, 1, 5, 2, 3]) if targeted else None
    ours = attack_loss(z, y, t, loss)
    (g_ours,) = torch.autograd.grad(ours.sum(), z)
    z_ref = z.detach().clone().requires_grad_(True)
    ref = torch.stack([_reference(z_ref[i], int(y[i]), None if t is None else int(t[i]), loss) for i in range(len(y))])
    (g_ref,) = torch.autograd.grad(ref.sum(), z_ref)
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    # and against finite differences (no ties among the logits, so the formula is smooth here)
    assert torch.autograd.gradcheck(lambda v: attack_loss(v, y, t, loss), (z.detach().clone().requires_grad_(True),))


def test_cw_gradient_is_the_difference_of_two_unit_vectors():
    z = _logits(2).requires_grad_(True)
    y = torch.tensor([1, 1, 2, 3, 4, 5])
    (g,) = torch.autograd.grad(cw_loss(z, y).sum(), z)
    runner_up = z.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
    expected = F.one_hot(runner_up, 7).double() - F.one_hot(y, 7).double()
    torch.testing.assert_close(g, expected)


def test_ce_is_the_cross_entropy_and_targeted_its_negative_to_the_target():
    z, y, t = _logits(3), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([6, 6, 0, 0, 1, 1])
    torch.testing.assert_close(attack_loss(z, y), F.cross_entropy(z, y, reduction="none"))
    torch.testing.assert_close(attack_loss(z, y, t, "ce"), -F.cross_entropy(z, t, reduction="none"))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-2, 4), shift=st.floats(-50, 50), targeted=st.booleans())
def test_dlr_is_invariant_to_scaling_and_shifting_the_logits(seed, log_scale, shift, targeted):
    z = _logits(seed, n=8, k=10)
    top = z.sort(dim=1, descending=True).values
    keep = (top[:, 0] - top[:, 2] > 0.1) & (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 > 0.1)  # denominators not ~0
    z = z[keep]
    y = torch.arange(len(z)) % 10
    t = (y + 3) % 10 if targeted else None
    s = 10.0 ** log_scale
    base = dlr_loss(z, y, t)
    # s * denominator >= 1e-3, so the 1e-12 in it moves the value by at most 1e-9 relative
    torch.testing.assert_close(dlr_loss(s * z, y, t), base, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(dlr_loss(z + shift, y, t), base, rtol=1e-8, atol=1e-10)
    # the margin scales with s instead
    torch.testing.assert_close(cw_loss(s * z, y, t), s * cw_loss(z, y, t), rtol=1e-10, atol=1e-10)


def test_success_and_sign_of_the_margin_agree():
    z, y = _logits(4, n=50), torch.arange(50) % 7
    assert torch.equal(succeeded(z, y), cw_loss(z, y) > 0)
    t = (y + 1) % 7
    assert torch.equal(succeeded(z, y, t), cw_loss(z, y, t) > 0)


def test_check_loss_names_the_problem():
    check_loss("dlr", 3)
    with pytest.raises(UsageError, match="unknown loss"):
        check_loss("hinge")
    with pytest.raises(UsageError, match="at least 3 classes"):
        check_loss("dlr", 2)
    with pytest.raises(UsageError, match="at least 4 classes"):
        check_loss("dlr", 3, targeted=True)

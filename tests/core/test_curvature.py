"""Closed forms of flatcli.sharpness against independent float64 oracles (autograd Hessians)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flatcli.core.curvature import cross_entropy, head_measures, softmax_terms

D = torch.float64  # every tensor here is float64 (the default dtype is left alone)


def _problem(k: int, m: int, b: int, bias: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(b, m, generator=g, dtype=D) * 1.5
    W = torch.randn(k, m, generator=g, dtype=D) / m**0.5 * 2
    bvec = torch.randn(k, generator=g, dtype=D) if bias else None
    y = torch.randint(0, k, (b,), generator=g)
    return phi, W, bvec, y


def _hessian(phi, W, bvec, y):
    """Hessian of the batch-mean loss w.r.t. vec(W) (row-major), by autograd."""
    k, m = W.shape

    def loss(wflat):
        return F.cross_entropy(F.linear(phi, wflat.view(k, m), bvec), y)

    return torch.autograd.functional.hessian(loss, W.reshape(-1))


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("bias", [True, False])
def test_trace_and_full_flatness_match_autograd_hessian(k, bias):
    m, b = 7, 5
    phi, W, bvec, y = _problem(k, m, b, bias, seed=k + bias)
    H = _hessian(phi, W, bvec, y)
    meas = head_measures(phi, W, bvec, y)
    # Data-set value = mean of per-sample values (the Hessian of the mean loss is the mean Hessian).
    trace = meas["trace_h"].mean()
    assert torch.allclose(trace, torch.trace(H), rtol=1e-10, atol=0)
    # relative sharpness uses ||W||_F^2 by default.
    assert torch.allclose(meas["relative_sharpness"].mean(), (W**2).sum() * torch.trace(H), rtol=1e-10)
    # Full relative flatness: explicit double sum over (m x m)-blocks of H indexed by columns s, s' of W:
    # sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'}), with H_{s,s'}[i, j] = d^2 L / dW[i,s] dW[j,s'].
    H4 = H.view(k, m, k, m)
    full = 0.0
    for s in range(m):
        for t in range(m):
            block = H4[:, s, :, t]
            full = full + torch.dot(W[:, s], W[:, t]) * torch.trace(block)
    assert torch.allclose(meas["relative_flatness_full"].mean(), full, rtol=1e-10)
    assert (meas["relative_flatness_full"] <= meas["relative_sharpness"] * (1 + 1e-12)).all()


def test_per_sample_values_match_single_sample_hessians():
    phi, W, bvec, y = _problem(10, 6, 4, True, seed=3)
    meas = head_measures(phi, W, bvec, y)
    for i in range(4):
        H = _hessian(phi[i : i + 1], W, bvec, y[i : i + 1])
        assert torch.allclose(meas["trace_h"][i], torch.trace(H), rtol=1e-10)


def test_grad_norm_and_loss_match_autograd():
    phi, W, bvec, y = _problem(10, 8, 6, True, seed=5)
    meas = head_measures(phi, W, bvec, y)
    for i in range(6):
        w = W.clone().requires_grad_(True)
        loss = F.cross_entropy(F.linear(phi[i : i + 1], w, bvec), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, w)
        assert torch.allclose(meas["grad_norm"][i], g.norm(), rtol=1e-10)
        assert torch.allclose(meas["loss"][i], loss, rtol=1e-12)


def test_trace_needs_no_label_and_plain_norm():
    phi, W, bvec, y = _problem(10, 8, 6, True, seed=7)
    with_label = head_measures(phi, W, bvec, y)
    without = head_measures(phi, W, bvec)
    assert torch.equal(with_label["trace_h"], without["trace_h"])
    assert "loss" not in without
    plain = head_measures(phi, W, bvec, weight_norm="plain")
    assert torch.allclose(plain["relative_sharpness"], W.norm() * without["trace_h"], rtol=1e-12)


def test_flat_regime_keeps_relative_precision():
    """For huge margins, 1 - p_top and -log p_y are tiny but must not round to 0 (Lemma 11 regime)."""
    logits = torch.tensor([[60.0, 0.0, 0.0]], dtype=D)
    y = torch.tensor([0])
    _, c, rest = softmax_terms(logits)
    exact_rest = 2 * torch.exp(torch.tensor(-60.0, dtype=D)) / (1 + 2 * torch.exp(torch.tensor(-60.0, dtype=D)))
    assert torch.allclose(rest, exact_rest, rtol=1e-12)
    # c = sum_j p_j (1 - p_j) ~ 2 * rest for a confident prediction
    assert torch.allclose(c, 2 * exact_rest, rtol=1e-12)
    assert torch.allclose(cross_entropy(logits, y), torch.log1p(2 * torch.exp(torch.tensor(-60.0, dtype=D))), rtol=1e-12)
    # A wrong label on the same logits: ordinary large loss.
    assert torch.allclose(cross_entropy(logits, torch.tensor([1])), torch.tensor(60.0 + 1e-26, dtype=D), rtol=1e-12)


def test_scaling_head_flattens():
    phi, W, bvec, y = _problem(10, 8, 32, True, seed=11)
    def sharp(s):
        return head_measures(phi, s * W, s * bvec, y)["relative_sharpness"]

    # Lemma 11: large s makes the network flat (near-ties need a larger s than the bulk).
    assert sharp(100).median() < sharp(1).median() * 1e-6
    assert sharp(1e4).mean() < sharp(1).mean() * 1e-6

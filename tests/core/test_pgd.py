"""The PGD core (flatcli.core.attacks.pgd) against a PGD written out step by step.

Oracles: torchattacks' update order (step, project, clamp) written out in the test, and the per-sample
runs of a per-sample eps.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from flatcli.core.attacks import base, geometry
from flatcli.core.attacks.pgd import PGD, pgd
from flatcli.errors import UsageError
from flatcli.inputs.data import load_data
from flatcli.models.head import HeadSplit
from flatcli.models.loading import load_model

EXAMPLE = "example:digits-cnn"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded():
    return load_model(EXAMPLE)


@pytest.fixture(scope="module")
def batch():
    ds = load_data("digits", "test", limit=48)
    return ds.x.clone(), ds.y.clone()


class Spy:
    """A forward callable that remembers every input it is called with (the iterates x_t)."""

    def __init__(self, split):
        self.split = split
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x):
        self.inputs.append(x.detach().clone())
        return self.split(x)


def reference_pgd(model, x0, y, norm, eps, alpha, steps):
    """PGD written out step by step, torchattacks' update order: step, project, clamp."""
    adv = x0.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = adv.detach()
        if norm == "linf":
            adv = adv + alpha * g.sign()
            delta = torch.clamp(adv - x0, min=-eps, max=eps)
        else:
            g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            adv = adv + alpha * g / g_norm
            delta = adv - x0
            d_norm = delta.flatten(1).norm(dim=1)
            delta = delta * torch.min(eps / d_norm, torch.ones_like(d_norm)).view(-1, 1, 1, 1)
        adv = torch.clamp(x0 + delta, min=0, max=1).detach()
    return adv


# ------------------------------------------------------------------------------------------------
# The attack
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.1, 0.02), ("l2", 0.5, 0.1)])
@pytest.mark.parametrize("start", [False, True])
def test_every_iterate_in_ball_and_box(loaded, batch, norm, eps, alpha, start):
    x, y = batch
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        spy = Spy(split)
        gen = torch.Generator().manual_seed(1)
        res = pgd(spy, x, y, norm=norm, eps=eps, alpha=alpha, steps=8, random_start=start, record=True, generator=gen)
    assert len(spy.inputs) == 9  # 8 steps + one final forward, nothing more
    for xt in spy.inputs + [res.x_adv]:
        assert xt.min() >= 0 and xt.max() <= 1
        delta = (xt - x).flatten(1)
        dist = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (dist <= eps + 1e-6).all()
    # the recorded distances are those of the iterates
    for t, xt in enumerate(spy.inputs):
        torch.testing.assert_close(res.dist_l2[t], (xt - x).flatten(1).norm(dim=1), rtol=1e-6, atol=1e-7)
    assert res.dist_l2.max() > 0.5 * (eps if norm == "l2" else 0)  # it moved


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_changes_nothing(loaded, batch, norm):
    x, y = batch
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        res = pgd(split, x, y, norm=norm, eps=0.0, alpha=0.05, steps=5, random_start=True, record=True,
                  generator=torch.Generator().manual_seed(0))
        clean = F.cross_entropy(split(x)[0], y, reduction="none")
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.objective, clean.detach())
    assert (res.dist_l2 == 0).all() and (res.dist_linf == 0).all()


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.1, 0.01), ("l2", 0.6, 0.08)])
def test_matches_reference_pgd(loaded, batch, norm, eps, alpha):
    x, y = batch
    want = reference_pgd(loaded.model, x, y, norm, eps, alpha, steps=10)
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        got = PGD(norm=norm, eps=eps, alpha=alpha, steps=10).run(split, x, y)
        recorded = PGD(norm=norm, eps=eps, alpha=alpha, steps=10).run(split, x, y, record=True)
    assert (got.x_adv - want).abs().max() <= 1e-6
    assert torch.equal(got.x_adv, recorded.x_adv)  # recording does not change the attack
    assert got.logits is None and got.phi is None  # no final forward, nothing kept without record


def test_any_callable_works():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    x = torch.rand(5, 1, 2, 3)
    y = torch.tensor([0, 1, 2, 0, 1])

    def forward(inp):
        phi = inp.flatten(1)
        return lin(phi), phi

    res = pgd(forward, x, y, norm="l2", eps=0.3, alpha=0.1, steps=4, record=True)
    assert res.phi.shape == (5, 5, 6) and res.logits_by_step.shape == (5, 5, 3)
    assert (res.dist_l2[-1] <= 0.3 + 1e-6).all()
    torch.testing.assert_close(res.phi[-1], res.x_adv.flatten(1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_eps_equals_separate_runs(loaded, batch, norm):
    x, y = batch
    x, y = x[:6], y[:6]
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.3, 1.0])
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        together = pgd(split, x, y, norm=norm, eps=eps, alpha=0.02, steps=6, record=True)
        for i in range(6):
            alone = pgd(split, x[i : i + 1], y[i : i + 1], norm=norm, eps=float(eps[i]), alpha=0.02, steps=6)
            assert (together.x_adv[i] - alone.x_adv[0]).abs().max() <= 1e-6
    dist = together.dist_linf[-1] if norm == "linf" else together.dist_l2[-1]
    assert (dist <= eps + 1e-6).all()


def test_restarts_keep_highest_final_loss(loaded, batch):
    x, y = batch
    settings = dict(norm="linf", eps=0.15, alpha=0.01, steps=3, random_start=True)
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        best = pgd(split, x, y, restarts=3, generator=torch.Generator().manual_seed(7), **settings)
        gen = torch.Generator().manual_seed(7)
        singles = [pgd(split, x, y, restarts=1, record=True, generator=gen, **settings) for _ in range(3)]
    losses = torch.stack([s.objective for s in singles])
    torch.testing.assert_close(best.objective, losses.max(0).values)
    assert torch.equal(best.restart, losses.argmax(0))
    for i in range(len(y)):
        assert torch.equal(best.x_adv[i], singles[int(best.restart[i])].x_adv[i])
    assert best.restart.unique().numel() > 1


def test_an_own_loss_replaces_the_cross_entropy(loaded, batch):
    x, y = batch
    settings = dict(norm="linf", eps=0.15, alpha=0.02, steps=4, random_start=True, restarts=2)
    calls = []

    def ce(inp, logits, phi):  # the default objective, given as an own loss: the same attack
        calls.append(inp.requires_grad)
        return F.cross_entropy(logits, y, reduction="none")

    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        plain = pgd(split, x, y, generator=torch.Generator().manual_seed(3), record=True, **settings)
        own = pgd(split, x, y, generator=torch.Generator().manual_seed(3), record=True, loss=ce, **settings)
        down = pgd(split, x, y, norm="linf", eps=0.15, alpha=0.02, steps=4,
                   loss=lambda inp, logits, phi: -F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(plain.x_adv, own.x_adv) and torch.equal(plain.restart, own.restart)
    torch.testing.assert_close(plain.objective, own.objective)
    torch.testing.assert_close(plain.phi, own.phi)
    assert len(calls) == 2 * (4 + 1) and all(calls)  # every step and each restart's final objective, with grad
    with torch.no_grad():
        assert F.cross_entropy(loaded.model(down.x_adv), y) < F.cross_entropy(loaded.model(x), y)


def test_targeted_moves_towards_target(loaded, batch):
    x, y = batch
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        target = torch.full_like(y, 3)
        res = pgd(split, x, y, norm="linf", eps=0.3, alpha=0.03, steps=20, target=target, record=True)
        ll = base.least_likely(split(x)[0])
        res_ll = pgd(split, x, y, norm="linf", eps=0.3, alpha=0.03, steps=20, target=ll, record=True)
    assert (res.logits.argmax(1) == 3).float().mean() > 0.9
    assert (res_ll.logits.argmax(1) == ll).float().mean() > 0.8
    # the targeted objective is minus the cross-entropy to the target
    torch.testing.assert_close(res.objective, -F.cross_entropy(res.logits, target, reduction="none"))


def test_random_start_l2_is_uniform_in_volume():
    x0 = torch.full((20000, 1, 1, 2), 0.5)
    start = geometry.random_start(x0, 0.1, "l2", torch.Generator().manual_seed(0))
    r = (start - x0).flatten(1).norm(dim=1)
    assert (r <= 0.1 + 1e-7).all()
    # in d = 2 dimensions, P(r <= eps/2) = 1/4 for the volume-uniform law (1/2 for a uniform radius)
    assert abs((r <= 0.05).float().mean().item() - 0.25) < 0.015
    box = geometry.random_start(x0, 0.1, "linf", torch.Generator().manual_seed(0))
    assert ((box - x0).abs() <= 0.1 + 1e-7).all() and (box - x0).abs().max() > 0.09


def test_settings_refuse_bad_values():
    for bad in (dict(eps=-0.1), dict(alpha=-1.0), dict(steps=-1), dict(norm="l1"), dict(restarts=0),
                dict(eps=float("nan")), dict(restarts=2)):
        with pytest.raises(UsageError):
            PGD(**bad)
    assert PGD.from_options("basin", eps=0.5) == PGD(norm="l2", eps=0.5, alpha=0.001, steps=25)
    assert PGD.from_options("uncanny") == PGD(norm="linf", eps=8 / 255, alpha=2 / 255, steps=10)
    with pytest.raises(UsageError):
        PGD.from_options("nope")

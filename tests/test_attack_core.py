"""The PGD core (flatcli.attacks) and the trajectory statistics (flatcli.trajectory), as a library.

Oracles: a PGD written out step by step (torchattacks' update order: step, project, clamp), the
per-sample runs of a per-sample eps, and ``flatrob sharpness``'s own pipeline on the iterates.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flatcli import attacks
from flatcli.attacks import PGD, pgd
from flatcli.data import DataSource, load_data
from flatcli.errors import UsageError
from flatcli.head import HeadSplit, Scaling
from flatcli.measure import SharpnessSettings, measure_sharpness
from flatcli.model import load_model
from flatcli.trajectory import (
    AttackSettings,
    normalized_loss,
    run_attack,
    sharpness_peaks,
    takeoff,
    valley_mask,
    valley_of_mean,
)

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


def test_targeted_moves_towards_target(loaded, batch):
    x, y = batch
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        target = torch.full_like(y, 3)
        res = pgd(split, x, y, norm="linf", eps=0.3, alpha=0.03, steps=20, target=target, record=True)
        ll = attacks.least_likely(split(x)[0])
        res_ll = pgd(split, x, y, norm="linf", eps=0.3, alpha=0.03, steps=20, target=ll, record=True)
    assert (res.logits.argmax(1) == 3).float().mean() > 0.9
    assert (res_ll.logits.argmax(1) == ll).float().mean() > 0.8
    # the targeted objective is minus the cross-entropy to the target
    torch.testing.assert_close(res.objective, -F.cross_entropy(res.logits, target, reduction="none"))


def test_random_start_l2_is_uniform_in_volume():
    x0 = torch.full((20000, 1, 1, 2), 0.5)
    start = attacks.random_start(x0, 0.1, "l2", torch.Generator().manual_seed(0))
    r = (start - x0).flatten(1).norm(dim=1)
    assert (r <= 0.1 + 1e-7).all()
    # in d = 2 dimensions, P(r <= eps/2) = 1/4 for the volume-uniform law (1/2 for a uniform radius)
    assert abs((r <= 0.05).float().mean().item() - 0.25) < 0.015
    box = attacks.random_start(x0, 0.1, "linf", torch.Generator().manual_seed(0))
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


def test_model_mode_restored_and_bn_untouched(loaded):
    ds = load_data("digits", "test", limit=20)
    model = loaded.model
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    model.train()
    try:
        run_attack(loaded, ds, AttackSettings(attack=PGD(eps=0.1, alpha=0.02, steps=3)), device=CPU)
        assert model.training and bn.training
        assert torch.equal(bn.running_mean, before)
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


# ------------------------------------------------------------------------------------------------
# Recording equals `flatrob sharpness` on the iterates
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", [Scaling(), Scaling(2.5, False)])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_recorded_measures_equal_sharpness_on_iterates(loaded, norm, scaling):
    ds = load_data("digits", "test", limit=40)
    seen: list[torch.Tensor] = []
    hook = loaded.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    rows: list[dict] = []
    attack = PGD(norm=norm, eps=0.2 if norm == "linf" else 1.0, alpha=0.03 if norm == "linf" else 0.15, steps=6)
    try:
        run_attack(loaded, ds, AttackSettings(attack=attack, batch_size=64, scaling=scaling), device=CPU, on_steps=rows.extend)
    finally:
        hook.remove()
    iterates = seen[1:]  # the first call is HeadSplit.verify on the clean batch
    assert len(iterates) == attack.steps + 1  # one forward per step plus one final forward
    assert len(rows) == len(ds) * (attack.steps + 1)
    by_step = {t: {r["index"]: r for r in rows if r["step"] == t} for t in range(attack.steps + 1)}
    for t, xt in enumerate(iterates):
        source = DataSource(name="iterate", input_shape=(1, 8, 8), num_classes=10, x=xt, y=ds.y, index=ds.index)
        measured: list[dict] = []
        measure_sharpness(loaded, source, SharpnessSettings(scaling=scaling), device=CPU, on_rows=measured.extend)
        for want in measured:
            got = by_step[t][want["index"]]
            for key in ("relative_sharpness", "trace_h", "confidence", "p_true", "loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12), (t, key)
            assert got["pred"] == want["pred"] and got["correct"] == (want["pred"] == want["label"])


# ------------------------------------------------------------------------------------------------
# Take-off, basin width, uncanny valley: pure functions
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Acceptance: the uncanny valley on the bundled example (paper §6.2, Fig. 3)
# ------------------------------------------------------------------------------------------------


def test_uncanny_valley_on_example(loaded):
    ds = load_data("digits", "test")
    out = run_attack(loaded, ds, AttackSettings(attack=PGD(norm="linf", eps=0.3, alpha=0.03, steps=20)), device=CPU)
    s = out.summary
    sharp = s["mean_sharpness_by_step"]
    loss = s["mean_loss_by_step"]
    peak = s["sharpness_peak_step"]
    assert 0 < peak < 20
    assert sharp[-1] < 0.5 * sharp[peak]
    assert s["sharpness_final_over_peak"] == pytest.approx(sharp[-1] / sharp[peak])
    assert loss[-1] == max(loss) and s["loss_final_is_max"]
    assert s["valley_fraction"] > 0.5
    assert s["robust_accuracy"] <= s["clean_accuracy"]
    assert s["takeoff"]["measured"] + s["takeoff"]["censored"] == s["n"] == len(ds)
    assert math.isfinite(s["takeoff"]["width"]["median"])

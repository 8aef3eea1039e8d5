"""flatcli.sweep: cached-feature evaluation against the scaled model itself, Spearman, medians, settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flatcli import data as datamod
from flatcli.attacks import PGD, eval_mode
from flatcli.errors import UsageError
from flatcli.head import HeadSplit
from flatcli.model import load_model
from flatcli.sweep import (
    SCALE_KEYS, SweepSettings, censored_median, check_scales, parse_scales, rankdata, run_sweep, spearman,
)
from flatcli.trajectory import takeoff

EXAMPLE = "example:digits-cnn"


@pytest.fixture(scope="module")
def example():
    return load_model(EXAMPLE, device="cpu")


# ------------------------------------------------------------------------------------------------
# Spearman with numpy ranks
# ------------------------------------------------------------------------------------------------


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]
    assert rankdata([3.0]).tolist() == [1.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 40).astype(float)  # many ties
    b = a * 0.5 + rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    c = rng.normal(size=25)
    d = -np.exp(c) + 0.01 * rng.normal(size=25)
    assert spearman(c, d) == pytest.approx(stats.spearmanr(c, d).statistic, abs=1e-12)


def test_spearman_degenerate_is_nan():
    assert np.isnan(spearman([1, 2], [2, 1]))
    assert np.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)


def test_censored_median_is_not_a_number_when_half_are_censored():
    w = np.array([0.1, 0.2, 0.3, np.nan])
    assert censored_median(w, np.array([False, False, False, True])) == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert censored_median(w[:3], np.array([False, False, False])) == pytest.approx(0.2)
    assert censored_median(np.array([0.1, np.nan, np.nan]), np.array([False, True, True])) is None
    assert censored_median(np.zeros(0), np.zeros(0, dtype=bool)) is None


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------


def test_parse_scales():
    assert parse_scales("0.25, 1,10") == (0.25, 1.0, 10.0)
    for bad, fragment in (("", "comma-separated"), ("1,x", "'x'"), ("1,0", "> 0"), ("1,-2", "> 0"),
                          ("1,inf", "finite"), ("1,2,1", "twice")):
        with pytest.raises(UsageError, match=fragment):
            parse_scales(bad)
    with pytest.raises(UsageError, match="at least one"):
        check_scales(())


def test_settings_reject_bad_values():
    with pytest.raises(UsageError, match="takeoff"):
        SweepSettings(takeoff=0)
    with pytest.raises(UsageError, match="weight-norm"):
        SweepSettings(weight_norm="cubed")


# ------------------------------------------------------------------------------------------------
# Cached features == the scaled model itself on the stored iterates
# ------------------------------------------------------------------------------------------------


def _iterates(loaded, x, y, attack: PGD) -> torch.Tensor:
    """The iterates x_0 .. x_T of the attack, captured from the inputs of its own forward calls."""
    seen: list[torch.Tensor] = []
    with eval_mode(loaded.model), HeadSplit(loaded.model, loaded.head, loaded.layer) as split:

        def recording(z):
            seen.append(z.detach().clone())
            return split(z)

        attack.run(recording, x, y, record=True)
    return torch.stack(seen)  # (T+1, B, ...)


def _scaled_copy(loaded, s: float, scale_bias: bool):
    """An independent float64 copy of the network with its head weights multiplied by s."""
    model = copy.deepcopy(loaded.model).double().eval()
    head = model.net.get_submodule(loaded.layer)
    with torch.no_grad():
        head.weight.mul_(s)
        if scale_bias and head.bias is not None:
            head.bias.mul_(s)
    return model


@pytest.mark.parametrize("scale_bias", [True, False])
def test_cached_features_equal_direct_evaluation_of_the_scaled_model(example, scale_bias):
    ds = datamod.load_data("digits", "test", 12)
    attack = PGD(norm="l2", eps=0.5, alpha=0.05, steps=8)
    scales = (0.5, 1.0, 3.0, 20.0)
    settings = SweepSettings(scales=scales, trajectory=attack, attack=None, scale_bias=scale_bias, batch_size=5)
    out = run_sweep(example, ds, settings, device=torch.device("cpu"))

    x, y = ds.x.clone(), ds.y.clone()
    iterates = _iterates(example, x, y, attack)  # the same deterministic trajectories (no random start)
    assert iterates.shape[0] == attack.steps + 1
    dist = torch.linalg.vector_norm((iterates - x[None]).flatten(2), dim=2).double()
    for i, s in enumerate(scales):
        model = _scaled_copy(example, s, scale_bias)
        with torch.no_grad():
            losses = torch.stack([F.cross_entropy(model(xt.double()), y, reduction="none") for xt in iterates])
            clean_logits = model(x.double())
        increase = losses[-1] - losses[0]
        np.testing.assert_allclose(out.samples["loss_increase"][i], increase.numpy(), rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(out.samples["clean_loss"][i], losses[0].numpy(), rtol=2e-4, atol=1e-6)
        np.testing.assert_array_equal(out.samples["clean_pred"][i], clean_logits.argmax(1).numpy())
        # the whole per-step loss curve of every kept trajectory, not only its end points
        np.testing.assert_allclose(out.examples["loss"][i], losses.numpy(), rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(out.examples["dist_l2"], dist.numpy(), rtol=1e-5, atol=1e-7)
        # take-off from the direct losses, where the rise is far from the censoring threshold
        direct = takeoff(losses, dist, settings.takeoff)
        clear = (losses.max(0).values - losses[0]).numpy() > 1e-3
        np.testing.assert_array_equal(out.samples["takeoff_step"][i][clear], direct.step.numpy()[clear])
        np.testing.assert_allclose(out.samples["width"][i][clear], direct.width.numpy()[clear], rtol=1e-5)
    rec = out.summary["scales"]
    assert [r["scale"] for r in rec] == list(scales)
    assert all(tuple(r) == SCALE_KEYS for r in rec)
    assert all(r["robust_accuracy"] is None and r["transfer_accuracy"] is None for r in rec)


def test_features_are_computed_once_per_iterate_not_per_scale(example, monkeypatch):
    """The feature extractor runs steps + 1 times per batch for the trajectories, whatever the number
    of scales (plus one clean forward for the structural check)."""
    ds = datamod.load_data("digits", "test", 8)
    calls = {"n": 0}
    net = example.model.net
    original = type(net).forward

    def counting(self, z):
        calls["n"] += 1
        return original(self, z)

    monkeypatch.setattr(type(net), "forward", counting)
    attack = PGD(norm="l2", eps=0.1, alpha=0.02, steps=4)
    for scales in ((1.0,), (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0)):
        calls["n"] = 0
        run_sweep(example, ds, SweepSettings(scales=scales, trajectory=attack, attack=None, batch_size=8),
                  device=torch.device("cpu"))
        assert calls["n"] == 1 + attack.steps + 1, scales  # verify + T gradient forwards + final forward


def test_scale_one_is_evaluated_even_when_not_requested(example):
    ds = datamod.load_data("digits", "test", 10)
    attack = PGD(norm="l2", eps=0.5, alpha=0.05, steps=6)
    per_scale = PGD(norm="linf", eps=0.1, alpha=0.05, steps=2)
    with_one = run_sweep(example, ds, SweepSettings(scales=(1.0, 10.0), trajectory=attack, attack=per_scale),
                         device=torch.device("cpu"))
    without = run_sweep(example, ds, SweepSettings(scales=(10.0,), trajectory=attack, attack=per_scale),
                        device=torch.device("cpu"))
    assert [r["scale"] for r in without.summary["scales"]] == [10.0]
    assert without.summary["spearman_width_sharpness"] == with_one.summary["spearman_width_sharpness"]
    assert without.summary["scales"][0] == with_one.summary["scales"][1]  # transfer still from s=1

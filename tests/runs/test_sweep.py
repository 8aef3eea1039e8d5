"""``flatrob sweep-scale``'s pass (flatcli.runs.sweep): cached-feature evaluation against the scaled model itself, settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flatcli.inputs import data as datamod
from flatcli.core.classifier import eval_mode
from flatcli.core.attacks import PGD
from flatcli.errors import UsageError
from flatcli.models.head import HeadSplit
from flatcli.models.loading import load_model
from flatcli.core.trajectories import takeoff
from flatcli.runs.sweep import SCALE_KEYS, SweepSettings, check_scales, parse_scales, sweep_scale
from tests.conftest import run_context

EXAMPLE = "example:digits-cnn"


@pytest.fixture(scope="module")
def example():
    return load_model(EXAMPLE, device="cpu")


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
    with pytest.raises(UsageError, match="weight_norm="):
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
    settings = SweepSettings(scales=scales, trajectory=attack, attack=None, scale_bias=scale_bias)
    out = sweep_scale(run_context(example, ds, batch_size=5), settings).artifacts["outcome"]

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
        sweep_scale(run_context(example, ds, batch_size=8), SweepSettings(scales=scales, trajectory=attack, attack=None))
        assert calls["n"] == 1 + attack.steps + 1, scales  # verify + T gradient forwards + final forward


def test_scale_one_is_evaluated_even_when_not_requested(example):
    ds = datamod.load_data("digits", "test", 10)
    attack = PGD(norm="l2", eps=0.5, alpha=0.05, steps=6)
    per_scale = PGD(norm="linf", eps=0.1, alpha=0.05, steps=2)
    with_one = sweep_scale(run_context(example, ds), SweepSettings(scales=(1.0, 10.0), trajectory=attack, attack=per_scale))
    without = sweep_scale(run_context(example, ds), SweepSettings(scales=(10.0,), trajectory=attack, attack=per_scale))
    assert [r["scale"] for r in without.summary["scales"]] == [10.0]
    assert without.summary["spearman_width_sharpness"] == with_one.summary["spearman_width_sharpness"]
    assert without.summary["scales"][0] == with_one.summary["scales"][1]  # transfer still from s=1


def test_a_signal_stops_the_per_scale_attacks_within_the_batch(example, monkeypatch):
    """SIGTERM/SIGINT during a batch stops sweep-scale before its next attack, not after every scale of the batch
    (issue 24: it took 37 s); the unfinished batch is never stored, so --resume recomputes it."""
    import signal

    from flatcli.errors import Interrupted
    from flatcli.runtime import interrupts

    ds = datamod.load_data("digits", "test", 8)
    runs = {"n": 0}
    original = PGD.run

    def signalled(self, *args, **kwargs):
        runs["n"] += 1
        interrupts._state["pending"] = signal.SIGTERM  # as the handler does inside a batch loop
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PGD, "run", signalled)
    settings = SweepSettings(scales=(1.0, 10.0, 100.0), trajectory=PGD(norm="l2", eps=0.1, alpha=0.02, steps=2),
                             attack=PGD(norm="linf", eps=0.1, alpha=0.02, steps=2))
    try:
        with pytest.raises(Interrupted):
            sweep_scale(run_context(example, ds, batch_size=8), settings)
    finally:
        interrupts._state["pending"] = None
    assert runs["n"] == 1  # the signal came during the trajectories' attack: no per-scale attack ran after it

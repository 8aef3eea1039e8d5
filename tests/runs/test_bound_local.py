"""``bound`` runs the local Lipschitz estimate only when asked, and stops between its power iterations on Ctrl-C."""

from __future__ import annotations

import signal

import pytest

import flatcli.core.lipschitz
from flatcli.errors import Interrupted
from flatcli.inputs.data import load_data
from flatcli.models.loading import load_model
from flatcli.runs.bound import BoundSettings, bound
from flatcli.runtime import interrupts
from tests.conftest import EXAMPLE, run_context


@pytest.fixture(scope="module")
def ctx():
    return run_context(load_model(EXAMPLE), load_data("digits", split="test", limit=40), batch_size=20)


def test_upper_never_calls_the_local_estimate(ctx, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the local estimate ran under lipschitz='upper'")

    monkeypatch.setattr(flatcli.core.lipschitz, "local_estimate", refuse)
    for settings in (BoundSettings(epsilons=(0.1,)), BoundSettings(epsilons=(0.1,), lipschitz=3.0)):
        lip = bound(ctx, settings).summary["lipschitz"]
        assert lip["local"] is None and lip["local_index"] is None and lip["upper_over_local"] is None
        assert lip["upper"] > 0


@pytest.mark.parametrize("settings", [BoundSettings(epsilons=(0.1,), lipschitz="local"),
                                      BoundSettings(epsilons=(0.1,), check_steps=2)])
def test_local_or_a_check_computes_it(ctx, settings):
    lip = bound(ctx, settings).summary["lipschitz"]
    assert 0 < lip["local"] <= lip["upper"] and lip["upper_over_local"] >= 1


def test_an_interrupt_stops_between_power_iterations(ctx, monkeypatch):
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted(signal.SIGINT, "interrupted")

    monkeypatch.setattr(interrupts, "check", check)
    with pytest.raises(Interrupted):
        bound(ctx, BoundSettings(epsilons=(0.1,), lipschitz="local", local_iters=50))
    assert len(calls) == 3  # not after the batch's 50 iterations

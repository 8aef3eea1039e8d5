"""An attack whose take-offs resolve no basin says so: one note, ``summary.degenerate_attack``, the MNIST presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import flatcli.api as fr
from flatcli.core.attacks import PRESETS
from flatcli.options.attack import PRESET_NAMES
from flatcli.runs.sanity import degenerate_attack

LINF = {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}


def test_preset_names_are_the_presets():
    assert PRESET_NAMES == tuple(PRESETS)
    assert PRESETS["mnist"] == {"norm": "linf", "eps": 0.3, "alpha": 0.01, "steps": 40}
    basin = PRESETS["mnist-basin"]
    assert basin["alpha"] * basin["steps"] == pytest.approx(basin["eps"])  # as in the paper's basin preset


def test_every_takeoff_at_step_one_is_degenerate():
    check = degenerate_attack(np.ones(7, dtype=int), 0, steps=10, tau=0.1, attack=LINF, success_rate=0.1)
    assert (check["reason"], check["takeoff_step_min"], check["takeoff_step_max"]) == ("early_takeoff", 1, 1)
    assert (check["straight_line_step"], check["measured"], check["presets"]) == (1, 7, ["mnist", "mnist-basin"])
    assert "every basin width is 0" in check["note"] and "eps 0.03137" in check["note"]
    assert "too small" in check["note"] and "mnist (PGD-linf, 40 steps, eps 0.3, alpha 0.01)" in check["note"]
    assert "too large" in degenerate_attack(np.ones(7, dtype=int), 0, steps=10, tau=0.1, attack=LINF,
                                            success_rate=0.9)["note"]


@pytest.mark.parametrize(("steps", "takeoffs", "degenerate"), [
    (25, [3, 3, 4], True),  # l2 0.025 on digits: a straight line takes off at ceil(2.5) = 3; one step of slack
    (25, [3, 5], False),  # 5 is later than a straight line allows
    (10, [1, 2, 2], True),  # 8/255 on digits
    (10, [1, 2, 3], False),
    (40, [5, 10, 14], False),  # the mnist preset on digits
    (4, [1, 1], True),  # a straight line at 1, a quadratic basin at ceil(sqrt(0.1) 4) = 2: no slack
    (4, [1, 2], False),
    (3, [1, 1], None),  # 3 steps cannot tell a straight line (1) from a basin (1)
    (1, [1, 1], None),  # square: the clean input and the adversarial only
])
def test_takeoffs_no_later_than_a_straight_line(steps, takeoffs, degenerate):
    check = degenerate_attack(np.array(takeoffs), 0, steps=steps, tau=0.1, attack=LINF)
    assert (check is not None) == bool(degenerate)


def test_an_attack_without_alpha_is_named_without_it():  # APGD sets its own step size
    check = degenerate_attack(np.ones(3, dtype=int), 0, steps=10, tau=0.1, attack={"norm": "l2", "eps": 0.5})
    said = check["note"].split("; for MNIST-like data")[0]  # before the presets, which have their own alpha
    assert "eps 0.5 (l2) is probably" in said and ", alpha" not in said


def test_every_trajectory_censored_and_nothing_measured():
    check = degenerate_attack(np.zeros(0, dtype=int), 5, steps=10, tau=0.1, attack=LINF)
    assert check["reason"] == "censored" and check["censored"] == 5 and "all 5 censored" in check["note"]
    assert degenerate_attack(np.zeros(0, dtype=int), 0, steps=10, tau=0.1, attack=LINF) is None


@pytest.fixture(scope="module")
def digits_net():
    """An MLP trained on the 8x8 digits in a second, with 60 of its inputs."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, (x[-60:], y[-60:])


def test_the_papers_setting_on_digits_notes_it_and_the_mnist_preset_does_not(digits_net):
    net, data = digits_net
    paper = fr.attack(net, data, preset="uncanny", device="cpu", samples=False)
    check = paper.summary["degenerate_attack"]
    assert check["reason"] == "early_takeoff" and check["takeoff_step_max"] <= 2
    assert paper.config["preset"] == "uncanny"
    lines = [n for n in paper.notes if "take-off" in n]
    assert len(lines) == 1 and "\n" not in lines[0] and "mnist" in lines[0]
    mnist = fr.attack(net, data, preset="mnist", device="cpu", samples=False)
    assert "degenerate_attack" not in mnist.summary and not any("take-off" in n for n in mnist.notes)
    assert (mnist.config["preset"], mnist.config["preset_values"]) == ("mnist", PRESETS["mnist"])
    assert mnist.summary["takeoff"]["step"]["max"] > 5


def test_sweep_checks_its_fixed_trajectories(digits_net):
    net, data = digits_net
    basin = fr.sweep_scale(net, data, scales=[1, 10], attack_each_scale=False, device="cpu", samples=False)
    assert basin.summary["degenerate_attack"]["reason"] == "early_takeoff"
    assert any("take-off" in n for n in basin.notes)
    wide = fr.sweep_scale(net, data, scales=[1, 10], preset="mnist-basin", attack_each_scale=False, device="cpu",
                          samples=False)
    assert "degenerate_attack" not in wide.summary and wide.config["trajectory"]["preset"] == "mnist-basin"


def test_the_cli_prints_the_note_on_stderr(cli):
    res = cli("attack", "example:digits-cnn", "--limit", "10", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["degenerate_attack"]["reason"] == "early_takeoff"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: every take-off is at step")

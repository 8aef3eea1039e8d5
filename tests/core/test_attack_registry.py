"""The attack interface and registry (flatcli.core.attacks): a toy attack added by one class and one
``register`` line runs through ``flatrob attack``'s recording path; options are named, never flagged."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import flatcli.core.attacks.registry as registry
from flatcli.core.attack_losses import attack_loss
from flatcli.core.attacks import (
    ATTACKS, PGD, Attack, AttackResult, Recorder, attack_class, attack_kinds, batch_generator, make_attack, register,
)
from flatcli.core.attacks.geometry import project
from flatcli.errors import OptionError
from flatcli.inputs.data import load_data
from flatcli.models.head import HeadSplit
from flatcli.models.loading import load_model
from flatcli.runs.attack import AttackSettings, attack
from tests.conftest import EXAMPLE, run_context


@dataclass(frozen=True)
class SignNoise(Attack):
    """A toy attack: ``steps`` random corners ``x0 + eps * s_t`` (uniform signs ``s_t``, projected onto the
    ball and the box); the adversarial is the last one."""

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 3
    restarts: int = 1
    loss: str = "ce"

    kind = "noise"
    summary = "random sign noise of size eps (a toy)"
    draws_own_start = True

    def describe(self) -> str:
        return f"noise-{self.norm} eps {self.eps:g}, {self.steps} draws"

    def attempt(self, forward, x0, y, *, target, recorder: Recorder | None, generator, final) -> AttackResult:
        x = x0
        for t in range(self.steps + 1):
            if t:
                signs = torch.randint(0, 2, x0.shape, generator=generator).mul(2).sub(1).to(x0)
                x = project(x0 + self.eps * signs, x0, self.eps, self.norm)
            with torch.no_grad():
                logits, phi = forward(x)
            if recorder is not None:
                recorder(x, logits, phi)
        return AttackResult(x_adv=x, restart=torch.zeros(0), logits=logits,
                            objective=attack_loss(logits, y, target, self.loss), x_start=x0)


@pytest.fixture
def toy(monkeypatch):
    """The registry with the toy registered (a copy, so other tests see the real one)."""
    monkeypatch.setattr(registry, "ATTACKS", dict(registry.ATTACKS))
    register(SignNoise)  # the one registry line an attack needs
    return SignNoise


@pytest.fixture(scope="module")
def loaded():
    return load_model(EXAMPLE)


def test_a_registered_attack_is_a_choice_built_from_presets_and_options(toy):
    assert attack_kinds() == ("pgd", "apgd", "square", "noise") and attack_class("noise") is toy
    assert toy.options() == ("norm", "eps", "steps", "restarts", "loss")
    built = make_attack("noise", "basin", steps=2)  # the preset gives norm and eps; alpha is not an option of it
    assert (built.norm, built.eps, built.steps) == ("l2", 0.025, 2)
    assert built.config() == {"attack": "noise", "norm": "l2", "eps": 0.025, "steps": 2, "restarts": 1, "loss": "ce"}
    assert built.describe() == "noise-l2 eps 0.025, 2 draws"
    for option in ("alpha", "queries", "random_start"):
        with pytest.raises(OptionError, match="does not apply to the noise attack") as err:
            make_attack("noise", **{option: 1})
        assert err.value.options == (option,)
    with pytest.raises(ValueError, match="twice"):
        register(SignNoise)
    with pytest.raises(ValueError, match="summary"):
        register(type("Nameless", (SignNoise,), {"kind": "nameless", "summary": ""}))
    assert "noise" not in ATTACKS  # the real registry is untouched


def test_a_registered_attack_runs_through_the_recording_path(toy, loaded, tmp_path):
    ds = load_data("digits", "test", limit=24)
    settings = AttackSettings.from_options(attack="noise", eps=0.3, steps=3, restarts=2)
    path = tmp_path / "traj.jsonl"
    result = attack(run_context(loaded, ds), settings, trajectory=str(path), keep_samples=True)
    assert result.config["attack"] == "noise" and result.summary["steps"] == 3
    assert len(result.summary["mean_loss_by_step"]) == 4
    # the same batch, attacked directly with the run's generator: the restarts' selection and the iterates
    x, y = ds.x, ds.y
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        best = settings.attack.run(split, x, y, record=True, keep_iterates=True, generator=batch_generator(0, 0))
        gen = batch_generator(0, 0)
        singles = [toy(eps=0.3, steps=3).run(split, x, y, record=True, generator=gen) for _ in range(2)]
    objectives = torch.stack([s.objective for s in singles])
    torch.testing.assert_close(best.objective, objectives.max(0).values)
    assert torch.equal(best.restart, objectives.argmax(0)) and best.restart.unique().numel() == 2
    assert [r["restart"] for r in result.samples] == best.restart.tolist()
    # recorded per step: the model's cross-entropy and distances at the iterates themselves
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows[:4]] == [0, 1, 2, 3] and len(rows) == 4 * len(y)
    with torch.no_grad():
        ce = torch.stack([F.cross_entropy(loaded.model(xt), y, reduction="none") for xt in best.x_by_step])
    by_step = {key: torch.tensor([r[key] for r in rows], dtype=torch.float64).view(len(y), 4).T for key in ("loss", "dist_linf")}
    torch.testing.assert_close(by_step["loss"], ce.double(), rtol=1e-5, atol=1e-5)
    dist = by_step["dist_linf"]
    assert (dist[0] == 0).all() and (dist[1:] <= 0.3 + 1e-6).all() and (dist[1:] > 0.29).all()


def test_every_attack_states_a_summary_and_a_description():
    pytest.importorskip("torchattacks")  # Square needs it to be built
    for kind, cls in ATTACKS.items():
        assert cls.kind == kind and cls.summary and "--" not in cls.summary
        assert cls.from_options(None).describe().lower().startswith(kind)
        assert set(cls.options()) >= {"norm", "eps", "restarts", "loss", cls.steps_option}


def test_errors_name_options_not_flags():
    with pytest.raises(OptionError) as err:
        make_attack("pgd", steps=-1)
    assert err.value.options == ("steps",) and str(err.value).startswith("steps= must be")
    assert err.value.worded(lambda name: f"--{name}").startswith("--steps must be")
    with pytest.raises(OptionError) as err:
        PGD(restarts=3)
    assert set(err.value.options) == {"restarts", "random_start"}
    with pytest.raises(OptionError) as err:
        make_attack("fgsm")
    assert err.value.options == ("attack",) and "pgd, apgd, square" in str(err.value)
    with pytest.raises(OptionError, match=re.escape("'{x}'")):  # a brace the user typed cannot break the wording
        make_attack("pgd", loss="{x}")


def test_core_attacks_hold_no_flag():
    core = Path(__file__).resolve().parents[2] / "flatcli" / "core"
    files = sorted((core / "attacks").glob("*.py")) + [core / "attack_losses.py", core / "trajectories.py"]
    flagged = [f"{f.name}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
               if re.search(r"--[a-z]", line)]
    assert flagged == []

"""The attack options shared by attack, sweep-scale and detect: which attack, its threat model and budget.

Values left unset come from ``preset`` (each command has its default preset; :data:`flatcli.core.attacks.PRESETS`);
the attack itself checks the ranges of what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.base import Group, choice, integer, number, switch

#: The names of :data:`flatcli.core.attacks.PRESETS` (a test keeps them equal; this module imports no torch).
PRESET_NAMES = ("uncanny", "basin", "robust", "mnist", "mnist-basin")
NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "dlr")


def attack_kinds() -> tuple[str, ...]:
    """The attacks of the registry (:mod:`flatcli.core.attacks`), then GCG on language models
    (:mod:`flatcli.core.gcg`), read when an option is checked."""
    from flatcli.core.attacks import attack_kinds as registered
    from flatcli.core.gcg import KIND

    return (*registered(), KIND)


@dataclass(frozen=True)
class PGDOptions(Group):
    """A PGD attack from a preset, with which of its values overridden (and Square's query budget)."""

    title = "Attack"
    key = "attack"

    preset: str | None = choice(None, "Paper settings: uncanny (PGD-linf, 10 steps, eps 8/255, alpha 2/255; §6.2), "
                                "basin (PGD-l2, 25 steps, eps 0.025, alpha 0.001; §6.1), robust (PGD-l2, 50 steps, eps "
                                "0.5, alpha 0.01; D.2); for MNIST-like data (1x28x28 in [0, 1]), where those are "
                                "degenerate: mnist (PGD-linf, 40 steps, eps 0.3, alpha 0.01; Madry et al. 2018), "
                                "mnist-basin (PGD-l2, 25 steps, eps 2, alpha 0.08; the §6.1 sweep). Explicit options "
                                "override it.", PRESET_NAMES)
    norm: str | None = choice(None, "Threat model: linf or l2 (default: from --preset).", NORMS)
    eps: float | None = number(None, "Radius of the eps-ball around each input (default: from --preset).")
    alpha: float | None = number(None, "Step size (default: from --preset).")
    steps: int | None = integer(None, "Number of PGD steps (default: from --preset).")
    queries: int | None = integer(None, "Query budget per restart of --attack square (default 5000).")
    random_start: bool = switch(False, "Start from a uniform point of the eps-ball (linf: box, l2: volume).",
                                negatable=True)
    restarts: int = integer(1, "Random restarts; per sample the one with the highest final loss is kept.")


@dataclass(frozen=True)
class AttackOptions(PGDOptions):
    """Which attack, from which preset, with which of its values overridden."""

    attack: str | None = choice(None, "pgd (default), apgd (Auto-PGD: step-size halving, momentum), square "
                                "(gradient-free, torchattacks' Square; --queries sets its budget), or gcg (a language "
                                "model's prompts: GCG, Zou et al. 2023; the GCG options).", attack_kinds)
    loss: str | None = choice(None, "Loss the attack ascends: ce (cross-entropy), cw (logit margin) or dlr (Croce & "
                              "Hein's difference-of-logits ratio); default ce, cw for square. Recording always "
                              "reports the cross-entropy.", LOSSES)

    def make(self, default_preset: str):
        """The attack these options name (:func:`flatcli.core.attacks.make_attack`), unset values from the preset."""
        from flatcli.core.attacks import make_attack

        values = self.values()
        kind, preset = values.pop("attack"), values.pop("preset")
        return make_attack(kind, preset or default_preset, **values)

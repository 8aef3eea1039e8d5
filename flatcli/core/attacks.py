"""Which attack ``--attack pgd|apgd|square`` names, built from a preset and the options given.

Every attack has the same face: ``run(forward, x, y, *, target, record, keep_iterates, generator)``
returning a :class:`flatcli.core.pgd.PGDResult`, ``config()``, ``steps``, ``norm``, ``eps``,
``random_start``, ``restarts``, ``loss``, ``kind`` and ``recorded_steps`` (the recorded trajectory has
``recorded_steps + 1`` points: every iterate for PGD and APGD, the clean input and the adversarial for
Square). Presets (:data:`flatcli.core.pgd.PRESETS`) give the norm, eps and (PGD, APGD) steps; options
given override them; an option an attack has no use for is refused, naming it.
"""

from __future__ import annotations

from typing import Union

from flatcli.core.apgd import APGD
from flatcli.core.pgd import PGD, PRESETS
from flatcli.core.square import DEFAULT_QUERIES, Square
from flatcli.errors import UsageError

ATTACKS = ("pgd", "apgd", "square")
Attack = Union[PGD, APGD, Square]


def make_attack(kind: str | None = "pgd", preset: str | None = "uncanny", *, norm=None, eps=None, alpha=None,
                steps=None, queries=None, random_start: bool = False, restarts: int = 1, loss=None) -> Attack:
    """The attack ``kind`` (default PGD) with the preset's values, overridden by every option given.

    ``loss`` defaults to ``ce`` (PGD, APGD) and to ``cw``, the margin loss, for Square.
    """
    kind = kind or "pgd"
    if kind not in ATTACKS:
        raise UsageError(f"unknown attack {kind!r}; use --attack pgd, apgd or square")
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if kind == "pgd":
        if queries is not None:
            raise UsageError("--queries is the query budget of --attack square; PGD takes --steps")
        return PGD.from_options(preset, norm=norm, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                                restarts=restarts, loss=loss)
    values = dict(PRESETS[preset]) if preset else {}
    values.pop("alpha", None)
    values.update({k: v for k, v in {"norm": norm, "eps": eps}.items() if v is not None})
    if alpha is not None:
        step = "2 eps, halved on plateaus" if kind == "apgd" else "squares of a shrinking size"
        raise UsageError(f"--alpha: --attack {kind} sets its own steps ({step}); drop --alpha")
    if kind == "apgd":
        if queries is not None:
            raise UsageError("--queries is the query budget of --attack square; APGD takes --steps")
        if steps is not None:
            values["steps"] = steps
        return APGD(**values, random_start=random_start, restarts=restarts, loss=loss or "ce")
    if steps is not None:
        raise UsageError("--attack square counts queries, not steps: use --queries N instead of --steps")
    if random_start:
        raise UsageError("--attack square starts from its own random stripes; drop --random-start")
    values.pop("steps", None)
    return Square(**values, steps=DEFAULT_QUERIES if queries is None else queries, restarts=restarts,
                  loss=loss or "cw")


def describe_attack(attack: Attack) -> str:
    """One line for figure titles: ``PGD-linf eps 0.1, alpha 0.025, 10 steps, loss ce``."""
    norm, eps, loss = attack.norm, attack.eps, attack.loss
    if attack.kind == "pgd":
        return f"PGD-{norm} eps {eps:g}, alpha {attack.alpha:g}, {attack.steps} steps, loss {loss}"
    if attack.kind == "apgd":
        return f"APGD-{norm} eps {eps:g}, {attack.steps} iterations, loss {loss}"
    return f"Square-{norm} eps {eps:g}, {attack.steps} queries, loss {loss}"

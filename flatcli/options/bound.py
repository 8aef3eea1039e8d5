"""The options of bound that need a model: the empirical check of the radius and the local Lipschitz estimate."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.attack import LOSSES
from flatcli.options.base import Group, choice, integer, switch


@dataclass(frozen=True)
class BoundChecks(Group):
    """Measured from a checkpoint: attack every sample inside its certified radius, and how L is estimated."""

    title = "Check"
    key = "checks"

    check: bool = switch(False, "Attack each sample with PGD-l2 inside its certified radius and report the largest "
                         "loss increase.")
    check_steps: int | None = integer(None, "PGD-l2 steps per sample for --check [default: 20].")
    loss: str | None = choice(None, "Loss the --check attack ascends: ce (default), cw or dlr.", LOSSES)
    local_iters: int | None = integer(None, "Power iterations per batch for the local Lipschitz estimate "
                                      "[default: 50].")

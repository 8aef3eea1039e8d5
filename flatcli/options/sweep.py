"""The options of sweep-scale: the scales, and the second attack it runs on every scaled model (D.3)."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.options.attack import LOSSES, NORMS
from flatcli.options.base import Group, choice, integer, number, numbers, switch

#: The scales of §6.1.
DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0)


@dataclass(frozen=True)
class SweepOptions(Group):
    """Which scales s of the head, and the per-scale attack (unset values: PGD-linf, 10 steps, eps 8/255,
    alpha 2/255, the uncanny preset)."""

    title = "Sweep"
    key = "sweep"

    scales: tuple[float, ...] = numbers(DEFAULT_SCALES, "Comma-separated head scales s (W -> sW); §6.1 uses 0.25..50, "
                                        "D.3 goes to 100.", above=0)
    attack_each_scale: bool = switch(True, "Attack every scaled model (D.3) and evaluate the s=1 adversarials at every "
                                     "scale.", negatable=True)
    attack_norm: str | None = choice(None, "Per-scale attack threat model: linf or l2 (default: linf).", NORMS)
    attack_eps: float | None = number(None, "Per-scale attack radius (default: 8/255).")
    attack_alpha: float | None = number(None, "Per-scale attack step size (default: 2/255).")
    attack_steps: int | None = integer(None, "Per-scale attack PGD steps (default: 10).")
    attack_loss: str | None = choice(None, "Loss of the per-scale attack: ce (default), cw or dlr.", LOSSES)
    square: bool = switch(False, "Also run the gradient-free Square attack (torchattacks) on every scaled model.")
    masking_threshold: float = number(0.05, "Flag masking when margin-loss PGD, Square or transfer leaves this much "
                                      "less robust accuracy than the attack (a fraction).", minimum=0)

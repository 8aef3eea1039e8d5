"""The limits of an attack's options and the checks every attack shares, raising errors that name the option.

Each check raises :class:`flatcli.errors.OptionError` with the option's library name (``steps``, ``eps``,
``alpha``, ``restarts``, ``queries``, ``norm``, ``preset``, ...); the CLI words it as a flag, the API as a
keyword. Values the user typed are quoted with :func:`shown`, so a brace in them cannot break the wording.
"""

from __future__ import annotations

import math

from flatcli.core.attack_losses import check_loss
from flatcli.core.attacks.geometry import NORMS
from flatcli.errors import OptionError, literal

#: The largest eps / alpha: inputs live in [0, 1], and an l2 ball of radius sqrt(C H W) (388 for
#: 3x224x224) already holds the whole box; beyond this float32 arithmetic only overflows.
MAX_RADIUS = 1e4
#: The most steps (recording keeps every iterate's features: memory grows with the steps).
MAX_STEPS = 1000
#: The most restarts.
MAX_RESTARTS = 100

#: The attack settings a preset names: explicit options override it. The paper's (DESIGN.md §2) are made for
#: CIFAR-10; on MNIST-like data (1x28x28 in [0, 1], strokes on a blank background) they are degenerate (8/255:
#: no valley, every take-off at step 1 or 2; l2 0.025: the loss rises linearly, every take-off at the same step),
#: so ``mnist`` is Madry et al. (2018)'s MNIST attack and ``mnist-basin`` the §6.1 sweep at MNIST's usual l2
#: budget, alpha = eps / steps as in ``basin``. On a CNN trained on the digits upsampled to 28x28 (200 test
#: images) 90% of the take-off steps lie from 5 to 14 of 40 (median 10; 94% of the samples in the valley) and
#: from 4 to 21 of 25 (median 15, basin width median 1.1): docs/data.md, "Attack presets for MNIST-like data".
PRESETS: dict[str, dict] = {
    "uncanny": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10},  # §6.2, Fig. 3
    "basin": {"norm": "l2", "eps": 0.025, "alpha": 0.001, "steps": 25},  # §6.1, Fig. 2
    "robust": {"norm": "l2", "eps": 0.5, "alpha": 0.01, "steps": 50},  # D.2, adversarially trained
    "mnist": {"norm": "linf", "eps": 0.3, "alpha": 0.01, "steps": 40},  # Madry et al. 2018, MNIST
    "mnist-basin": {"norm": "l2", "eps": 2.0, "alpha": 0.08, "steps": 25},  # §6.1's sweep on MNIST-like data
}


def shown(value) -> str:
    """``repr(value)`` safe inside an :class:`OptionError` problem (braces doubled)."""
    return literal(repr(value))


def check_preset(preset: str | None) -> None:
    """``None`` or one of :data:`PRESETS`."""
    if preset is not None and preset not in PRESETS:
        raise OptionError("preset", f"unknown preset {shown(preset)}; {{}} takes one of {', '.join(PRESETS)}")


def check_ball(loss: str, norm: str, **radii: float) -> None:
    """A known loss and norm, each radius (``eps``, ``alpha``) a finite number in ``[0, MAX_RADIUS]``."""
    check_loss(loss)
    if norm not in NORMS:
        raise OptionError("norm", f"unknown norm {shown(norm)}; {{}} takes {' or '.join(NORMS)}")
    for name, value in radii.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_RADIUS):
            raise OptionError(name, f"{{}} must be a finite number from 0 to {MAX_RADIUS:g}, got {shown(value)}")


def check_count(option: str, value: int, low: int, high: int) -> None:
    """``value`` (of ``option``: steps, queries, restarts) is a whole number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(option, f"{{}} must be a whole number from {low} to {high:,}, got {shown(value)}")


def check_restarts(restarts: int, random_start: bool | None) -> None:
    """1 to :data:`MAX_RESTARTS` restarts; more than one needs a random start (``None``: the attack draws its own)."""
    check_count("restarts", restarts, 1, MAX_RESTARTS)
    if restarts > 1 and random_start is False:
        raise OptionError(("restarts", "random_start", "random_start", "restarts"),
                          f"{{}} of {restarts} without {{}} repeats the same deterministic attack; add {{}} or drop {{}}")

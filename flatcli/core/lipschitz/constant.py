"""The result of a Lipschitz computation (value, kind, detail), a given constant, and the head lookup."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from flatcli.core.classifier import Classifier
from flatcli.errors import LayerError, OptionError, literal

#: What every refusal to bound ``phi`` suggests instead.
HINT = "give the Lipschitz constant of phi as a number (the lipschitz option)"


@dataclass
class Lipschitz:
    """A Lipschitz constant of ``phi`` and where it came from.

    ``kind`` is ``"upper"`` (a sound bound through the module graph), ``"local"`` (the largest
    Jacobian spectral norm at the data: an estimate, not a certificate) or ``"given"`` (by the user).
    ``detail`` holds per-node factors (upper) or per-sample values (local).
    """

    value: float
    kind: str
    detail: dict = field(default_factory=dict)


def given(value: float) -> Lipschitz:
    """A Lipschitz constant the user passed (the ``lipschitz`` option): positive and finite, else OptionError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError("lipschitz", "{} must be a number, got " + literal(repr(value))) from None
    if not math.isfinite(v) or v <= 0:
        raise OptionError("lipschitz", f"{{}} must be positive and finite, got {v!r}")
    return Lipschitz(value=v, kind="given", detail={})


def head_module(model: Classifier, head: str) -> nn.Module:
    try:
        mod = model.layer(head)
    except AttributeError:
        raise LayerError(f"no layer {head!r} in the network; name the head layer (e.g. 'fc')") from None
    if not isinstance(mod, nn.Linear):
        raise LayerError(f"head layer {head!r} is {type(mod).__name__}, not nn.Linear")
    return mod

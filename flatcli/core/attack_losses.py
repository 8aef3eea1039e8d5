"""The per-sample losses an attack ascends (option ``loss``: ce, cw, dlr), untargeted and targeted.

``z`` are the logits (B, k), ``y`` the true labels, ``t`` the targets; every loss is per sample, and
the attack increases its sum over the batch:

* ``ce``: the cross-entropy ``CE(z, y) = -log softmax(z)_y``; targeted ``-CE(z, t)``.
* ``cw``: the logit margin of Carlini & Wagner, ``max_{j != y} z_j - z_y`` (positive iff the sample is
  misclassified); targeted ``z_t - max_{j != t} z_j`` (positive iff the prediction is the target). No
  confidence clamp: the gradient never vanishes, and positive scaling ``z -> s z`` scales the loss by s.
* ``dlr``: the difference-of-logits ratio of Croce & Hein (2020), with ``z_(1) >= z_(2) >= ...`` the
  sorted logits, ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)``; targeted
  ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)``. Invariant to shifting the logits and, up to
  the 1e-12, to scaling them: ``dlr(s z) = dlr(z)`` for ``s > 0``, and so is its input gradient.

With a margin loss the steps of PGD do not depend on a positive scaling of the logits (linf
``sign(s g) = sign(g)``, l2 ``s g / ||s g|| = g / ||g||``), so scaling the head cannot mask the gradient
the way it masks the cross-entropy's, whose softmax saturates in float32 (paper D.3).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from flatcli.errors import OptionError, literal

LOSSES = ("ce", "cw", "dlr")
#: Smallest number of classes each loss needs, untargeted and targeted (the DLR denominators).
MIN_CLASSES = {"ce": (2, 2), "cw": (2, 2), "dlr": (3, 4)}
#: Added to the DLR denominator (as Croce & Hein's reference code does).
DLR_TINY = 1e-12


def check_loss(loss: str, classes: int | None = None, targeted: bool = False) -> None:
    """Fail with :class:`OptionError` (naming ``loss``) for an unknown loss, or one the number of classes cannot
    support."""
    if loss not in LOSSES:
        raise OptionError("loss", f"unknown loss {literal(repr(loss))}; {{}} takes {', '.join(LOSSES)}")
    if classes is not None:
        need = MIN_CLASSES[loss][1 if targeted else 0]
        if classes < need:
            kind = "targeted " if targeted else ""
            raise OptionError(("loss", "loss"), f"{{}} {loss} ({kind}) needs at least {need} classes; the model "
                                                f"has {classes}: use {{}} ce or cw")


def _others_max(z: Tensor, cls: Tensor) -> Tensor:
    """``max_{j != cls} z_j`` per sample."""
    return z.scatter(-1, cls[:, None], float("-inf")).amax(dim=-1)


def _at(z: Tensor, cls: Tensor) -> Tensor:
    return z.gather(-1, cls[:, None]).squeeze(-1)


def cw_loss(z: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """``max_{j != y} z_j - z_y``, or targeted ``z_t - max_{j != t} z_j`` (per sample)."""
    if target is None:
        return _others_max(z, y) - _at(z, y)
    return _at(z, target) - _others_max(z, target)


def dlr_loss(z: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Croce & Hein's DLR loss (per sample; formulas in the module docstring)."""
    top = z.topk(3 if target is None else 4, dim=-1).values
    if target is None:
        return -(_at(z, y) - _others_max(z, y)) / (top[:, 0] - top[:, 2] + DLR_TINY)
    return -(_at(z, y) - _at(z, target)) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + DLR_TINY)


def ce_loss(z: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """``CE(z, y)``, or targeted ``-CE(z, t)`` (per sample)."""
    if target is None:
        return F.cross_entropy(z, y, reduction="none")
    return -F.cross_entropy(z, target, reduction="none")


_BY_NAME = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}


def attack_loss(z: Tensor, y: Tensor, target: Tensor | None = None, loss: str = "ce") -> Tensor:
    """The per-sample loss ``loss`` (one of :data:`LOSSES`) of logits ``z``; the attack increases it."""
    return _BY_NAME[loss](z, y, target)


def succeeded(z: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per sample: misclassified (untargeted), or classified as the target (targeted)."""
    pred = z.argmax(dim=-1)
    return pred != y if target is None else pred == target

"""Projected gradient descent (PGD-linf / PGD-l2), usable on any ``x -> (logits, phi)`` callable.

Conventions (DESIGN.md §2, chosen to match torchattacks' ``PGD`` / ``PGDL2`` so results compare):

* inputs in [0, 1]; the model (normalisation inside) is in eval mode (see :func:`flatcli.core.classifier.eval_mode`);
* the ascent direction is the gradient of the per-sample loss *summed* over the batch: the
  cross-entropy by default (targeted: minus the cross-entropy to the target class), or a margin loss
  of :mod:`flatcli.core.attack_losses` (``loss="cw"`` or ``"dlr"``); an adaptive attack passes its own
  per-sample ``loss(x, logits, phi)``;
* linf step ``x + alpha * sign(g)``; l2 step ``x + alpha * g / max(||g||_2, 1e-12)`` per sample; then
  project onto the eps-ball around the clean input and clamp to [0, 1]
  (:mod:`flatcli.core.attacks.geometry`);
* random start (off by default): linf uniform in the box, l2 uniform in the ball's volume;
* the adversarial is the final iterate ``x_T``; with restarts, per sample, the restart whose final
  objective (the attack's loss) is highest.
* ``zero_grad`` (B,): whether the input gradient of the first step is zero or underflows (every
  component below float's smallest normal number): the sign of gradient masking.

``eps`` and ``alpha`` are floats or per-sample tensors of shape (B,) (the bound command's check attacks each
sample within its own radius). The callable is typically a :class:`flatcli.models.head.HeadSplit` (any scaling
of the head), so the features ``phi`` of every iterate come from the very forward pass that gives the
gradient: with ``record=True`` they are recorded (:mod:`flatcli.core.attacks.recording`), with the
distances to ``x0``, and one final forward (no graph) gives ``x_T``'s. Nothing is recorded otherwise, and
no final forward is made unless restarts need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flatcli.core.attack_losses import attack_loss
from flatcli.core.attacks.base import Attack, AttackResult, Forward, Loss, gradient_vanished
from flatcli.core.attacks.geometry import ascent_step, per_sample, project, random_start
from flatcli.core.attacks.recording import Recorder


@dataclass(frozen=True)
class PGD(Attack):
    """A PGD configuration; :meth:`run` applies it. Invalid values raise :class:`flatcli.errors.OptionError`."""

    norm: str = "linf"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = False
    restarts: int = 1
    loss: str = "ce"

    kind = "pgd"
    summary = "projected gradient descent: steps of size alpha along the gradient's sign (linf) or direction (l2)"
    refusals = {"queries": ("{} is the query budget of the square attack; PGD takes {}", "steps")}

    def describe(self) -> str:
        return (f"PGD-{self.norm} eps {self.eps:g}, alpha {self.alpha:g}, {self.steps} steps, "
                f"loss {self.loss}")

    def attempt(self, forward: Forward, x0: Tensor, y: Tensor, *, target: Tensor | None, recorder: Recorder | None,
                generator: torch.Generator | None, final: bool, eps: float | Tensor | None = None,
                alpha: float | Tensor | None = None, loss: Loss | None = None) -> AttackResult:
        """One restart; ``eps``/``alpha`` may be overridden (e.g. per sample), and an own
        ``loss(x, logits, phi)`` replaces the configured :attr:`loss`."""
        norm = self.norm
        eps = per_sample(self.eps if eps is None else eps, x0)
        alpha = per_sample(self.alpha if alpha is None else alpha, x0)
        loss = self.loss if loss is None else loss
        x = random_start(x0, eps, norm, generator) if self.random_start else x0.clone()
        x_start = x.detach()
        zero_grad = None
        for _ in range(self.steps):
            x.requires_grad_(True)
            logits, phi = forward(x)
            obj = (loss(x, logits, phi) if callable(loss) else attack_loss(logits, y, target, loss)).sum()
            (grad,) = torch.autograd.grad(obj, x)
            if zero_grad is None:
                zero_grad = gradient_vanished(grad)
            with torch.no_grad():
                x = x.detach()
                if recorder is not None:
                    recorder(x, logits, phi)
                x = project(ascent_step(x, grad, alpha, norm), x0, eps, norm)
        result = AttackResult(x_adv=x.detach(), restart=torch.zeros(0), x_start=x_start, zero_grad=zero_grad)
        if final:
            if not callable(loss):
                with torch.no_grad():
                    logits, phi = forward(x)
                    result.logits = logits.detach()
                    result.objective = attack_loss(result.logits, y, target, loss)
            else:  # an own objective may need gradients (e.g. probes of the input)
                x_final = x.detach().requires_grad_(True)
                logits, phi = forward(x_final)
                result.objective = loss(x_final, logits, phi).detach()
                result.logits = logits.detach()
            if recorder is not None:
                recorder(x, result.logits, phi)
        return result


def pgd(forward: Forward, x: Tensor, y: Tensor, *, norm: str = "linf", eps: float | Tensor = 8 / 255,
        alpha: float | Tensor = 2 / 255, steps: int = 10, random_start: bool = False, restarts: int = 1,
        target: Tensor | None = None, record: bool = False, keep_iterates: bool = False,
        generator: torch.Generator | None = None, loss: str | Loss = "ce") -> AttackResult:
    """:class:`PGD` on ``forward`` from the clean batch ``x`` with labels ``y``, as one call.

    ``eps`` and ``alpha`` may be per-sample tensors (B,); ``loss`` names the objective (``ce``, ``cw``,
    ``dlr``) or is an own per-sample ``loss(x, logits, phi)`` (then ``target`` is unused). See
    :meth:`flatcli.core.attacks.base.Attack.run` for ``target``, ``record``, ``keep_iterates`` and ``generator``.
    """
    own = callable(loss)
    attack = PGD(norm=norm, steps=steps, random_start=random_start, restarts=restarts, loss="ce" if own else loss)
    return attack.run(forward, x, y, eps=eps, alpha=alpha, loss=loss if own else None, target=target, record=record,
                      keep_iterates=keep_iterates, generator=generator)

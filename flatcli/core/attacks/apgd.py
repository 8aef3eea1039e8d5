"""Auto-PGD (Croce & Hein 2020, Algorithm 1): step-size halving on plateaus, momentum, checkpoints.

With ``N`` iterations, loss ``f`` (any of :mod:`flatcli.core.attack_losses`) and ``P`` the projection
onto the eps-ball and [0, 1] (:func:`flatcli.core.attacks.geometry.project`):

* ``eta = 2 eps`` per sample; ``x_1 = P(x_0 + eta * step(grad f(x_0)))``, then with ``a = 0.75``
  ``z = P(x_k + eta * step(grad f(x_k)))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``;
  ``step`` is ``sign`` (linf) or ``g / max(||g||_2, 1e-12)`` (l2), as in :func:`flatcli.core.attacks.geometry.ascent_step`;
* checkpoints as in the authors' code (and torchattacks' ``APGD``): the first after
  ``max(floor(0.22 N), 1)`` iterations, each next period ``max(floor(0.03 N), 1)`` shorter, down to
  ``max(floor(0.06 N), 1)``. At a checkpoint a sample halves its ``eta`` and restarts from its best
  point ``x_max`` (with the gradient there) when (1) ``f`` rose in at most ``rho = 0.75`` of the
  period's steps, or (2) its ``eta`` was not halved at the previous checkpoint and ``f_max`` has not
  grown since;
* every iterate ``x_0 .. x_N`` is evaluated (one forward and backward each, no final forward).

The adversarial, per sample, is the iterate that succeeds (misclassified; targeted: classified as the
target) with the highest loss, or the highest-loss iterate when none succeeds (robust accuracy then
counts a sample as broken when any iterate broke it, as AutoAttack does). With ``record=True`` step ``t``
records that answer among ``x_0 .. x_t`` -- what the attack returns had it stopped after ``t``
iterations -- so the last recorded step is the adversarial, as for PGD. With restarts, per sample the
restart whose adversarial succeeds, then the one with the higher loss, is kept (:meth:`APGD.better`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flatcli.core.attack_losses import attack_loss, succeeded
from flatcli.core.attacks.base import Attack, AttackResult, Forward, gradient_vanished
from flatcli.core.attacks.geometry import ascent_step, per_sample, project, random_start
from flatcli.core.attacks.recording import Recorder

#: Momentum ``a`` and the oscillation threshold ``rho`` of the paper (and of its reference code).
MOMENTUM = 0.75
RHO = 0.75


@dataclass(frozen=True)
class APGD(Attack):
    """An APGD configuration (``steps`` = iterations N); :meth:`run` applies it. Bad values raise :class:`OptionError`."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 10
    random_start: bool = False
    restarts: int = 1
    loss: str = "ce"

    kind = "apgd"
    summary = "Auto-PGD (Croce & Hein 2020): step size 2 eps halved on plateaus, momentum"
    min_steps = 1  # APGD needs at least one iteration
    refusals = {
        "alpha": ("APGD sets its own step size (2 eps, halved on plateaus); drop {}",),
        "queries": ("{} is the query budget of the square attack; APGD takes {}", "steps"),
    }

    def config(self) -> dict:
        return {**super().config(), "momentum": MOMENTUM, "rho": RHO}

    def describe(self) -> str:
        return f"APGD-{self.norm} eps {self.eps:g}, {self.steps} iterations, loss {self.loss}"

    def better(self, new: AttackResult, best: AttackResult, y: Tensor, target: Tensor | None) -> Tensor:
        """The restart whose adversarial succeeds, then the one with the higher loss."""
        return _better(new.objective, succeeded(new.logits, y, target), best.objective,
                       succeeded(best.logits, y, target))

    def attempt(self, forward: Forward, x0: Tensor, y: Tensor, *, target: Tensor | None, recorder: Recorder | None,
                generator: torch.Generator | None, final: bool, eps: float | Tensor | None = None) -> AttackResult:
        """One restart (``eps`` may be overridden, e.g. per sample); see the module docstring."""
        norm, steps, loss = self.norm, self.steps, self.loss
        eps = per_sample(self.eps if eps is None else eps, x0)
        B = x0.shape[0]
        view = (-1, *([1] * (x0.dim() - 1)))
        eta = 2 * (eps if isinstance(eps, Tensor) else torch.full((B,), eps, device=x0.device, dtype=x0.dtype).view(view))
        x = random_start(x0, eps, norm, generator) if self.random_start else x0.clone()
        x_start = x.detach()

        def evaluate(z: Tensor):
            z = z.detach().requires_grad_(True)
            logits, phi = forward(z)
            f = attack_loss(logits, y, target, loss)
            (g,) = torch.autograd.grad(f.sum(), z)
            return logits.detach(), phi.detach(), f.detach(), g.detach()

        logits, phi, f, grad = evaluate(x)
        zero_grad = gradient_vanished(grad)
        x = x.detach()
        # the best-loss point x_max (restarts from checkpoints) and the answer (success first, then loss)
        x_max, f_max, grad_max = x.clone(), f.clone(), grad.clone()
        ans = {"x": x.clone(), "f": f.clone(), "ok": succeeded(logits, y, target), "logits": logits, "phi": phi}
        if recorder is not None:
            recorder(ans["x"], ans["logits"], ans["phi"])
        periods = checkpoint_periods(steps)
        next_check = periods[0] if periods else steps + 1
        period = 0
        rises = torch.zeros(B, dtype=torch.long, device=x0.device)
        f_max_at_check = f_max.clone()
        halved_at_check = torch.ones(B, dtype=torch.bool, device=x0.device)  # no "no progress" halving at the first
        x_prev = x
        since = 0
        for i in range(steps):
            with torch.no_grad():
                a = 1.0 if i == 0 else MOMENTUM
                z = project(ascent_step(x, grad, eta, norm), x0, eps, norm)
                x_new = project(x + a * (z - x) + (1 - a) * (x - x_prev), x0, eps, norm)
            x_prev, x = x, x_new
            f_old = f
            logits, phi, f, grad = evaluate(x)
            with torch.no_grad():
                rises += f > f_old
                up = f > f_max
                x_max = torch.where(up.view(view), x, x_max)
                grad_max = torch.where(up.view(view), grad, grad_max)
                f_max = torch.where(up, f, f_max)
                ok = succeeded(logits, y, target)
                take = _better(f, ok, ans["f"], ans["ok"])
                ans = {
                    "x": torch.where(take.view(view), x, ans["x"]),
                    "f": torch.where(take, f, ans["f"]),
                    "ok": ans["ok"] | ok,
                    "logits": torch.where(take[:, None], logits, ans["logits"]),
                    "phi": torch.where(take[:, None], phi, ans["phi"]),
                }
                if recorder is not None:
                    recorder(ans["x"], ans["logits"], ans["phi"])
                since += 1
                if since == next_check:
                    k = periods[period]
                    halve = (rises.double() <= RHO * k) | (~halved_at_check & (f_max <= f_max_at_check))
                    eta = torch.where(halve.view(view), eta / 2, eta)
                    x = torch.where(halve.view(view), x_max, x)
                    grad = torch.where(halve.view(view), grad_max, grad)
                    halved_at_check, f_max_at_check = halve, f_max.clone()
                    rises.zero_()
                    since, period = 0, period + 1
                    next_check = periods[period] if period < len(periods) else steps + 1
        return AttackResult(x_adv=ans["x"], restart=torch.zeros(0), logits=ans["logits"], objective=ans["f"],
                            x_start=x_start, zero_grad=zero_grad)


def checkpoint_periods(steps: int) -> list[int]:
    """Lengths of the periods between checkpoints for ``steps`` iterations (the last may be cut short)."""
    first, shortest, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    periods, k, total = [], first, 0
    while total + k <= steps:
        periods.append(k)
        total += k
        k = max(k - decrease, shortest)
    return periods


def _better(f: Tensor, ok: Tensor, best_f: Tensor, best_ok: Tensor) -> Tensor:
    """Success first, then the higher loss (NaN never wins)."""
    return (ok & ~best_ok) | ((ok == best_ok) & (f > best_f))

"""Auto-PGD (Croce & Hein 2020, Algorithm 1): step-size halving on plateaus, momentum, checkpoints.

With ``N`` iterations, loss ``f`` (any of :mod:`flatcli.core.attack_losses`) and ``P`` the projection
onto the eps-ball and [0, 1] (:func:`flatcli.core.pgd.project`):

* ``eta = 2 eps`` per sample; ``x_1 = P(x_0 + eta * step(grad f(x_0)))``, then with ``a = 0.75``
  ``z = P(x_k + eta * step(grad f(x_k)))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``;
  ``step`` is ``sign`` (linf) or ``g / max(||g||_2, 1e-12)`` (l2), as in :func:`flatcli.core.pgd.ascent_step`;
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
restart whose adversarial succeeds, then the one with the higher loss, is kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from flatcli.core.attack_losses import succeeded
from flatcli.core.pgd import (
    MAX_STEPS, NORMS, Forward, PGDResult, ascent_step, check_ball, check_count, check_restarts, gradient_vanished,
    objective,
    per_sample, project, random_start,
)

#: Momentum ``a`` and the oscillation threshold ``rho`` of the paper (and of its reference code).
MOMENTUM = 0.75
RHO = 0.75


@dataclass(frozen=True)
class APGD:
    """An APGD configuration (``steps`` = iterations N); :meth:`run` applies it. Bad values raise :class:`UsageError`."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 10
    random_start: bool = False
    restarts: int = 1
    loss: str = "ce"

    kind = "apgd"

    @property
    def recorded_steps(self) -> int:
        return self.steps

    def __post_init__(self) -> None:
        check_ball(self.loss, self.norm, eps=self.eps)
        check_count("--steps", self.steps, 1, MAX_STEPS)  # APGD needs at least one iteration
        check_restarts(self.restarts, self.random_start)

    def config(self) -> dict:
        return {"attack": self.kind, **asdict(self), "momentum": MOMENTUM, "rho": RHO}

    def with_(self, **changes) -> "APGD":
        return replace(self, **changes)

    def run(self, forward: Forward, x: Tensor, y: Tensor, *, eps: float | Tensor | None = None,
            target: Tensor | None = None, record: bool = False, keep_iterates: bool = False,
            generator: torch.Generator | None = None) -> PGDResult:
        """:func:`apgd` with this configuration (``eps`` may be overridden, e.g. per sample)."""
        return apgd(forward, x, y, norm=self.norm, eps=self.eps if eps is None else eps, steps=self.steps,
                    random_start=self.random_start, restarts=self.restarts, loss=self.loss, target=target,
                    record=record, keep_iterates=keep_iterates, generator=generator)


def checkpoint_periods(steps: int) -> list[int]:
    """Lengths of the periods between checkpoints for ``steps`` iterations (the last may be cut short)."""
    first, shortest, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    periods, k, total = [], first, 0
    while total + k <= steps:
        periods.append(k)
        total += k
        k = max(k - decrease, shortest)
    return periods


def apgd(forward: Forward, x: Tensor, y: Tensor, *, norm: str = "linf", eps: float | Tensor = 8 / 255,
         steps: int = 10, random_start: bool = False, restarts: int = 1, loss: str = "ce",
         target: Tensor | None = None, record: bool = False, keep_iterates: bool = False,
         generator: torch.Generator | None = None) -> PGDResult:
    """APGD on ``forward`` (``x -> (logits, phi)``) from the clean batch ``x``; see the module docstring.

    Returns a :class:`flatcli.core.pgd.PGDResult` whose ``logits``/``objective`` are those of the
    adversarial, and with ``record`` (``keep_iterates``) the per-step answers as PGD records its iterates.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be >= 1")
    x0 = x.detach()
    eps_b = per_sample(eps, x0)
    best: PGDResult | None = None
    for r in range(restarts):
        result = _single(forward, x0, y, norm, eps_b, steps, random_start, loss, target, record,
                         keep_iterates and record, generator)
        result.restart = torch.full((x0.shape[0],), r, dtype=torch.long, device=x0.device)
        if best is None:
            best = result
        else:
            zero_grad = best.zero_grad
            best = _keep_better(best, result, y, target)
            best.zero_grad = zero_grad
    assert best is not None
    return best


def _better(f: Tensor, ok: Tensor, best_f: Tensor, best_ok: Tensor) -> Tensor:
    """Success first, then the higher loss (NaN never wins)."""
    return (ok & ~best_ok) | ((ok == best_ok) & (f > best_f))


def _single(forward, x0, y, norm, eps, steps, start, loss, target, record, keep_iterates, generator) -> PGDResult:
    B = x0.shape[0]
    view = (-1, *([1] * (x0.dim() - 1)))
    eta = 2 * (eps if isinstance(eps, Tensor) else torch.full((B,), eps, device=x0.device, dtype=x0.dtype).view(view))
    x = random_start(x0, eps, norm, generator) if start else x0.clone()
    x_start = x.detach()

    def evaluate(z: Tensor):
        z = z.detach().requires_grad_(True)
        logits, phi = forward(z)
        f = objective(logits, y, target, loss)
        (g,) = torch.autograd.grad(f.sum(), z)
        return logits.detach(), phi.detach(), f.detach(), g.detach()

    logits, phi, f, grad = evaluate(x)
    zero_grad = gradient_vanished(grad)
    x = x.detach()
    # the best-loss point x_max (restarts from checkpoints) and the answer (success first, then loss)
    x_max, f_max, grad_max = x.clone(), f.clone(), grad.clone()
    ans = {"x": x.clone(), "f": f.clone(), "ok": succeeded(logits, y, target), "logits": logits, "phi": phi}
    trace: dict[str, list[Tensor]] = {"phi": [], "logits": [], "d2": [], "dinf": [], "x": []}

    def keep(a: dict) -> None:
        if not record:
            return
        trace["phi"].append(a["phi"])
        trace["logits"].append(a["logits"])
        delta = (a["x"] - x0).flatten(1)
        trace["d2"].append(torch.linalg.vector_norm(delta, dim=1))
        trace["dinf"].append(delta.abs().amax(dim=1))
        if keep_iterates:
            trace["x"].append(a["x"])

    keep(ans)
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
            keep(ans)
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
    result = PGDResult(x_adv=ans["x"], restart=torch.zeros(0), logits=ans["logits"], objective=ans["f"],
                       x_start=x_start, zero_grad=zero_grad)
    if record:
        result.phi = torch.stack(trace["phi"])
        result.logits_by_step = torch.stack(trace["logits"])
        result.dist_l2 = torch.stack(trace["d2"])
        result.dist_linf = torch.stack(trace["dinf"])
        if keep_iterates:
            result.x_by_step = torch.stack(trace["x"])
    return result


def _keep_better(best: PGDResult, new: PGDResult, y: Tensor, target: Tensor | None) -> PGDResult:
    """Per sample, the restart whose adversarial succeeds, then the one with the higher loss."""
    take = _better(new.objective, succeeded(new.logits, y, target), best.objective, succeeded(best.logits, y, target))

    def pick(a: Tensor | None, b: Tensor | None, dim: int) -> Tensor | None:
        if a is None or b is None:
            return None
        shape = [1] * a.dim()
        shape[dim] = -1
        return torch.where(take.view(shape), b, a)

    return PGDResult(**{
        name: pick(getattr(best, name), getattr(new, name), 1 if name in _BY_STEP else 0)
        for name in ("x_adv", "restart", "logits", "objective", "phi", "logits_by_step", "dist_l2", "dist_linf",
                     "x_start", "x_by_step")
    })


_BY_STEP = ("phi", "logits_by_step", "dist_l2", "dist_linf", "x_by_step")

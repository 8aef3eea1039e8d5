"""Projected gradient descent (PGD-linf / PGD-l2), usable on any ``x -> (logits, phi)`` callable.

Conventions (docs/commands/attack.md, chosen to match torchattacks' ``PGD`` / ``PGDL2`` so results compare):

* inputs in [0, 1]; the model (normalisation inside) is in eval mode (see :func:`flatcli.core.classifier.eval_mode`);
* the ascent direction is the gradient of the per-sample loss *summed* over the batch: the
  cross-entropy by default (targeted: minus the cross-entropy to the target class), or a margin loss
  of :mod:`flatcli.core.attack_losses` (``loss="cw"`` or ``"dlr"``); an adaptive attack passes its own
  per-sample ``loss(x, logits, phi)``;
* linf step ``x + alpha * sign(g)``; l2 step ``x + alpha * g / max(||g||_2, 1e-12)`` per sample;
* then project onto the eps-ball around the clean input ``x0`` (linf: ``x0 + clamp(x - x0, -eps, eps)``;
  l2: ``x0 + (x - x0) * min(1, eps / ||x - x0||_2)``), then clamp to [0, 1];
* random start (off by default): linf uniform in the box, l2 uniform in the ball's volume (radius
  ``eps * U^(1/d)``), then clamped to [0, 1];
* the adversarial is the final iterate ``x_T``; with restarts, per sample, the restart whose final
  objective (the attack's loss) is highest.
* ``zero_grad`` (B,): whether the input gradient of the first step is zero or underflows (every
  component below float's smallest normal number): the sign of gradient masking.

``eps`` and ``alpha`` are floats or per-sample tensors of shape (B,) (``bound --check`` attacks each
sample within its own radius). The callable is typically a :class:`flatcli.models.head.HeadSplit` (any scaling
of the head), so the features ``phi`` of every iterate come from the very forward pass that gives the
gradient: with ``record=True`` they are kept, with the distances to ``x0``, and one final forward (no
graph) gives ``x_T``'s. Nothing is recorded otherwise, and no final forward is made unless restarts
need it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from flatcli.core.attack_losses import attack_loss, check_loss
from flatcli.errors import UsageError

NORMS = ("linf", "l2")
#: Smallest gradient norm divided by in the l2 step (and distance norm in the l2 projection).
TINY = 1e-12
#: The largest ``--eps`` / ``--alpha``: inputs live in [0, 1], and an l2 ball of radius sqrt(C H W) (388 for
#: 3x224x224) already holds the whole box; beyond this float32 arithmetic only overflows.
MAX_RADIUS = 1e4
#: The most ``--steps`` (recording keeps every iterate's features: memory grows with the steps).
MAX_STEPS = 1000
#: The most ``--restarts``.
MAX_RESTARTS = 100

#: The paper's attack settings (docs/commands/attack.md, --preset): explicit options override a preset.
PRESETS: dict[str, dict] = {
    "uncanny": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10},  # §6.2, Fig. 3
    "basin": {"norm": "l2", "eps": 0.025, "alpha": 0.001, "steps": 25},  # §6.1, Fig. 2
    "robust": {"norm": "l2", "eps": 0.5, "alpha": 0.01, "steps": 50},  # D.2, adversarially trained
}

Forward = Callable[[Tensor], "tuple[Tensor, Tensor]"]
#: A per-sample objective ``loss(x, logits, phi) -> (B,)`` replacing the cross-entropy (``x`` requires grad).
Loss = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class PGD:
    """An attack configuration; :meth:`run` applies it. Invalid values raise :class:`UsageError`."""

    norm: str = "linf"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = False
    restarts: int = 1
    loss: str = "ce"

    #: The name ``--attack`` gives this attack; :attr:`recorded_steps` iterates after ``x_0`` are recorded.
    kind = "pgd"

    @property
    def recorded_steps(self) -> int:
        return self.steps

    def __post_init__(self) -> None:
        check_ball(self.loss, self.norm, eps=self.eps, alpha=self.alpha)
        check_count("--steps", self.steps, 0, MAX_STEPS)
        check_restarts(self.restarts, self.random_start)

    @classmethod
    def from_options(cls, preset: str | None = "uncanny", **given) -> "PGD":
        """Preset values, overridden by every option that is not ``None``."""
        if preset is not None and preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        values = dict(PRESETS[preset]) if preset else {}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    def config(self) -> dict:
        return {"attack": self.kind, **asdict(self)}

    def with_(self, **changes) -> "PGD":
        return replace(self, **changes)

    def run(
        self,
        forward: Forward,
        x: Tensor,
        y: Tensor,
        *,
        eps: float | Tensor | None = None,
        alpha: float | Tensor | None = None,
        target: Tensor | None = None,
        record: bool = False,
        keep_iterates: bool = False,
        generator: torch.Generator | None = None,
        loss: Loss | None = None,
    ) -> "PGDResult":
        """:func:`pgd` with this configuration (``eps``/``alpha`` may be overridden, e.g. per sample; an own
        ``loss(x, logits, phi)`` replaces the configured :attr:`loss`)."""
        return pgd(
            forward,
            x,
            y,
            norm=self.norm,
            eps=self.eps if eps is None else eps,
            alpha=self.alpha if alpha is None else alpha,
            steps=self.steps,
            random_start=self.random_start,
            restarts=self.restarts,
            target=target,
            record=record,
            keep_iterates=keep_iterates,
            generator=generator,
            loss=self.loss if loss is None else loss,
        )


@dataclass
class PGDResult:
    """What one attack on a batch gives back (all tensors detached, on the input's device).

    ``x_adv`` (B, ...) is the final iterate of the kept restart and ``restart`` (B,) its number.
    ``logits`` (B, k) and ``objective`` (B,) at ``x_adv`` are set when a final forward was made (with
    ``record`` or restarts). With ``record``: ``phi`` (T+1, B, m) and ``logits_by_step`` (T+1, B, k)
    are the features and logits of ``x_0 .. x_T`` from the forward passes of the attack itself, and
    ``dist_l2`` / ``dist_linf`` (T+1, B) the distances of each iterate to the clean input.
    ``x_start`` is ``x_0`` (the clean input, or the random start). With ``record`` and ``keep_iterates``,
    ``x_by_step`` (T+1, B, ...) holds the iterates ``x_0 .. x_T`` themselves. ``zero_grad`` (B,) says
    whose input gradient at the first step (of the first restart) was zero or underflowed (``None``
    without steps).
    """

    x_adv: Tensor
    restart: Tensor
    logits: Tensor | None = None
    objective: Tensor | None = None
    phi: Tensor | None = None
    logits_by_step: Tensor | None = None
    dist_l2: Tensor | None = None
    dist_linf: Tensor | None = None
    x_start: Tensor | None = None
    x_by_step: Tensor | None = None
    zero_grad: Tensor | None = None


# ------------------------------------------------------------------------------------------------
# Pure pieces: per-sample broadcasting, step, projection, random start, objective
# ------------------------------------------------------------------------------------------------


def check_ball(loss: str, norm: str, **radii: float) -> None:
    """The checks every attack shares: a known loss and norm, each radius (``eps``, ``alpha``) in ``[0, 1e4]``."""
    check_loss(loss)
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; use --norm linf or --norm l2")
    for name, value in radii.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_RADIUS):
            raise UsageError(f"--{name} must be a finite number from 0 to {MAX_RADIUS:g}, got {value}")


def check_count(option: str, value: int, low: int, high: int) -> None:
    """``value`` (of ``option``: steps, queries) is a whole number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{option} must be a whole number from {low} to {high:,}, got {value}")


def check_restarts(restarts: int, random_start: bool | None) -> None:
    """1 to :data:`MAX_RESTARTS` restarts; more than one needs a random start (``None``: the attack draws its own)."""
    check_count("--restarts", restarts, 1, MAX_RESTARTS)
    if restarts > 1 and random_start is False:
        raise UsageError(f"--restarts {restarts} without --random-start repeats the same deterministic attack; "
                         "add --random-start or drop --restarts")


def per_sample(value: float | Tensor, x: Tensor) -> float | Tensor:
    """A float stays a float; a (B,) tensor becomes (B, 1, ..., 1) to broadcast against ``x``."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return float(value)
        if value.shape != (x.shape[0],):
            raise ValueError(f"per-sample eps/alpha must have shape ({x.shape[0]},), got {tuple(value.shape)}")
        if bool((value < 0).any()) or not bool(torch.isfinite(value).all()):
            raise ValueError("per-sample eps/alpha must be finite and >= 0")
        return value.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps/alpha must be finite and >= 0, got {value}")
    return value


def flat_norm(v: Tensor) -> Tensor:
    """Per-sample l2 norm of a (B, ...) tensor: shape (B,)."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


def ascent_step(x: Tensor, grad: Tensor, alpha: float | Tensor, norm: str) -> Tensor:
    """``x + alpha * sign(g)`` (linf) or ``x + alpha * g / max(||g||_2, 1e-12)`` (l2), per sample."""
    if norm == "linf":
        return x + alpha * grad.sign()
    g_norm = flat_norm(grad).clamp_min(TINY).view(-1, *([1] * (grad.dim() - 1)))
    return x + alpha * (grad / g_norm)


def project(x: Tensor, x0: Tensor, eps: float | Tensor, norm: str) -> Tensor:
    """Project ``x`` onto the eps-ball around ``x0`` and clamp to [0, 1] (in that order)."""
    delta = x - x0
    if norm == "linf":
        if isinstance(eps, Tensor):
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        else:
            delta = delta.clamp(-eps, eps)
    else:
        d_norm = flat_norm(delta)
        factor = (eps.flatten() if isinstance(eps, Tensor) else eps) / d_norm.clamp_min(TINY)
        factor = factor.clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
    return (x0 + delta).clamp(0.0, 1.0)


def batch_generator(seed: int, batch_number: int) -> torch.Generator:
    """The CPU generator for random starts of batch ``batch_number`` (in data order) under ``seed``.

    Seeding per batch makes a batch's attack independent of which process (torchrun rank) runs it.
    """
    return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + batch_number)


def random_start(x0: Tensor, eps: float | Tensor, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """A uniform point of the eps-ball around ``x0`` (linf: the box; l2: the ball's volume), clamped to [0, 1].

    Drawn on the CPU (then moved), so one seed gives the same start on every device.
    """
    shape = x0.shape
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        delta = (2 * u - 1) * eps
    else:
        d = x0[0].numel()
        direction = torch.randn(shape, generator=generator, dtype=torch.float32)
        direction = direction / flat_norm(direction).clamp_min(TINY).view(-1, *([1] * (x0.dim() - 1)))
        radius = torch.rand(shape[0], generator=generator, dtype=torch.float64).pow(1.0 / d).float()
        delta = (direction * radius.view(-1, *([1] * (x0.dim() - 1)))).to(x0.device, x0.dtype) * eps
    return (x0 + delta).clamp(0.0, 1.0)


def objective(logits: Tensor, y: Tensor, target: Tensor | None = None, loss: str = "ce") -> Tensor:
    """Per-sample quantity the attack increases: CE(logits, y), or -CE(logits, target) when targeted
    (``loss="ce"``); the margin losses of :func:`flatcli.core.attack_losses.attack_loss` otherwise."""
    return attack_loss(logits, y, target, loss)


def gradient_vanished(grad: Tensor) -> Tensor:
    """Per sample: every component of the input gradient is 0 or subnormal (below ``finfo.tiny``)."""
    return grad.detach().flatten(1).abs().amax(dim=1) < torch.finfo(grad.dtype).tiny


def least_likely(logits: Tensor) -> Tensor:
    """The class with the lowest logit per sample (torchattacks' least-likely target)."""
    return logits.argmin(dim=-1)


# ------------------------------------------------------------------------------------------------
# The attack
# ------------------------------------------------------------------------------------------------


def pgd(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    eps: float | Tensor = 8 / 255,
    alpha: float | Tensor = 2 / 255,
    steps: int = 10,
    random_start: bool = False,
    restarts: int = 1,
    target: Tensor | None = None,
    record: bool = False,
    keep_iterates: bool = False,
    generator: torch.Generator | None = None,
    loss: str | Loss = "ce",
) -> PGDResult:
    """PGD on ``forward`` (``x -> (logits, phi)``) from the clean batch ``x`` with labels ``y``.

    ``target`` (B,) makes it targeted; ``loss`` names the objective (``ce``, ``cw``, ``dlr``; see
    :func:`objective`) or is an own per-sample ``loss(x, logits, phi)`` (then ``target`` is unused).
    ``record`` keeps ``phi``/logits/distances of every iterate (from the same forward passes) plus one
    final forward, and ``keep_iterates`` the iterates too; see :class:`PGDResult`. ``generator``
    (a CPU generator) drives the random starts. The caller puts the model in eval mode
    (:func:`flatcli.core.classifier.eval_mode`); parameters are never modified and their gradients are not touched.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if steps < 0 or restarts < 1:
        raise ValueError("steps must be >= 0 and restarts >= 1")
    x0 = x.detach()
    eps_b = per_sample(eps, x0)
    alpha_b = per_sample(alpha, x0)
    final_forward = record or restarts > 1
    best: PGDResult | None = None
    for r in range(restarts):
        result = _single(forward, x0, y, norm, eps_b, alpha_b, steps, random_start, target, record, final_forward,
                         generator, loss, keep_iterates and record)
        result.restart = torch.full((x0.shape[0],), r, dtype=torch.long, device=x0.device)
        zero_grad = result.zero_grad if best is None else best.zero_grad
        best = result if best is None else _keep_better(best, result)
        best.zero_grad = zero_grad
    assert best is not None
    return best


def _single(forward, x0, y, norm, eps, alpha, steps, start, target, record, final_forward, generator,
            loss="ce", keep_iterates=False) -> PGDResult:
    x = random_start(x0, eps, norm, generator) if start else x0.clone()
    x_start = x.detach()
    iterates: list[Tensor] = []
    phis: list[Tensor] = []
    logits_seen: list[Tensor] = []
    d2: list[Tensor] = []
    dinf: list[Tensor] = []
    zero_grad = None
    for _ in range(steps):
        x.requires_grad_(True)
        logits, phi = forward(x)
        obj = (loss(x, logits, phi) if callable(loss) else objective(logits, y, target, loss)).sum()
        (grad,) = torch.autograd.grad(obj, x)
        if zero_grad is None:
            zero_grad = gradient_vanished(grad)
        with torch.no_grad():
            x = x.detach()
            if record:
                if keep_iterates:
                    iterates.append(x)
                phis.append(phi.detach())
                logits_seen.append(logits.detach())
                delta = (x - x0).flatten(1)
                d2.append(torch.linalg.vector_norm(delta, dim=1))
                dinf.append(delta.abs().amax(dim=1))
            x = project(ascent_step(x, grad, alpha, norm), x0, eps, norm)
    result = PGDResult(x_adv=x.detach(), restart=torch.zeros(0), x_start=x_start, zero_grad=zero_grad)
    if final_forward:
        if not callable(loss):
            with torch.no_grad():
                logits, phi = forward(x)
                result.logits = logits.detach()
                result.objective = objective(result.logits, y, target, loss)
        else:  # an own objective may need gradients (e.g. probes of the input)
            x_final = x.detach().requires_grad_(True)
            logits, phi = forward(x_final)
            result.objective = loss(x_final, logits, phi).detach()
            result.logits = logits.detach()
        if record:
            phis.append(phi.detach())
            logits_seen.append(result.logits)
            delta = (x - x0).flatten(1)
            d2.append(torch.linalg.vector_norm(delta, dim=1))
            dinf.append(delta.abs().amax(dim=1))
            result.phi = torch.stack(phis)
            result.logits_by_step = torch.stack(logits_seen)
            result.dist_l2 = torch.stack(d2)
            result.dist_linf = torch.stack(dinf)
            if keep_iterates:
                result.x_by_step = torch.stack(iterates + [x.detach()])
    return result


def _keep_better(best: PGDResult, new: PGDResult) -> PGDResult:
    """Per sample, the result whose final objective is strictly higher (ties keep the earlier restart)."""
    better = new.objective > best.objective

    def pick(a: Tensor | None, b: Tensor | None, dim: int) -> Tensor | None:
        if a is None or b is None:
            return None
        shape = [1] * a.dim()
        shape[dim] = -1
        return torch.where(better.view(shape), b, a)

    return PGDResult(
        x_adv=pick(best.x_adv, new.x_adv, 0),
        restart=pick(best.restart, new.restart, 0),
        logits=pick(best.logits, new.logits, 0),
        objective=pick(best.objective, new.objective, 0),
        phi=pick(best.phi, new.phi, 1),
        logits_by_step=pick(best.logits_by_step, new.logits_by_step, 1),
        dist_l2=pick(best.dist_l2, new.dist_l2, 1),
        dist_linf=pick(best.dist_linf, new.dist_linf, 1),
        x_start=pick(best.x_start, new.x_start, 0),
        x_by_step=pick(best.x_by_step, new.x_by_step, 1),
    )

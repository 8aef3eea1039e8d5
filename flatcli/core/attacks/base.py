"""The attack interface: how an attack is configured, described and run on a batch, with its restarts.

An attack is a frozen dataclass over :class:`Attack` whose fields are its options (``norm``, ``eps``,
``steps``, ``restarts``, ``loss``, and as it needs ``alpha``, ``random_start``); the class states its
``kind`` (the registry key), a one-line ``summary``, how its step budget is called (``steps_option``:
``steps``, or ``queries`` for Square) and why it refuses an option it has no use for. It implements
:meth:`Attack.attempt`, one restart on a batch that hands every recorded point to a
:class:`flatcli.core.attacks.recording.Recorder`, and may change :meth:`Attack.better`, the criterion of
the restart selection. The base class gives everything else: construction from a preset and options
(:meth:`Attack.from_options`), the range checks, ``config()``, the restart loop and the one restart
selection (:func:`keep_better`), so a new attack is one file and one line in the registry
(:mod:`flatcli.core.attacks.registry`).

Restarts: each restart ``r`` starts afresh from the clean input (drawing its own random start); per
sample, the result of the restart ``r`` replaces the kept one when :meth:`Attack.better` says so (by
default a strictly higher final objective, so ties keep the earlier restart). ``zero_grad`` stays that of
the first restart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, ClassVar

import torch
from torch import Tensor

from flatcli.core.attack_losses import LOSSES
from flatcli.core.attacks.checks import (
    MAX_STEPS, PRESETS, check_ball, check_count, check_preset, check_restarts, shown,
)
from flatcli.core.attacks.recording import Recorder
from flatcli.errors import OptionError

Forward = Callable[[Tensor], "tuple[Tensor, Tensor]"]
#: A per-sample objective ``loss(x, logits, phi) -> (B,)`` replacing the named loss (``x`` requires grad).
Loss = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class AttackResult:
    """What one attack on a batch gives back (all tensors detached, on the input's device).

    ``x_adv`` (B, ...) is the adversarial of the kept restart and ``restart`` (B,) its number.
    ``logits`` (B, k) and ``objective`` (B,) at ``x_adv`` are set when a final forward was made (always
    for APGD and Square; for PGD with ``record`` or restarts). With ``record``: ``phi`` (T+1, B, m) and
    ``logits_by_step`` (T+1, B, k) are the features and logits of the recorded points from the forward
    passes of the attack itself, and ``dist_l2`` / ``dist_linf`` (T+1, B) their distances to the clean
    input. ``x_start`` is ``x_0`` (the clean input, or the random start). With ``record`` and
    ``keep_iterates``, ``x_by_step`` (T+1, B, ...) holds the recorded points themselves. ``zero_grad``
    (B,) says whose input gradient at the first step (of the first restart) was zero or underflowed
    (``None`` without gradient steps).
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


#: The fields of :class:`AttackResult` indexed by step first (T+1, B, ...); the others are (B, ...).
BY_STEP = ("phi", "logits_by_step", "dist_l2", "dist_linf", "x_by_step")


def keep_better(best: AttackResult, new: AttackResult, take: Tensor) -> AttackResult:
    """The restart selection: per sample, ``new``'s values where ``take`` (B,) holds, else ``best``'s.

    ``zero_grad`` stays ``best``'s (that of the first restart); a field either result lacks is ``None``.
    """

    def pick(name: str) -> Tensor | None:
        a, b = getattr(best, name), getattr(new, name)
        if a is None or b is None:
            return None
        shape = [1] * a.dim()
        shape[1 if name in BY_STEP else 0] = -1
        return torch.where(take.view(shape), b, a)

    kept = AttackResult(**{f.name: pick(f.name) for f in fields(AttackResult) if f.name != "zero_grad"})
    kept.zero_grad = best.zero_grad
    return kept


def gradient_vanished(grad: Tensor) -> Tensor:
    """Per sample: every component of the input gradient is 0 or subnormal (below ``finfo.tiny``)."""
    return grad.detach().flatten(1).abs().amax(dim=1) < torch.finfo(grad.dtype).tiny


def least_likely(logits: Tensor) -> Tensor:
    """The class with the lowest logit per sample (torchattacks' least-likely target)."""
    return logits.argmin(dim=-1)


class Attack:
    """The base of every attack (subclasses are frozen dataclasses whose fields are their options).

    Subclasses set :attr:`kind`, :attr:`summary` and implement :meth:`attempt` and :meth:`describe`.
    Invalid values raise :class:`flatcli.errors.OptionError` naming the option, on construction.
    """

    #: The name the registry (and the option ``attack``) gives this attack.
    kind: ClassVar[str]
    #: One line saying what the attack is (CLI help, docs).
    summary: ClassVar[str]
    #: The option that sets the ``steps`` field (the step budget): ``steps``, or ``queries`` for Square.
    steps_option: ClassVar[str] = "steps"
    #: Fewest steps a run needs.
    min_steps: ClassVar[int] = 0
    #: Most steps.
    max_steps: ClassVar[int] = MAX_STEPS
    #: The losses (of :data:`flatcli.core.attack_losses.LOSSES`) it can ascend.
    losses: ClassVar[tuple[str, ...]] = LOSSES
    #: Whether it runs targeted (``target=`` given to :meth:`run`).
    targets: ClassVar[bool] = True
    #: Whether it draws its own random initialisation on every restart (no ``random_start`` option).
    draws_own_start: ClassVar[bool] = False
    #: Why an option it has no use for is refused: ``option -> (problem, *further option names)``, the
    #: problem holding one ``{}`` for the option and one per further name (an :class:`OptionError`).
    refusals: ClassVar[dict[str, tuple[str, ...]]] = {}

    norm: str
    eps: float
    steps: int
    restarts: int
    loss: str
    random_start: bool = False

    # --- configuration ---------------------------------------------------------------------------

    def __post_init__(self) -> None:
        check_ball(self.loss, self.norm, **{name: getattr(self, name) for name in self.radii()})
        if self.loss not in self.losses:
            raise OptionError("loss", f"the {self.kind} attack takes {{}} {' or '.join(self.losses)}, "
                                      f"not {shown(self.loss)}")
        check_count(self.steps_option, self.steps, self.min_steps, self.max_steps)
        check_restarts(self.restarts, None if self.draws_own_start else self.random_start)

    @classmethod
    def radii(cls) -> tuple[str, ...]:
        """The radius options among its fields (``eps``, and ``alpha`` where it takes a step size)."""
        return tuple(name for name in ("eps", "alpha") if name in cls.options())

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The options it takes: its fields, the step budget named by :attr:`steps_option`."""
        return tuple(cls.steps_option if f.name == "steps" else f.name for f in fields(cls))

    @classmethod
    def from_options(cls, preset: str | None = "uncanny", **given) -> "Attack":
        """The preset's values for the options it takes, overridden by every option given (not ``None``).

        An option it does not take, when given, is refused with an :class:`OptionError` naming it.
        """
        check_preset(preset)
        given = {name: value for name, value in given.items() if value is not None}
        for name in given:
            if name not in cls.options():
                problem, *others = cls.refusals.get(name, (f"{{}} does not apply to the {cls.kind} attack",))
                raise OptionError((name, *others), problem)
        values = {name: value for name, value in (PRESETS[preset] if preset else {}).items() if name in cls.options()}
        values.update(given)
        return cls(**{"steps" if name == cls.steps_option else name: value for name, value in values.items()})

    def config(self) -> dict:
        """Every setting, for output documents and the resume identity."""
        return {"attack": self.kind, **asdict(self)}

    def describe(self) -> str:
        """One line for figure titles, e.g. ``PGD-linf eps 0.1, alpha 0.025, 10 steps, loss ce``."""
        raise NotImplementedError

    def with_(self, **changes) -> "Attack":
        return replace(self, **changes)

    @property
    def recorded_steps(self) -> int:
        """The recorded trajectory has ``recorded_steps + 1`` points."""
        return self.steps

    @property
    def rounds(self) -> int:
        """How many times :meth:`attempt` runs (the restarts, unless the attack restarts on its own)."""
        return self.restarts

    # --- running ---------------------------------------------------------------------------------

    def run(self, forward: Forward, x: Tensor, y: Tensor, *, target: Tensor | None = None, record: bool = False,
            keep_iterates: bool = False, generator: torch.Generator | None = None, **overrides) -> AttackResult:
        """Attack the batch ``x`` (labels ``y``) through ``forward`` (``x -> (logits, phi)``).

        ``target`` (B,) makes it targeted. ``record`` records the trajectory (:mod:`.recording`), with the
        points themselves when ``keep_iterates``; ``generator`` (a CPU generator) drives its randomness.
        ``overrides`` go to :meth:`attempt` (PGD: a per-sample ``eps``/``alpha``, an own ``loss``). The
        caller puts the model in eval mode (:func:`flatcli.core.classifier.eval_mode`); parameters are never
        modified and their gradients are not touched.
        """
        if target is not None and not self.targets:
            raise OptionError("targeted", f"the {self.kind} attack is untargeted here; drop {{}}")
        x0 = x.detach()
        rounds = self.rounds
        best: AttackResult | None = None
        for r in range(rounds):
            recorder = Recorder(x0, keep_iterates) if record else None
            result = self.attempt(forward, x0, y, target=target, recorder=recorder, generator=generator,
                                  final=record or rounds > 1, **overrides)
            if recorder is not None:
                recorder.fill(result)
            result.restart = torch.full((x0.shape[0],), r, dtype=torch.long, device=x0.device)
            best = result if best is None else keep_better(best, result, self.better(result, best, y, target))
        assert best is not None
        return best

    def attempt(self, forward: Forward, x0: Tensor, y: Tensor, *, target: Tensor | None, recorder: Recorder | None,
                generator: torch.Generator | None, final: bool, **overrides) -> AttackResult:
        """One restart from the clean batch ``x0``: hand each recorded point to ``recorder`` (when given) and
        return the adversarial; with ``final``, also its ``logits`` and ``objective`` (restart selection)."""
        raise NotImplementedError

    def better(self, new: AttackResult, best: AttackResult, y: Tensor, target: Tensor | None) -> Tensor:
        """Per sample, whether restart ``new`` replaces ``best``: a strictly higher final objective."""
        return new.objective > best.objective

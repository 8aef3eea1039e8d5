"""How far a run's numbers can be trusted: what loading assumed, a clean accuracy no better than chance, an attack
too weak or too strong for the data's scale to resolve a basin.

A model read wrong (normalisation forgotten, another architecture, images resized or cropped otherwise
than in training, labels in another order) still gives numbers, and plausible ones; its clean accuracy
is what gives it away. With ``k`` classes, chance is ``c = 1 / k``; a clean accuracy ``a`` on labelled
data is suspect when

    a <= c + MARGIN * (1 - c)          (0.19 for 10 classes, 0.55 for 2, 0.109 for 100)

Every run that measures clean accuracy hands its result to :func:`checked`: the loader's notes
(:attr:`~flatcli.models.loading.LoadedModel.notes`) come first, and a suspect accuracy adds ``summary.sanity``
and one note naming the usual causes, or, with ``RunContext.strict``, a :class:`~flatcli.errors.DataError`.

An attack's take-off steps (:func:`flatcli.core.trajectories.takeoff`) say whether its setting suits the data. A
loss rising in a straight line from the clean input, ``l_t = l_0 + c t``, has ``n_t = t / T`` and takes off at
``t_line = ceil(tau T)``; one rising out of a quadratic basin, ``l_t = l_0 + c t^2``, at
``t_basin = ceil(sqrt(tau) T)`` (4 of 10 steps for tau 0.1). :func:`degenerate_attack` gives
``summary.degenerate_attack`` and one note when

- every measured take-off comes no later than ``t_line`` (``t_line + 1`` while that is still before ``t_basin``;
  at step 1 every basin width is 0): the loss rose from the first step on and the widths measure the step size,
  not a basin (the paper's CIFAR-10 settings on MNIST-like data); or
- every trajectory is censored: the loss never rose.

The note names the likely cause (few samples fooled: the attack stays in the loss's linear regime, eps too
small; most fooled: alpha too large) and the MNIST presets. With too few steps to tell a line from a basin
(``t_line >= t_basin``: 3 steps or fewer for tau 0.1) nothing is checked. ``strict`` does not refuse it: the
numbers are right, only uninformative.
"""

from __future__ import annotations

import math

import numpy as np

from flatcli.core.attacks import PRESETS
from flatcli.errors import DataError
from flatcli.runs.result import Result
from flatcli.runtime.loop import RunContext

#: Share of the way from chance to a perfect accuracy below which a clean accuracy is suspect.
MARGIN = 0.1
#: The presets a degenerate attack's note suggests (made for MNIST-like data, where the paper's are degenerate).
MNIST_PRESETS = ("mnist", "mnist-basin")
#: What usually makes a model read right look like chance.
CAUSES = ("normalisation (mean/std as in training)", "architecture (arch:, arch_kwargs:)",
          "preprocessing (resize/crop, channels, input size)", "label order (class indices as in training)")


def sanity(accuracy: float, classes: int) -> dict:
    """``summary.sanity``: the clean accuracy, chance ``1 / classes``, the threshold and whether it is at most that."""
    chance = 1.0 / classes
    threshold = chance + MARGIN * (1.0 - chance)
    return {"accuracy": accuracy, "chance": chance, "threshold": threshold, "at_chance": bool(accuracy <= threshold),
            "causes": list(CAUSES)}


def degenerate_attack(takeoff_steps: np.ndarray, censored: int, *, steps: int, tau: float, attack: dict,
                      success_rate: float | None = None) -> dict | None:
    """``summary.degenerate_attack`` when the take-off steps resolve no basin (see the module docstring), else ``None``.

    ``takeoff_steps``: the measured (uncensored) take-off steps; ``censored``: how many trajectories were censored;
    ``steps``: the recorded steps T (Square's trajectory has one: nothing is checked);
    ``attack``: the attack's config (``norm``, ``eps``, ``alpha``); ``success_rate``: the share of correctly
    classified samples fooled at the end, which tells a too small eps from a too large alpha (``None``: unknown).
    The dict's ``note`` is the line for people."""
    takeoff_steps = np.asarray(takeoff_steps)
    line_step = max(1, math.ceil(tau * steps - 1e-9))
    basin_step = math.ceil(math.sqrt(tau) * steps - 1e-9)
    if line_step >= basin_step or takeoff_steps.size + censored == 0:
        return None
    latest = line_step + 1 if line_step + 1 < basin_step else line_step
    alpha = f", alpha {attack['alpha']:.4g}" if "alpha" in attack else ""  # APGD sets its own step size
    eps = f"eps {attack['eps']:.4g} ({attack['norm']}{alpha})"
    presets = " or ".join(f"{name} ({_preset_text(name)})" for name in MNIST_PRESETS)
    if takeoff_steps.size == 0:
        problem, cause = (f"no trajectory's loss rose (all {censored} censored)",
                          f"{eps} is probably too small for this data's scale, or the input gradient vanishes")
    elif takeoff_steps.max() <= latest:
        low, high = int(takeoff_steps.min()), int(takeoff_steps.max())
        at = f"step {low}" if low == high else f"steps {low} to {high}"
        width = "every basin width is 0" if high == 1 else f"every basin width at most {high - 1} step(s) of alpha"
        problem = (f"every take-off is at {at} of {steps} ({width}), no later than a loss rising in a straight line "
                   f"(step {line_step}): the widths measure the step size, not a basin")
        if success_rate is None:
            cause = f"{eps} is probably too small (or alpha too large) for this data's scale"
        elif success_rate < 0.5:
            cause = (f"{eps} is probably too small for this data's scale (the attack stays where the loss is still "
                     f"linear; it fooled {success_rate:.0%} of the correct samples)")
        else:
            cause = f"{eps}: alpha is probably too large for this data's scale (the first steps leave the basin)"
    else:
        return None
    note = f"{problem}; {cause}; for MNIST-like data (1x28x28 in [0, 1]) try the presets {presets}"
    return {"reason": "censored" if takeoff_steps.size == 0 else "early_takeoff", "steps": steps,
            "straight_line_step": line_step, "measured": int(takeoff_steps.size), "censored": int(censored),
            "takeoff_step_min": int(takeoff_steps.min()) if takeoff_steps.size else None,
            "takeoff_step_max": int(takeoff_steps.max()) if takeoff_steps.size else None,
            "success_rate": success_rate, "presets": list(MNIST_PRESETS), "note": note}


def _preset_text(name: str) -> str:
    """``PGD-linf, 40 steps, eps 0.3, alpha 0.01`` for a preset of :data:`~flatcli.core.attacks.PRESETS`."""
    v = PRESETS[name]
    return f"PGD-{v['norm']}, {v['steps']} steps, eps {v['eps']:g}, alpha {v['alpha']:g}"


def checked(result: Result, ctx: RunContext, accuracy: float | None, attack_check: dict | None = None) -> Result:
    """``result`` with the loader's notes first and, when the clean ``accuracy`` is at chance (see the module
    docstring), ``summary["sanity"]`` and a note; with ``ctx.strict`` that is a :class:`DataError` instead.
    ``accuracy`` ``None`` (nothing measured) or NaN (no sample) adds no check. ``attack_check`` (from
    :func:`degenerate_attack`) becomes ``summary["degenerate_attack"]`` and a note."""
    result.notes[:0] = ctx.loaded.notes
    if attack_check is not None:
        result.summary["degenerate_attack"] = attack_check
        result.notes.append("note: " + attack_check["note"])
    classes = ctx.loaded.num_classes
    if accuracy is None or accuracy != accuracy or classes < 2:
        return result
    verdict = sanity(float(accuracy), classes)
    if not verdict["at_chance"]:
        return result
    line = (f"clean accuracy {accuracy:.3f} on {ctx.data.name} is at or below chance ({verdict['chance']:.3f} "
            f"for {classes} classes, suspect up to {verdict['threshold']:.3f}): the model is probably read otherwise "
            f"than it was trained; check {', '.join(CAUSES)}")
    if ctx.strict:
        raise DataError(line + " (strict: refused)")
    result.summary["sanity"] = verdict
    result.notes.append("note: " + line)
    return result


def accuracy_of(ctx: RunContext, index: np.ndarray, pred: np.ndarray) -> float:
    """Share of ``pred`` equal to the labels of the inputs with source indices ``index`` in ``ctx.data``."""
    if len(index) == 0:
        return float("nan")
    label = dict(zip(ctx.data.index.tolist(), ctx.data.y.tolist()))
    return float(np.mean([label[int(i)] == int(p) for i, p in zip(index, pred)]))

"""How far a run's numbers can be trusted: what loading assumed, and a clean accuracy no better than chance.

A model read wrong (normalisation forgotten, another architecture, images resized or cropped otherwise
than in training, labels in another order) still gives numbers, and plausible ones; its clean accuracy
is what gives it away. With ``k`` classes, chance is ``c = 1 / k``; a clean accuracy ``a`` on labelled
data is suspect when

    a <= c + MARGIN * (1 - c)          (0.19 for 10 classes, 0.55 for 2, 0.109 for 100)

Every run that measures clean accuracy hands its result to :func:`checked`: the loader's notes
(:attr:`~flatcli.models.loading.LoadedModel.notes`) come first, and a suspect accuracy adds ``summary.sanity``
and one note naming the usual causes, or, with ``RunContext.strict``, a :class:`~flatcli.errors.DataError`.
"""

from __future__ import annotations

import numpy as np

from flatcli.errors import DataError
from flatcli.runs.result import Result
from flatcli.runtime.loop import RunContext

#: Share of the way from chance to a perfect accuracy below which a clean accuracy is suspect.
MARGIN = 0.1
#: What usually makes a model read right look like chance.
CAUSES = ("normalisation (mean/std as in training)", "architecture (arch:, arch_kwargs:)",
          "preprocessing (resize/crop, channels, input size)", "label order (class indices as in training)")


def sanity(accuracy: float, classes: int) -> dict:
    """``summary.sanity``: the clean accuracy, chance ``1 / classes``, the threshold and whether it is at most that."""
    chance = 1.0 / classes
    threshold = chance + MARGIN * (1.0 - chance)
    return {"accuracy": accuracy, "chance": chance, "threshold": threshold, "at_chance": bool(accuracy <= threshold),
            "causes": list(CAUSES)}


def checked(result: Result, ctx: RunContext, accuracy: float | None) -> Result:
    """``result`` with the loader's notes first and, when the clean ``accuracy`` is at chance (see the module
    docstring), ``summary["sanity"]`` and a note; with ``ctx.strict`` that is a :class:`DataError` instead.
    ``accuracy`` ``None`` (nothing measured) or NaN (no sample) adds no check."""
    result.notes[:0] = ctx.loaded.notes
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

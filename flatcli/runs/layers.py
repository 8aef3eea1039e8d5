"""The curvature of earlier layers (``--layers``), shared by ``sharpness`` and ``attack``: method, traces, columns.

Per named layer :func:`plan_layers` decides how its trace is measured (``--layer-method``):

* ``exact``: ``Tr H_l = sum_c p_c ||grad_{W_l} ell(x, c)||^2`` per sample, from ``k`` backward passes
  (:mod:`flatcli.core.layer_curvature`); the Hessian's trace where the logits are piecewise linear in the
  layer (:mod:`flatcli.core.layer_linearity`), otherwise the trace of the Gauss-Newton matrix, and then
  labelled so (``curvature: "gauss-newton"``, columns ``trace_gn@LAYER``);
* ``fisher-mc``: the same quantity estimated per sample from ``--fisher-samples`` labels drawn from ``p``,
  with its standard error (column ``trace_h_stderr@LAYER``);
* ``hutchinson``: the data-set trace of the Hessian from Rademacher probes (no per-sample values);
* ``auto`` (default): ``exact`` where the network is piecewise linear in the layer and the layer has a
  per-sample gradient norm (Linear, Conv2d, BatchNorm), otherwise ``hutchinson``, with the reason.

Relative sharpness of a layer is ``||W_l||_F^2 Tr(H_l)`` (``plain``: ``||W_l||_F``), paper Fig. 14.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from flatcli.core.curvature import weight_factor
from flatcli.core.layer_curvature import layer_traces, unsupported
from flatcli.core.layer_linearity import linearity
from flatcli.errors import LayerError, OptionError
from flatcli.models.loading import find_module

LAYER_METHODS = ("auto", "exact", "fisher-mc", "hutchinson")
#: Hutchinson probes for ``--layers`` unless ``--hutchinson`` says otherwise.
DEFAULT_PROBES = 100
#: The most --fisher-samples draws per sample (each is a backward pass).
MAX_FISHER_SAMPLES = 10_000


@dataclass(frozen=True)
class LayerPlan:
    """How one named layer's trace is measured, and what the result is the trace of."""

    name: str
    module: nn.Module
    method: str  # exact | fisher-mc | hutchinson
    curvature: str  # hessian | gauss-newton
    piecewise_linear: bool | None
    reason: str | None  # why the network is not (known to be) piecewise linear in the layer

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def per_sample(self) -> bool:
        return self.method != "hutchinson"

    def column(self, measure: str) -> str:
        """``trace_h@conv3`` / ``relative_sharpness@conv3``; ``trace_gn@...`` for the Gauss-Newton matrix."""
        if self.curvature == "gauss-newton":
            measure = {"trace": "trace_gn", "sharpness": "relative_sharpness_gn", "stderr": "trace_gn_stderr"}[measure]
        else:
            measure = {"trace": "trace_h", "sharpness": "relative_sharpness", "stderr": "trace_h_stderr"}[measure]
        return f"{measure}@{self.name}"

    def columns(self) -> tuple[str, ...]:
        """The per-sample columns this layer adds to rows."""
        if not self.per_sample:
            return ()
        extra = (self.column("stderr"),) if self.method == "fisher-mc" else ()
        return (self.column("trace"), self.column("sharpness"), *extra)

    def describe(self) -> dict:
        """The entry's fixed part: layer, parameters, method, what it is the trace of, and why."""
        return {"layer": self.name, "parameters": self.weight.numel(), "method": self.method,
                "curvature": self.curvature, "piecewise_linear": self.piecewise_linear, "reason": self.reason}


def check_method(method: str, fisher_samples: int) -> None:
    """Range checks of ``layer_method`` and ``fisher_samples`` (settings call it on construction)."""
    if method not in LAYER_METHODS:
        raise OptionError("layer_method", f"{{}} must be one of {', '.join(LAYER_METHODS)}, got {method!r}")
    if not 2 <= fisher_samples <= MAX_FISHER_SAMPLES:
        raise OptionError("fisher_samples", f"{{}} needs 2 to {MAX_FISHER_SAMPLES:,} draws per sample (at least 2 "
                          f"for a standard error; each costs a backward pass), got {fisher_samples}")


def plan_layers(loaded, names: Sequence[str], method: str) -> list[LayerPlan]:
    """The plan of every named layer (the head excluded: its trace is the closed form)."""
    names = [n for n in dict.fromkeys(names) if n != loaded.layer]
    modules = [find_module(loaded.model.net, n) for n in names]
    for name, module in zip(names, modules):
        if not isinstance(getattr(module, "weight", None), nn.Parameter):
            raise LayerError(f"layer {name!r} ({type(module).__name__}) has no weight to take a Hessian of")
    if not names:
        return []
    decided = linearity(loaded.model, names)
    plans = []
    for name, module in zip(names, modules):
        lin = decided[name]
        no_norm = unsupported(module)
        if method == "auto":
            chosen = "exact" if lin.piecewise_linear and no_norm is None else "hutchinson"
        else:
            chosen = method
        if chosen in ("exact", "fisher-mc") and no_norm is not None:
            raise OptionError(("layer_method", "layer_method"), f"{{}} {chosen}: layer {name}: {no_norm}; use {{}} "
                              "hutchinson")
        curvature = "gauss-newton" if chosen != "hutchinson" and not lin.piecewise_linear else "hessian"
        reason = lin.reason if not lin.piecewise_linear else (no_norm if chosen == "hutchinson" and method == "auto" else None)
        plans.append(LayerPlan(name, module, chosen, curvature, lin.piecewise_linear, reason))
    return plans


def notes(plans: Sequence[LayerPlan], requested: str, probes: int) -> list[str]:
    """One line per layer whose value is not the exact Hessian trace by the user's explicit choice."""
    out = []
    for p in plans:
        if p.curvature == "gauss-newton":
            out.append(f"note: layer {p.name}: {p.method} gives the trace of the Gauss-Newton (Fisher) matrix, "
                       f"not the Hessian's: {p.reason}")
        elif p.method == "hutchinson" and requested == "auto":
            out.append(f"note: layer {p.name}: Hutchinson estimate ({probes} probes), not exact: {p.reason}")
    return out


def draw_generator(seed: int, batch: int, step: int = 0) -> torch.Generator:
    """The CPU generator of the ``fisher-mc`` labels of one batch (and PGD step): rank-independent."""
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + batch) * 10_007 + step)


def batch_traces(forward: Callable[[Tensor], Tensor], x: Tensor, plans: Sequence[LayerPlan], *, fisher_samples: int,
                 generator: torch.Generator | None) -> dict[str, Tensor]:
    """Per-sample traces (and Monte-Carlo standard errors), float64 on the CPU, of the per-sample layers
    of ``plans`` at the inputs ``x``, keyed by their columns; :func:`sharpness_columns` adds the sharpness.

    ``forward(x)`` gives the logits of the model being measured (precision and scaling set by the caller).
    """
    per = [p for p in plans if p.per_sample]
    if not per:
        return {}
    mc = per[0].method == "fisher-mc"
    res = layer_traces(forward, x, [p.module for p in per], [p.name for p in per],
                       draws=fisher_samples if mc else 0, generator=generator)
    out = {}
    for j, p in enumerate(per):
        out[p.column("trace")] = res.trace[j].cpu()
        if mc:
            out[p.column("stderr")] = res.stderr[j].cpu()
    return out


def sharpness_columns(plans: Sequence[LayerPlan], traces: dict[str, Tensor], weight_norm: str) -> dict[str, Tensor]:
    """``traces`` plus the relative sharpness ``||W_l||^2 Tr H_l`` of each layer, in column order."""
    out = {}
    for p in plans:
        if p.per_sample:
            wf = float(weight_factor(p.weight, weight_norm))
            trace = traces[p.column("trace")]
            out[p.column("trace")] = trace
            out[p.column("sharpness")] = wf * trace
            if p.method == "fisher-mc":
                out[p.column("stderr")] = traces[p.column("stderr")]
    return out


def data_set_entry(plan: LayerPlan, trace: float, stderr: float | None, weight_norm: str, *,
                   draws: int | None = None, probes: int | None = None) -> dict:
    """The summary entry of one layer: how it was measured, the data-set trace and relative sharpness,
    with their standard errors (``None`` for exact traces)."""
    wf = float(weight_factor(plan.weight, weight_norm))
    return {**plan.describe(), "draws": draws, "probes": probes, "trace": trace, "trace_stderr": stderr,
            "relative_sharpness": wf * trace, "relative_sharpness_stderr": None if stderr is None else wf * stderr}


def mean_and_stderr(trace: np.ndarray, stderr: np.ndarray | None) -> tuple[float, float | None]:
    """The data-set trace (mean of the per-sample ones) and, for Monte Carlo, its standard error
    ``sqrt(sum_i se_i^2) / N`` (draws are independent across samples)."""
    if trace.size == 0:
        return float("nan"), None
    se = math.sqrt(float((stderr**2).sum())) / stderr.size if stderr is not None else None
    return float(trace.mean()), se

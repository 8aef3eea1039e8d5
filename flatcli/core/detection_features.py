"""Label-free features a detector reads from a batch (torch): scores at the input, the curvature profile, Mahalanobis.

Every feature is computed without the label, from the model's forward passes through a
:class:`~flatcli.models.head.HeadSplit` (``x -> (logits, phi)``), in float64 from ``phi`` and the head
``W, b`` by :func:`flatcli.core.curvature.head_measures`:

* at the input: the stump scores (``relative_sharpness``, ``trace_h``, ``confidence``,
  ``relative_flatness_full``) and the components ``p_var_sum`` = ``sum_j p_j (1 - p_j)``,
  ``phi_norm_sq`` = ``||phi||^2``, ``w_phi_norm_sq`` = ``||W phi||^2``;
* the **curvature profile** (:class:`Probe`): with ``c`` the class predicted at the input (arg max of
  the float64 logits), the probed points are ``x_0 = x`` and
  ``x_t = clamp(x_{t-1} + size * sign(grad_x CE(f(x_{t-1}), c)), 0, 1)`` for ``t = 1 .. steps`` (small
  steps of gradient ascent on the predicted class's loss, the linf step of PGD); at each point
  ``relative_sharpness@t``, ``loss@t`` (the cross-entropy w.r.t. ``c``), ``confidence@t`` and
  ``feature_norm@t`` (``||phi||``), exactly what ``flatrob sharpness`` reports for that point with label ``c``;
* the **Mahalanobis score** (Lee et al. 2018): ``min_c (phi - mu_c)^T P (phi - mu_c)`` for the class
  means and precision of a :class:`~flatcli.core.detectors.MahalanobisModel`.

With ``differentiable=True`` the graph from the input is kept, so a detector's decision can be
attacked (:mod:`flatcli.core.adaptive`). The sign of a probe step is locally constant in the input,
so the derivative of ``x_t`` w.r.t. ``x_{t-1}`` is the identity on the coordinates the clamp leaves
alone and zero elsewhere: keeping the graph through ``x_{t-1} + size * sign(g)`` with the sign held
fixed gives the exact gradient (almost everywhere), not an approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flatcli.core.curvature import head_measures
from flatcli.core.detectors import (
    COMPONENT_NAMES,
    MAHALANOBIS,
    MAX_PROBE_STEPS,
    PROFILE_MEASURES,
    SCORES,
    MahalanobisModel,
    profile_names,
)
from flatcli.core.attacks import MAX_RADIUS
from flatcli.errors import OptionError


@dataclass(frozen=True)
class Probe:
    """The probes of the curvature profile: ``steps`` (1 to 3) linf steps of size ``size`` (> 0)."""

    steps: int = 3
    size: float = 0.03

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_PROBE_STEPS:
            raise OptionError("probe_steps", f"{{}} must be an integer from 1 to {MAX_PROBE_STEPS}, got {self.steps!r}")
        if not (isinstance(self.size, (int, float)) and math.isfinite(self.size) and 0 < self.size <= MAX_RADIUS):
            raise OptionError("probe_size",
                              f"{{}} must be a finite number > 0 and at most {MAX_RADIUS:g}, got {self.size!r}")

    def config(self) -> dict:
        """The detector's ``probe`` entry (and the run's config)."""
        return {"norm": "linf", "steps": self.steps, "size": float(self.size)}

    @classmethod
    def from_config(cls, doc: dict) -> "Probe":
        return cls(steps=int(doc["steps"]), size=float(doc["size"]))

    def names(self) -> tuple[str, ...]:
        return profile_names(self.steps)


@dataclass
class ProbePath:
    """The probed points ``x_0 .. x_T`` of a batch, with ``(logits, phi)`` at each and the class ``pred``."""

    pred: Tensor
    points: list[Tensor]
    logits: list[Tensor]
    phi: list[Tensor]


def predicted_class(phi: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The arg max of the float64 logits ``W phi + b`` (the ``pred`` of :func:`head_measures`)."""
    return head_measures(phi, weight, bias)["pred"]


def probe_path(split, x: Tensor, probe: Probe, *, first: tuple[Tensor, Tensor] | None = None,
               differentiable: bool = False) -> ProbePath:
    """The probed points of ``x`` (see the module docstring) and the forward passes at each.

    ``split`` is a :class:`~flatcli.models.head.HeadSplit`. With ``differentiable`` the graph from ``x``
    is kept, and ``first`` may give ``(logits, phi)`` of ``x`` from a forward pass the caller already
    ran (with its graph); without it every returned tensor is detached.
    """
    if first is not None and not differentiable:
        raise ValueError("first (logits, phi) with their graph are only used with differentiable=True")
    head = split.head
    cur = x if differentiable else x.detach()
    points, logits_at, phi_at = [cur], [], []
    pred = None
    for t in range(probe.steps + 1):
        last = t == probe.steps
        if t == 0 and first is not None:
            logits, phi = first
        elif differentiable or not last:
            if not differentiable:
                cur = cur.detach().requires_grad_(True)
            logits, phi = split(cur)
        else:
            with torch.no_grad():
                logits, phi = split(cur)
        if pred is None:
            pred = predicted_class(phi, head.weight, head.bias).to(logits.device)
        logits_at.append(logits if differentiable else logits.detach())
        phi_at.append(phi if differentiable else phi.detach())
        if last:
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, pred, reduction="sum"), cur,
                                      retain_graph=differentiable)
        cur = (cur + probe.size * grad.sign()).clamp(0.0, 1.0)
        if not differentiable:
            cur = cur.detach()
        points.append(cur)
    return ProbePath(pred=pred, points=points, logits=logits_at, phi=phi_at)


def mahalanobis_tensors(model: MahalanobisModel, device) -> tuple[Tensor, Tensor]:
    """The model's class means (k, m) and precision (m, m) as float64 tensors on ``device``."""
    return (torch.as_tensor(model.means, dtype=torch.float64, device=device),
            torch.as_tensor(model.precision, dtype=torch.float64, device=device))


def mahalanobis_scores(phi: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """``min_c (phi - mu_c)^T P (phi - mu_c)`` per sample (float64, (B,)), one class at a time.

    ``d^T P`` is a batch of independent row-times-matrix products (``torch.bmm``), so a sample's score
    does not depend on the other samples of its batch (a plain ``d @ P`` may change in the last bits
    with the batch size), and a saved detector reproduces the fitted scores whatever the batching.
    """
    phi = phi.double()
    every = precision.expand(phi.shape[0], *precision.shape)  # a view, no copy
    per_class = []
    for c in range(means.shape[0]):
        d = phi - means[c]
        per_class.append((torch.bmm(d.unsqueeze(1), every).squeeze(1) * d).sum(-1))
    return torch.stack(per_class, dim=-1).min(dim=-1).values


def detection_features(split, x: Tensor, *, weight_norm: str = "squared", probe: Probe | None = None,
                       mahalanobis: tuple[Tensor, Tensor] | None = None,
                       first: tuple[Tensor, Tensor] | None = None,
                       differentiable: bool = False) -> tuple[dict[str, Tensor], Tensor]:
    """The label-free features of a batch ``x``: ``(columns, pred)``, each column float64 of shape (B,).

    Always the :data:`SCORES` and :data:`~flatcli.core.detectors.COMPONENT_NAMES` at ``x``; with
    ``probe`` the profile columns (:func:`~flatcli.core.detectors.profile_names`); with
    ``mahalanobis`` (from :func:`mahalanobis_tensors`) the ``mahalanobis`` column. ``pred`` is the class
    predicted at ``x``. ``first`` and ``differentiable`` as in :func:`probe_path`.
    """
    head = split.head
    path = None
    if probe is not None:
        path = probe_path(split, x, probe, first=first, differentiable=differentiable)
        phi = path.phi[0]
    elif first is not None:
        phi = first[1]
    elif differentiable:
        phi = split.features(x)
    else:
        with torch.no_grad():
            phi = split.features(x)
    m = head_measures(phi, head.weight, head.bias, None, weight_norm=weight_norm, differentiable=differentiable)
    cols = {k: m[k] for k in SCORES}
    phi64 = (phi if differentiable else phi.detach()).double()
    cols[COMPONENT_NAMES[0]] = m["prob_term"]
    cols[COMPONENT_NAMES[1]] = (phi64 * phi64).sum(-1)
    cols[COMPONENT_NAMES[2]] = m["logit_norm_sq"]
    if mahalanobis is not None:
        cols[MAHALANOBIS] = mahalanobis_scores(phi64, *mahalanobis)
    if path is not None:
        for t, phi_t in enumerate(path.phi):
            mt = head_measures(phi_t, head.weight, head.bias, m["pred"], weight_norm=weight_norm,
                               differentiable=differentiable)
            for name in PROFILE_MEASURES:
                cols[f"{name}@{t}"] = mt[name]
    return cols, m["pred"]

"""The adaptive attack on a detector: PGD on the cross-entropy plus a penalty that drives the detector's decision clean.

A detector that is only tested on adversarials crafted without knowing it is not evaluated (Carlini &
Wagner 2017, "Adversarial examples are not easily detected"; Athalye et al. 2018). The adaptive
attacker knows the model and the fitted detector and runs PGD (:mod:`flatcli.core.attacks.pgd`, every
convention unchanged) on the per-sample objective

    obj(x) = CE(f(x), y)                              while the model still predicts y,
    obj(x) = CE(f(x), y) - weight * d(x) / scale      once it does not,

where ``d`` is the detector's decision (> 0 means "adversarial", :meth:`Detector.decision`) computed
in torch from the same features (:func:`flatcli.core.detection_features.detection_features`) with their
graph, and ``scale`` the spread of the detector's decisions (so that ``weight`` means the same for every
method). The penalty only acts where it can help: a sum of both terms from the start lets the detector's
gradient cancel the climb to the decision boundary (near it both rise together), so that far fewer
inputs end up misclassified *and* unflagged than with the selective form (Tramer et al. 2020, "On
adaptive attacks to adversarial example defenses", recommend the same). The attack's result is, per
sample, the first iterate that fools the model with ``d < 0``, else the final iterate.

The probes of the curvature profile are followed exactly (their sign steps are locally constant), the
minimum in the Mahalanobis score by its sub-gradient, the log floor of the logistic detectors by the
clamp's gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flatcli.core.detection_features import Probe, detection_features, mahalanobis_tensors
from flatcli.core.detectors import Detector


def decision(det: Detector, columns: dict[str, Tensor]) -> Tensor:
    """:meth:`Detector.decision` in torch (float64, differentiable) on named feature ``columns``
    (:meth:`Detector.decision_tensor` on the detector's columns)."""
    return det.decision_tensor(torch.stack([columns[n] for n in det.columns()], dim=-1))


class AdaptiveLoss:
    """``loss(x, logits, phi)`` for :func:`flatcli.core.attacks.pgd.pgd`: the objective of the module docstring.

    ``detectors`` are fitted with the same method and feature settings (e.g. the detectors of the
    cross-validation folds); sample ``i`` of the batch is attacked against ``detectors[which[i]]``.
    """

    def __init__(self, split, detectors: list[Detector], which: Tensor, y: Tensor, *, weight: float, scale: float,
                 weight_norm: str = "squared"):
        first = detectors[0]
        self.split = split
        self.detectors = detectors
        self.which = which
        self.y = y
        self.weight = float(weight)
        self.scale = float(scale)
        self.weight_norm = weight_norm
        self.probe = Probe.from_config(first.probe) if first.probe is not None else None
        self.mahalanobis = mahalanobis_tensors(first.mahalanobis, y.device) if first.mahalanobis is not None else None
        self.found: Tensor | None = None  # per sample: a successful iterate was seen
        self.first_success: Tensor | None = None

    def decisions(self, x: Tensor, first: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Each sample's decision under its own detector (float64, (B,), with the graph from ``x``)."""
        cols, _ = detection_features(self.split, x, weight_norm=self.weight_norm, probe=self.probe,
                                     mahalanobis=self.mahalanobis, first=first, differentiable=True)
        every = torch.stack([decision(det, cols) for det in self.detectors])  # (detectors, B)
        return every.gather(0, self.which.view(1, -1)).squeeze(0)

    def __call__(self, x: Tensor, logits: Tensor, phi: Tensor) -> Tensor:
        d = self.decisions(x, first=(logits, phi))
        ce = F.cross_entropy(logits, self.y, reduction="none").double()
        fooled = logits.detach().argmax(-1) != self.y
        self._remember(x, fooled & (d.detach() < 0))
        return torch.where(fooled, ce - self.weight * d / self.scale, ce)

    def _remember(self, x: Tensor, evading: Tensor) -> None:
        """Keep, per sample, the first iterate that fools the model and evades the detector."""
        if self.found is None:
            self.found = torch.zeros_like(evading)
            self.first_success = x.detach().clone()
        new = evading & ~self.found
        if bool(new.any()):
            self.first_success[new] = x.detach()[new]
            self.found |= new

    def adversarial(self, x_final: Tensor) -> Tensor:
        """The attack's result: per sample the first successful iterate, else the final one."""
        if self.found is None:
            return x_final
        return torch.where(self.found.view(-1, *([1] * (x_final.dim() - 1))), self.first_success, x_final)

"""The trajectory recorder every attack calls once per recorded step: features, logits, distances, iterates.

An attack run with ``record=True`` hands each recorded point to :class:`Recorder` as ``recorder(x_t,
logits_t, phi_t)``, with the logits and head features of ``x_t`` from the attack's own forward pass (no
extra forward). The recorder keeps ``phi_t`` (B, m), ``logits_t`` (B, k), the distances of ``x_t`` to the
clean input ``x0``, ``||x_t - x0||_2`` and ``||x_t - x0||_inf`` (B,), and with ``keep_iterates`` ``x_t``
itself; :meth:`Recorder.fill` stacks them into the result as (T+1, B, ...) tensors.

What a step means is the attack's: every iterate for PGD, the answer so far for APGD, the clean input
and the adversarial for Square. From the recorded features the caller gets the per-step measures with
one closed-form call (:func:`flatcli.core.curvature.head_measures`: loss, relative sharpness, trace,
confidence), and from the kept iterates the layer traces (:mod:`flatcli.runs.layers`).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Recorder:
    """The trajectory of one restart from the clean input ``x0``; call it with each recorded point."""

    def __init__(self, x0: Tensor, keep_iterates: bool = False):
        self.x0 = x0
        self.keep_iterates = keep_iterates
        self.phi: list[Tensor] = []
        self.logits: list[Tensor] = []
        self.dist_l2: list[Tensor] = []
        self.dist_linf: list[Tensor] = []
        self.iterates: list[Tensor] = []

    def __call__(self, x: Tensor, logits: Tensor, phi: Tensor) -> None:
        """Record the point ``x`` with the ``logits`` and features ``phi`` the attack's forward gave it."""
        with torch.no_grad():
            x = x.detach()
            self.phi.append(phi.detach())
            self.logits.append(logits.detach())
            delta = (x - self.x0).flatten(1)
            self.dist_l2.append(torch.linalg.vector_norm(delta, dim=1))
            self.dist_linf.append(delta.abs().amax(dim=1))
            if self.keep_iterates:
                self.iterates.append(x)

    def fill(self, result) -> None:
        """Stack the recorded steps into ``result`` (an :class:`flatcli.core.attacks.base.AttackResult`)."""
        result.phi = torch.stack(self.phi)
        result.logits_by_step = torch.stack(self.logits)
        result.dist_l2 = torch.stack(self.dist_l2)
        result.dist_linf = torch.stack(self.dist_linf)
        if self.keep_iterates:
            result.x_by_step = torch.stack(self.iterates)

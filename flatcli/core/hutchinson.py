"""Hutchinson estimates of Hessian traces, ``Tr(H) ~ mean_i v_i^T H v_i``, accumulated batch by batch.

``H_l`` is the Hessian of the data-set mean loss w.r.t. a parameter group ``l``. Each batch contributes
``v_i^T H_l^{batch-sum} v_i`` for every Rademacher probe ``v_i``, by double backprop of the batch's summed
loss; the data-set value is the sum over batches divided by the number of samples, and its standard
error is the sample standard deviation over probes divided by ``sqrt(probes)``. Probe ``i`` of group ``l``
is regenerated from its own seed on every batch, so no probe is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

#: The most probes: each costs one Hessian-vector product per batch, and the standard error falls as
#: 1/sqrt(probes) (10,000 probes: 1% of the single-probe spread).
MAX_PROBES = 10_000


@dataclass
class TraceEstimate:
    """Hutchinson estimate of ``Tr(H)`` with its standard error over probes."""

    mean: float
    stderr: float
    probes: int


class HutchinsonTraces:
    """``Tr(H_l)`` for each parameter group ``params[l]``, from :meth:`add` calls, one per batch."""

    def __init__(self, params: Sequence[Sequence[torch.Tensor]], probes: int, seed: int = 0):
        if not 2 <= probes <= MAX_PROBES:
            raise ValueError(f"Hutchinson needs 2 to {MAX_PROBES} probes")
        self.params = [list(group) for group in params]
        self.probes = probes
        self.seed = seed
        self.quad = torch.zeros(len(self.params), probes, dtype=torch.float64)
        self.total = 0

    def add(self, loss_sum: torch.Tensor, n: int) -> None:
        """One batch: ``loss_sum`` is the sum of its per-sample losses (with a graph), ``n`` its size."""
        flat = [p for group in self.params for p in group]
        grads = torch.autograd.grad(loss_sum, flat, create_graph=True)
        self.total += n
        for i in range(self.probes):
            offset = 0
            for g_idx, group in enumerate(self.params):
                gen = torch.Generator(device="cpu").manual_seed(_probe_seed(self.seed, g_idx, i))
                vs = [_rademacher(p, gen) for p in group]
                gs = grads[offset : offset + len(group)]
                offset += len(group)
                gv = sum((g * v).sum() for g, v in zip(gs, vs))
                hv = torch.autograd.grad(gv, group, retain_graph=True)
                self.quad[g_idx, i] += sum((h.double() * v.double()).sum() for h, v in zip(hv, vs)).item()

    def estimates(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[TraceEstimate]:
        """The estimate of every group; ``reduce`` sums the partial sums of every process (torchrun)."""
        quad, total = self.quad, self.total
        if reduce is not None:
            totals = reduce(torch.cat([quad.flatten(), torch.tensor([float(total)], dtype=torch.float64)]))
            quad, total = totals[:-1].view_as(quad), int(totals[-1].item())
        return trace_estimates(quad, total)


def trace_estimates(quad: torch.Tensor, total: int) -> list[TraceEstimate]:
    """The estimate of every group from the summed quadratic forms ``quad`` (groups x probes) of ``total`` samples."""
    quad = quad / max(total, 1)
    probes = quad.shape[1]
    return [
        TraceEstimate(mean=quad[g].mean().item(), stderr=(quad[g].std(unbiased=True) / math.sqrt(probes)).item(),
                      probes=probes)
        for g in range(quad.shape[0])
    ]


def _probe_seed(seed: int, group: int, probe: int) -> int:
    return (seed * 1_000_003 + group * 10_007 + probe) % (2**63 - 1)


def _rademacher(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    v = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).to(p.device, p.dtype)
    return v * 2 - 1


def batch_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of per-sample cross-entropy (the loss Hutchinson differentiates)."""
    return F.cross_entropy(logits, y, reduction="sum")

"""Closed-form curvature of the loss w.r.t. the head weight, and Hutchinson traces.

Model ``f(x) = softmax(W phi(x) + b)``, ``W`` in R^{k x m}, cross-entropy loss ``-log p_y``. Per sample,
the Hessian of the loss w.r.t. ``vec(W)`` (row-major) is exactly (appendix C.4)::

    H = (diag(p) - p p^T) kron (phi phi^T)

so that, with ``c = sum_j p_j (1 - p_j)``:

* ``trace_h = c * ||phi||^2``                       (no label needed)
* ``relative_sharpness = ||W||_F^2 * trace_h``      (``weight_norm="squared"``; ``"plain"`` uses ``||W||_F``)
* ``relative_flatness_full = c * ||W phi||^2``      (sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'}), w_s columns of W)
* ``grad_norm = ||p - e_y|| * ||phi||``             (Frobenius norm of grad_W loss)

All of it is O(k + m) per sample after one forward pass. The data-set Hessian is the mean of the
per-sample ones, so data-set values are means of per-sample values. Everything is computed in float64,
and the quantities that cancel for confident predictions (``1 - p_top``, ``-log p_y``) are formed from
the small probabilities directly, so flat (large-scale) heads keep their relative precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

WEIGHT_NORMS = ("squared", "plain")
MEASURES = (
    "loss",
    "confidence",
    "p_true",
    "trace_h",
    "feature_norm",
    "grad_norm",
    "relative_sharpness",
    "relative_flatness_full",
)


def weight_factor(weight: torch.Tensor, weight_norm: str = "squared") -> torch.Tensor:
    """``||W||_F^2`` (``squared``, the paper's §5 and proofs) or ``||W||_F`` (``plain``, its code)."""
    if weight_norm not in WEIGHT_NORMS:
        raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {weight_norm!r}")
    norm = torch.linalg.vector_norm(weight.detach().double())
    return norm**2 if weight_norm == "squared" else norm


def softmax_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p, c, rest)`` for float64 logits: probabilities, ``c = sum_j p_j (1 - p_j)``, and
    ``rest = 1 - p_top = sum_{j != top} p_j`` formed without cancellation."""
    p = torch.softmax(logits, dim=-1)
    top = p.argmax(dim=-1, keepdim=True)
    others = p.scatter(-1, top, 0.0)
    rest = others.sum(-1)
    p_top = p.gather(-1, top).squeeze(-1)
    c = (others * (1 - others)).sum(-1) + p_top * rest
    return p, c, rest


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-log p_y = log sum_j exp(z_j - z_y)``; ``log1p`` of the rest when y is the arg max."""
    d = logits - logits.gather(-1, y[:, None])
    rest = torch.exp(d).scatter(-1, y[:, None], 0.0).sum(-1)
    return torch.where(d.max(-1).values <= 0, torch.log1p(rest), torch.logsumexp(d, dim=-1))


def head_measures(
    phi: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor | None = None,
    *,
    weight_norm: str = "squared",
) -> dict[str, torch.Tensor]:
    """Per-sample closed forms (float64, shape (B,)) for features ``phi`` (B, m) and head ``W, b``.

    ``weight``/``bias`` are those of the model being measured (already scaled, if it is). Besides
    :data:`MEASURES` the result holds ``pred``, ``prob_term`` (c) and ``logit_norm_sq`` (``||W phi||^2``),
    the label-free parts of sharpness. Label-dependent entries need ``y``.
    """
    phi = phi.detach().double()
    w = weight.detach().double()
    wphi = phi @ w.T
    logits = wphi + bias.detach().double() if bias is not None else wphi
    p, c, rest = softmax_terms(logits)
    confidence, pred = p.max(-1)
    feat_sq = (phi * phi).sum(-1)
    logit_sq = (wphi * wphi).sum(-1)
    trace_h = c * feat_sq
    out = {
        "pred": pred,
        "confidence": confidence,
        "prob_term": c,
        "feature_norm": feat_sq.sqrt(),
        "logit_norm_sq": logit_sq,
        "trace_h": trace_h,
        "relative_sharpness": weight_factor(w, weight_norm) * trace_h,
        "relative_flatness_full": c * logit_sq,
    }
    if y is not None:
        y = y.to(p.device)
        p_true = p.gather(-1, y[:, None]).squeeze(-1)
        # ||p - e_y||^2 = sum_{j != y} p_j^2 + (1 - p_y)^2, with 1 - p_y = sum_{j != y} p_j.
        others = p.scatter(-1, y[:, None], 0.0)
        miss = torch.where(out["pred"] == y, rest, 1 - p_true)
        out["p_true"] = p_true
        out["loss"] = cross_entropy(logits, y)
        out["grad_norm"] = ((others * others).sum(-1) + miss * miss).sqrt() * out["feature_norm"]
    return out


@dataclass
class TraceEstimate:
    """Hutchinson estimate of ``Tr(H)`` with its standard error over probes."""

    mean: float
    stderr: float
    probes: int


def hutchinson_traces(
    loss_sums: Callable[[], Iterable[tuple[torch.Tensor, int]]],
    params: Sequence[Sequence[torch.Tensor]],
    probes: int,
    seed: int = 0,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[TraceEstimate]:
    """``Tr(H_l) ~ mean_i v_i^T H_l v_i`` for each parameter group ``params[l]``, Rademacher ``v_i``.

    ``H_l`` is the Hessian of the data-set mean loss w.r.t. group ``l``. ``loss_sums()`` yields, batch by
    batch, ``(sum of per-sample losses over the batch, batch size)`` with a graph to the parameters;
    Hessian-vector products come from double backprop. Probe ``i`` of group ``l`` is regenerated from
    its own seed on every batch, so no probe is stored and each ``v_i^T H v_i`` is accumulated over
    the whole data set; the standard error is the sample std of those values over sqrt(probes).
    ``reduce`` sums partial results across processes when the batches are sharded.
    """
    if probes < 2:
        raise ValueError("Hutchinson needs at least 2 probes for a standard error")
    flat = [p for group in params for p in group]
    quad = torch.zeros(len(params), probes, dtype=torch.float64)
    total = 0
    for loss_sum, n in loss_sums():
        grads = torch.autograd.grad(loss_sum, flat, create_graph=True)
        total += n
        for i in range(probes):
            offset = 0
            for g_idx, group in enumerate(params):
                gen = torch.Generator(device="cpu").manual_seed(_probe_seed(seed, g_idx, i))
                vs = [_rademacher(p, gen) for p in group]
                gs = grads[offset : offset + len(group)]
                offset += len(group)
                gv = sum((g * v).sum() for g, v in zip(gs, vs))
                hv = torch.autograd.grad(gv, group, retain_graph=True)
                quad[g_idx, i] += sum((h.double() * v.double()).sum() for h, v in zip(hv, vs)).item()
        del grads
    if reduce is not None:  # sum the partial sums of every process (torchrun)
        totals = reduce(torch.cat([quad.flatten(), torch.tensor([float(total)], dtype=torch.float64)]))
        quad, total = totals[:-1].view_as(quad), int(totals[-1].item())
    quad /= max(total, 1)
    return [
        TraceEstimate(
            mean=quad[g].mean().item(),
            stderr=(quad[g].std(unbiased=True) / math.sqrt(probes)).item(),
            probes=probes,
        )
        for g in range(len(params))
    ]


def _probe_seed(seed: int, group: int, probe: int) -> int:
    return (seed * 1_000_003 + group * 10_007 + probe) % (2**63 - 1)


def _rademacher(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    v = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).to(p.device, p.dtype)
    return v * 2 - 1


def batch_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of per-sample cross-entropy (the loss Hutchinson differentiates)."""
    return F.cross_entropy(logits, y, reduction="sum")

"""Closed-form curvature of the cross-entropy w.r.t. the head weight: exact, per sample, O(k + m).

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

import torch

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
    differentiable: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-sample closed forms (float64, shape (B,)) for features ``phi`` (B, m) and head ``W, b``.

    ``weight``/``bias`` are those of the model being measured (already scaled, if it is). Besides
    :data:`MEASURES` the result holds ``pred``, ``prob_term`` (c) and ``logit_norm_sq`` (``||W phi||^2``),
    the label-free parts of sharpness. Label-dependent entries need ``y``. ``differentiable`` keeps the
    graph from ``phi`` (for attacks on a detector); the head's parameters are always detached.
    """
    phi = (phi if differentiable else phi.detach()).double()
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

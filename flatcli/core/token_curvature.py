"""Closed-form head curvature per token position of a language model, the vocabulary taken in chunks.

For a row (a token position) with features ``phi`` and logits ``z = W phi + b`` over a vocabulary of k
tokens, ``p = softmax(z)`` and the cross-entropy of the next token y, exactly as in
:mod:`flatcli.core.curvature`::

    trace_h = (sum_j p_j (1 - p_j)) * ||phi||^2        loss = -log p_y

A float64 copy of a 128k x 4096 head is 4 GB, so ``W`` is never copied whole: two passes over vocabulary
chunks of :func:`chunk_size` rows, the first for ``logsumexp z``, the arg max and ``z_y``, the second for
``c = sum_{j != top} p_j (1 - p_j) + p_top * sum_{j != top} p_j`` (the form without cancellation of
:func:`flatcli.core.curvature.softmax_terms`) and, when y is the arg max, ``-log p_y = log1p(sum_{j != y}
exp(z_j - z_y))``. Memory is bounded by rows x chunk float64 values.
"""

from __future__ import annotations

import torch

#: Float64 values of one chunk of logits (rows x vocabulary chunk): 2^25 values, 256 MB.
CHUNK_VALUES = 2**25


def chunk_size(rows: int, vocabulary: int, values: int = CHUNK_VALUES) -> int:
    """Vocabulary rows per chunk so that ``rows * chunk <= values`` (at least one)."""
    return max(1, min(vocabulary, values // max(rows, 1)))


def weight_norm_sq(weight: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``||W||_F^2`` in float64, ``rows`` rows of ``W`` at a time."""
    return sum((weight[i:i + rows].detach().double() ** 2).sum() for i in range(0, weight.shape[0], rows))


def _chunks(weight: torch.Tensor, bias: torch.Tensor | None, phi: torch.Tensor, size: int):
    for start in range(0, weight.shape[0], size):
        z = phi @ weight[start:start + size].detach().double().T
        if bias is not None:
            z = z + bias[start:start + size].detach().double()
        yield start, z


def token_measures(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   targets: torch.Tensor | None = None, *, values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Per row (float64, shape (N,)): ``trace_h``, ``prob_term`` (c), ``feature_norm``, ``confidence`` (max p),
    ``pred`` (arg max) and, with ``targets`` (N,), ``loss`` (-log p_y) and ``p_true`` (p_y)."""
    phi = phi.detach().double()
    n = phi.shape[0]
    size = chunk_size(n, weight.shape[0], values)
    rows = torch.arange(n, device=phi.device)
    lse = torch.full((n,), -torch.inf, dtype=torch.float64, device=phi.device)
    top_z = torch.full_like(lse, -torch.inf)
    top = torch.zeros(n, dtype=torch.long, device=phi.device)
    z_y = torch.zeros_like(lse)
    for start, z in _chunks(weight, bias, phi, size):
        lse = torch.logaddexp(lse, torch.logsumexp(z, dim=-1))
        best, where = z.max(-1)
        better = best > top_z
        top_z, top = torch.where(better, best, top_z), torch.where(better, where + start, top)
        if targets is not None:
            inside = (targets >= start) & (targets < start + z.shape[1])
            picked = z[rows, (targets - start).clamp(0, z.shape[1] - 1)]
            z_y = torch.where(inside, picked, z_y)
    prob_sum = torch.zeros_like(lse)
    rest = torch.zeros_like(lse)
    near = torch.zeros_like(lse)  # sum_{j != y} exp(z_j - z_y), used when y is the arg max
    y_top = targets == top if targets is not None else None
    for start, z in _chunks(weight, bias, phi, size):
        p = torch.exp(z - lse[:, None])
        own = (top >= start) & (top < start + z.shape[1])
        others = p.clone()
        others[rows[own], top[own] - start] = 0.0
        prob_sum += (others * (1 - others)).sum(-1)
        rest += others.sum(-1)
        if targets is not None:
            d = torch.exp((z - z_y[:, None]).clamp(max=0.0))
            mine = (targets >= start) & (targets < start + z.shape[1])
            d[rows[mine], targets[mine] - start] = 0.0
            near += d.sum(-1)
    p_top = torch.exp(top_z - lse)
    c = prob_sum + p_top * rest
    feat_sq = (phi * phi).sum(-1)
    out = {"pred": top, "confidence": p_top, "prob_term": c, "feature_norm": feat_sq.sqrt(), "trace_h": c * feat_sq}
    if targets is not None:
        out["loss"] = torch.where(y_top, torch.log1p(near), lse - z_y)
        out["p_true"] = torch.exp(z_y - lse)
    return out


def target_measures(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                    target_start: int, *, values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Per sequence of ``ids`` (B, L) with features ``phi`` (B, L, m), the target being ``ids[:, target_start:]``:
    means over the positions that predict it (``target_start - 1 .. L - 2``) of the cross-entropy (``loss``, the
    GCG objective), ``trace_h`` (the trace of that loss's Hessian w.r.t. the head), ``target_confidence``
    (``p_y``) and ``feature_norm``; ``exact_match`` is True when every one of them predicts its target token
    (greedy decoding reproduces the target)."""
    b, length, m = phi.shape
    rows = phi[:, target_start - 1:length - 1].reshape(-1, m)
    targets = ids[:, target_start:].reshape(-1).to(phi.device)
    tm = token_measures(rows, weight, bias, targets, values=values)
    tm = {k: v.reshape(b, -1) for k, v in tm.items()}
    return {"loss": tm["loss"].mean(1), "trace_h": tm["trace_h"].mean(1), "target_confidence": tm["p_true"].mean(1),
            "feature_norm": tm["feature_norm"].mean(1),
            "exact_match": (tm["pred"] == targets.reshape(b, -1)).all(1)}


def all_positions_measures(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                           values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Per sequence (``phi`` (B, L, m)): ``trace_h`` and ``feature_norm`` averaged over every position (the
    authors' LLM measure, without its weight factor)."""
    b, length, m = phi.shape
    tm = token_measures(phi.reshape(-1, m), weight, bias, values=values)
    return {k: tm[k].reshape(b, length).mean(1) for k in ("trace_h", "feature_norm")}

"""Closed-form head curvature per token position of a language model, the vocabulary taken in chunks.

For a row (a token position) with features ``phi`` and logits ``z = W phi + b`` over a vocabulary of k
tokens, ``p = softmax(z)`` and the cross-entropy of the next token y, exactly as in
:mod:`flatcli.core.curvature`::

    trace_h = (sum_j p_j (1 - p_j)) * ||phi||^2        loss = -log p_y

A float64 copy of a 128k x 4096 head is 4 GB, so ``W`` is never copied whole: one pass over vocabulary
chunks of :func:`chunk_size` rows keeps, per row, the running maximum ``M`` (the arg max ``top``, the first
among equals) and the sums over the *other* tokens ``S1 = sum_{j != top} exp(z_j - M)`` and
``S2 = sum_{j != top} exp(2 (z_j - M))`` (rescaled when ``M`` grows; the old maximum then joins them). With
``Z = 1 + S1``: ``p_top = 1 / Z``, ``rest = 1 - p_top = S1 / Z`` and

    c = sum_{j != top} p_j (1 - p_j) + p_top * rest = S1 / Z - S2 / Z^2 + S1 / Z^2

the form without cancellation of :func:`flatcli.core.curvature.softmax_terms` (no ``1 - p`` is formed), and
``-log p_y = log1p(S1)`` when y is the arg max, ``M + log1p(S1) - z_y`` otherwise. Memory is bounded by
rows x chunk float64 values.
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


def token_measures(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   targets: torch.Tensor | None = None, *, values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Per row (float64, shape (N,)): ``trace_h``, ``prob_term`` (c), ``feature_norm``, ``confidence`` (max p),
    ``pred`` (arg max) and, with ``targets`` (N,), ``loss`` (-log p_y) and ``p_true`` (p_y)."""
    phi = phi.detach().double()
    n, k = phi.shape[0], weight.shape[0]
    size = chunk_size(n, k, values)
    rows = torch.arange(n, device=phi.device)
    top_z = torch.full((n,), -torch.inf, dtype=torch.float64, device=phi.device)
    top = torch.zeros(n, dtype=torch.long, device=phi.device)
    s1, s2, z_y = torch.zeros_like(top_z), torch.zeros_like(top_z), torch.zeros_like(top_z)
    for start in range(0, k, size):
        z = phi @ weight[start:start + size].detach().double().T
        if bias is not None:
            z = z + bias[start:start + size].detach().double()
        if targets is not None:
            inside = (targets >= start) & (targets < start + z.shape[1])
            z_y = torch.where(inside, z[rows, (targets - start).clamp(0, z.shape[1] - 1)], z_y)
        best, where = z.max(-1)
        grows = best > top_z
        new_top_z = torch.where(grows, best, top_z)
        scale = torch.exp(top_z - new_top_z)  # 1 where the maximum stays; exp(-inf) = 0 before the first chunk
        old_top = torch.where(grows & torch.isfinite(top_z), scale, torch.zeros_like(scale))
        e = z.sub_(new_top_z[:, None]).exp_()  # in place: the chunk's logits are not needed again
        e[rows[grows], where[grows]] = 0.0  # the new maximum is not among the others
        s1 = s1 * scale + old_top + e.sum(-1)
        s2 = s2 * scale**2 + old_top**2 + e.square_().sum(-1)
        top_z, top = new_top_z, torch.where(grows, where + start, top)
    partition = 1 + s1
    c = s1 / partition - s2 / partition**2 + s1 / partition**2
    feat_sq = (phi * phi).sum(-1)
    out = {"pred": top, "confidence": 1 / partition, "prob_term": c, "feature_norm": feat_sq.sqrt(),
           "trace_h": c * feat_sq}
    if targets is not None:
        out["loss"] = torch.where(targets == top, torch.log1p(s1), top_z + torch.log1p(s1) - z_y)
        out["p_true"] = torch.exp(-out["loss"])
    return out


def _target_means(tm: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Means over a sequence's target positions (``tm`` entries (B, T), ``targets`` (B, T))."""
    return {"loss": tm["loss"].mean(1), "trace_h": tm["trace_h"].mean(1), "target_confidence": tm["p_true"].mean(1),
            "feature_norm": tm["feature_norm"].mean(1), "exact_match": (tm["pred"] == targets).all(1)}


def target_measures(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                    target_start: int, *, values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Per sequence of ``ids`` (B, L) with features ``phi`` (B, L, m), the target being ``ids[:, target_start:]``:
    means over the positions that predict it (``target_start - 1 .. L - 2``) of the cross-entropy (``loss``, the
    GCG objective), ``trace_h`` (the trace of that loss's Hessian w.r.t. the head), ``target_confidence``
    (``p_y``) and ``feature_norm``; ``exact_match`` is True when every one of them predicts its target token
    (greedy decoding reproduces the target)."""
    b, length, m = phi.shape
    targets = ids[:, target_start:].to(phi.device)
    tm = token_measures(phi[:, target_start - 1:length - 1].reshape(-1, m), weight, bias, targets.reshape(-1),
                        values=values)
    return _target_means({k: v.reshape(b, -1) for k, v in tm.items()}, targets)


def all_positions_measures(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                           values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Per sequence (``phi`` (B, L, m)): ``trace_h`` and ``feature_norm`` averaged over every position (the
    authors' LLM measure, without its weight factor)."""
    b, length, m = phi.shape
    tm = token_measures(phi.reshape(-1, m), weight, bias, values=values)
    return {k: tm[k].reshape(b, length).mean(1) for k in ("trace_h", "feature_norm")}


def sequence_means(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                   target_start: int, *, values: int = CHUNK_VALUES) -> tuple[dict, dict]:
    """:func:`target_measures` (with ``trace_h_tokens``, (B, T): ``trace_h`` at each target position) and
    :func:`all_positions_measures`, from one pass over every position."""
    b, length, m = phi.shape
    ids = ids.to(phi.device)
    following = ids.roll(-1, dims=1)  # the next token; the last position's is never used
    tm = token_measures(phi.reshape(-1, m), weight, bias, following.reshape(-1), values=values)
    tm = {k: v.reshape(b, length) for k, v in tm.items()}
    at_target = {k: v[:, target_start - 1:length - 1] for k, v in tm.items()}
    target = {**_target_means(at_target, ids[:, target_start:]), "trace_h_tokens": at_target["trace_h"]}
    return target, {k: tm[k].mean(1) for k in ("trace_h", "feature_norm")}


def prompt_means(phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
                 span: tuple[int, int], *, values: int = CHUNK_VALUES) -> dict[str, torch.Tensor]:
    """Label-free measures of prompts ``ids`` (B, L) with features ``phi`` (B, L, m), nothing of a target needed.

    ``span = (start, end)``, ``1 <= start < end <= L``, are the tokens measured (the user's text and the suffix):
    ``log_perplexity`` is their mean cross-entropy, each token given every token before it (positions
    ``start - 1 .. end - 2`` predicting tokens ``start .. end - 1``; the perplexity filter of Jain et al. 2023),
    ``trace_h_prompt`` the mean trace over the same positions, and ``trace_h_last`` the trace at the last
    position (the one predicting the answer).
    """
    start, end = span
    b, length, m = phi.shape
    if not 1 <= start < end <= length:
        raise ValueError(f"span {span} must satisfy 1 <= start < end <= {length}")
    ids = ids.to(phi.device)
    following = ids.roll(-1, dims=1)
    tm = token_measures(phi.reshape(-1, m), weight, bias, following.reshape(-1), values=values)
    tm = {k: v.reshape(b, length) for k, v in tm.items()}
    at = slice(start - 1, end - 1)
    return {"log_perplexity": tm["loss"][:, at].mean(1), "trace_h_prompt": tm["trace_h"][:, at].mean(1),
            "trace_h_last": tm["trace_h"][:, -1]}

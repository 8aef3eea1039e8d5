"""Greedy coordinate gradient (GCG, Zou et al. 2023) that measures the head's curvature of every candidate.

A prompt is ``before + suffix + after + target`` token ids; GCG minimises the mean cross-entropy of the
target tokens over the suffix. Each step (nanoGCG's algorithm, without its buffer of suffixes and mellowmax loss):

1. the gradient of the loss w.r.t. the one-hot suffix ``e`` (n x k), through ``e @ E`` (E the input
   embeddings);
2. ``search_width`` candidates, each replacing ``n_replace`` random positions by one of the ``topk`` tokens of
   most negative gradient at that position (tokens in ``not_allowed`` never), kept only where ``keep`` says
   (a tokenizer's check that the suffix survives decoding and encoding);
3. one forward pass per ``candidate_batch`` candidates gives the head's input ``phi``, from which
   :func:`flatcli.core.token_curvature.target_measures` gives, in float64, each candidate's loss *and* the trace
   of that loss's Hessian w.r.t. the head: recording the curvature costs no extra pass;
4. the candidate of lowest loss (the first among equals) is the next suffix.

Candidates are drawn with a ``torch.Generator`` on the CPU: the same seed gives the same trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flatcli.core.token_curvature import all_positions_measures, target_measures

#: ``features(input_ids=..., inputs_embeds=..., past_key_values=...) -> phi (B, L, m)``, the head's input (whose
#: logits are ``head(phi)``: :class:`flatcli.models.kinds.causal_lm.CausalLM` checks it).
Features = Callable[..., Tensor]
#: Largest relative difference of the step-0 loss between the cached and the full pass, (float32, half).
PREFIX_RTOL = (1e-4, 2e-2)


class Prefix(Protocol):
    """The tokens before the suffix, run once: ``length`` tokens, their head features ``phi`` (length, m), and
    ``cache(b)`` a fresh key/value cache of them for a batch of b sequences."""

    length: int
    phi: Tensor

    def cache(self, b: int): ...


@dataclass(frozen=True)
class Search:
    """How wide a GCG step searches: candidates, top-k tokens per position, positions replaced, batch."""

    search_width: int = 512
    topk: int = 256
    n_replace: int = 1
    candidate_batch: int = 128


@dataclass
class Step:
    """The suffix after a step (step 0: the initial one) and its measures (floats; ``exact_match`` a bool)."""

    step: int
    suffix: list[int]
    candidates: int
    measures: dict


def sample_candidates(suffix: Tensor, grad: Tensor, search: Search, generator: torch.Generator,
                      not_allowed: Tensor | None = None) -> Tensor:
    """(search_width, n) suffixes: each replaces ``n_replace`` random positions by a random one of the
    ``topk`` tokens with the most negative gradient there (nanoGCG's ``sample_ids_from_grad``)."""
    n = suffix.shape[0]
    grad = grad.detach().clone()
    if not_allowed is not None:
        grad[:, not_allowed.to(grad.device)] = torch.inf
    top = (-grad).topk(min(search.topk, grad.shape[1]), dim=1).indices.cpu()  # (n, topk)
    width, replace = search.search_width, min(search.n_replace, n)
    positions = torch.argsort(torch.rand((width, n), generator=generator), dim=1)[:, :replace]
    picks = torch.randint(0, top.shape[1], (width, replace, 1), generator=generator)
    values = torch.gather(top[positions], 2, picks).squeeze(2)
    return suffix.cpu().repeat(width, 1).scatter_(1, positions, values)


#: The name ``attack="gcg"`` gives this attack (it perturbs token ids, so it is not in the image registry).
KIND = "gcg"


class GCG:
    """GCG on one prompt layout; :meth:`run` yields a :class:`Step` per step, step 0 first.

    With ``prefix`` (``prefix(before) -> Prefix``, or None where the model cannot cache, e.g. :meth:`flatcli.models.kinds.causal_lm.CausalLM.prefix`)
    the tokens before the suffix run once: their keys and values are cached and their features kept (causal
    attention: no later token changes them), and each candidate runs only from its suffix on. Step 0 checks that
    the cached and the full forward pass agree (:data:`PREFIX_RTOL`) and drops the cache otherwise
    (:attr:`prefix_dropped`).
    """

    def __init__(self, features: Features, head: nn.Linear, embedding: nn.Embedding, before: Tensor, after: Tensor,
                 target: Tensor, search: Search = Search(), *, not_allowed: Tensor | None = None,
                 keep: Callable[[Tensor], Tensor] | None = None,
                 prefix: Callable[[Tensor], "Prefix | None"] | None = None):
        """``before``/``after``/``target``: 1-D token ids around the suffix; ``keep(candidates)`` a bool mask of
        the candidates to evaluate (when it keeps none, all are evaluated)."""
        self.features, self.head, self.embedding, self.search = features, head, embedding, search
        self.device = head.weight.device
        self.before, self.after, self.target = (torch.as_tensor(t, dtype=torch.long).to(self.device)
                                                for t in (before, after, target))
        self.not_allowed = not_allowed
        self.keep = keep
        self.suffix_length = 0
        self.prefix = prefix(self.before) if prefix is not None and self.before.numel() else None
        self.prefix_dropped = False

    @property
    def target_start(self) -> int:
        return self.before.numel() + self.suffix_length + self.after.numel()

    @property
    def _offset(self) -> int:
        return self.prefix.length if self.prefix is not None else 0

    def sequences(self, suffixes: Tensor) -> Tensor:
        """(B, L) token ids of the prompt with each suffix of ``suffixes`` (B, n)."""
        b = suffixes.shape[0]
        return torch.cat([self.before.expand(b, -1), suffixes.to(self.device), self.after.expand(b, -1),
                          self.target.expand(b, -1)], dim=1)

    def _forward(self, b: int, **inputs) -> Tensor:
        if self.prefix is None:
            return self.features(**inputs)
        return self.features(**inputs, past_key_values=self.prefix.cache(b))

    def gradient(self, suffix: Tensor) -> Tensor:
        """(n, k): d loss / d one-hot suffix, the loss being the mean target cross-entropy of the model's logits (the
        head applied to the positions that predict the target only)."""
        weight = self.embedding.weight
        onehot = F.one_hot(suffix.to(self.device), weight.shape[0]).to(weight.dtype).requires_grad_()
        parts = [onehot @ weight, self.embedding(self.after), self.embedding(self.target)]
        if self.prefix is None:
            parts.insert(0, self.embedding(self.before))
        phi = self._forward(1, inputs_embeds=torch.cat(parts)[None])
        start = self.target_start - self._offset
        loss = F.cross_entropy(self.head(phi[0, start - 1:-1]).float(), self.target)
        (grad,) = torch.autograd.grad(loss, onehot)
        return grad

    def measure(self, suffixes: Tensor) -> tuple[dict, Tensor]:
        """Per candidate (B,): :func:`target_measures` in float64, ``candidate_batch`` at a time, and the head's
        input (L, m) of the candidate of lowest loss."""
        parts, best_phi, best_loss = [], None, torch.inf
        offset = self._offset
        with torch.no_grad():
            for i in range(0, suffixes.shape[0], self.search.candidate_batch):
                ids = self.sequences(suffixes[i:i + self.search.candidate_batch])[:, offset:]
                phi = self._forward(len(ids), input_ids=ids)
                m = target_measures(phi, self.head.weight, self.head.bias, ids, self.target_start - offset)
                j = int(m["loss"].argmin())
                if m["loss"][j] < best_loss:
                    best_loss, best_phi = float(m["loss"][j]), phi[j]
                parts.append(m)
        if self.prefix is not None:
            best_phi = torch.cat([self.prefix.phi.to(best_phi.dtype), best_phi])
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, best_phi

    def _check_prefix(self, suffix: Tensor, cached: dict) -> None:
        prefix, self.prefix = self.prefix, None
        full, _ = self.measure(suffix[None])
        tol = PREFIX_RTOL[self.head.weight.dtype in (torch.float16, torch.bfloat16)]
        if abs(float(cached["loss"][0] - full["loss"][0])) <= tol * max(1.0, abs(float(full["loss"][0]))):
            self.prefix = prefix
        else:
            self.prefix_dropped = True

    def _record(self, step: int, suffix: Tensor, candidates: int, m: dict, index: int, phi: Tensor) -> Step:
        every = all_positions_measures(phi[None], self.head.weight, self.head.bias)
        values = {k: v[index].item() for k, v in m.items()}
        values["trace_h_all_positions"] = every["trace_h"].item()
        return Step(step, suffix.tolist(), candidates, values)

    def run(self, suffix: Tensor, steps: int, generator: torch.Generator, early_stop: bool = False) -> Iterator[Step]:
        """Steps 0 (``suffix`` itself) to ``steps``; with ``early_stop``, none after the first exact match."""
        suffix = suffix.cpu()
        self.suffix_length = suffix.numel()
        m, phi = self.measure(suffix[None])
        if self.prefix is not None:
            self._check_prefix(suffix, m)
            if self.prefix is None:
                m, phi = self.measure(suffix[None])
        current = self._record(0, suffix, 1, m, 0, phi)
        yield current
        for step in range(1, steps + 1):
            if early_stop and current.measures["exact_match"]:
                return
            candidates = sample_candidates(suffix, self.gradient(suffix), self.search, generator, self.not_allowed)
            if self.keep is not None:
                kept = candidates[self.keep(candidates)]
                candidates = kept if len(kept) else candidates
            m, phi = self.measure(candidates)
            best = int(m["loss"].argmin())
            suffix = candidates[best]
            current = self._record(step, suffix, len(candidates), m, best, phi)
            yield current

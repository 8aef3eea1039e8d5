"""Scaling the head (``W -> sW``, ``b -> sb``) and evaluating every scale on cached features (paper §6.1, D.3).

Scaling the head changes nothing before it: the features ``phi`` of any input are the same at every
scale and only the logits ``s W phi (+ s) b`` change. So a fixed trajectory's features, cached once,
give the loss, take-off and clean measures of every scaled model without running the network again
(:func:`evaluate_scales`); :class:`Scaling` is the scaled head itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flatcli.core.curvature import cross_entropy, head_measures
from flatcli.core.trajectories import Takeoff, takeoff


@dataclass(frozen=True)
class Scaling:
    """The head scaled by ``scale``; the bias is scaled too unless ``scale_bias`` is false."""

    scale: float = 1.0
    scale_bias: bool = True

    def weight(self, head: nn.Linear) -> torch.Tensor:
        return head.weight * self.scale if self.scale != 1.0 else head.weight

    def bias(self, head: nn.Linear) -> torch.Tensor | None:
        if head.bias is None or not self.scale_bias or self.scale == 1.0:
            return head.bias
        return head.bias * self.scale


@dataclass
class ScaleBatch:
    """One scale on one batch, all from cached features (per-sample tensors, float64 where real).

    ``loss`` (T+1, B) is the loss at ``x_0 .. x_T`` of the fixed trajectory; ``clean`` the
    :func:`head_measures` at the clean inputs; ``loss_increase = loss[T] - clean loss``.
    """

    clean: dict[str, Tensor]
    loss: Tensor
    loss_increase: Tensor
    takeoff: Takeoff


def evaluate_scale(
    phi: Tensor,
    clean_phi: Tensor | None,
    y: Tensor,
    dist_l2: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    weight_norm: str = "squared",
    tau: float = 0.1,
) -> ScaleBatch:
    """One head ``(weight, bias)`` (already scaled) on cached trajectory features; see :func:`evaluate_scales`."""
    return evaluate_scales(phi, clean_phi, y, dist_l2, [(weight, bias)], weight_norm=weight_norm, tau=tau)[0]


def evaluate_scales(
    phi: Tensor,
    clean_phi: Tensor | None,
    y: Tensor,
    dist_l2: Tensor,
    heads: list[tuple[Tensor, Tensor | None]],
    *,
    weight_norm: str = "squared",
    tau: float = 0.1,
) -> list[ScaleBatch]:
    """Every head ``(weight, bias)`` of ``heads`` (already scaled) on the same cached trajectory features.

    ``phi`` (T+1, B, m): features of ``x_0 .. x_T``; ``clean_phi`` (B, m): features of the clean inputs,
    or ``None`` when ``x_0`` is the clean input (no random start); ``dist_l2`` (T+1, B):
    ``||x_t - x_clean||_2``. The losses of all iterates at all scales are formed in one batch of float64
    operations (logits ``phi W_s^T + b_s``, cross-entropy as :func:`flatcli.core.curvature.cross_entropy`), so
    the cost hardly grows with the number of scales; the clean measures (sharpness, prediction) are
    :func:`flatcli.core.curvature.head_measures` -- the numbers ``flatrob attack``/``sharpness`` report.
    """
    T1, B = phi.shape[0], phi.shape[1]
    S = len(heads)
    flat = phi.flatten(0, 1).detach().double()  # (T1*B, m)
    weights = torch.stack([w.detach().double() for w, _ in heads])  # (S, k, m)
    logits = torch.matmul(flat, weights.transpose(1, 2))  # (S, T1*B, k)
    if any(b is not None for _, b in heads):
        biases = torch.stack([b.detach().double() if b is not None else torch.zeros_like(weights[0, :, 0]) for _, b in heads])
        logits = logits + biases[:, None, :]
    y = y.to(logits.device)
    loss = cross_entropy(logits.flatten(0, 1), y.repeat(S * T1)).view(S, T1, B)
    # take-off on all scales at once: columns (T+1, S*B)
    to = takeoff(loss.permute(1, 0, 2).reshape(T1, S * B), dist_l2.to(loss.device, torch.float64).repeat(1, S), tau)
    out = []
    for i, (w, b) in enumerate(heads):
        clean = head_measures(phi[0] if clean_phi is None else clean_phi, w, b, y, weight_norm=weight_norm)
        if clean_phi is None:
            clean["loss"] = loss[i, 0]  # the same numbers the increase is taken from, to the last bit
        cols = slice(i * B, (i + 1) * B)
        part = Takeoff(step=to.step[cols], width=to.width[cols], censored=to.censored[cols], lower_bound=to.lower_bound[cols])
        out.append(ScaleBatch(clean=clean, loss=loss[i], loss_increase=loss[i, -1] - clean["loss"], takeoff=part))
    return out

"""The threat model's geometry: ascent steps, projection onto the eps-ball and the [0, 1] box, random starts.

Conventions (DESIGN.md §2, chosen to match torchattacks' ``PGD`` / ``PGDL2`` so results compare):

* linf step ``x + alpha * sign(g)``; l2 step ``x + alpha * g / max(||g||_2, 1e-12)`` per sample;
* projection onto the eps-ball around the clean input ``x0`` (linf: ``x0 + clamp(x - x0, -eps, eps)``;
  l2: ``x0 + (x - x0) * min(1, eps / ||x - x0||_2)``), then clamp to [0, 1];
* random start: linf uniform in the box, l2 uniform in the ball's volume (radius ``eps * U^(1/d)``),
  then clamped to [0, 1], drawn on the CPU from a generator seeded per batch (:func:`batch_generator`).

``eps`` and ``alpha`` are floats or per-sample tensors of shape (B,) (:func:`per_sample`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NORMS = ("linf", "l2")
#: Smallest gradient norm divided by in the l2 step (and distance norm in the l2 projection).
TINY = 1e-12


def per_sample(value: float | Tensor, x: Tensor) -> float | Tensor:
    """A float stays a float; a (B,) tensor becomes (B, 1, ..., 1) to broadcast against ``x``."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return float(value)
        if value.shape != (x.shape[0],):
            raise ValueError(f"per-sample eps/alpha must have shape ({x.shape[0]},), got {tuple(value.shape)}")
        if bool((value < 0).any()) or not bool(torch.isfinite(value).all()):
            raise ValueError("per-sample eps/alpha must be finite and >= 0")
        return value.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps/alpha must be finite and >= 0, got {value}")
    return value


def flat_norm(v: Tensor) -> Tensor:
    """Per-sample l2 norm of a (B, ...) tensor: shape (B,)."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


def ascent_step(x: Tensor, grad: Tensor, alpha: float | Tensor, norm: str) -> Tensor:
    """``x + alpha * sign(g)`` (linf) or ``x + alpha * g / max(||g||_2, 1e-12)`` (l2), per sample."""
    if norm == "linf":
        return x + alpha * grad.sign()
    g_norm = flat_norm(grad).clamp_min(TINY).view(-1, *([1] * (grad.dim() - 1)))
    return x + alpha * (grad / g_norm)


def project(x: Tensor, x0: Tensor, eps: float | Tensor, norm: str) -> Tensor:
    """Project ``x`` onto the eps-ball around ``x0`` and clamp to [0, 1] (in that order)."""
    delta = x - x0
    if norm == "linf":
        if isinstance(eps, Tensor):
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        else:
            delta = delta.clamp(-eps, eps)
    else:
        d_norm = flat_norm(delta)
        factor = (eps.flatten() if isinstance(eps, Tensor) else eps) / d_norm.clamp_min(TINY)
        factor = factor.clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
    return (x0 + delta).clamp(0.0, 1.0)


def batch_generator(seed: int, batch_number: int) -> torch.Generator:
    """The CPU generator for random starts of batch ``batch_number`` (in data order) under ``seed``.

    Seeding per batch makes a batch's attack independent of which process (torchrun rank) runs it.
    """
    return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + batch_number)


def random_start(x0: Tensor, eps: float | Tensor, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """A uniform point of the eps-ball around ``x0`` (linf: the box; l2: the ball's volume), clamped to [0, 1].

    Drawn on the CPU (then moved), so one seed gives the same start on every device.
    """
    shape = x0.shape
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        delta = (2 * u - 1) * eps
    else:
        d = x0[0].numel()
        direction = torch.randn(shape, generator=generator, dtype=torch.float32)
        direction = direction / flat_norm(direction).clamp_min(TINY).view(-1, *([1] * (x0.dim() - 1)))
        radius = torch.rand(shape[0], generator=generator, dtype=torch.float64).pow(1.0 / d).float()
        delta = (direction * radius.view(-1, *([1] * (x0.dim() - 1)))).to(x0.device, x0.dtype) * eps
    return (x0 + delta).clamp(0.0, 1.0)

"""The local estimate of L: the largest Jacobian spectral norm of ``phi`` at the data (not a certificate)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from flatcli.core.classifier import Classifier, eval_mode
from flatcli.core.lipschitz.constant import Lipschitz, head_module
from flatcli.errors import LayerError, UsageError


def local_estimate(
    model: Classifier, head: str, x: torch.Tensor, *, iters: int = 50, seed: int = 0,
    between: Callable[[], None] | None = None,
) -> Lipschitz:
    """Largest spectral norm of the Jacobian of ``phi`` over the points ``x`` (a batch).

    Per sample, power iteration on ``J^T J`` by double backward: one forward graph gives ``J^T u``
    (built once, with ``create_graph``, as a function of a dummy ``u``), whose backward in ``u`` gives
    ``J v``; all samples at once (in eval mode they are independent, so ``J`` is block diagonal).
    (Double backward rather than ``torch.func.jvp``: faster per step, and no seconds-long first-use
    cost of the forward-mode decompositions.) Each sample's estimate
    ``sqrt(||J^T J v||)`` approaches its norm from below; stops early when every sample changes by
    less than 1e-6 (relative). ``detail["per_sample"]`` lists them, ``value`` is their max. An
    optimistic estimate of the local Lipschitz constant, not a certificate.

    The graph is built with the math backend of ``scaled_dot_product_attention`` (attention written out
    in differentiable operations): the fused flash/memory-efficient kernels have no double backward, so
    a vision transformer could not be estimated otherwise. The math backend computes the same attention.

    ``between`` is called after every power iteration (the caller's interrupt check: an exception it
    raises stops the estimate there).
    """
    head_mod = head_module(model, head)
    if x.dim() < 2 or x.shape[0] == 0:
        raise UsageError("local Lipschitz estimate needs a non-empty batch of inputs")

    def phi(inp: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = head_mod.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
        try:
            model(inp)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise LayerError(f"head layer {head!r} ran {len(captured)} times in one forward pass")
        return captured[0]

    B = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    dims = tuple(range(1, x.dim()))

    def unit(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = t.double().pow(2).sum(dims).sqrt()
        safe = torch.where(n > 0, n, torch.ones_like(n)).to(t.dtype)
        return t / safe.view(-1, *([1] * (t.dim() - 1))), n

    v, _ = unit(v)
    est = torch.zeros(B, dtype=torch.float64)
    done, k = False, 0
    with eval_mode(model):
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # fused attention has no double backward
            y = phi(xr)  # one forward graph, reused by every product
            if y.requires_grad:
                u = torch.zeros_like(y, requires_grad=True)
                (g,) = torch.autograd.grad(y, xr, u, create_graph=True)  # J^T u, linear in u
        if y.requires_grad and g.requires_grad:
            for k in range(1, max(1, iters) + 1):
                (jv,) = torch.autograd.grad(g, u, v, retain_graph=True)  # J v (double backward)
                (z,) = torch.autograd.grad(y, xr, jv, retain_graph=True)  # J^T (J v)
                v, n = unit(z.detach())
                new = n.sqrt().cpu()
                done = bool(((new - est).abs() <= 1e-6 * new).all()) and k > 1
                est = torch.maximum(est, new)
                if between is not None:
                    between()
                if done:
                    break
    per = [float(e) for e in est]
    i = max(range(B), key=lambda j: per[j])
    detail = {"per_sample": per, "argmax": i, "n": B, "iterations": k, "converged": done}
    return Lipschitz(value=per[i], kind="local", detail=detail)

"""Exact per-sample Hessian traces of any Linear / Conv2d / BatchNorm layer: ``Tr H_l = sum_c p_c ||grad_W ell(x, c)||^2``.

**The identity.** For one sample with logits ``z = f(x; W_l)``, ``p = softmax(z)`` and the cross-entropy
``ell(x, y) = -log p_y``, the chain rule gives the Hessian w.r.t. the (flattened) weight ``W_l``::

    H_l = J^T (diag(p) - p p^T) J  +  sum_c (p_c - [c = y]) d^2 z_c / dW_l^2,      J = dz / dW_l  (k x d).

If the network is piecewise linear in the output of layer ``l`` on the way to the logits (ReLU, max/avg
pooling, eval-mode BatchNorm, linear and convolutional layers, residual additions, concatenation, reshapes,
dropout in eval mode; :mod:`flatcli.core.layer_linearity` decides it) and the layer is affine in ``W_l``
(Linear, Conv2d, BatchNorm's scale), then ``z`` is piecewise linear in ``W_l``: ``d^2 z_c / dW_l^2 = 0``
except on the measure-zero set where a ReLU or a max-pool switches, so ``H_l`` *is* the Gauss-Newton
matrix ``G_l = J^T (diag(p) - p p^T) J`` (which, for softmax cross-entropy, is also the Fisher
``E_{c ~ p}[g_c g_c^T]``, ``g_c = grad_W ell(x, c)``). It needs no label. Factor the middle matrix:
``diag(p) - p p^T = sum_c p_c (e_c - p)(e_c - p)^T`` (expand: ``sum_c p_c e_c e_c^T - p p^T - p p^T + p p^T``,
using ``sum_c p_c = 1``), and ``J^T (p - e_c) = grad_W ell(x, c)``, hence::

    Tr(H_l) = Tr(G_l) = sum_c p_c (p - e_c)^T J J^T (p - e_c) = sum_c p_c || grad_{W_l} ell(x, c) ||^2.

So the exact per-sample trace costs ``k`` backward passes (one per class ``c``: back-propagate
``dell/dz = p - e_c`` for every sample of the batch at once; samples are independent in eval mode), each
followed by the per-sample squared gradient norm of the layer. On the head it reduces to
``sum_c p_c ||p - e_c||^2 ||phi||^2 = (sum_c p_c (1 - p_c)) ||phi||^2``, the closed form of
:mod:`flatcli.core.curvature`. The data-set Hessian is the mean of per-sample Hessians, so the data-set
trace is the mean of the per-sample traces.

**Monte Carlo (``fisher-mc``).** Draw labels ``c_1..c_S ~ p`` per sample; ``mean_s ||g_{c_s}||^2`` is an
unbiased estimate of the same trace at ``S`` backward passes instead of ``k``; its standard error per
sample is ``std_s / sqrt(S)`` (``S >= 2``), and that of a mean over ``N`` samples ``sqrt(sum_i se_i^2) / N``.

Where the network is *not* piecewise linear after the layer (GELU, SiLU, LayerNorm, attention, ...), the
same numbers are the trace of the Gauss-Newton / Fisher matrix, not of the Hessian: callers label them so.

**Per-sample gradient norms without per-sample gradients.** A layer's weight gradient for sample ``i`` is
``G_i = sum_l g_{il} u_{il}^T`` over output positions ``l``, with ``g_{il}`` the gradient w.r.t. the layer's
output at position ``l`` and ``u_{il}`` the input patch it saw (Linear: the input row, ``l`` ranging over
any leading dimensions; Conv2d: the unfolded ``C/G * kh * kw`` patch, per group; BatchNorm's scale: the
normalised input ``(a - mu) / sqrt(var + eps)`` of each channel, a depthwise case). Then::

    ||G_i||_F^2 = sum_{l, l'} (g_il . g_il') (u_il . u_il')      ("ghost norm": two L x L Gram matrices)

costs ``L^2 (O + D)`` against ``L O D`` for forming ``G_i = g_i u_i^T`` (``O`` outputs, ``D`` patch size,
``L`` positions). Each layer takes the cheaper one (as Opacus' ghost clipping and Bu et al.'s "mixed"
clipping do); the input Gram does not depend on the class, so it is computed once per batch and reused
for all ``k`` backward passes. A Linear layer on flat (B, d) inputs is the case ``L = 1``:
``||G_i||^2 = ||g_i||^2 ||a_i||^2``. Norms are formed in at least float32 (inputs under the ``precision`` option
may be bf16/fp16) in chunks of samples (memory bounded by :data:`CHUNK_ELEMENTS`), and every sum over
classes, draws and samples is accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flatcli.errors import LayerError

#: Largest number of elements of an unfolded input or a Gram matrix formed at once (chunks of samples).
CHUNK_ELEMENTS = 1 << 25


def unsupported(module: nn.Module) -> str | None:
    """Why ``module``'s weight has no per-sample gradient norm here (``None``: it has one)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if not module.affine:
            return f"{type(module).__name__} without affine weights has no weight"
        if module.running_var is None:
            return f"{type(module).__name__} without running statistics normalises by the batch"
        return None
    return f"no per-sample gradient norm for {type(module).__name__} (Linear, Conv2d and BatchNorm have one)"


class LayerTaps:
    """Forward hooks keeping the input and output of each module during one forward pass.

    The output is handed on as a copy, so that an in-place operation after the layer (``ReLU(inplace=True)``
    on a Linear's output) cannot change the tensor the gradients are taken against. Use as a context manager.
    """

    def __init__(self, modules: Sequence[nn.Module], names: Sequence[str]):
        self.modules = list(modules)
        self.names = list(names)
        self.seen: list[list[tuple[Tensor, int, Tensor]]] = [[] for _ in self.modules]
        self._handles: list = []

    def __enter__(self) -> "LayerTaps":
        for i, m in enumerate(self.modules):
            self._handles.append(m.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        for s in self.seen:
            s.clear()

    def _hook(self, i: int):
        def hook(module, inputs, output):
            a = inputs[0]
            self.seen[i].append((a, a._version, output))
            return output.clone() if isinstance(output, Tensor) else output

        return hook

    def taken(self) -> list[tuple[Tensor, Tensor]]:
        """``(input, output)`` of every module from the last forward; each must have run exactly once."""
        out = []
        for name, seen in zip(self.names, self.seen):
            if len(seen) != 1:
                raise LayerError(f"layer {name!r} ran {len(seen)} times in one forward pass; exact traces need it once")
            a, version, o = seen[0]
            if a._version != version:
                raise LayerError(f"the input of layer {name!r} was modified in place after the layer ran")
            if not o.requires_grad:
                raise LayerError(f"the output of layer {name!r} does not require grad (its weight is frozen)")
            out.append((a.detach(), o))
        return out


class SquaredGradNorms:
    """``||grad_W ell_i||_F^2`` per sample (float64, shape (B,)) from the layer's output gradient.

    Built once per forward pass from the module and its input ``a``; called once per backward pass with the
    gradient ``g`` w.r.t. the module's output.
    """

    def __init__(self, module: nn.Module, a: Tensor):
        reason = unsupported(module)
        if reason is not None:
            raise LayerError(reason)
        self.module = module
        self.dtype = torch.promote_types(a.dtype, torch.float32)
        self.a = a
        self.B = a.shape[0]
        self.G, self.D, self.O, self.L = self._shape()
        ghost = self.L * self.L * (self.O + self.D) < self.L * self.O * self.D
        self.gram = self._input_gram() if ghost and self.B * self.G * self.L * self.L <= 8 * CHUNK_ELEMENTS else None

    # ---- the layer as (groups G, patch size D, outputs per group O, positions L) ----
    def _shape(self) -> tuple[int, int, int, int]:
        m, a = self.module, self.a
        if isinstance(m, nn.Linear):
            return 1, m.in_features, m.out_features, a[0].numel() // m.in_features
        if isinstance(m, nn.Conv2d):
            if a.dim() != 4:
                raise LayerError("exact traces of a Conv2d need batched 4-d inputs")
            kh, kw = m.kernel_size
            out_hw = self._conv_out_hw()
            return m.groups, m.in_channels // m.groups * kh * kw, m.out_channels // m.groups, out_hw[0] * out_hw[1]
        c = m.num_features  # BatchNorm: one group per channel, patch size 1
        return c, 1, 1, a[0].numel() // c

    def _conv_out_hw(self) -> tuple[int, int]:
        m = self.module
        h, w = self._padded(self.a[:1]).shape[-2:]
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        return (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1

    def _padded(self, a: Tensor) -> Tensor:
        m = self.module
        pad = m._reversed_padding_repeated_twice
        if not any(pad):
            return a
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        return F.pad(a, pad, mode=mode)

    def _patches(self, sl: slice) -> Tensor:
        """Input patches ``u`` of samples ``sl``: (b, G, D, L)."""
        m, a = self.module, self.a[sl].to(self.dtype)
        b = a.shape[0]
        if isinstance(m, nn.Linear):
            return a.reshape(b, self.L, self.D).transpose(1, 2).unsqueeze(1)
        if isinstance(m, nn.Conv2d):
            u = F.unfold(self._padded(a), m.kernel_size, dilation=m.dilation, stride=m.stride)
            return u.view(b, self.G, self.D, self.L)
        shape = (1, -1) + (1,) * (a.dim() - 2)
        mean = m.running_mean.to(self.dtype).view(shape)
        std = torch.sqrt(m.running_var.to(self.dtype) + m.eps).view(shape)
        return ((a - mean) / std).reshape(b, self.G, 1, self.L)

    def _grads(self, g: Tensor, sl: slice) -> Tensor:
        """Output gradients of samples ``sl``: (b, G, O, L)."""
        g = g[sl].to(self.dtype)
        b = g.shape[0]
        if isinstance(self.module, nn.Linear):
            return g.reshape(b, self.L, self.O).transpose(1, 2).unsqueeze(1)
        return g.reshape(b, self.G, self.O, self.L)

    def _chunks(self, per_sample: int) -> list[slice]:
        step = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
        return [slice(i, min(i + step, self.B)) for i in range(0, self.B, step)]

    def _input_gram(self) -> Tensor:
        parts = []
        for sl in self._chunks(self.G * self.L * max(self.D, self.L)):
            u = self._patches(sl)
            parts.append(u.transpose(-1, -2) @ u)  # (b, G, L, L)
        return torch.cat(parts)

    def __call__(self, g: Tensor) -> Tensor:
        out = torch.empty(self.B, dtype=torch.float64, device=g.device)
        if self.gram is not None:
            for sl in self._chunks(self.G * self.L * max(self.O, self.L)):
                gg = self._grads(g, sl)
                gram_g = gg.transpose(-1, -2) @ gg
                out[sl] = (gram_g * self.gram[sl]).flatten(1).sum(1, dtype=torch.float64)
        else:
            for sl in self._chunks(self.G * (self.L * self.D + self.O * self.L + self.O * self.D)):
                grad = self._grads(g, sl) @ self._patches(sl).transpose(-1, -2)  # (b, G, O, D): G_i itself
                out[sl] = grad.flatten(1).pow(2).sum(1, dtype=torch.float64)
        return out


@dataclass
class LayerTraces:
    """Per-sample traces (L, B) float64 of each layer; ``stderr`` (L, B) for Monte Carlo, else ``None``."""

    trace: Tensor
    stderr: Tensor | None


def class_gradient(p: Tensor, labels: Tensor) -> Tensor:
    """``dell/dz = p - e_c`` per sample (float64), the entry at ``c`` formed as ``-sum_{j != c} p_j``."""
    onehot = F.one_hot(labels, p.shape[1]).bool()
    others = p.masked_fill(onehot, 0.0)
    return others - onehot * others.sum(1, keepdim=True)


def layer_traces(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    modules: Sequence[nn.Module],
    names: Sequence[str],
    *,
    draws: int = 0,
    generator: torch.Generator | None = None,
) -> LayerTraces:
    """``sum_c p_c ||grad_{W_l} ell(x_i, c)||^2`` for every sample ``i`` and module ``l`` (see the module docstring).

    ``forward(x)`` returns the logits (the caller sets precision and eval mode); it runs once, then one
    backward pass per class (``draws == 0``: exact) or per Monte-Carlo draw of labels ``c ~ p`` (``draws >= 2``;
    ``generator`` is a CPU generator), one at a time, so memory is that of one forward pass and its graph.
    """
    if draws == 1 or draws < 0:
        raise ValueError("Monte-Carlo traces need at least 2 draws per sample (for a standard error)")
    with torch.enable_grad(), LayerTaps(modules, names) as taps:
        logits = forward(x)
        pairs = taps.taken()
        norms = [SquaredGradNorms(m, a) for m, (a, _) in zip(modules, pairs)]
        outputs = [o for _, o in pairs]
        p = torch.softmax(logits.detach().double(), dim=1)
        B, k = p.shape
        passes = draws or k

        def squared(labels: Tensor, last: bool) -> Tensor:
            v = class_gradient(p, labels).to(logits.dtype)
            grads = torch.autograd.grad(logits, outputs, grad_outputs=v, retain_graph=not last)
            return torch.stack([n(g) for n, g in zip(norms, grads)])  # (L, B)

        if draws == 0:
            trace = torch.zeros(len(modules), B, dtype=torch.float64, device=logits.device)
            for c in range(k):
                labels = torch.full((B,), c, dtype=torch.long, device=logits.device)
                trace += p[:, c] * squared(labels, c == passes - 1)
            return LayerTraces(trace, None)
        probs = p.cpu()
        values = []
        for s in range(draws):
            labels = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
            values.append(squared(labels, s == passes - 1))
        stacked = torch.stack(values)  # (S, L, B)
        stderr = stacked.std(0, unbiased=True) / math.sqrt(draws)
        return LayerTraces(stacked.mean(0), stderr)

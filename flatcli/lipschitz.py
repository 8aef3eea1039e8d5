"""The Lipschitz constant L of the feature map ``phi`` (everything before the head), l2 -> l2.

The certified radius of Proposition 8/9 needs ``phi`` to be L-Lipschitz on the input space (images in
[0, 1], normalisation included). Two ways to get L from a model (a third, "given", is a number the
user passes):

``upper_bound``
    A bound through the module graph, sound up to the documented numerical caveats. The whole
    :class:`~flatcli.models.wrapper.Classifier` is traced with ``torch.fx``; shapes come from
    ``ShapeProp`` on a zero input of batch 1. Walking the graph from the input ``x`` to ``phi`` (the
    input of the head ``nn.Linear``), every node gets a bound ``L(node)`` w.r.t. ``x``:

    - a unary operation with operator norm (or Lipschitz constant) ``c``: ``L = c * L(input)``;
    - ``a + b`` / ``a - b``: ``L = L(a) + L(b)`` (times ``sqrt(expansion)`` when an operand is
      broadcast to a larger shape, which copies its entries);
    - ``torch.cat`` / ``torch.stack``: ``L = sqrt(sum_i L(a_i)^2)``;
    - operations on constants only, and shape queries (``x.size(0)``), are constants (``L = 0``);
    - an in-place operation (``mul_``, ``inplace=True``) rebinds its input: later users of the
      mutated tensor get the operation's bound (refused where views share the memory, unless the
      operation is elementwise with constant <= 1, which cannot raise any bound).

    Per-operation constants ``c``: Normalize ``1 / min(std)``; Linear ``||W||_2`` (exact SVD);
    eval-mode BatchNorm ``max |gamma / sqrt(running_var + eps)|``; ReLU/LeakyReLU(slope <= 1)/Tanh/
    ELU(alpha <= 1)/Softplus/Hardtanh/clamp/abs 1, Sigmoid 1/4, GELU 1.1290, SiLU 1.0999, Mish
    1.0886, Hardswish 1.5, Hardsigmoid 1/6, SELU 1.7581 (LeakyReLU, ELU, PReLU: max(1, |slope|));
    MaxPool ``sqrt(max number of windows an input pixel falls in)`` (exact for l2); AvgPool / AdaptiveAvgPool the exact operator norm (closed form
    ``1/sqrt(window)`` for non-overlapping windows, otherwise the SVD of the per-channel matrix, or
    Lanczos beyond 4096 pixels); mean over ``n`` entries ``1/sqrt(n)``; multiplication /
    division by a constant its largest magnitude; reshapes, slicing, dropout in eval mode 1.

    Conv2d (zero padding, any stride/dilation/groups): the operator norm at the layer's real input
    size, by power iteration on ``A^T A`` with ``F.conv2d`` and its adjoint ``F.conv_transpose2d``
    (``output_padding`` chosen so the shapes match), accelerated by Lanczos (plain power iteration
    needs 300-1600 steps to settle on randomly initialised 3x3 convs; Lanczos 100-200), until the
    residual is below ``POWER_TOL``. Power iteration (Lanczos too) approaches the norm *from below*,
    so the converged estimate is multiplied by the safety factor ``1 + SAFETY`` (``SAFETY = 1e-3``,
    a hundred times the convergence tolerance) to stay an upper bound in practice. Where it does
    not converge within ``iters`` operator applications, a rigorous bound is used instead: the
    zero-padded (strided) conv is a coordinate restriction of a circular convolution on the padded
    grid, whose norm is the largest singular value of the kernel's DFT over the grid frequencies
    (float64; tight for large maps, 10-50% loose on 4x4 and 2x2 maps), or, for convs with at most
    ``DENSE_CONV_MAX_IN`` inputs (e.g. 512 channels at 1x1, 256 at 2x2), the exact SVD of the dense
    matrix. 1x1 convolutions use the exact ``max_g ||W_g||_2``.

    Anything else raises :class:`~flatcli.errors.UsageError` naming the module and node: the bound
    would not be sound (e.g. products of two input-dependent tensors, LayerNorm, attention).

``local_estimate``
    The largest spectral norm of the Jacobian of ``phi`` at the given points, by power iteration on
    ``J^T J`` (double backward), batched over samples (eval mode makes samples
    independent). An estimate of the local Lipschitz constant from below: optimistic, *not* a
    certificate.

Both put the model in eval mode for the computation and restore the previous mode afterwards.
"""

from __future__ import annotations

import inspect
import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from flatcli.errors import LayerError, UsageError
from flatcli.models.wrapper import Classifier, Normalize

SAFETY = 1e-3
"""Relative safety margin applied to converged power-iteration estimates (they approach from below)."""

POWER_TOL = 1e-5
"""Relative residual of the top Ritz pair (``||A^T A y - theta y|| / theta``) that counts as converged."""

DENSE_MAX_PIXELS = 4096
"""Per-channel linear pooling maps up to this many input pixels get an exact SVD of their matrix."""

DENSE_CONV_MAX_IN = 1024
DENSE_CONV_MAX_ENTRIES = 1 << 22
"""Convs with at most this many inputs (and matrix entries) get an exact SVD of their dense matrix."""

_HINT = "pass --lipschitz VALUE"

# Largest |derivative| of each activation (numerically checked in float64, rounded up).
GELU_LIP = 1.1290  # exact erf form 1.12890, tanh approximation 1.12899
SILU_LIP = 1.0999  # 1.09984 at x = 2.3994
MISH_LIP = 1.0886  # 1.08850 at x = 1.4906
SELU_LIP = 1.7581  # scale * alpha = 1.0507 * 1.6733 = 1.75810
HARDSWISH_LIP = 1.5
HARDSIGMOID_LIP = 1.0 / 6.0
SIGMOID_LIP = 0.25


@dataclass
class Lipschitz:
    """A Lipschitz constant of ``phi`` and where it came from.

    ``kind`` is ``"upper"`` (a sound bound through the module graph), ``"local"`` (the largest
    Jacobian spectral norm at the data: an estimate, not a certificate) or ``"given"`` (by the user).
    ``detail`` holds per-node factors (upper) or per-sample values (local).
    """

    value: float
    kind: str
    detail: dict = field(default_factory=dict)


def given(value: float) -> Lipschitz:
    """A Lipschitz constant the user passed (``--lipschitz VALUE``): positive and finite, else UsageError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--lipschitz must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise UsageError(f"--lipschitz must be positive and finite, got {value!r}")
    return Lipschitz(value=v, kind="given", detail={})


# --------------------------------------------------------------------------------------------------
# Pure operator norms
# --------------------------------------------------------------------------------------------------


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _conv_pads(
    padding: int | Sequence[int] | str, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a Conv2d, ``'same'``/``'valid'`` included."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"unknown conv padding {padding!r}")
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


def _conv_geometry(weight, input_hw, stride, padding, dilation):
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    pt, pb, pl, pr = _conv_pads(padding, (kh, kw), (dh, dw))
    H, W = int(input_hw[0]), int(input_hw[1])
    Hp, Wp = H + pt + pb, W + pl + pr
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    Ho = (Hp - eh) // sh + 1 if Hp >= eh else 0
    Wo = (Wp - ew) // sw + 1 if Wp >= ew else 0
    return dict(
        k=(kh, kw), s=(sh, sw), d=(dh, dw), pads=(pt, pb, pl, pr), hw=(H, W), padded=(Hp, Wp),
        ext=(eh, ew), out=(Ho, Wo),
    )


def lanczos_top_eigenvalue(
    apply: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    *,
    max_matvecs: int = 200,
    tol: float = POWER_TOL,
    restart: int | None = None,
) -> tuple[float, bool, int]:
    """Largest eigenvalue of a symmetric PSD operator (``A^T A``) given as ``apply`` on flat float64 vectors.

    Lanczos with full reorthogonalisation, restarted every ``restart`` steps (default: 10 to 50,
    so that the basis stays under ~200 MB) from the top Ritz
    vector: the Krylov acceleration of power iteration (the power iterate from the same start lies in
    the Krylov space, so the top Ritz value is never worse than the power iteration's Rayleigh
    quotient). Ritz values lie inside the spectrum, so the estimate approaches the top eigenvalue
    *from below*. Converged when the residual ``||A^T A y - theta y|| = beta |s_last|`` is at most
    ``tol * theta`` (then an eigenvalue lies within ``tol * theta`` of ``theta``). Returns
    ``(theta, converged, operator applications)``.
    """
    q = v0.detach().to(torch.float64).flatten()
    nq = float(q.norm())
    if nq == 0.0:
        raise ValueError("zero start vector")
    q = q / nq
    n, total, theta = q.numel(), 0, 0.0
    if restart is None:  # keep the Krylov basis under ~200 MB
        restart = max(10, min(50, 25_000_000 // max(1, n)))
    while total < max(1, max_matvecs):
        m = min(restart, max(1, max_matvecs) - total)
        Q = torch.empty((m + 1, n), dtype=torch.float64, device=q.device)
        Q[0] = q
        alphas: list[float] = []
        betas: list[float] = []
        for j in range(m):
            w = apply(Q[j]).to(torch.float64).flatten()
            total += 1
            alphas.append(float(w @ Q[j]))
            basis = Q[: j + 1]
            for _ in range(2):  # full reorthogonalisation, twice is enough
                w = w - basis.T @ (basis @ w)
            beta = float(w.norm())
            T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                T = T + torch.diag(off, 1) + torch.diag(off, -1)
            evals, evecs = torch.linalg.eigh(T)
            theta = max(float(evals[-1]), 0.0)
            residual = beta * abs(float(evecs[-1, -1]))
            if residual <= tol * theta or beta <= 1e-13 * max(theta, float(abs(evals).max()), 1e-300):
                return theta, True, total
            betas.append(beta)
            Q[j + 1] = w / beta
        y = Q[:m].T @ evecs[:, -1].to(Q.device)
        q = y / y.norm()
    return theta, False, total


def conv2d_operator_norm(
    weight: torch.Tensor,
    input_hw: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    iters: int = 200,
    tol: float = POWER_TOL,
    seed: int = 0,
) -> tuple[float, bool, int]:
    """Operator norm of the zero-padded conv ``x -> conv2d(x, weight)`` on inputs of size ``input_hw``.

    Iterates ``A^T A`` with ``A = F.conv2d`` and ``A^T = F.conv_transpose2d`` (``output_padding``
    chosen so the adjoint returns the input's shape), accelerated by Lanczos
    (:func:`lanczos_top_eigenvalue`), at most ``iters`` applications, from a seeded random start.
    The estimate approaches the norm *from below*. Returns ``(estimate, converged, applications)``.
    """
    g = _conv_geometry(weight, input_hw, stride, padding, dilation)
    (Ho, Wo), (H, W) = g["out"], g["hw"]
    if Ho <= 0 or Wo <= 0 or H <= 0 or W <= 0:
        return 0.0, True, 0
    w = weight.detach()
    if not w.is_floating_point() or w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    pt, pb, pl, pr = g["pads"]
    (sh, sw), (dh, dw), (eh, ew), (Hp, Wp) = g["s"], g["d"], g["ext"], g["padded"]
    symmetric = pt == pb and pl == pr
    op = (Hp - eh - (Ho - 1) * sh, Wp - ew - (Wo - 1) * sw)
    cin = int(w.shape[1]) * groups
    shape = (1, cin, H, W)

    def fwd(v: torch.Tensor) -> torch.Tensor:
        if symmetric:
            return F.conv2d(v, w, None, (sh, sw), (pt, pl), (dh, dw), groups)
        return F.conv2d(F.pad(v, (pl, pr, pt, pb)), w, None, (sh, sw), 0, (dh, dw), groups)

    def adj(u: torch.Tensor) -> torch.Tensor:
        if symmetric:
            return F.conv_transpose2d(u, w, None, (sh, sw), (pt, pl), op, groups, (dh, dw))
        full = F.conv_transpose2d(u, w, None, (sh, sw), 0, op, groups, (dh, dw))
        return full[..., pt : pt + H, pl : pl + W]

    def gram(v: torch.Tensor) -> torch.Tensor:
        return adj(fwd(v.to(w.dtype).view(shape))).flatten()

    gen = torch.Generator().manual_seed(seed)
    v0 = torch.randn(shape, generator=gen, dtype=torch.float64).to(w.device)
    with torch.no_grad():
        theta, converged, k = lanczos_top_eigenvalue(gram, v0, max_matvecs=iters, tol=tol)
    return math.sqrt(theta), converged, k


def conv2d_dense_norm(
    weight: torch.Tensor,
    input_hw: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> float:
    """Exact norm of a small conv: from its matrix (the conv of the identity batch), float64 eigvalsh of the Gram.

    Every entry of that matrix is a single kernel weight (no sums), so computing it in the weight's
    own precision is exact.
    """
    g = _conv_geometry(weight, input_hw, stride, padding, dilation)
    pt, pb, pl, pr = g["pads"]
    H, W = g["hw"]
    w = weight.detach().cpu()
    if not w.is_floating_point() or w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    cin = int(w.shape[1]) * groups
    n = cin * H * W
    basis = F.pad(torch.eye(n, dtype=w.dtype).view(n, cin, H, W), (pl, pr, pt, pb))
    with torch.no_grad():
        out = F.conv2d(basis, w, None, g["s"], 0, g["d"], groups)
    mat = out.reshape(n, -1).to(torch.float64)  # (inputs, outputs): the transposed matrix
    gram = mat.T @ mat if mat.shape[1] <= mat.shape[0] else mat @ mat.T
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))


def conv2d_circulant_bound(
    weight: torch.Tensor,
    input_hw: Sequence[int],
    *,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> float:
    """A rigorous upper bound on the zero-padded conv's norm (any stride), in float64.

    Zero padding embeds ``x`` isometrically into an ``N1 x N2`` grid (the padded size, at least the
    dilated kernel's extent); the stride-1 valid conv there is a coordinate restriction of the
    circular convolution on that grid (no output position wraps around), and the stride keeps a
    subset of its outputs. The circular convolution's norm is ``max_w sigma_max(K^(w))`` over the
    grid frequencies ``w``, ``K^(w)`` the per-group ``c_out x c_in`` DFT of the kernel (half the grid
    suffices: the other half are complex conjugates), from ``eigvalsh`` of the smaller Gram matrix.
    """
    g = _conv_geometry(weight, input_hw, 1, padding, dilation)
    (kh, kw), (dh, dw), (eh, ew), (Hp, Wp) = g["k"], g["d"], g["ext"], g["padded"]
    N1, N2 = max(Hp, eh, 1), max(Wp, ew, 1)
    w = weight.detach().to("cpu", torch.float64)
    cout, cin_g = int(w.shape[0]), int(w.shape[1])
    # K^(u, v) = sum_ab K[:, :, a, b] exp(-2 pi i (a dh u / N1 + b dw v / N2)), v up to N2 // 2.
    u = torch.arange(N1, dtype=torch.float64).view(-1, 1, 1, 1)
    v = torch.arange(N2 // 2 + 1, dtype=torch.float64).view(1, -1, 1, 1)
    a = torch.arange(kh, dtype=torch.float64).view(1, 1, -1, 1) * dh
    b = torch.arange(kw, dtype=torch.float64).view(1, 1, 1, -1) * dw
    angle = 2 * math.pi * (a * u / N1 + b * v / N2)
    phase = torch.polar(torch.ones_like(angle), -angle).reshape(-1, kh * kw)
    flat = w.reshape(cout * cin_g, kh * kw).to(torch.complex128)
    mats = (phase @ flat.T).reshape(-1, cout // groups, cin_g)
    gram = mats @ mats.mH if mats.shape[-2] <= mats.shape[-1] else mats.mH @ mats
    top = float(torch.linalg.eigvalsh(gram)[..., -1].max()) if gram.numel() else 0.0
    return math.sqrt(max(top, 0.0)) * (1.0 + 1e-9)


def conv2d_bound(
    weight: torch.Tensor,
    input_hw: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    iters: int = 200,
) -> tuple[float, dict]:
    """Upper bound on the conv's operator norm and how it was obtained (see the module docstring).

    1x1 kernels: exact ``max_g ||W_g||_2``. Otherwise the iterative estimate at the real input size
    times ``1 + SAFETY`` when it converged; else the exact dense SVD for small inputs and the
    rigorous circulant bound for large ones.
    """
    g = _conv_geometry(weight, input_hw, stride, padding, dilation)
    if g["out"][0] <= 0 or g["out"][1] <= 0:
        return 0.0, {"method": "empty output"}
    if g["k"] == (1, 1):
        w = weight.detach().to("cpu", torch.float64)
        cout, cin_g = int(w.shape[0]), int(w.shape[1])
        mats = w.reshape(groups, cout // groups, cin_g)
        return float(torch.linalg.matrix_norm(mats, ord=2).max()), {"method": "exact (1x1)"}
    est, converged, k = conv2d_operator_norm(
        weight, input_hw, stride=stride, padding=padding, dilation=dilation, groups=groups, iters=iters,
    )
    info: dict = {"estimate": est, "converged": converged, "iterations": k}
    if converged:
        info["method"] = "iterative x (1 + SAFETY)"
        return est * (1.0 + SAFETY), info
    n_in = int(weight.shape[1]) * groups * g["hw"][0] * g["hw"][1]
    n_out = int(weight.shape[0]) * g["out"][0] * g["out"][1]
    if n_in <= DENSE_CONV_MAX_IN and n_in * n_out <= DENSE_CONV_MAX_ENTRIES:
        info["method"] = "exact (dense SVD; iteration not converged)"
        exact = conv2d_dense_norm(weight, input_hw, stride=stride, padding=padding, dilation=dilation,
                                  groups=groups)
        return max(exact, est), info
    circ = conv2d_circulant_bound(weight, input_hw, padding=padding, dilation=dilation, groups=groups)
    info["circulant"] = circ
    info["method"] = "circulant bound (iteration not converged)"
    return max(circ, est), info


def linear_norm(weight: torch.Tensor) -> float:
    """Exact spectral norm ``||W||_2`` (largest singular value, float64 SVD)."""
    return float(torch.linalg.matrix_norm(weight.detach().to("cpu", torch.float64), ord=2))


def batchnorm_factor(bn: nn.Module) -> float:
    """Eval-mode BatchNorm is the diagonal map ``gamma / sqrt(running_var + eps)``: its largest |entry|."""
    scale = 1.0 / torch.sqrt(bn.running_var.detach().to("cpu", torch.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to("cpu", torch.float64)
    return float(scale.abs().max()) if scale.numel() else 0.0


def window_coverage(
    length: int, out_length: int, kernel: int, stride: int, padding: int, dilation: int
) -> int:
    """Largest number of pooling windows (of an ``out_length``-long output) any input position lies in."""
    counts = [0] * length
    for o in range(out_length):
        start = o * stride - padding
        for t in range(kernel):
            i = start + t * dilation
            if 0 <= i < length:
                counts[i] += 1
    return max(counts, default=0)


def adaptive_window_coverage(length: int, out_length: int) -> int:
    """Largest number of adaptive-pooling windows any input position lies in."""
    counts = [0] * length
    for o in range(out_length):
        lo, hi = (o * length) // out_length, -((-(o + 1) * length) // out_length)
        for i in range(lo, hi):
            counts[i] += 1
    return max(counts, default=0)


def maxpool_factor(
    input_hw: Sequence[int], output_hw: Sequence[int], kernel, stride, padding, dilation
) -> float:
    """l2 Lipschitz constant of 2-d max pooling: ``sqrt(max windows per input pixel)`` (attained).

    ``|max_w a - max_w b| <= max_{i in w} |a_i - b_i|``, so ``||Delta out||^2 <= sum_i count(i)
    Delta_i^2``; a single-pixel difference covered by the most windows attains it. Windows are
    products of 1-d windows, so the count is the product of the per-axis maxima.
    """
    kernel, dilation, padding = _pair(kernel), _pair(dilation), _pair(padding)
    stride = _pair(stride if stride not in (None, (), []) else kernel)
    c = 1
    for a in range(2):
        c *= window_coverage(input_hw[a], output_hw[a], kernel[a], stride[a], padding[a], dilation[a])
    return math.sqrt(c)


def adaptive_maxpool_factor(input_hw: Sequence[int], output_hw: Sequence[int]) -> float:
    """l2 Lipschitz constant of adaptive max pooling (see :func:`maxpool_factor`)."""
    c = 1
    for a in range(2):
        c *= adaptive_window_coverage(input_hw[a], output_hw[a])
    return math.sqrt(c)


def channelwise_linear_norm(
    fn: Callable[[torch.Tensor], torch.Tensor], input_hw: Sequence[int], *, iters: int = 200
) -> tuple[float, str]:
    """Operator norm of a linear map applied to each channel alike (e.g. average pooling).

    Up to ``DENSE_MAX_PIXELS`` input pixels: exact, from the SVD of its matrix (``fn`` applied to the
    identity batch, float64). Beyond: Lanczos on ``A^T A`` with autograd's adjoint, times ``1 + SAFETY``.
    """
    H, W = int(input_hw[0]), int(input_hw[1])
    n = H * W
    if n <= DENSE_MAX_PIXELS:
        with torch.no_grad():
            out = fn(torch.eye(n, dtype=torch.float64).view(n, 1, H, W))
        mat = out.reshape(n, -1).T
        return float(torch.linalg.matrix_norm(mat, ord=2)), "exact (dense SVD)"
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn((1, 1, H, W), generator=gen, dtype=torch.float64)
    x0 = torch.zeros_like(v0, requires_grad=True)
    with torch.enable_grad():
        y0 = fn(x0)  # linear: the adjoint is the backward of this graph

    def gram(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = fn(v.view(1, 1, H, W))
        return torch.autograd.grad(y0, x0, out, retain_graph=True)[0].flatten()

    theta, converged, _ = lanczos_top_eigenvalue(gram, v0, max_matvecs=max(iters, 50))
    method = "iterative x (1 + SAFETY)" if converged else "iterative x (1 + SAFETY), not converged"
    return math.sqrt(theta) * (1.0 + SAFETY), method


def avgpool_factor(
    fn: Callable[[torch.Tensor], torch.Tensor],
    input_hw: Sequence[int],
    *,
    window: tuple[int, int] | None = None,
    iters: int = 200,
) -> tuple[float, str]:
    """Norm of average pooling; ``window`` given when the windows are known to tile the input exactly."""
    if window is not None:
        return 1.0 / math.sqrt(window[0] * window[1]), "exact (non-overlapping windows)"
    return channelwise_linear_norm(fn, input_hw, iters=iters)


# --------------------------------------------------------------------------------------------------
# Graph walk
# --------------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


class _Recorder(ShapeProp):
    """ShapeProp that also keeps every node's value (batch 1), for the non-tensor arguments."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.values[n] = result
        return result


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _head_module(model: Classifier, head: str) -> nn.Module:
    try:
        mod = model.layer(head)
    except AttributeError:
        raise LayerError(f"no layer {head!r} in the network; name the head layer (e.g. 'fc')") from None
    if not isinstance(mod, nn.Linear):
        raise LayerError(f"head layer {head!r} is {type(mod).__name__}, not nn.Linear")
    return mod


class _Unsupported(Exception):
    """Internal: the node cannot be bounded; the walker turns it into a UsageError naming it."""


_ID = "identity"
# call_method names / functions that only move, copy-once or select entries: factor 1.
_SHAPE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "t", "contiguous", "squeeze", "unsqueeze",
    "clone", "detach", "float", "double", "to", "type_as", "unflatten", "flip", "roll", "narrow",
    "chunk", "split", "unbind", "view_as", "reshape_as", "movedim", "swapaxes",
}
_SHAPE_FUNCS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.clone, torch.detach, torch.flip, torch.roll, torch.narrow, torch.chunk, torch.split,
    torch.unbind, torch.movedim, torch.swapaxes, torch.t, torch.unflatten,
}
# Activations as functions / methods: name -> constant (or a callable of the bound arguments).
_ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.celu: "celu", F.selu: "selu", torch.selu: "selu",
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.softplus: "softplus", F.hardtanh: "hardtanh",
    F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.logsigmoid: "logsigmoid",
    F.softsign: "softsign", F.tanhshrink: "tanhshrink", torch.clamp: "clamp", torch.clip: "clamp",
    torch.clamp_: "clamp", torch.abs: "abs",
}
_ACT_METHODS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
    "tanh_": "tanh", "clamp": "clamp", "clamp_": "clamp", "clip": "clamp", "clip_": "clamp",
    "abs": "abs", "abs_": "abs",
}
_CONST_ACTS = {
    "relu": 1.0, "relu6": 1.0, "celu": 1.0, "selu": SELU_LIP, "gelu": GELU_LIP, "silu": SILU_LIP,
    "mish": MISH_LIP, "sigmoid": SIGMOID_LIP, "tanh": 1.0, "softplus": 1.0, "hardtanh": 1.0,
    "hardsigmoid": HARDSIGMOID_LIP, "hardswish": HARDSWISH_LIP, "logsigmoid": 1.0, "softsign": 1.0,
    "tanhshrink": 1.0, "clamp": 1.0, "abs": 1.0,
}
_ACT_MODULES: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.CELU: 1.0, nn.SELU: SELU_LIP, nn.GELU: GELU_LIP,
    nn.SiLU: SILU_LIP, nn.Mish: MISH_LIP, nn.Sigmoid: SIGMOID_LIP, nn.Tanh: 1.0, nn.Softplus: 1.0,
    nn.Hardtanh: 1.0, nn.Hardsigmoid: HARDSIGMOID_LIP, nn.Hardswish: HARDSWISH_LIP,
    nn.LogSigmoid: 1.0, nn.Softsign: 1.0, nn.Tanhshrink: 1.0, nn.Identity: 1.0, nn.Flatten: 1.0,
    nn.Unflatten: 1.0, nn.Dropout: 1.0, nn.Dropout1d: 1.0, nn.Dropout2d: 1.0, nn.Dropout3d: 1.0,
    nn.AlphaDropout: 1.0, nn.FeatureAlphaDropout: 1.0, nn.ZeroPad2d: 1.0,
}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_VIEW_METHODS = {"expand", "expand_as", "select", "diagonal", "as_strided", "T", "mT", "view_as_real"}
_ALIAS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}
_NEG = {operator.neg, torch.neg, operator.pos}
_SHAPE_QUERY_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda"}


# Reference signatures, to bind positional and keyword arguments of the functional forms.
def _sig_leaky_relu(input, negative_slope=0.01, inplace=False): ...
def _sig_elu(input, alpha=1.0, inplace=False): ...
def _sig_dropout(input, p=0.5, training=True, inplace=False): ...
def _sig_max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False): ...
def _sig_adaptive_pool(input, output_size, return_indices=False): ...
def _sig_linear(input, weight, bias=None): ...
def _sig_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def _sig_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5): ...
def _sig_pad(input, pad, mode="constant", value=None): ...
def _sig_add(input, other, *, alpha=1, out=None): ...
def _sig_cat(tensors, dim=0, *, out=None): ...


def _bind(sig_fn, args, kwargs) -> dict:
    bound = inspect.signature(sig_fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _is_tensor_like(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(t, torch.Tensor) for t in v)


def _basic_index(idx: Any) -> bool:
    if isinstance(idx, tuple):
        return all(_basic_index(i) for i in idx)
    return idx is None or idx is Ellipsis or isinstance(idx, (int, slice))


class _Walker:
    def __init__(self, gm: fx.GraphModule, values: dict, iters: int):
        self.gm = gm
        self.values = values
        self.iters = iters
        self.modules = dict(gm.named_modules())
        self.L: dict[fx.Node, float] = {}
        self.dep: dict[fx.Node, bool] = {}
        self.records: list[dict] = []

    # ---- helpers ----
    def _Ld(self, a: Any) -> float:
        return self.L.get(a, 0.0) if isinstance(a, fx.Node) and self.dep.get(a, False) else 0.0

    def _isdep(self, a: Any) -> bool:
        return isinstance(a, fx.Node) and self.dep.get(a, False)

    def _val(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.values[n])

    def _deps_in(self, a: Any) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg(a, lambda n: found.append(n) if self.dep.get(n, False) else None)
        return found

    def _unary_input(self, node: fx.Node) -> fx.Node:
        """The single input-dependent argument, which must be the first one."""
        deps = self._deps_in((node.args, node.kwargs))
        first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        if not deps or any(d is not first for d in deps):
            raise _Unsupported("an input-dependent tensor in an argument other than the first")
        return first

    def _record(self, node, kind, rule, bound, factor=None, **extra):
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        if node.op == "call_module" and target.startswith("net."):
            target = target[len("net."):]
        rec = {"node": node.name, "target": target, "kind": kind, "rule": rule}
        if factor is not None:
            rec["factor"] = float(factor)
        rec["bound"] = float(bound)
        rec.update(extra)
        self.records.append(rec)

    def _scale(self, node, kind, factor, src=None, **extra):
        src = self._unary_input(node) if src is None else src
        bound = factor * self._Ld(src)
        self.L[node] = bound
        self._record(node, kind, "scale", bound, factor, **extra)

    # ---- main ----
    def run(self, phi: fx.Node, head: fx.Node) -> float:
        needed = self._needed(phi, head)
        for node in self.gm.graph.nodes:
            if node not in needed:
                continue
            if node.op == "placeholder":
                self.dep[node] = True
                self.L[node] = 1.0
                self._record(node, "input", "input", 1.0)
                continue
            self.dep[node] = any(self.dep.get(i, False) for i in node.all_input_nodes)
            if not self.dep[node]:
                self.L[node] = 0.0
                continue
            if self._shape_query(node):
                self.dep[node] = False
                self.L[node] = 0.0
                continue
            try:
                if not _is_tensor_like(self.values.get(node)):
                    raise _Unsupported("a non-tensor value computed from the input")
                if node.op == "call_module":
                    self._module(node)
                elif node.op in ("call_function", "call_method"):
                    self._function(node)
                else:
                    raise _Unsupported(f"node kind {node.op}")
            except _Unsupported as e:
                raise UsageError(self._message(node, str(e))) from None
            if self._inplace(node) and node.args and self._isdep(node.args[0]):
                try:
                    self._rebind(node, node.args[0])
                except _Unsupported as e:
                    raise UsageError(self._message(node, str(e))) from None
        return self.L[phi]

    def _needed(self, phi: fx.Node, head: fx.Node) -> set[fx.Node]:
        """Ancestors of ``phi``, plus in-place operations (and their ancestors) that mutate one
        before the head runs."""
        order = list(self.gm.graph.nodes)
        before = order[: order.index(head)]
        needed: set[fx.Node] = set()

        def add(root: fx.Node) -> None:
            stack = [root]
            while stack:
                n = stack.pop()
                if n not in needed:
                    needed.add(n)
                    stack.extend(n.all_input_nodes)

        add(phi)
        changed = True
        while changed:
            changed = False
            for n in before:
                if n not in needed and n.args and isinstance(n.args[0], fx.Node) \
                        and n.args[0] in needed and self._inplace(n):
                    add(n)
                    changed = True
        return needed

    def _rebind(self, node: fx.Node, mutated: fx.Node) -> None:
        """After ``node`` mutates ``mutated`` in place, later users of it see ``node``'s value.

        An elementwise map with constant <= 1 cannot raise the bound of the tensor or of anything
        sharing its memory: nothing to do. Otherwise the mutated tensor takes ``node``'s bound, which
        is only sound if no other tensor shares its memory (a view of it, or it a view of another).
        """
        rec = self.records[-1] if self.records and self.records[-1]["node"] == node.name else {}
        if rec.get("rule") == "scale" and rec.get("factor", math.inf) <= 1.0 and self._elementwise(node):
            return
        if self._aliasing(mutated) or any(u is not node and self._aliasing(u) for u in mutated.users):
            raise _Unsupported("in-place operation on a tensor that shares memory with others")
        self.L[mutated] = self.L[node]

    def _elementwise(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self.modules.get(node.target)) in _ACT_MODULES or isinstance(
                self.modules.get(node.target), (nn.LeakyReLU, nn.ELU))
        t = node.target
        if node.op == "call_method":
            return t in _ACT_METHODS or t == "dropout"
        return t in _ACT_FUNCS or t in _DROPOUT_FUNCS

    def _aliasing(self, node: fx.Node) -> bool:
        """Whether ``node``'s result may share memory with its input (views, no-op copies)."""
        if node.op == "call_module":
            return isinstance(self.modules.get(node.target), _ALIAS_MODULES)
        if node.op == "call_method":
            return node.target in _SHAPE_METHODS or node.target in _VIEW_METHODS
        if node.op == "call_function":
            return node.target in _SHAPE_FUNCS or node.target is operator.getitem \
                or node.target in _DROPOUT_FUNCS
        return False

    def _inplace(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return bool(getattr(self.modules.get(node.target), "inplace", False))
        t = node.target
        name = t if isinstance(t, str) else getattr(t, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):
            return True
        if node.kwargs.get("inplace"):
            return True
        if node.op == "call_function" and callable(t):
            try:
                bound = inspect.signature(t).bind(*node.args, **node.kwargs)
            except (TypeError, ValueError):
                return False
            return bool(bound.arguments.get("inplace", False))
        return False

    def _shape_query(self, node: fx.Node) -> bool:
        if node.op == "call_method" and node.target in _SHAPE_QUERY_METHODS:
            return True
        if node.op == "call_function" and node.target is getattr and len(node.args) > 1:
            return node.args[1] in _SHAPE_ATTRS
        return False

    def _message(self, node: fx.Node, reason: str) -> str:
        if node.op == "call_module":
            path = str(node.target)
            mod = self.modules.get(path)
            path = path[len("net."):] if path.startswith("net.") else path
            return (f"cannot bound the Lipschitz constant through {path} ({type(mod).__name__}): "
                    f"{reason}; {_HINT}")
        stack = node.meta.get("nn_module_stack") or {}
        where, cls = "the model", type(self.gm).__name__
        if stack:
            path, (_, klass) = list(stack.items())[-1]
            path = path[len("net."):] if path.startswith("net.") else path
            where, cls = (path or "net"), getattr(klass, "__name__", str(klass))
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return (f"cannot bound the Lipschitz constant through {where} ({cls}): {reason} "
                f"(operation {name}, node {node.name}); {_HINT}")

    # ---- modules ----
    def _module(self, node: fx.Node) -> None:
        mod = self.modules[node.target]
        kind = type(mod).__name__
        src = self._unary_input(node)
        in_val, out_val = self.values[src], self.values[node]
        if isinstance(mod, Normalize):
            self._scale(node, kind, 1.0 / float(mod.std.detach().abs().min()), src)
        elif isinstance(mod, nn.Linear):
            self._scale(node, kind, linear_norm(mod.weight), src, method="exact (SVD)")
        elif isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise _Unsupported(f"unsupported padding_mode={mod.padding_mode!r}")
            if in_val.dim() != 4:
                raise _Unsupported("unbatched input")
            f, info = conv2d_bound(
                mod.weight, in_val.shape[-2:], stride=mod.stride, padding=mod.padding,
                dilation=mod.dilation, groups=mod.groups, iters=self.iters,
            )
            self._scale(node, kind, f, src, input_hw=list(in_val.shape[-2:]), **info)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.training or mod.running_var is None:
                raise _Unsupported("BatchNorm without running statistics (batch-dependent)")
            self._scale(node, kind, batchnorm_factor(mod), src)
        elif isinstance(mod, nn.LeakyReLU):
            self._scale(node, kind, max(1.0, abs(mod.negative_slope)), src)
        elif isinstance(mod, nn.ELU):
            self._scale(node, kind, max(1.0, abs(mod.alpha)), src)
        elif isinstance(mod, nn.PReLU):
            self._scale(node, kind, max(1.0, float(mod.weight.detach().abs().max())), src)
        elif isinstance(mod, (nn.ConstantPad2d, nn.ConstantPad1d, nn.ConstantPad3d)):
            self._scale(node, kind, 1.0, src)
        elif isinstance(mod, nn.MaxPool2d):
            if mod.return_indices:
                raise _Unsupported("max pooling with return_indices")
            f = maxpool_factor(in_val.shape[-2:], out_val.shape[-2:], mod.kernel_size, mod.stride,
                               mod.padding, mod.dilation)
            self._scale(node, kind, f, src, method="exact (window coverage)")
        elif isinstance(mod, nn.AdaptiveMaxPool2d):
            if mod.return_indices:
                raise _Unsupported("max pooling with return_indices")
            f = adaptive_maxpool_factor(in_val.shape[-2:], out_val.shape[-2:])
            self._scale(node, kind, f, src, method="exact (window coverage)")
        elif isinstance(mod, nn.AvgPool2d):
            self._avgpool(node, kind, src, mod, mod.kernel_size, mod.stride, mod.padding,
                          mod.divisor_override)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            self._adaptive_avgpool(node, kind, src, mod)
        elif type(mod) in _ACT_MODULES:
            self._scale(node, kind, _ACT_MODULES[type(mod)], src)
        else:
            raise _Unsupported("unsupported module")

    def _avgpool(self, node, kind, src, fn, kernel, stride, padding, divisor) -> None:
        in_hw = tuple(self.values[src].shape[-2:])
        k, p = _pair(kernel), _pair(padding)
        s = _pair(stride if stride not in (None, (), []) else kernel)
        window = None
        if s == k and p == (0, 0) and divisor is None and in_hw[0] % k[0] == 0 and in_hw[1] % k[1] == 0:
            window = k
        f, method = avgpool_factor(fn, in_hw, window=window, iters=self.iters)
        self._scale(node, kind, f, src, method=method)

    def _adaptive_avgpool(self, node, kind, src, fn) -> None:
        in_hw = tuple(self.values[src].shape[-2:])
        out_hw = tuple(self.values[node].shape[-2:])
        window = None
        if in_hw[0] % out_hw[0] == 0 and in_hw[1] % out_hw[1] == 0:
            window = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
        f, method = avgpool_factor(fn, in_hw, window=window, iters=self.iters)
        self._scale(node, kind, f, src, method=method)

    # ---- functions and methods ----
    def _function(self, node: fx.Node) -> None:
        t, is_method = node.target, node.op == "call_method"
        args, kwargs = node.args, node.kwargs
        vargs, vkwargs = self._val(args), self._val(kwargs)
        name = t if is_method else getattr(t, "__name__", str(t))

        if (is_method and t in _SHAPE_METHODS) or (not is_method and t in _SHAPE_FUNCS):
            self._scale(node, name, 1.0)
        elif not is_method and t is operator.getitem:
            src = self._unary_input(node)
            if isinstance(self.values[src], torch.Tensor) and not _basic_index(vargs[1]):
                raise _Unsupported("advanced indexing (may repeat entries)")
            self._scale(node, "getitem", 1.0, src)
        elif (is_method and t in _ACT_METHODS) or (not is_method and t in _ACT_FUNCS):
            act = _ACT_METHODS[t] if is_method else _ACT_FUNCS[t]
            if act == "leaky_relu":
                f = max(1.0, abs(float(_bind(_sig_leaky_relu, vargs, vkwargs)["negative_slope"])))
            elif act == "elu":
                f = max(1.0, abs(float(_bind(_sig_elu, vargs, vkwargs)["alpha"])))
            else:
                f = _CONST_ACTS[act]
            self._scale(node, act, f)
        elif (not is_method and t in _DROPOUT_FUNCS) or (is_method and t == "dropout"):
            if _bind(_sig_dropout, vargs, vkwargs)["training"]:
                raise _Unsupported("dropout in training mode")
            self._scale(node, name, 1.0)
        elif not is_method and t is F.pad:
            b = _bind(_sig_pad, vargs, vkwargs)
            if b["mode"] != "constant":
                raise _Unsupported(f"padding mode {b['mode']!r} repeats entries")
            self._scale(node, name, 1.0)
        elif (not is_method and t in _ADD) or (is_method and t in ("add", "add_")):
            self._sum(node, name)
        elif (not is_method and t in _SUB) or (is_method and t in ("sub", "sub_")):
            self._sum(node, name)
        elif (not is_method and t in _MUL) or (is_method and t in ("mul", "mul_")):
            self._mul(node, name, divide=False)
        elif (not is_method and t in _DIV) or (is_method and t in ("div", "div_", "true_divide")):
            self._mul(node, name, divide=True)
        elif (not is_method and t in _NEG) or (is_method and t in ("neg", "neg_")):
            self._scale(node, name, 1.0)
        elif not is_method and t in (torch.cat, torch.concat, torch.concatenate, torch.stack):
            self._cat(node, name)
        elif (not is_method and t in (torch.mean, torch.sum)) or (is_method and t in ("mean", "sum")):
            src = self._unary_input(node)
            n = self.values[src].numel() / max(1, self.values[node].numel())
            f = 1.0 / math.sqrt(n) if name == "mean" else math.sqrt(n)
            self._scale(node, name, f, src)
        elif not is_method and t is F.linear:
            b = _bind(_sig_linear, args, kwargs)
            self._scale(node, name, linear_norm(self._val(b["weight"])), method="exact (SVD)")
        elif not is_method and t in (F.conv2d, torch.conv2d):
            b = _bind(_sig_conv2d, args, kwargs)
            src = self._unary_input(node)
            bv = {k: self._val(v) for k, v in b.items()}
            in_hw = list(self.values[src].shape[-2:])
            f, info = conv2d_bound(bv["weight"], in_hw, stride=bv["stride"], padding=bv["padding"],
                                   dilation=bv["dilation"], groups=bv["groups"], iters=self.iters)
            self._scale(node, name, f, src, input_hw=in_hw, **info)
        elif not is_method and t is F.batch_norm:
            b = {k: self._val(v) for k, v in _bind(_sig_batch_norm, args, kwargs).items()}
            if b["training"] or b["running_var"] is None:
                raise _Unsupported("batch norm with batch statistics")
            scale = 1.0 / torch.sqrt(b["running_var"].detach().double().cpu() + b["eps"])
            if b["weight"] is not None:
                scale = scale * b["weight"].detach().double().cpu()
            self._scale(node, name, float(scale.abs().max()))
        elif not is_method and t in (F.max_pool2d, torch.max_pool2d):
            b = _bind(_sig_max_pool2d, vargs, vkwargs)
            if b["return_indices"]:
                raise _Unsupported("max pooling with return_indices")
            src = self._unary_input(node)
            f = maxpool_factor(self.values[src].shape[-2:], self.values[node].shape[-2:],
                               b["kernel_size"], b["stride"], b["padding"], b["dilation"])
            self._scale(node, name, f, src, method="exact (window coverage)")
        elif not is_method and t is F.adaptive_max_pool2d:
            b = _bind(_sig_adaptive_pool, vargs, vkwargs)
            if b["return_indices"]:
                raise _Unsupported("max pooling with return_indices")
            src = self._unary_input(node)
            f = adaptive_maxpool_factor(self.values[src].shape[-2:], self.values[node].shape[-2:])
            self._scale(node, name, f, src, method="exact (window coverage)")
        elif not is_method and t in (F.avg_pool2d, F.adaptive_avg_pool2d):
            src = self._unary_input(node)
            rest_a, rest_k = vargs[1:], vkwargs

            def fn(v, _t=t, _a=rest_a, _k=rest_k):
                return _t(v, *_a, **_k)

            if t is F.adaptive_avg_pool2d:
                self._adaptive_avgpool(node, name, src, fn)
            else:
                # F.avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode,
                #              count_include_pad, divisor_override)
                full = list(vargs[1:]) + [None] * 6
                kernel = vkwargs.get("kernel_size", full[0])
                stride = vkwargs.get("stride", full[1])
                padding = vkwargs.get("padding", full[2] if full[2] is not None else 0)
                divisor = vkwargs.get("divisor_override", full[5])
                self._avgpool(node, name, src, fn, kernel, stride, padding, divisor)
        else:
            raise _Unsupported("unsupported operation")

    def _expansion(self, operand: fx.Node, node: fx.Node) -> float:
        """sqrt(how many times broadcasting copies each entry of ``operand`` into the result)."""
        return math.sqrt(self.values[node].numel() / max(1, self.values[operand].numel()))

    def _sum(self, node, name) -> None:
        b = _bind(_sig_add, node.args, node.kwargs)
        alpha = abs(float(self._val(b["alpha"])))
        bound = 0.0
        terms = []
        for arg, coef in ((b["input"], 1.0), (b["other"], alpha)):
            if self._isdep(arg):
                term = coef * self._expansion(arg, node) * self.L[arg]
                terms.append(term)
                bound += term
        self.L[node] = bound
        self._record(node, name, "sum", bound, terms=terms)

    def _mul(self, node, name, divide: bool) -> None:
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        if self._isdep(a) and self._isdep(b):
            raise _Unsupported("product or quotient of two input-dependent tensors (not globally Lipschitz)")
        if divide and self._isdep(b):
            raise _Unsupported("division by an input-dependent tensor")
        src, const = (a, b) if self._isdep(a) else (b, a)
        c = self._val(const)
        out_shape = self.values[node].shape
        if isinstance(c, torch.Tensor):
            c = c.detach().to("cpu", torch.float64)
            if divide:
                c = 1.0 / c
            c2 = c.expand(out_shape) ** 2
            src_shape = (1,) * (len(out_shape) - self.values[src].dim()) + tuple(self.values[src].shape)
            dims = [d for d in range(len(out_shape)) if src_shape[d] == 1 and out_shape[d] > 1]
            if dims:
                c2 = c2.sum(dim=dims)
            f = math.sqrt(float(c2.max())) if c2.numel() else 0.0
        else:
            c = float(c)
            f = abs(1.0 / c) if divide else abs(c)
            f *= self._expansion(src, node)
        if not math.isfinite(f):
            raise _Unsupported("division by zero")
        self._scale(node, name, f, src)

    def _cat(self, node, name) -> None:
        b = _bind(_sig_cat, node.args, node.kwargs)
        parts = [self.L[a] for a in b["tensors"] if self._isdep(a)]
        bound = math.sqrt(sum(p * p for p in parts))
        self.L[node] = bound
        self._record(node, name, "l2-sum", bound, terms=parts)


def _trace(model: Classifier) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means no graph bound
        raise UsageError(
            f"cannot bound the Lipschitz constant: torch.fx cannot trace the model "
            f"({type(e).__name__}: {e}); {_HINT}"
        ) from None
    return fx.GraphModule(tracer.root, graph)


def _device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def upper_bound(
    model: Classifier, head: str, input_shape: tuple[int, int, int], *, iters: int = 200
) -> Lipschitz:
    """A sound upper bound on the l2 Lipschitz constant of ``phi`` (the input of ``net.<head>``).

    Composes per-node operator norms through the ``torch.fx`` graph of the whole classifier at the
    input size ``input_shape = (C, H, W)`` (see the module docstring for the rules). ``iters`` caps
    the (Lanczos-accelerated) power iterations per convolution. They approach a norm from below:
    converged estimates are multiplied by ``1 + SAFETY``; where they do not converge the rigorous
    circulant bound is used instead. ``detail["nodes"]`` lists every node on the way, in
    graph order, with its factor and its bound w.r.t. ``x``. Raises ``UsageError`` naming the first
    module or operation it cannot bound.
    """
    _head_module(model, head)
    if len(tuple(input_shape)) != 3:
        raise UsageError(f"input shape must be (channels, height, width), got {tuple(input_shape)}")
    with _eval_mode(model):
        gm = _trace(model)
        target = f"net.{head}"
        calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == target]
        if len(calls) != 1:
            raise LayerError(
                f"head layer {head!r} is called {len(calls)} times in the traced model; "
                f"it must be applied exactly once, as the last operation"
            )
        phi = calls[0].args[0] if calls[0].args else None
        if not isinstance(phi, fx.Node):
            raise LayerError(f"cannot find the input of head layer {head!r} in the traced model")
        rec = _Recorder(gm)
        x0 = torch.zeros((1, *tuple(int(s) for s in input_shape)), device=_device(model))
        try:
            with torch.no_grad():
                rec.propagate(x0)
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"the model does not run on inputs of shape {tuple(input_shape)} "
                f"({type(e).__name__}: {e}); check the input size"
            ) from None
        walker = _Walker(gm, rec.values, iters)
        value = walker.run(phi, calls[0])
    detail = {
        "method": "operator norms through the torch.fx graph",
        "head": head,
        "phi_node": phi.name,
        "input_shape": [int(s) for s in input_shape],
        "safety_factor": 1.0 + SAFETY,
        "power_iters": iters,
        "nodes": walker.records,
    }
    return Lipschitz(value=float(value), kind="upper", detail=detail)


def local_estimate(
    model: Classifier, head: str, x: torch.Tensor, *, iters: int = 50, seed: int = 0
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
    """
    head_mod = _head_module(model, head)
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
    with _eval_mode(model):
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
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
                if done:
                    break
    per = [float(e) for e in est]
    i = max(range(B), key=lambda j: per[j])
    detail = {"per_sample": per, "argmax": i, "n": B, "iterations": k, "converged": done}
    return Lipschitz(value=per[i], kind="local", detail=detail)

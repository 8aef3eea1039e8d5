"""Operator norms (l2 -> l2) of single layers: convolutions, linear maps, BatchNorm, pooling.

Power iterations approach a norm from below; converged estimates are multiplied by ``1 + SAFETY``.
Where an iteration does not converge, a rigorous bound replaces it (see :func:`conv2d_bound`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SAFETY = 1e-3
"""Relative safety margin applied to converged power-iteration estimates (they approach from below)."""

POWER_TOL = 1e-5
"""Relative residual of the top Ritz pair (``||A^T A y - theta y|| / theta``) that counts as converged."""

DENSE_MAX_PIXELS = 4096
"""Per-channel linear pooling maps up to this many input pixels get an exact SVD of their matrix."""

DENSE_CONV_MAX_IN = 1024
DENSE_CONV_MAX_ENTRIES = 1 << 22
"""Convs with at most this many inputs (and matrix entries) get an exact SVD of their dense matrix."""


def pair(v: int | Sequence[int]) -> tuple[int, int]:
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
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


def _conv_geometry(weight, input_hw, stride, padding, dilation):
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
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
    kernel, dilation, padding = pair(kernel), pair(dilation), pair(padding)
    stride = pair(stride if stride not in (None, (), []) else kernel)
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

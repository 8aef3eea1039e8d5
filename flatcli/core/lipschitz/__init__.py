"""The Lipschitz constant L of the feature map ``phi`` (everything before the head), l2 -> l2.

The certified radius of Proposition 8/9 needs ``phi`` to be L-Lipschitz on the input space (images in
[0, 1], normalisation included). Two ways to get L from a model (a third, "given", is a number the
user passes):

``upper_bound``
    A bound through the module graph, sound up to the documented numerical caveats. The whole
    :class:`~flatcli.core.classifier.Classifier` is traced with ``torch.fx``; shapes come from
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

Layout: :mod:`.operators` (operator norms of single layers), :mod:`.rules` (which operation has which
constant), :mod:`.graph` (the walk through the ``torch.fx`` graph: :func:`upper_bound`), :mod:`.local`
(:func:`local_estimate`), :mod:`.constant` (the result type).
"""

from flatcli.core.lipschitz.constant import Lipschitz, given
from flatcli.core.lipschitz.graph import upper_bound
from flatcli.core.lipschitz.local import local_estimate
from flatcli.core.lipschitz.operators import (
    SAFETY,
    conv2d_bound,
    conv2d_circulant_bound,
    conv2d_operator_norm,
    lanczos_top_eigenvalue,
)

__all__ = [
    "SAFETY", "Lipschitz", "conv2d_bound", "conv2d_circulant_bound", "conv2d_operator_norm", "given",
    "lanczos_top_eigenvalue", "local_estimate", "upper_bound",
]

"""Whether the logits are piecewise linear in a layer's weight: a walk of the ``torch.fx`` graph from the layer on.

The exact layer trace of :mod:`flatcli.core.layer_curvature` is the Hessian's trace only when the second
derivative of the logits w.r.t. the weight vanishes almost everywhere. That holds when the layer is
applied once and is affine in its weight, and every operation that depends on its output, up to the
logits, is piecewise linear in the operands that depend on it:

* linear maps of that operand: Linear / Conv / transposed conv (the operand as input, not as weight),
  eval-mode BatchNorm with running statistics, the input normalisation, average pooling, sums and means,
  reshapes, views, indexing, padding, concatenation and stacking, dropout in eval mode, additions and
  subtractions of anything, products and quotients by tensors that do not depend on the layer;
* piecewise linear maps: ReLU, ReLU6, LeakyReLU, PReLU, Hardtanh, Hardsigmoid, clamp, abs, max pooling,
  max / min / maximum / minimum.

Tensors that do not depend on the layer (other branches, shape queries such as ``x.size(0)``) are
constants here, whatever computes them. Anything else (GELU, SiLU, tanh, softmax, LayerNorm, BatchNorm with
batch statistics, a product of two tensors that both depend on the layer, ...) makes the curvature term
``sum_c (p_c - y_c) d^2 z_c / dW^2`` non-zero, and the answer names the first such operation. The graph is
the one :mod:`flatcli.core.lipschitz.graph` traces; its operation tables come from
:mod:`flatcli.core.lipschitz.rules`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from flatcli.core.classifier import Classifier, Normalize, eval_mode
from flatcli.core.lipschitz.graph import trace_classifier
from flatcli.core.lipschitz.rules import (
    ACT_FUNCS, ACT_METHODS, ADD, DIV, DROPOUT_FUNCS, MUL, NEG, SHAPE_ATTRS, SHAPE_FUNCS, SHAPE_METHODS,
    SHAPE_QUERY_METHODS, SUB, VIEW_METHODS, bind, sig_batch_norm, sig_dropout,
)

#: Modules that are piecewise linear in their (first) input; BatchNorm only in eval mode with running statistics.
PIECEWISE_LINEAR_MODULES = (
    nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten, Normalize,
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Hardsigmoid,
    nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.ZeroPad2d,
)
PIECEWISE_LINEAR_ACTS = {"relu", "relu6", "leaky_relu", "hardtanh", "hardsigmoid", "clamp", "abs"}
LINEAR_FUNCS = {
    F.pad, torch.cat, torch.concat, torch.concatenate, torch.stack, torch.mean, torch.sum, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, torch.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, torch.max, torch.min, torch.maximum, torch.minimum, torch.amax, torch.amin,
    operator.getitem,
}
LINEAR_METHODS = {"add", "add_", "sub", "sub_", "neg", "neg_", "mean", "sum", "max", "min", "amax", "amin"}
#: Functions that are linear in their first argument (the input) but not in their weights.
INPUT_LINEAR_FUNCS = {F.linear, F.conv1d, F.conv2d, F.conv3d, torch.conv2d, F.conv_transpose1d, F.conv_transpose2d,
                      F.conv_transpose3d}


@dataclass(frozen=True)
class Linearity:
    """Whether the logits are piecewise linear in ``layer``'s weight (``None``: it could not be decided), and why not."""

    layer: str
    piecewise_linear: bool | None
    reason: str | None = None


def linearity(model: nn.Module, layers: Sequence[str]) -> dict[str, Linearity]:
    """The answer for each name in ``layers`` (relative to ``model.net`` for a :class:`Classifier`).

    ``model`` is traced once, in eval mode (each submodule's mode restored afterwards). A model that
    ``torch.fx`` cannot trace, or a layer the trace does not call as one module, gives ``None``.
    """
    prefix = "net." if isinstance(model, Classifier) else ""
    with eval_mode(model):
        try:
            gm = trace_classifier(model) if isinstance(model, Classifier) else fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure leaves the question open
            reason = f"torch.fx cannot trace the model ({type(e).__name__}: {e})"
            return {name: Linearity(name, None, reason) for name in layers}
        modules = dict(gm.named_modules())
        return {name: _walk(gm, modules, name, prefix) for name in layers}


def _walk(gm: fx.GraphModule, modules: dict, name: str, prefix: str) -> Linearity:
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == prefix + name]
    if len(calls) != 1:
        why = "is not called as one module in the traced graph" if not calls else f"is called {len(calls)} times"
        return Linearity(name, False if calls else None, f"layer {name} {why}")
    dependent = {calls[0]}
    for node in gm.graph.nodes:
        if node is calls[0] or not any(i in dependent for i in node.all_input_nodes):
            continue
        if _shape_query(node):
            continue
        dependent.add(node)
        reason = _not_piecewise_linear(node, modules, dependent)
        if reason is not None:
            return Linearity(name, False, f"{_where(node, modules, prefix)} after {name} {reason}")
    return Linearity(name, True)


def _shape_query(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in SHAPE_QUERY_METHODS:
        return True
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in SHAPE_ATTRS


def _not_piecewise_linear(node: fx.Node, modules: dict, dependent: set) -> str | None:
    """Why ``node`` is not piecewise linear in its operands that depend on the layer (``None``: it is)."""
    t = node.target
    if node.op == "output":
        return None
    if node.op == "call_module":
        mod = modules[t]
        if not isinstance(mod, PIECEWISE_LINEAR_MODULES):
            return "is not piecewise linear"
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and (mod.training or mod.running_var is None):
            return "normalises by batch statistics"
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training:
            return "is dropout in training mode"
        return None
    if node.op == "call_method":
        if t in SHAPE_METHODS or t in VIEW_METHODS or t in LINEAR_METHODS or t == "dropout":
            return None
        if t in ACT_METHODS:
            return None if ACT_METHODS[t] in PIECEWISE_LINEAR_ACTS else "is not piecewise linear"
        if t in ("mul", "mul_", "div", "div_", "true_divide"):
            return _product(node, dependent, divide=t not in ("mul", "mul_"))
        return "is not piecewise linear"
    if node.op != "call_function":
        return f"is a {node.op} node"
    if t in SHAPE_FUNCS or t in LINEAR_FUNCS or t in ADD or t in SUB or t in NEG:
        return None
    if t in ACT_FUNCS:
        return None if ACT_FUNCS[t] in PIECEWISE_LINEAR_ACTS else "is not piecewise linear"
    if t in DROPOUT_FUNCS:
        return "is dropout in training mode" if bind(sig_dropout, node.args, node.kwargs)["training"] else None
    if t is F.batch_norm:
        return "normalises by batch statistics" if bind(sig_batch_norm, node.args, node.kwargs)["training"] else None
    if t in INPUT_LINEAR_FUNCS:
        rest: list[fx.Node] = []
        fx.node.map_arg((node.args[1:], {k: v for k, v in node.kwargs.items() if k != "input"}), rest.append)
        return "takes a weight that depends on the layer" if any(n in dependent for n in rest) else None
    if t in MUL or t in DIV:
        return _product(node, dependent, divide=t in DIV)
    return "is not piecewise linear"


def _product(node: fx.Node, dependent: set, divide: bool) -> str | None:
    first = node.args[0] if node.args else node.kwargs.get("input")
    other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if first in dependent and other in dependent:
        return "multiplies two tensors that depend on the layer"
    if divide and other in dependent:
        return "divides by a tensor that depends on the layer"
    return None


def _where(node: fx.Node, modules: dict, prefix: str) -> str:
    if node.op == "call_module":
        path = str(node.target)
        path = path[len(prefix):] if prefix and path.startswith(prefix) else path
        return f"{path} ({type(modules[node.target]).__name__})"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name} (node {node.name})"

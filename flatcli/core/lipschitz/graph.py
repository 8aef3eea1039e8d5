"""The sound upper bound on L: operator norms composed along the ``torch.fx`` graph of the classifier.

See the package docstring for the rules; :mod:`.rules` says which operation has which constant and
:mod:`.operators` computes the norms of the layers.
"""

from __future__ import annotations

import inspect
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from flatcli.core.classifier import Classifier, Normalize, eval_mode
from flatcli.core.lipschitz.constant import HINT, Lipschitz, head_module
from flatcli.core.lipschitz.operators import (
    SAFETY, pair, adaptive_maxpool_factor, avgpool_factor, batchnorm_factor, conv2d_bound, linear_norm,
    maxpool_factor,
)
from flatcli.core.lipschitz.rules import (
    ACT_FUNCS, ACT_METHODS, ACT_MODULES, ADD, ALIAS_MODULES, CONST_ACTS, DIV, DROPOUT_FUNCS, MUL, NEG,
    SHAPE_ATTRS, SHAPE_FUNCS, SHAPE_METHODS, SHAPE_QUERY_METHODS, SUB, Unsupported, VIEW_METHODS,
    basic_index, bind, is_tensor_like, sig_adaptive_pool, sig_add, sig_batch_norm, sig_cat, sig_conv2d,
    sig_dropout, sig_elu, sig_leaky_relu, sig_linear, sig_max_pool2d, sig_pad,
)
from flatcli.errors import LayerError, UsageError


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
            raise Unsupported("an input-dependent tensor in an argument other than the first")
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
                if not is_tensor_like(self.values.get(node)):
                    raise Unsupported("a non-tensor value computed from the input")
                if node.op == "call_module":
                    self._module(node)
                elif node.op in ("call_function", "call_method"):
                    self._function(node)
                else:
                    raise Unsupported(f"node kind {node.op}")
            except Unsupported as e:
                raise UsageError(self._message(node, str(e))) from None
            if self._inplace(node) and node.args and self._isdep(node.args[0]):
                try:
                    self._rebind(node, node.args[0])
                except Unsupported as e:
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
            raise Unsupported("in-place operation on a tensor that shares memory with others")
        self.L[mutated] = self.L[node]

    def _elementwise(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self.modules.get(node.target)) in ACT_MODULES or isinstance(
                self.modules.get(node.target), (nn.LeakyReLU, nn.ELU))
        t = node.target
        if node.op == "call_method":
            return t in ACT_METHODS or t == "dropout"
        return t in ACT_FUNCS or t in DROPOUT_FUNCS

    def _aliasing(self, node: fx.Node) -> bool:
        """Whether ``node``'s result may share memory with its input (views, no-op copies)."""
        if node.op == "call_module":
            return isinstance(self.modules.get(node.target), ALIAS_MODULES)
        if node.op == "call_method":
            return node.target in SHAPE_METHODS or node.target in VIEW_METHODS
        if node.op == "call_function":
            return node.target in SHAPE_FUNCS or node.target is operator.getitem \
                or node.target in DROPOUT_FUNCS
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
        if node.op == "call_method" and node.target in SHAPE_QUERY_METHODS:
            return True
        if node.op == "call_function" and node.target is getattr and len(node.args) > 1:
            return node.args[1] in SHAPE_ATTRS
        return False

    def _message(self, node: fx.Node, reason: str) -> str:
        if node.op == "call_module":
            path = str(node.target)
            mod = self.modules.get(path)
            path = path[len("net."):] if path.startswith("net.") else path
            return (f"cannot bound the Lipschitz constant through {path} ({type(mod).__name__}): "
                    f"{reason}; {HINT}")
        stack = node.meta.get("nn_module_stack") or {}
        where, cls = "the model", type(self.gm).__name__
        if stack:
            path, (_, klass) = list(stack.items())[-1]
            path = path[len("net."):] if path.startswith("net.") else path
            where, cls = (path or "net"), getattr(klass, "__name__", str(klass))
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return (f"cannot bound the Lipschitz constant through {where} ({cls}): {reason} "
                f"(operation {name}, node {node.name}); {HINT}")

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
                raise Unsupported(f"unsupported padding_mode={mod.padding_mode!r}")
            if in_val.dim() != 4:
                raise Unsupported("unbatched input")
            f, info = conv2d_bound(
                mod.weight, in_val.shape[-2:], stride=mod.stride, padding=mod.padding,
                dilation=mod.dilation, groups=mod.groups, iters=self.iters,
            )
            self._scale(node, kind, f, src, input_hw=list(in_val.shape[-2:]), **info)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.training or mod.running_var is None:
                raise Unsupported("BatchNorm without running statistics (batch-dependent)")
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
                raise Unsupported("max pooling with return_indices")
            f = maxpool_factor(in_val.shape[-2:], out_val.shape[-2:], mod.kernel_size, mod.stride,
                               mod.padding, mod.dilation)
            self._scale(node, kind, f, src, method="exact (window coverage)")
        elif isinstance(mod, nn.AdaptiveMaxPool2d):
            if mod.return_indices:
                raise Unsupported("max pooling with return_indices")
            f = adaptive_maxpool_factor(in_val.shape[-2:], out_val.shape[-2:])
            self._scale(node, kind, f, src, method="exact (window coverage)")
        elif isinstance(mod, nn.AvgPool2d):
            self._avgpool(node, kind, src, mod, mod.kernel_size, mod.stride, mod.padding,
                          mod.divisor_override)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            self._adaptive_avgpool(node, kind, src, mod)
        elif type(mod) in ACT_MODULES:
            self._scale(node, kind, ACT_MODULES[type(mod)], src)
        else:
            raise Unsupported("unsupported module")

    def _avgpool(self, node, kind, src, fn, kernel, stride, padding, divisor) -> None:
        in_hw = tuple(self.values[src].shape[-2:])
        k, p = pair(kernel), pair(padding)
        s = pair(stride if stride not in (None, (), []) else kernel)
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

        if (is_method and t in SHAPE_METHODS) or (not is_method and t in SHAPE_FUNCS):
            self._scale(node, name, 1.0)
        elif not is_method and t is operator.getitem:
            src = self._unary_input(node)
            if isinstance(self.values[src], torch.Tensor) and not basic_index(vargs[1]):
                raise Unsupported("advanced indexing (may repeat entries)")
            self._scale(node, "getitem", 1.0, src)
        elif (is_method and t in ACT_METHODS) or (not is_method and t in ACT_FUNCS):
            act = ACT_METHODS[t] if is_method else ACT_FUNCS[t]
            if act == "leaky_relu":
                f = max(1.0, abs(float(bind(sig_leaky_relu, vargs, vkwargs)["negative_slope"])))
            elif act == "elu":
                f = max(1.0, abs(float(bind(sig_elu, vargs, vkwargs)["alpha"])))
            else:
                f = CONST_ACTS[act]
            self._scale(node, act, f)
        elif (not is_method and t in DROPOUT_FUNCS) or (is_method and t == "dropout"):
            if bind(sig_dropout, vargs, vkwargs)["training"]:
                raise Unsupported("dropout in training mode")
            self._scale(node, name, 1.0)
        elif not is_method and t is F.pad:
            b = bind(sig_pad, vargs, vkwargs)
            if b["mode"] != "constant":
                raise Unsupported(f"padding mode {b['mode']!r} repeats entries")
            self._scale(node, name, 1.0)
        elif (not is_method and t in ADD) or (is_method and t in ("add", "add_")):
            self._sum(node, name)
        elif (not is_method and t in SUB) or (is_method and t in ("sub", "sub_")):
            self._sum(node, name)
        elif (not is_method and t in MUL) or (is_method and t in ("mul", "mul_")):
            self._mul(node, name, divide=False)
        elif (not is_method and t in DIV) or (is_method and t in ("div", "div_", "true_divide")):
            self._mul(node, name, divide=True)
        elif (not is_method and t in NEG) or (is_method and t in ("neg", "neg_")):
            self._scale(node, name, 1.0)
        elif not is_method and t in (torch.cat, torch.concat, torch.concatenate, torch.stack):
            self._cat(node, name)
        elif (not is_method and t in (torch.mean, torch.sum)) or (is_method and t in ("mean", "sum")):
            src = self._unary_input(node)
            n = self.values[src].numel() / max(1, self.values[node].numel())
            f = 1.0 / math.sqrt(n) if name == "mean" else math.sqrt(n)
            self._scale(node, name, f, src)
        elif not is_method and t is F.linear:
            b = bind(sig_linear, args, kwargs)
            self._scale(node, name, linear_norm(self._val(b["weight"])), method="exact (SVD)")
        elif not is_method and t in (F.conv2d, torch.conv2d):
            b = bind(sig_conv2d, args, kwargs)
            src = self._unary_input(node)
            bv = {k: self._val(v) for k, v in b.items()}
            in_hw = list(self.values[src].shape[-2:])
            f, info = conv2d_bound(bv["weight"], in_hw, stride=bv["stride"], padding=bv["padding"],
                                   dilation=bv["dilation"], groups=bv["groups"], iters=self.iters)
            self._scale(node, name, f, src, input_hw=in_hw, **info)
        elif not is_method and t is F.batch_norm:
            b = {k: self._val(v) for k, v in bind(sig_batch_norm, args, kwargs).items()}
            if b["training"] or b["running_var"] is None:
                raise Unsupported("batch norm with batch statistics")
            scale = 1.0 / torch.sqrt(b["running_var"].detach().double().cpu() + b["eps"])
            if b["weight"] is not None:
                scale = scale * b["weight"].detach().double().cpu()
            self._scale(node, name, float(scale.abs().max()))
        elif not is_method and t in (F.max_pool2d, torch.max_pool2d):
            b = bind(sig_max_pool2d, vargs, vkwargs)
            if b["return_indices"]:
                raise Unsupported("max pooling with return_indices")
            src = self._unary_input(node)
            f = maxpool_factor(self.values[src].shape[-2:], self.values[node].shape[-2:],
                               b["kernel_size"], b["stride"], b["padding"], b["dilation"])
            self._scale(node, name, f, src, method="exact (window coverage)")
        elif not is_method and t is F.adaptive_max_pool2d:
            b = bind(sig_adaptive_pool, vargs, vkwargs)
            if b["return_indices"]:
                raise Unsupported("max pooling with return_indices")
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
            raise Unsupported("unsupported operation")

    def _expansion(self, operand: fx.Node, node: fx.Node) -> float:
        """sqrt(how many times broadcasting copies each entry of ``operand`` into the result)."""
        return math.sqrt(self.values[node].numel() / max(1, self.values[operand].numel()))

    def _sum(self, node, name) -> None:
        b = bind(sig_add, node.args, node.kwargs)
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
            raise Unsupported("product or quotient of two input-dependent tensors (not globally Lipschitz)")
        if divide and self._isdep(b):
            raise Unsupported("division by an input-dependent tensor")
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
            raise Unsupported("division by zero")
        self._scale(node, name, f, src)

    def _cat(self, node, name) -> None:
        b = bind(sig_cat, node.args, node.kwargs)
        parts = [self.L[a] for a in b["tensors"] if self._isdep(a)]
        bound = math.sqrt(sum(p * p for p in parts))
        self.L[node] = bound
        self._record(node, name, "l2-sum", bound, terms=parts)


def trace_classifier(model: Classifier) -> fx.GraphModule:
    """The ``torch.fx`` graph of the classifier, its ``Normalize`` kept as one module; tracing errors propagate."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph)


def _trace(model: Classifier) -> fx.GraphModule:
    try:
        return trace_classifier(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means no graph bound
        raise UsageError(
            f"cannot bound the Lipschitz constant: torch.fx cannot trace the model "
            f"({type(e).__name__}: {e}); {HINT}"
        ) from None


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
    head_module(model, head)
    if len(tuple(input_shape)) != 3:
        raise UsageError(f"input shape must be (channels, height, width), got {tuple(input_shape)}")
    with eval_mode(model):
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

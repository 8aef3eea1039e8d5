"""Per-operation rules of the graph walk: which functions, methods and modules have which constant.

Activations map to the largest magnitude of their derivative; shape operations, copies and dropout in
eval mode have constant 1; the ``sig_*`` stubs bind the positional and keyword arguments of the
functional forms the walker reads (kernel sizes, slopes, ...).
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Largest |derivative| of each activation (numerically checked in float64, rounded up).
GELU_LIP = 1.1290  # exact erf form 1.12890, tanh approximation 1.12899
SILU_LIP = 1.0999  # 1.09984 at x = 2.3994
MISH_LIP = 1.0886  # 1.08850 at x = 1.4906
SELU_LIP = 1.7581  # scale * alpha = 1.0507 * 1.6733 = 1.75810
HARDSWISH_LIP = 1.5
HARDSIGMOID_LIP = 1.0 / 6.0
SIGMOID_LIP = 0.25


class Unsupported(Exception):
    """Internal: the node cannot be bounded; the walker turns it into a UsageError naming it."""


ID = "identity"
# call_method names / functions that only move, copy-once or select entries: factor 1.
SHAPE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "t", "contiguous", "squeeze", "unsqueeze",
    "clone", "detach", "float", "double", "to", "type_as", "unflatten", "flip", "roll", "narrow",
    "chunk", "split", "unbind", "view_as", "reshape_as", "movedim", "swapaxes",
}
SHAPE_FUNCS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.clone, torch.detach, torch.flip, torch.roll, torch.narrow, torch.chunk, torch.split,
    torch.unbind, torch.movedim, torch.swapaxes, torch.t, torch.unflatten,
}
# Activations as functions / methods: name -> constant (or a callable of the bound arguments).
ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.celu: "celu", F.selu: "selu", torch.selu: "selu",
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.softplus: "softplus", F.hardtanh: "hardtanh",
    F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.logsigmoid: "logsigmoid",
    F.softsign: "softsign", F.tanhshrink: "tanhshrink", torch.clamp: "clamp", torch.clip: "clamp",
    torch.clamp_: "clamp", torch.abs: "abs",
}
ACT_METHODS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
    "tanh_": "tanh", "clamp": "clamp", "clamp_": "clamp", "clip": "clamp", "clip_": "clamp",
    "abs": "abs", "abs_": "abs",
}
CONST_ACTS = {
    "relu": 1.0, "relu6": 1.0, "celu": 1.0, "selu": SELU_LIP, "gelu": GELU_LIP, "silu": SILU_LIP,
    "mish": MISH_LIP, "sigmoid": SIGMOID_LIP, "tanh": 1.0, "softplus": 1.0, "hardtanh": 1.0,
    "hardsigmoid": HARDSIGMOID_LIP, "hardswish": HARDSWISH_LIP, "logsigmoid": 1.0, "softsign": 1.0,
    "tanhshrink": 1.0, "clamp": 1.0, "abs": 1.0,
}
ACT_MODULES: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.CELU: 1.0, nn.SELU: SELU_LIP, nn.GELU: GELU_LIP,
    nn.SiLU: SILU_LIP, nn.Mish: MISH_LIP, nn.Sigmoid: SIGMOID_LIP, nn.Tanh: 1.0, nn.Softplus: 1.0,
    nn.Hardtanh: 1.0, nn.Hardsigmoid: HARDSIGMOID_LIP, nn.Hardswish: HARDSWISH_LIP,
    nn.LogSigmoid: 1.0, nn.Softsign: 1.0, nn.Tanhshrink: 1.0, nn.Identity: 1.0, nn.Flatten: 1.0,
    nn.Unflatten: 1.0, nn.Dropout: 1.0, nn.Dropout1d: 1.0, nn.Dropout2d: 1.0, nn.Dropout3d: 1.0,
    nn.AlphaDropout: 1.0, nn.FeatureAlphaDropout: 1.0, nn.ZeroPad2d: 1.0,
}
DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
VIEW_METHODS = {"expand", "expand_as", "select", "diagonal", "as_strided", "T", "mT", "view_as_real"}
ALIAS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
ADD = {operator.add, operator.iadd, torch.add}
SUB = {operator.sub, operator.isub, torch.sub}
MUL = {operator.mul, operator.imul, torch.mul}
DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}
NEG = {operator.neg, torch.neg, operator.pos}
SHAPE_QUERY_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}
SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda"}


# Reference signatures, to bind positional and keyword arguments of the functional forms.
def sig_leaky_relu(input, negative_slope=0.01, inplace=False): ...
def sig_elu(input, alpha=1.0, inplace=False): ...
def sig_dropout(input, p=0.5, training=True, inplace=False): ...
def sig_max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False): ...
def sig_adaptive_pool(input, output_size, return_indices=False): ...
def sig_linear(input, weight, bias=None): ...
def sig_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def sig_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5): ...
def sig_pad(input, pad, mode="constant", value=None): ...
def sig_add(input, other, *, alpha=1, out=None): ...
def sig_cat(tensors, dim=0, *, out=None): ...


def bind(sig_fn, args, kwargs) -> dict:
    bound = inspect.signature(sig_fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def is_tensor_like(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(t, torch.Tensor) for t in v)


def basic_index(idx: Any) -> bool:
    if isinstance(idx, tuple):
        return all(basic_index(i) for i in idx)
    return idx is None or idx is Ellipsis or isinstance(idx, (int, slice))

"""Built-in architectures, building a network from an architecture name, and recognising a state dict.

An architecture name is one of:

* a built-in (:data:`BUILTINS`): ``resnet18``, ``wrn28-4``, ``vgg11-bn``, ``densenet121``, ``small-cnn``, ``mlp``;
* ``torchvision:NAME``: a ``torchvision.models`` builder, called with ``num_classes=`` and the kwargs;
* ``module.path:ClassName``: an ``nn.Module`` subclass, verified as such before it is called.

Every built-in ends ``forward`` with ``head(features)``, ``features`` of shape ``(B, m)``, so the head's
input is exactly the representation the sharpness and attack code split the network at.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from flatcli.errors import CheckpointError, LayerError, SpecError
from flatcli.models.densenet import densenet121
from flatcli.models.resnet import resnet18
from flatcli.models.small import mlp, mlp_kwargs, small_cnn, small_cnn_kwargs
from flatcli.models.vgg import vgg11_bn
from flatcli.models.wide_resnet import wrn28_4

StateDict = Mapping[str, torch.Tensor]


def _no_kwargs(state_dict: StateDict) -> dict:
    """Architectures with no size kwargs need nothing from the state dict."""
    return {}


@dataclass(frozen=True)
class ArchInfo:
    """A built-in: ``builder(num_classes=..., in_channels=..., **kwargs)`` and its head layer's name.

    ``infer_kwargs(state_dict)`` reads the size kwargs back from a state dict (``None``: it cannot be
    this architecture); :func:`detect_arch` uses it.
    """

    name: str
    head: str
    description: str
    builder: Callable[..., nn.Module]
    infer_kwargs: Callable[[StateDict], dict | None] = _no_kwargs


BUILTINS: dict[str, ArchInfo] = {
    info.name: info
    for info in (
        ArchInfo("resnet18", "fc", "CIFAR ResNet-18 (3x3 stem, no max-pool), 512 features", resnet18),
        ArchInfo("wrn28-4", "fc", "WideResNet-28-4, pre-activation, 256 features; kwarg dropout", wrn28_4),
        ArchInfo("vgg11-bn", "classifier", "CIFAR VGG-11 with BatchNorm, 512 features", vgg11_bn),
        ArchInfo("densenet121", "fc", "CIFAR DenseNet-121 (growth 32), 1024 features", densenet121),
        ArchInfo("small-cnn", "fc", "3-conv BatchNorm CNN for 8x8 digits, 2*width features; kwarg width (32)",
                 small_cnn, small_cnn_kwargs),
        ArchInfo("mlp", "fc", "MLP on flattened input; kwargs in_features (C*H*W), hidden ([256, 128])",
                 mlp, mlp_kwargs),
    )
}

_RESERVED = ("num_classes", "in_channels")


def build_network(arch: str, *, num_classes: int, in_channels: int, kwargs: dict | None = None) -> nn.Module:
    """A freshly initialised network for ``arch`` (see the module docstring for the three forms).

    ``in_channels`` reaches built-ins, and a ``module.path:ClassName`` only if its ``__init__`` names an
    ``in_channels`` parameter; torchvision builders always take 3 channels. ``num_classes`` reaches a
    class only if its ``__init__`` accepts it (by name or ``**kwargs``).
    """
    kwargs = dict(kwargs or {})
    reserved = [key for key in _RESERVED if key in kwargs]
    if reserved:
        raise SpecError(
            f"kwargs must not set {', '.join(reserved)}: they are passed separately (num_classes:, input shape)"
        )
    if arch in BUILTINS:
        builder = BUILTINS[arch].builder
        call = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
        _check_call(arch, builder, call)
        try:
            return builder(**call)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise SpecError(f"cannot build {arch} with kwargs {kwargs}: {exc}; fix kwargs: in the spec") from None
    if arch.startswith("torchvision:"):
        return _build_torchvision(arch.partition(":")[2], num_classes, kwargs)
    if ":" in arch:
        return _build_class(arch, num_classes, in_channels, kwargs)
    close = difflib.get_close_matches(arch, BUILTINS, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise SpecError(
        f"unknown architecture {arch!r}; {hint}built-ins: {', '.join(BUILTINS)}; "
        "or use torchvision:NAME or module.path:ClassName"
    )


def _check_call(arch: str, factory: Callable[..., nn.Module], call: dict) -> None:
    """Raise :class:`SpecError` unless ``factory(**call)`` matches its signature (nothing is called)."""
    try:
        inspect.signature(factory).bind(**call)
    except TypeError as exc:
        raise SpecError(f"cannot build {arch}: {exc}; fix kwargs: in the spec") from None


def _build_torchvision(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    """``torchvision.models.<name>(num_classes=num_classes, **kwargs)``."""
    import torchvision.models

    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join('torchvision:' + c for c in close)}? " if close else ""
        raise SpecError(f"torchvision has no model {name!r}; {hint}see torchvision.models.list_models()")
    builder = torchvision.models.get_model_builder(name)
    fetching = sorted(key for key in kwargs if key.startswith(("weights", "pretrained")) and kwargs[key] not in (None, False))
    if fetching:
        raise SpecError(
            f"torchvision:{name} with {', '.join(fetching)} would download pretrained weights; flatrob never "
            f"downloads: remove {', '.join(fetching)} from arch_kwargs (the checkpoint supplies the weights)"
        )
    try:
        return builder(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"cannot build torchvision:{name}: {exc}; fix kwargs: in the spec") from None


def _build_class(arch: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    """Import ``module.path``, look up ``ClassName``, refuse anything but an ``nn.Module`` subclass, build."""
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise SpecError(f"architecture {arch!r} must look like module.path:ClassName")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"cannot import {module_name!r} for {arch}: {exc}; install it or add its directory to PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{module_name!r} has no attribute {attr!r}; check the class name in {arch}")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise SpecError(f"{arch} is a {type(obj).__name__}, not an nn.Module subclass; name the network class itself")
    params = inspect.signature(obj).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call = dict(kwargs)
    if "num_classes" in params or takes_any:
        call["num_classes"] = num_classes
    if "in_channels" in params:
        call["in_channels"] = in_channels
    _check_call(arch, obj, call)
    try:
        return obj(**call)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecError(f"cannot build {arch} with kwargs {kwargs}: {exc}; fix kwargs: in the spec") from None


def default_head(arch: str, net: nn.Module) -> str:
    """The built-in's head name; otherwise the name of the last ``nn.Linear`` in ``net.named_modules()``."""
    if arch in BUILTINS:
        return BUILTINS[arch].head
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise LayerError(f"{arch} has no nn.Linear layer to use as the head; name the head layer with --layer or head:")
    return linears[-1]


def infer_num_classes(state_dict: StateDict, head: str) -> int:
    """Rows of ``state_dict[f"{head}.weight"]``; :class:`CheckpointError` if absent or not 2-D."""
    weight = state_dict.get(f"{head}.weight")
    if weight is None or weight.dim() != 2:
        linears = [key[: -len(".weight")] for key, value in state_dict.items()
                   if key.endswith(".weight") and value.dim() == 2]
        found = "not a 2-D weight" if weight is not None else "absent"
        hint = f" (2-D weights: {', '.join(linears[-3:])})" if linears else ""
        raise CheckpointError(
            f"cannot read the number of classes: '{head}.weight' is {found} in the checkpoint{hint}; "
            "name the right head layer or set num_classes"
        )
    return int(weight.shape[0])


def infer_in_channels(state_dict: StateDict) -> int:
    """Input channels (``shape[1]``) of the stem conv: the 4-D ``*weight`` tensor with the shallowest key.

    Key order cannot be trusted (safetensors files store keys sorted, so ``block1.0.conv1.weight``
    precedes ``conv1.weight``), so the stem is the 4-D weight with the fewest dotted parts, ties
    broken by natural order (``features.0`` before ``features.4``). Without any 4-D weight the
    network takes flattened input (the ``mlp``), whose builder ignores channels: 1.
    """
    convs = [key for key, value in state_dict.items() if key.endswith("weight") and value.dim() == 4]
    if not convs:
        return 1
    stem = min(convs, key=lambda key: (key.count("."), _natural(key)))
    return int(state_dict[stem].shape[1])


def _natural(key: str) -> tuple:
    """Sort key treating numeric parts as numbers: ``features.4`` < ``features.10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))


def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> dict:
    """A new dict with ``prefix`` removed from every key, if every key has it; else an unchanged copy."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)


@dataclass(frozen=True)
class _Diff:
    """How a checkpoint's keys and shapes differ from a model's."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]
    matched: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def similarity(self) -> float:
        """Matching keys over all keys in either (1.0 for a perfect match)."""
        total = self.matched + len(self.missing) + len(self.unexpected) + len(self.mismatched)
        return self.matched / total if total else 1.0

    def describe(self, limit: int = 3) -> str:
        """The first ``limit`` of each kind of difference, on one line."""
        def first(items: list[str]) -> str:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.missing:
            parts.append(f"missing keys: {first(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys: {first(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{key}: checkpoint {ckpt} vs model {model}" for key, ckpt, model in self.mismatched]
            parts.append(f"shape mismatch: {first(shapes)}")
        return "; ".join(parts)


def _diff(state_dict: StateDict, net: nn.Module) -> _Diff:
    """Compare ``state_dict`` with ``net.state_dict()`` by key and shape (works for meta-device nets)."""
    model = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    ckpt = {key: tuple(value.shape) for key, value in state_dict.items()}
    mismatched = [(key, ckpt[key], model[key]) for key in model if key in ckpt and ckpt[key] != model[key]]
    return _Diff(
        missing=[key for key in model if key not in ckpt],
        unexpected=[key for key in ckpt if key not in model],
        mismatched=mismatched,
        matched=sum(1 for key in model if key in ckpt) - len(mismatched),
    )


def load_state(net: nn.Module, state_dict: StateDict) -> None:
    """Load ``state_dict`` into ``net`` strictly; :class:`CheckpointError` naming the first differences."""
    diff = _diff(state_dict, net)
    if not diff.ok:
        raise CheckpointError(
            f"checkpoint does not fit the model: {diff.describe()}; "
            "check the architecture, num_classes, input channels and key prefix"
        )
    model = net.state_dict()
    for key, value in state_dict.items():
        if model[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"checkpoint tensor {key!r} has dtype {str(value.dtype).removeprefix('torch.')} but the model "
                "expects floating weights; save the state dict as float32 (float16/bfloat16 also load)"
            )
    net.load_state_dict(state_dict, strict=True)


def detect_arch(state_dict: StateDict) -> tuple[str, dict]:
    """The one built-in (name, kwargs) whose state dict has exactly these keys and shapes.

    Each candidate is built on the meta device (no memory, no initialisation cost) with the number of
    classes read from its head, the input channels from :func:`infer_in_channels` and size kwargs from
    its ``infer_kwargs``. No match or several raise :class:`CheckpointError`.
    """
    in_channels = infer_in_channels(state_dict)
    matches: list[tuple[str, dict]] = []
    misses: list[tuple[float, str, _Diff]] = []
    for name, info in BUILTINS.items():
        kwargs = info.infer_kwargs(state_dict)
        if kwargs is None:
            continue
        head = state_dict.get(f"{info.head}.weight")
        num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 1
        with torch.device("meta"):
            net = info.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
        diff = _diff(state_dict, net)
        if diff.ok:
            matches.append((name, kwargs))
        else:
            misses.append((diff.similarity, name, diff))
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(name for name, _ in matches)
        raise CheckpointError(
            f"the checkpoint fits several built-ins ({names}); pass --arch NAME or add arch: to the spec"
        )
    prefixed = bool(state_dict) and all(key.startswith("module.") for key in state_dict)
    prefix = " (every key starts with 'module.': strip that prefix)" if prefixed else ""
    similarity, closest, diff = max(misses, key=lambda miss: miss[0], default=(0.0, "", None))
    detail = f"; closest is {closest} ({diff.describe()})" if similarity > 0 else ""
    raise CheckpointError(
        f"the checkpoint matches no built-in architecture{prefix}{detail}; pass --arch NAME or add arch: to the spec"
    )

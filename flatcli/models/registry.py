"""Building a network from an architecture name, and reading sizes (classes, channels) off a state dict.

The forms of a name are the table :data:`flatcli.models.arch_forms.FORMS` (built-ins, ``torchvision:NAME``,
``timm:NAME``, ``robustbench:DATASET/THREAT/NAME``, ``module.path:ClassName``); each row names one
:class:`Builder` below, which builds the network and knows its head and data config:

* :class:`Builtin`: a name of :data:`BUILTINS` (``resnet18``, ``wrn28-4``, ``vgg11-bn``, ...);
* :class:`Torchvision`: a ``torchvision.models`` classification builder, called with ``num_classes=``, the
  kwargs and every ``weights*`` keyword set to ``None`` (detection, segmentation, video, optical-flow and
  quantized builders are refused: their defaults fetch backbone weights);
* :class:`Timm`: a model of timm's registry, ``timm.create_model(NAME, pretrained=False, ...)``
  (:mod:`flatcli.models.timm_models`);
* :class:`RobustBench`: a RobustBench model zoo entry's constructor (:mod:`flatcli.models.robustbench_zoo`);
* :class:`ModulePath`: an ``nn.Module`` subclass, verified as such before it is called, imported with the
  current directory (the user's project) first on ``sys.path`` for that import only, as ``python -m`` would
  find it; ``path/to/models.py:ClassName`` runs that file.

Only the last form imports code a user names (:func:`~flatcli.models.arch_forms.names_code`); the registries
name entries of installed libraries, as built-ins do; :mod:`flatcli.models.loading` refuses it from a
checkpoint's embedded spec unless the user trusts that spec. Every build runs
:func:`flatcli.models.offline.offline`: nothing is downloaded and torch.hub's cache is never read.
"""

from __future__ import annotations

import abc
import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Callable, Iterator

from torch import nn

from flatcli.errors import CheckpointError, LayerError, SpecError
from flatcli.inputs.preprocessing import from_torchvision
from flatcli.models import robustbench_zoo, timm_models
from flatcli.models.arch_forms import ArchForm, form_of, listing
from flatcli.models.builtins import BUILTINS, StateDict
from flatcli.models.offline import offline

_RESERVED = ("num_classes", "in_channels")


def build_network(arch: str, *, num_classes: int, in_channels: int, kwargs: dict | None = None) -> nn.Module:
    """A freshly initialised network for ``arch`` (see the module docstring for the forms), built offline.

    ``in_channels`` reaches built-ins, timm (``in_chans``), and a ``module.path:ClassName`` only if its
    ``__init__`` names an ``in_channels`` parameter; torchvision builders always take 3 channels, and a
    RobustBench zoo entry takes its own channels and classes (the checkpoint's shapes are compared with it). ``num_classes`` reaches a
    class only if its ``__init__`` accepts it (by name or ``**kwargs``). Under ``torch.device("meta")``
    nothing is allocated (the loader compares shapes that way before building for real).
    """
    with offline(arch):
        return _build(arch, num_classes, in_channels, dict(kwargs or {}))


def _build(arch: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    reserved = [key for key in _RESERVED if key in kwargs]
    if reserved:
        raise SpecError(
            f"kwargs must not set {', '.join(reserved)}: they are passed separately (num_classes:, input shape)"
        )
    form, builder = _builder(arch)
    return builder.build(form.reference(arch), num_classes, in_channels, kwargs)


def _builder(arch: str) -> tuple[ArchForm, Builder]:
    """The form ``arch`` is written in, and its builder."""
    form = form_of(arch)
    module, _, name = form.builder.partition(":")
    return form, getattr(importlib.import_module(module), name)()


class Builder(abc.ABC):
    """How one architecture form (a row of :data:`~flatcli.models.arch_forms.FORMS`) builds a network from
    its reference (the name after the prefix) and what it knows of the network's head and data config."""

    @abc.abstractmethod
    def build(self, ref: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
        """A freshly initialised network (see :func:`build_network`)."""

    def known_head(self, ref: str) -> str | None:
        """The head layer's name before the network is built (``None``: known once built)."""
        return None

    def head(self, ref: str, net: nn.Module) -> str | None:
        """The head layer's name in the built ``net`` (``None``: the last ``nn.Linear``)."""
        return None

    def data_defaults(self, ref: str, net: nn.Module) -> dict:
        """Spec keys (mean, std, resize, crop, interpolation; input_shape) of the architecture's own data config."""
        return {}


class Builtin(Builder):
    """A built-in (:data:`BUILTINS`), called with ``num_classes``, ``in_channels`` and the kwargs."""

    def build(self, ref: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
        if ref not in BUILTINS:
            close = difflib.get_close_matches(ref, BUILTINS, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise SpecError(f"unknown architecture {ref!r}; {hint}built-ins: {', '.join(BUILTINS)}; "
                            f"or use {listing(but='builtin')}")
        builder = BUILTINS[ref].builder
        call = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
        _check_call(ref, builder, call)
        try:
            return builder(**call)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise SpecError(f"cannot build {ref} with kwargs {kwargs}: {exc}; fix kwargs: in the spec") from None

    def known_head(self, ref: str) -> str | None:
        info = BUILTINS.get(ref)
        return info.head if info else None

    def head(self, ref: str, net: nn.Module) -> str | None:
        return self.known_head(ref)


def _check_call(arch: str, factory: Callable[..., nn.Module], call: dict) -> None:
    """Raise :class:`SpecError` unless ``factory(**call)`` matches its signature (nothing is called)."""
    try:
        inspect.signature(factory).bind(**call)
    except TypeError as exc:
        raise SpecError(f"cannot build {arch}: {exc}; fix kwargs: in the spec") from None


class Torchvision(Builder):
    """``torchvision.models.<name>(num_classes=num_classes, weights=None, **kwargs)``, classification builders only."""

    def build(self, name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
        import torchvision.models

        fetching = sorted(key for key in kwargs
                          if key.startswith(("weights", "pretrained")) and kwargs[key] not in (None, False))
        if fetching:
            raise SpecError(
                f"torchvision:{name} with {', '.join(fetching)} would download pretrained weights; flatrob never "
                f"downloads: remove {', '.join(fetching)} from arch_kwargs (the checkpoint supplies the weights)"
            )
        classifiers = torchvision.models.list_models(module=torchvision.models)
        if name not in classifiers:
            if name in torchvision.models.list_models():
                raise SpecError(
                    f"torchvision:{name} is not a classification model (flatrob measures image classifiers, and "
                    "detection/segmentation/video builders fetch backbone weights); use a builder of "
                    "torchvision.models.list_models(module=torchvision.models)"
                )
            close = difflib.get_close_matches(name, classifiers, n=3)
            hint = f"did you mean {', '.join('torchvision:' + c for c in close)}? " if close else ""
            raise SpecError(f"torchvision has no classification model {name!r}; {hint}see "
                            "torchvision.models.list_models(module=torchvision.models)")
        builder = torchvision.models.get_model_builder(name)
        no_weights = {key: None for key in inspect.signature(builder).parameters if key.startswith("weights")}
        try:
            return builder(**{**kwargs, **no_weights, "num_classes": num_classes})
        except (TypeError, ValueError) as exc:
            raise SpecError(f"cannot build torchvision:{name}: {exc}; fix kwargs: in the spec") from None

    def data_defaults(self, name: str, net: nn.Module) -> dict:
        """The builder's default weights' transforms (their metadata only: nothing is downloaded)."""
        import torchvision.models

        try:
            weights = torchvision.models.get_model_weights(name)
        except (ValueError, KeyError):
            return {}
        default = getattr(weights, "DEFAULT", None)
        return from_torchvision(default.transforms()) if default is not None else {}


class Timm(Builder):
    """``timm.create_model(NAME, pretrained=False, ...)`` (:mod:`flatcli.models.timm_models`)."""

    def build(self, ref: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
        return timm_models.build(ref, num_classes, in_channels, kwargs)

    def known_head(self, ref: str) -> str | None:
        return timm_models.registered_head(ref)

    def head(self, ref: str, net: nn.Module) -> str | None:
        return timm_models.head_name(net)

    def data_defaults(self, ref: str, net: nn.Module) -> dict:
        return timm_models.data_defaults(net)


class RobustBench(Builder):
    """A RobustBench zoo entry's constructor (:mod:`flatcli.models.robustbench_zoo`); it normalises inside,
    so it has no data config, and it takes its own channels and classes."""

    def build(self, ref: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
        if kwargs:
            raise SpecError(f"robustbench:{ref} takes no arch_kwargs (a zoo entry is one fixed network); remove them")
        return robustbench_zoo.build(ref)


class ModulePath(Builder):
    """``module.path:ClassName``: an ``nn.Module`` subclass, imported and verified before it is called."""

    def build(self, ref: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
        return _build_class(ref, num_classes, in_channels, kwargs)


@contextlib.contextmanager
def _project_first(*folders: str) -> Iterator[None]:
    """``sys.path`` with ``folders`` (the current directory: the user's project) first, for one import only.

    Only a ``module.path:Class`` that a person named (``--arch``, a ``--spec`` file) or a trusted checkpoint's spec
    names reaches an import (:mod:`flatcli.models.loading` refuses one from an embedded spec unless it is trusted),
    so it is found where ``python -m`` would find it: in the current directory before the installed packages. The
    entries are taken out afterwards.
    """
    added = [os.path.realpath(folder) for folder in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)


def _build_class(arch: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    """Import ``module.path``, look up ``ClassName``, refuse anything but an ``nn.Module`` subclass, build.

    A kwarg whose value is a string ``module.path:Name`` naming a class (``block:
    timm.models.resnet:BasicBlock`` for ``timm.models.resnet:ResNet``) is passed as that class, imported
    the same way: the architecture already names code, so its kwargs may too.
    """
    cls = _import_attr(arch)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise SpecError(f"{arch} is a {type(cls).__name__}, not an nn.Module subclass; name the network class itself")
    call = {key: _kwarg_class(arch, key, value) for key, value in kwargs.items()}
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or takes_any:
        call["num_classes"] = num_classes
    for name in ("in_channels", "in_chans"):  # in_chans: timm's classes
        if name in params:
            call[name] = in_channels
    _check_call(arch, cls, call)
    try:
        return cls(**call)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecError(f"cannot build {arch} with kwargs {kwargs}: {exc}; fix kwargs: in the spec") from None


_CLASS_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def kwargs_naming_code(kwargs: dict) -> list[str]:
    """The ``arch_kwargs`` whose values a ``module.path:ClassName`` architecture would import (``module:Name``)."""
    return [f"{key}: {value}" for key, value in kwargs.items() if isinstance(value, str) and _CLASS_REF.fullmatch(value)]


def _kwarg_class(arch: str, key: str, value):
    """``value``, or the class it names when it is a ``module.path:Name`` string."""
    if not (isinstance(value, str) and _CLASS_REF.fullmatch(value)):
        return value
    obj = _import_attr(value)
    if not inspect.isclass(obj):
        raise SpecError(f"arch_kwargs {key}: {value} is a {type(obj).__name__}, not a class; kwargs of {arch} may "
                        "name classes only")
    return obj


def _import_attr(ref: str):
    """The object ``module.path:Name`` (or ``path/to/file.py:Name``) names, imported with the current directory
    first on ``sys.path`` (:func:`_project_first`)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SpecError(f"{ref!r} must look like module.path:ClassName")
    if module_name.endswith(".py"):
        obj = _import_file(ref, module_name)
    else:
        try:
            with _project_first(os.getcwd()):
                obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(
                f"cannot import {module_name!r} for {ref}: {exc}; searched the current directory "
                f"({os.getcwd()}), PYTHONPATH and the installed packages: run from the project that holds it, "
                "install it, or name its file (path/to/models.py:ClassName)"
            ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{module_name!r} has no attribute {attr!r}; check the class name in {ref}")
        obj = getattr(obj, part)
    return obj


def _import_file(ref: str, file: str):
    """The module of the Python file ``file`` (relative to the current directory), run once per file: kept in
    ``sys.modules`` under ``flatrob_file_<sha256 of its path>``, with its own folder and the current directory
    first on ``sys.path`` while it runs (so it may import its neighbours)."""
    path = os.path.realpath(os.path.expanduser(file))
    if not os.path.isfile(path):
        raise SpecError(f"{ref}: {file} is not a file (a path/to/models.py:ClassName is read from the current "
                        f"directory, {os.getcwd()})")
    name = "flatrob_file_" + hashlib.sha256(path.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up there
    try:
        with _project_first(os.path.dirname(path), os.getcwd()):
            spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules[name]  # as Python does with a module that failed: the next import runs it again
        raise SpecError(f"cannot run {file} for {ref}: {exc}; install what it imports") from None
    except BaseException:
        del sys.modules[name]
        raise
    return module


def class_file(net: nn.Module) -> str | None:
    """The source file of ``net``'s class (where a ``module.path:Class`` came from), ``None`` when it has none."""
    try:
        return inspect.getfile(type(net))
    except (TypeError, OSError):
        return None


def known_head(arch: str) -> str | None:
    """The head layer's name that ``arch``'s form knows before building it (``None``: known once built)."""
    form, builder = _builder(arch)
    return builder.known_head(form.reference(arch))


def default_head(arch: str, net: nn.Module) -> str:
    """The head its form names (a built-in's head, timm's classifier); otherwise the name of the last
    ``nn.Linear`` in ``net.named_modules()``."""
    form, builder = _builder(arch)
    head = builder.head(form.reference(arch), net)
    if head is not None:
        return head
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise LayerError(f"{arch} has no nn.Linear layer to use as the head; name the head layer with --layer or head:")
    return linears[-1]


def data_defaults(arch: str, net: nn.Module) -> dict:
    """Spec keys (mean, std, resize, crop, interpolation; input_shape for fixed-size models) that the
    architecture's own data config gives: timm's, or the torchvision builder's default weights' transforms
    (the metadata only: nothing is downloaded). A RobustBench network normalises inside: none."""
    form, builder = _builder(arch)
    return builder.data_defaults(form.reference(arch), net)


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

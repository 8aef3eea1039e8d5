"""From a checkpoint reference, a spec and command-line overrides to a ready model and its head.

Resolution order for every setting: command-line option, then ``--spec FILE``, then the spec embedded
in the checkpoint metadata (``flatrob.spec``), then what the state dict itself tells (architecture by
matching keys and shapes, classes from the head's weight, channels from the first convolution).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from flatcli import checkpoint as ckpt
from flatcli import models
from flatcli.errors import LayerError, SpecError, UsageError
from flatcli.models.wrapper import Classifier
from flatcli.spec import METADATA_KEY, Spec, parse_spec, read_spec_file


@dataclass
class LoadedModel:
    model: Classifier  # eval mode, on the chosen device
    head: nn.Linear
    layer: str  # head name, relative to the network
    spec: Spec  # the effective spec (every resolved value filled in)
    arch_source: str  # "option", "spec" or "detected"
    checkpoint: ckpt.Checkpoint

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def features(self) -> int:
        return self.head.in_features

    def describe(self) -> dict:
        """Provenance for the ``config`` section of every output."""
        return {
            "checkpoint": self.checkpoint.name,
            "checkpoint_sha256": self.checkpoint.sha256,
            "arch": self.spec.arch,
            "arch_source": self.arch_source,
            "layer": self.layer,
            "classes": self.num_classes,
            "features": self.features,
        }


def effective_spec(checkpoint: ckpt.Checkpoint, spec_file: str | None, overrides: dict) -> tuple[Spec, str]:
    """Embedded spec, then ``--spec`` file, then options; returns the spec and where ``arch`` came from."""
    embedded = checkpoint.metadata.get(METADATA_KEY)
    spec = parse_spec(embedded, f"the spec embedded in {checkpoint.name}") if embedded else Spec()
    source = "spec" if spec.arch else ""
    if spec_file:
        from_file = read_spec_file(spec_file)
        spec = spec.merged(**{k: v for k, v in vars(from_file).items() if v not in (None, (), {})})
        source = "spec" if spec.arch else source
    if overrides.get("arch"):
        source = "option"
    return spec.merged(**overrides), source


def load_model(
    ref: str,
    *,
    spec_file: str | None = None,
    overrides: dict | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Read the checkpoint, resolve the spec, build the network, load weights, find the head."""
    checkpoint = ckpt.read(ref)
    spec, arch_source = effective_spec(checkpoint, spec_file, overrides or {})
    state = models.strip_prefix(checkpoint.state_dict, spec.strip_prefix or "module.")
    kwargs = dict(spec.arch_kwargs)
    if spec.arch:
        arch = spec.arch
        info = models.BUILTINS.get(arch)
        if info is not None and not kwargs:
            kwargs = info.infer_kwargs(state) or {}  # sizes (width, hidden, ...) read off the weights
    else:
        arch, detected_kwargs = models.detect_arch(state)
        kwargs = {**detected_kwargs, **kwargs}
        arch_source = "detected"
    in_channels = spec.input_shape[0] if spec.input_shape else models.infer_in_channels(state)
    head_name = spec.layer or _builtin_head(arch)
    num_classes = spec.num_classes
    if num_classes is None:
        if head_name is None:
            raise SpecError(f"cannot tell the number of classes of {ref}; add num_classes: or layer: to the spec")
        num_classes = models.infer_num_classes(state, head_name)
    net = models.build_network(arch, num_classes=num_classes, in_channels=in_channels, kwargs=kwargs)
    models.load_state(net, state)
    if head_name is None:
        head_name = models.default_head(arch, net)
    head = find_linear(net, head_name)
    mean = spec.mean or (0.0,) * in_channels
    std = spec.std or (1.0,) * in_channels
    if len(mean) == 1:
        mean = mean * in_channels
    if len(std) == 1:
        std = std * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise SpecError(f"mean/std need {in_channels} values (one per input channel), got {len(mean)}/{len(std)}")
    model = Classifier(net, mean, std).to(device).eval()
    spec = spec.merged(
        arch=arch, arch_kwargs=kwargs or None, layer=head_name, num_classes=num_classes, mean=tuple(mean), std=tuple(std)
    )
    return LoadedModel(model=model, head=head, layer=head_name, spec=spec, arch_source=arch_source, checkpoint=checkpoint)


def _builtin_head(arch: str) -> str | None:
    info = models.BUILTINS.get(arch)
    return info.head if info else None


def find_module(net: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``net``; LayerError with the closest names when absent."""
    names = [n for n, _ in net.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else f"; layers include: {', '.join(names[-5:])}"
        raise LayerError(f"the network has no layer {name!r}{hint}")
    return net.get_submodule(name)


def find_linear(net: nn.Module, name: str) -> nn.Linear:
    module = find_module(net, name)
    if not isinstance(module, nn.Linear):
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise LayerError(
            f"layer {name!r} is a {type(module).__name__}, not nn.Linear; linear layers: {', '.join(linears) or 'none'}"
        )
    return module


def linear_layers(net: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of the network: the candidates for the head."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


"""Matching a state dict to a network: key prefixes, key/shape differences, strict loading, detection.

:func:`detect` builds every built-in and every torchvision ResNet variant (:mod:`flatcli.models.stems`) on
the meta device and keeps those whose keys and shapes the state dict has exactly: one built-in is the
architecture, and the variants that fit as well are *candidates*, networks the keys cannot tell apart from it
(torchvision's ResNet-18 with a 3x3 stem and its max-pool kept has the built-in ``resnet18``'s keys and shapes,
but another forward pass). :func:`load_state` loads strictly and names the first differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flatcli.errors import CheckpointError, FlatrobError
from flatcli.models.builtins import BUILTINS, StateDict
from flatcli.models.registry import infer_in_channels
from flatcli.models import arch_forms
from flatcli.models.stems import build as build_adapted

#: An architecture with its kwargs, as the spec's ``arch`` and ``arch_kwargs`` name it.
Candidate = tuple[str, dict]

#: A built-in is named as the closest match only when it shares at least this share of the keys.
CLOSE = 0.5
#: torchvision ResNets tried against a state dict with their keys (``conv1``, ``layer1.0.conv1``, ``fc``).
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
#: Built-ins that compute the same function as a torchvision variant (not a second candidate).
TWINS: dict[str, Candidate] = {
    "resnet18": ("torchvision:resnet18", {"stem_kernel": 3, "stem_stride": 1, "maxpool": False}),
}


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


def check_fits(net: nn.Module, state_dict: StateDict) -> None:
    """:class:`CheckpointError` naming the first differences unless ``state_dict`` has exactly ``net``'s keys
    and shapes (``net`` may live on the meta device: nothing is allocated)."""
    diff = _diff(state_dict, net)
    if not diff.ok:
        raise CheckpointError(
            f"checkpoint does not fit the model: {diff.describe()}; "
            "check the architecture, num_classes, input channels and key prefix"
        )


def load_state(net: nn.Module, state_dict: StateDict) -> None:
    """Load ``state_dict`` into ``net`` strictly; :class:`CheckpointError` naming the first differences."""
    check_fits(net, state_dict)
    model = net.state_dict()
    for key, value in state_dict.items():
        if model[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"checkpoint tensor {key!r} has dtype {str(value.dtype).removeprefix('torch.')} but the model "
                "expects floating weights; save the state dict as float32 (float16/bfloat16 also load)"
            )
    net.load_state_dict(state_dict, strict=True)


def detect_arch(state_dict: StateDict) -> Candidate:
    """The one built-in (name, kwargs) whose state dict has exactly these keys and shapes (:func:`detect`)."""
    arch, kwargs, _ = detect(state_dict)
    return arch, kwargs


def detect(state_dict: StateDict) -> tuple[str, dict, list[Candidate]]:
    """The one built-in (name, kwargs) whose state dict has exactly these keys and shapes, and the other networks
    that have them too (:func:`torchvision_resnets`, less the built-in's twin): candidates keys cannot rule out.

    Each built-in is built on the meta device (no memory, no initialisation cost) with the number of
    classes read from its head, the input channels from :func:`infer_in_channels` and size kwargs from
    its ``infer_kwargs``. No built-in, or several, raise :class:`CheckpointError` naming what does fit.
    """
    matches: list[Candidate] = []
    misses: list[tuple[float, str, _Diff]] = []
    for name, kwargs, diff in _builtin_diffs(state_dict):
        if diff.ok:
            matches.append((name, kwargs))
        else:
            misses.append((diff.similarity, name, diff))
    twins = [TWINS[name] for name, _ in matches if name in TWINS]
    others = [c for c in torchvision_resnets(state_dict) if c not in twins]
    if len(matches) == 1:
        return (*matches[0], others)
    if matches:
        names = ", ".join(name for name, _ in matches)
        raise CheckpointError(
            f"the checkpoint fits several built-ins ({names}); pass --arch NAME or add arch: to the spec"
        )
    if others:
        raise CheckpointError(
            f"the checkpoint matches no built-in architecture; its keys and shapes fit {describe_candidates(others)}, "
            "which keys alone cannot tell apart: name the one trained with arch: (and arch_kwargs:) in a spec, or --arch"
        )
    prefixed = bool(state_dict) and all(key.startswith("module.") for key in state_dict)
    prefix = " (every key starts with 'module.': strip that prefix)" if prefixed else ""
    similarity, closest, diff = max(misses, key=lambda miss: miss[0], default=(0.0, "", None))
    if similarity >= CLOSE:
        detail = f"; closest is {closest} ({diff.describe()})"
    else:
        detail = f" ({', '.join(BUILTINS)}: none shares even half of its {len(state_dict)} tensors{_family(state_dict)})"
    raise CheckpointError(
        f"the checkpoint matches no built-in architecture{prefix}{detail}; name its architecture with --arch (or "
        f"arch: in the spec): {arch_forms.listing()}"
    )


def _builtin_diffs(state_dict: StateDict) -> list[tuple[str, dict, _Diff]]:
    """Every built-in whose size kwargs the state dict gives, with those kwargs and its differences from it."""
    in_channels = infer_in_channels(state_dict)
    out = []
    for name, info in BUILTINS.items():
        kwargs = info.infer_kwargs(state_dict)
        if kwargs is None:
            continue
        with torch.device("meta"):
            net = info.builder(num_classes=_classes(state_dict, info.head), in_channels=in_channels, **kwargs)
        out.append((name, kwargs, _diff(state_dict, net)))
    return out


def suggestions(state_dict: StateDict) -> list[dict]:
    """What ``arch`` (and ``arch_kwargs``) to try for a state dict: every network that fits it exactly
    (``fits: true``), then the built-ins sharing at least :data:`CLOSE` of its keys, closest first, with
    their differences (``inspect`` of a checkpoint whose architecture cannot be told)."""
    diffs = _builtin_diffs(state_dict)
    fitting = [(name, kwargs) for name, kwargs, diff in diffs if diff.ok]
    twins = [TWINS[name] for name, _ in fitting if name in TWINS]
    fitting += [c for c in torchvision_resnets(state_dict) if c not in twins]
    close = sorted(((diff.similarity, name, kwargs, diff) for name, kwargs, diff in diffs
                    if not diff.ok and diff.similarity >= CLOSE), key=lambda c: -c[0])
    return ([{"arch": name, "arch_kwargs": kwargs, "fits": True, "differences": None} for name, kwargs in fitting]
            + [{"arch": name, "arch_kwargs": kwargs, "fits": False, "differences": diff.describe()}
               for _, name, kwargs, diff in close])


def torchvision_resnets(state_dict: StateDict) -> list[Candidate]:
    """The torchvision ResNets whose keys and shapes ``state_dict`` has exactly, with the stem ``arch_kwargs``
    (:mod:`flatcli.models.stems`) its ``conv1.weight`` implies.

    A 7x7 stem is torchvision's (stride 2, max-pool kept; ``stem_kernel: 7`` only when its input channels are
    not 3). Another stem's stride cannot be read off the weights (1 is assumed, as small-image training
    does), nor whether the max-pool was kept: both are candidates.
    """
    conv1 = state_dict.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4 or "layer1.0.conv1.weight" not in state_dict:
        return []
    channels, kernel = int(conv1.shape[1]), int(conv1.shape[-1])
    if kernel == 7:
        stems = [{} if channels == 3 else {"stem_kernel": 7, "stem_stride": 2}]
    else:
        stems = [{"stem_kernel": kernel, "stem_stride": 1, "maxpool": pool} for pool in (True, False)]
    num_classes = _classes(state_dict, "fc")
    out = []
    for name in TORCHVISION_RESNETS:
        for stem in stems:
            try:
                with torch.device("meta"):
                    net = build_adapted(f"torchvision:{name}", num_classes=num_classes, in_channels=channels, kwargs=stem)
            except FlatrobError:
                continue
            if _diff(state_dict, net).ok:
                out.append((f"torchvision:{name}", stem))
    return out


def describe_candidates(candidates: list[Candidate]) -> str:
    """``a, b and c``, each ``arch`` or ``arch with arch_kwargs {key: value, ...}``."""
    words = [name + (" with arch_kwargs {" + ", ".join(f"{k}: {_yaml(v)}" for k, v in kwargs.items()) + "}"
                     if kwargs else "") for name, kwargs in candidates]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _yaml(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _classes(state_dict: StateDict, head: str) -> int:
    """Rows of the head's weight (1 when absent: the shapes then differ anyway)."""
    weight = state_dict.get(f"{head}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else 1


def _family(state_dict: StateDict) -> str:
    """A hint when the keys have RobustBench's WideResNet layout (``block1.layer.0.``), with its depth and width."""
    if "block1.layer.0.conv1.weight" not in state_dict or "fc.weight" not in state_dict:
        return ""
    blocks = {key.split(".")[2] for key in state_dict if key.startswith("block1.layer.")}
    width = state_dict["fc.weight"].shape[1] // 64
    return (f"; its keys are RobustBench's WideResNet-{6 * len(blocks) + 4}-{width} layout: a robustbench:... zoo entry "
            "of that size, or robustbench.model_zoo.architectures.wide_resnet:WideResNet with arch_kwargs "
            f"{{depth: {6 * len(blocks) + 4}, widen_factor: {width}}}")

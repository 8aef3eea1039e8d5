"""Matching a state dict to a network: key prefixes, key/shape differences, strict loading, detection.

:func:`detect_arch` builds every built-in on the meta device and keeps the one whose keys and shapes
the state dict has exactly; :func:`load_state` loads strictly and names the first differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flatcli.errors import CheckpointError
from flatcli.models.builtins import BUILTINS, StateDict
from flatcli.models.registry import infer_in_channels
from flatcli.models import arch_forms

#: A built-in is named as the closest match only when it shares at least this share of the keys.
CLOSE = 0.5


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
    if similarity >= CLOSE:
        detail = f"; closest is {closest} ({diff.describe()})"
    else:
        detail = f" ({', '.join(BUILTINS)}: none shares even half of its {len(state_dict)} tensors{_family(state_dict)})"
    raise CheckpointError(
        f"the checkpoint matches no built-in architecture{prefix}{detail}; name its architecture with --arch (or "
        f"arch: in the spec): {arch_forms.listing()}"
    )


def _family(state_dict: StateDict) -> str:
    """A hint when the keys have RobustBench's WideResNet layout (``block1.layer.0.``), with its depth and width."""
    if "block1.layer.0.conv1.weight" not in state_dict or "fc.weight" not in state_dict:
        return ""
    blocks = {key.split(".")[2] for key in state_dict if key.startswith("block1.layer.")}
    width = state_dict["fc.weight"].shape[1] // 64
    return (f"; its keys are RobustBench's WideResNet-{6 * len(blocks) + 4}-{width} layout: a robustbench:... zoo entry "
            "of that size, or robustbench.model_zoo.architectures.wide_resnet:WideResNet with arch_kwargs "
            f"{{depth: {6 * len(blocks) + 4}, widen_factor: {width}}}")

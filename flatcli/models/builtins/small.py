"""Two small networks for 8x8 digits: a BatchNorm CNN and an MLP, each with head ``fc``.

Each also has a ``*_kwargs(state_dict)`` function that reads its size kwargs back from a state dict,
which is how :func:`flatcli.models.matching.detect_arch` recognises them without being told.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(in->w)-BN-ReLU, conv(w->2w)-BN-ReLU, max-pool 2, conv(2w->2w)-BN-ReLU, avg pool 1, ``fc``."""

    def __init__(self, num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.relu(self.bn2(self.conv2(out))))
        out = self.relu(self.bn3(self.conv3(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> SmallCNN:
    """Small CNN; ``width`` is the first conv's channel count, feature dimension ``2 * width``."""
    return SmallCNN(num_classes, in_channels, width)


def small_cnn_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict | None:
    """``{"width": w}`` read from ``conv1.weight``; ``None`` when that key is absent or not a conv."""
    weight = state_dict.get("conv1.weight")
    return {"width": int(weight.shape[0])} if weight is not None and weight.dim() == 4 else None


class MLP(nn.Module):
    """Flatten, then ``layers`` (Linear-ReLU per hidden size), then ``fc``."""

    def __init__(self, num_classes: int, in_features: int, hidden: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        size = in_features
        for width in hidden:
            layers += [nn.Linear(size, width), nn.ReLU(inplace=True)]
            size = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(torch.flatten(x, 1)))


def mlp(num_classes: int = 10, in_channels: int = 1, *, in_features: int, hidden: Sequence[int] = (256, 128)) -> MLP:
    """MLP on flattened inputs of ``in_features`` (= C*H*W) values; feature dimension ``hidden[-1]``.

    ``in_channels`` is accepted so every built-in has the same builder signature; only
    ``in_features`` matters to an MLP.
    """
    return MLP(num_classes, in_features, list(hidden))


_HIDDEN_KEY = re.compile(r"layers\.(\d+)\.weight")


def mlp_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict | None:
    """``{"hidden": [...], "in_features": n}`` read from ``layers.<i>.weight`` and ``fc.weight``.

    ``None`` when there are neither hidden layers nor a 2-D ``fc.weight`` to read sizes from.
    """
    weights = sorted(
        ((int(m.group(1)), w) for k, w in state_dict.items() if (m := _HIDDEN_KEY.fullmatch(k)) and w.dim() == 2),
        key=lambda item: item[0],
    )
    hidden = [int(w.shape[0]) for _, w in weights]
    if weights:
        return {"hidden": hidden, "in_features": int(weights[0][1].shape[1])}
    fc = state_dict.get("fc.weight")
    return {"hidden": [], "in_features": int(fc.shape[1])} if fc is not None and fc.dim() == 2 else None

"""CIFAR-style DenseNet-BC (Huang et al.): 3x3 stem, bottleneck layers, compressing transitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1 (4 * growth) then BN-ReLU-conv3x3 (growth); output concatenated to the input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to fewer channels, then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """Stem conv (2 * growth), dense blocks ``dense1..4`` with ``trans1..3`` between, BN-ReLU-pool, ``fc``."""

    def __init__(self, blocks: tuple[int, ...], growth: int, reduction: float, num_classes: int, in_channels: int):
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        for i, count in enumerate(blocks, start=1):
            layers = []
            for _ in range(count):
                layers.append(Bottleneck(planes, growth))
                planes += growth
            setattr(self, f"dense{i}", nn.Sequential(*layers))
            if i < len(blocks):
                out_planes = int(planes * reduction)
                setattr(self, f"trans{i}", Transition(planes, out_planes))
                planes = out_planes
        self.num_blocks = len(blocks)
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.num_blocks + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.num_blocks:
                out = getattr(self, f"trans{i}")(out)
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.fc(torch.flatten(out, 1))


def densenet121(num_classes: int = 10, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 (blocks [6, 12, 24, 16], growth 32, reduction 0.5); feature dimension 1024."""
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes, in_channels)

"""CIFAR-style VGG with BatchNorm: conv features, pool to 1x1, one Linear ``classifier``."""

from __future__ import annotations

import torch
from torch import nn

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """``features`` (conv3x3-BN-ReLU, "M" = max-pool 2) -> adaptive avg pool 1x1 -> ``classifier``.

    Five max-pools need inputs of at least 32x32.
    """

    def __init__(self, cfg: tuple, num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with BatchNorm; feature dimension 512."""
    return VGG(VGG11, num_classes, in_channels)

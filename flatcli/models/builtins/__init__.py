"""The built-in architectures: CIFAR-style ResNet-18, WideResNet-28-4, VGG-11-BN, DenseNet-121, a small CNN, an MLP.

Every built-in ends ``forward`` with ``head(features)``, ``features`` of shape ``(B, m)``, so the head's
input is exactly the representation the sharpness and attack code split the network at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from flatcli.models.builtins.densenet import densenet121
from flatcli.models.builtins.resnet import resnet18
from flatcli.models.builtins.small import mlp, mlp_kwargs, small_cnn, small_cnn_kwargs
from flatcli.models.builtins.vgg import vgg11_bn
from flatcli.models.builtins.wide_resnet import wrn28_4

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

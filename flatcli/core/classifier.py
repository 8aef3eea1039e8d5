"""The model as every command sees it: inputs in [0, 1], normalisation inside, then the network; eval mode.

A ``Classifier`` is ``net(normalize(x))``; layer names are relative to ``net``. :func:`eval_mode` puts a
module in eval mode for a computation and restores every submodule's mode afterwards (BatchNorm and
dropout in eval mode make the samples of a batch independent, which every closed form relies on).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``x -> (x - mean) / std`` per channel; a diagonal linear map with Lipschitz constant 1/min(std)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``net(normalize(x))``. Layer names in specs are relative to ``net`` (``fc``, not ``net.fc``)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def layer(self, name: str) -> nn.Module:
        """The submodule of ``net`` called ``name`` (``AttributeError`` if absent)."""
        return self.net.get_submodule(name)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore each submodule's previous mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training

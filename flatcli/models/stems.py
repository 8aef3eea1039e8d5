"""Torchvision ResNets adapted to small images: the stem convolution and max-pool that ``arch_kwargs`` replace.

People who train ``torchvision.models.resnet18`` on MNIST or CIFAR replace its stem::

    net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()          # often kept

The state dict keeps torchvision's keys, so the network is rebuilt from ``torchvision:resnet18`` and
these ``arch_kwargs``, which are flatrob's own (never passed to the builder):

* ``stem_kernel``: kernel side ``q`` of ``conv1`` (torchvision: 7), padding ``q // 2``, no bias;
* ``stem_stride``: its stride (default 1 once ``stem_kernel`` is given; torchvision: 2);
* ``maxpool``: keep the 3x3 stride-2 max-pool after the stem (default true, as torchvision).

Whenever one of them is given, ``conv1`` takes the checkpoint's input channels. The built-in ``resnet18`` is
``torchvision:resnet18`` with ``{stem_kernel: 3, stem_stride: 1, maxpool: false}``, weight for weight.
"""

from __future__ import annotations

from torch import nn

from flatcli.errors import SpecError
from flatcli.models.registry import build_network

#: The ``arch_kwargs`` this module takes out before the torchvision builder is called.
STEM_KWARGS = ("stem_kernel", "stem_stride", "maxpool")
#: The largest stem kernel side accepted.
MAX_KERNEL = 15


def split(kwargs: dict) -> tuple[dict, dict]:
    """``kwargs`` as (the builder's, the stem's)."""
    stem = {key: kwargs[key] for key in STEM_KWARGS if key in kwargs}
    return {key: value for key, value in kwargs.items() if key not in STEM_KWARGS}, stem


def build(arch: str, *, num_classes: int, in_channels: int, kwargs: dict | None = None) -> nn.Module:
    """:func:`~flatcli.models.registry.build_network` with the stem ``kwargs`` applied (under the caller's device
    context, so a meta-device build stays on the meta device)."""
    rest, stem = split(dict(kwargs or {}))
    net = build_network(arch, num_classes=num_classes, in_channels=in_channels, kwargs=rest)
    if stem:
        adapt(arch, net, in_channels, **stem)
    return net


def adapt(arch: str, net: nn.Module, in_channels: int, *, stem_kernel: int | None = None,
          stem_stride: int | None = None, maxpool: bool = True) -> None:
    """Replace ``net.conv1`` by a ``stem_kernel`` x ``stem_kernel`` convolution from ``in_channels`` channels, and
    ``net.maxpool`` by the identity unless ``maxpool``; :class:`SpecError` for anything but a torchvision ResNet."""
    import torchvision.models

    if not (arch.startswith("torchvision:") and isinstance(net, torchvision.models.ResNet)):
        raise SpecError(f"arch_kwargs {', '.join(STEM_KWARGS)} adapt a torchvision ResNet's stem "
                        f"(torchvision:resnet18 ...), not {arch}; remove them")
    kernel = 7 if stem_kernel is None else stem_kernel
    stride = stem_stride if stem_stride is not None else 2 if stem_kernel is None else 1
    for name, value, top in (("stem_kernel", kernel, MAX_KERNEL), ("stem_stride", stride, MAX_KERNEL)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise SpecError(f"arch_kwargs {name} must be a whole number from 1 to {top}, got {value!r}")
    if not isinstance(maxpool, bool):
        raise SpecError(f"arch_kwargs maxpool must be true or false, got {maxpool!r}")
    net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
    if not maxpool:
        net.maxpool = nn.Identity()

"""Every built-in loads from a safetensors file of its own, is detected, and its head split is exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from flatcli.errors import LayerError
from flatcli.core.head_scaling import Scaling
from flatcli.models.head import HeadSplit
from flatcli.models.loading import load_model
from flatcli.models.builtins import BUILTINS
from flatcli.models.registry import build_network

SHAPES = {"resnet18": (3, 32, 32), "wrn28-4": (3, 32, 32), "vgg11-bn": (3, 32, 32), "densenet121": (3, 32, 32),
          "small-cnn": (1, 8, 8), "mlp": (1, 8, 8)}


@pytest.mark.parametrize("arch", sorted(BUILTINS))
def test_builtin_detected_and_split_reproduces_logits(arch, tmp_path):
    torch.manual_seed(0)
    shape = SHAPES[arch]
    kwargs = {"in_features": 64} if arch == "mlp" else {}
    net = build_network(arch, num_classes=7, in_channels=shape[0], kwargs=kwargs)
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = load_model(str(path))
    # torchvision's resnet18 with a 3x3 stem and its max-pool kept has the built-in resnet18's keys too
    assert loaded.arch_source == ("keys" if arch == "resnet18" else "detected") and loaded.spec.arch == arch
    assert loaded.layer == BUILTINS[arch].head and loaded.num_classes == 7
    x = torch.rand(3, *shape)
    with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
        split.verify(x)
        with torch.no_grad():
            logits, phi = split(x)
            expected = net.eval()(x)
    assert phi.shape == (3, loaded.features)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_scaled_split_scales_logits():
    loaded = load_model("example:digits-cnn")
    x = torch.rand(4, 1, 8, 8)
    with HeadSplit(loaded.model, loaded.head, "fc") as split:
        with torch.no_grad():
            z1, _ = split(x)
            z5, _ = split.with_scaling(Scaling(5.0, True))(x)
            z5nb, phi = split.with_scaling(Scaling(5.0, False))(x)
    assert torch.allclose(z5, 5 * z1, rtol=1e-5, atol=1e-5)
    assert torch.allclose(z5nb, 5 * (z1 - loaded.head.bias) + loaded.head.bias, rtol=1e-5, atol=1e-5)


class _TwiceHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class _AfterHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.fc(x)) * 3


@pytest.mark.parametrize("net,message", [(_TwiceHead(), "2 times"), (_AfterHead(), "not the last linear map")])
def test_split_refuses_a_layer_that_is_not_the_last_linear_map(net, message):
    with HeadSplit(net, net.fc, "fc") as split:
        with pytest.raises(LayerError, match=message):
            split.verify(torch.randn(5, 4))

"""Which networks are piecewise linear in a layer's weight, decided from the torch.fx graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatcli.core.classifier import Classifier
from flatcli.core.layer_linearity import linearity
from flatcli.models.registry import build_network


@pytest.mark.parametrize("arch", ["resnet18", "vgg11-bn", "densenet121", "small-cnn"])
def test_the_builtins_are_piecewise_linear_in_every_layer(arch):
    channels = 1 if arch == "small-cnn" else 3
    net = build_network(arch, num_classes=10, in_channels=channels)
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    found = linearity(Classifier(net, [0.5] * channels, [0.25] * channels), names)
    assert all(v.piecewise_linear for v in found.values()), [v for v in found.values() if not v.piecewise_linear]


class Mixed(nn.Module):
    """Every way of leaving the piecewise-linear class, one layer each, behind a piecewise-linear trunk."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(6, 6)
        self.gelu_in = nn.Linear(6, 6)
        self.norm_in = nn.Linear(6, 6)
        self.ln = nn.LayerNorm(6)
        self.square_in = nn.Linear(6, 6)
        self.gate = nn.Linear(6, 6)
        self.twice = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.trunk(x.flatten(1)))
        g = torch.sigmoid(self.gate(h))
        a = F.gelu(self.gelu_in(h)) * 0.5
        b = self.ln(self.norm_in(h))
        c = self.square_in(h)
        c = c * c
        d = self.twice(self.twice(h))
        return self.fc(torch.relu(h) * g + a + b + c + d)


def test_the_first_operation_that_bends_the_logits_is_named():
    found = linearity(Classifier(Mixed(), [0.0], [1.0]), ["trunk", "gelu_in", "norm_in", "square_in", "gate", "twice",
                                                         "fc"])
    assert found["fc"].piecewise_linear is True
    assert found["gelu_in"].piecewise_linear is False and "gelu" in found["gelu_in"].reason
    assert "LayerNorm" in found["norm_in"].reason
    assert "multiplies two tensors" in found["square_in"].reason
    assert "sigmoid" in found["gate"].reason
    assert found["twice"].piecewise_linear is False and "called 2 times" in found["twice"].reason
    assert found["trunk"].piecewise_linear is False  # the gate makes h * sigmoid(gate(h)) non-linear in trunk


def test_a_branch_that_does_not_depend_on_the_layer_is_a_constant():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc(F.relu(self.a(x)) * torch.sigmoid(self.b(x)) / x.size(1))

    found = linearity(Classifier(Gated(), [0.0], [1.0]), ["a", "b"])
    assert found["a"].piecewise_linear is True and found["b"].piecewise_linear is False


def test_batch_statistics_and_training_dropout_are_not_piecewise_linear():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2, track_running_stats=False)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    assert "batch statistics" in linearity(Classifier(Net(), [0.0], [1.0]), ["conv"])["conv"].reason

    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.dropout(self.a(x.flatten(1)), 0.5, training=True))

    assert "training" in linearity(Classifier(Drop(), [0.0], [1.0]), ["a"])["a"].reason


def test_an_untraceable_model_leaves_the_question_open():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x.flatten(1))
            return self.fc(h if h.sum() > 0 else -h)

    found = linearity(Classifier(Branchy(), [0.0], [1.0]), ["a"])["a"]
    assert found.piecewise_linear is None and "torch.fx cannot trace" in found.reason

"""``inspect`` of a checkpoint whose architecture is unknown still shows its tensors, linear layers and what to try."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from flatcli.errors import CheckpointError
from flatcli.models.loading import load_model
from flatcli.runs.inspect import inspect_file


class OwnNet(nn.Module):
    """A network of the user's own: no built-in has its keys."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.hidden = nn.Linear(4 * 26 * 26, 16)
        self.out = nn.Linear(16, 10, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.body(x))))


def _inspected(net: nn.Module, path) -> tuple:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError) as error:
        load_model(str(path))
    return inspect_file(str(path), error.value, options={"checkpoint": str(path)}), error.value


def test_an_unknown_architecture_lists_tensors_and_linear_layers(tmp_path):
    result, error = _inspected(OwnNet(), tmp_path / "own.safetensors")
    s = result.summary
    assert s["arch"] is None and s["arch_error"] == str(error) and s["in_channels"] == 1
    assert sorted(t["name"] for t in s["tensor_shapes"]) == sorted(OwnNet().state_dict())
    assert {"name": "hidden.weight", "shape": [16, 2704], "dtype": "float32"} in s["tensor_shapes"]
    assert result.samples == s["linear_layers"] == [
        {"layer": "hidden", "in_features": 2704, "out_features": 16, "bias": True, "head": False},
        {"layer": "out", "in_features": 16, "out_features": 10, "bias": False, "head": False},
    ]
    assert s["parameters"] == sum(p.numel() for p in OwnNet().parameters())
    assert len(result.notes) == 1 and "architecture is unknown" in result.notes[0]


def test_torchvision_keys_suggest_the_arch_candidates(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet34(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    result, _ = _inspected(net, tmp_path / "tv34.safetensors")
    fitting = [(c["arch"], c["arch_kwargs"]) for c in result.summary["arch_candidates"] if c["fits"]]
    assert fitting == [("torchvision:resnet34", {"stem_kernel": 3, "stem_stride": 1, "maxpool": pool})
                       for pool in (True, False)]
    assert "arch to try: fits torchvision:resnet34" in result.notes[0]

"""A checkpoint whose keys several networks share is never measured silently as one of them.

torchvision's ResNet-18 with a 1-channel 3x3 stem and its max-pool kept (how people train it on MNIST) has
the built-in CIFAR ``resnet18``'s keys and shapes, key for key, but another forward pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from flatcli.errors import CheckpointError, SpecError
from flatcli.inputs.data.tensors import from_tensors
from flatcli.models import stems
from flatcli.models.builtins.resnet import resnet18
from flatcli.models.loading import load_model
from flatcli.models.matching import detect, torchvision_resnets
from flatcli.runs.sharpness import SharpnessSettings, sharpness
from tests.conftest import run_context

STEM = {"stem_kernel": 3, "stem_stride": 1, "maxpool": True}


def _randomise_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _mnist_resnet(maxpool: bool = True) -> torch.nn.Module:
    """torchvision's ResNet-18 adapted to 1x28x28 by hand, as a user does it."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if not maxpool:
        net.maxpool = torch.nn.Identity()
    return _randomise_batchnorm(net)


def _save(net: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def _losses(loaded, x, y) -> torch.Tensor:
    result = sharpness(run_context(loaded, from_tensors(x, y), batch_size=4), SharpnessSettings(), keep_samples=True)
    return torch.tensor([row["loss"] for row in result.samples], dtype=torch.float64)


def test_a_builtin_whose_keys_a_torchvision_variant_shares_is_measured_with_a_note(tmp_path):
    path = _save(_mnist_resnet(), tmp_path / "tv.safetensors")
    loaded = load_model(path)
    assert loaded.spec.arch == "resnet18" and loaded.arch_source == "keys"
    assert loaded.candidates == [{"arch": "torchvision:resnet18", "arch_kwargs": STEM}]
    config = loaded.describe()
    assert config["arch_source"] == "keys" and config["arch_candidates"] == loaded.candidates
    assert len(loaded.notes) == 1 and "\n" not in loaded.notes[0]
    assert "torchvision:resnet18 with arch_kwargs {stem_kernel: 3, stem_stride: 1, maxpool: true}" in loaded.notes[0]
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    result = sharpness(run_context(loaded, from_tensors(x, y)), SharpnessSettings())
    assert result.notes[:1] == loaded.notes and result.config["arch_candidates"] == loaded.candidates


def test_naming_the_torchvision_variant_gives_the_models_own_losses(tmp_path):
    net = _mnist_resnet()
    path = _save(net, tmp_path / "tv.safetensors")
    spec = tmp_path / "spec.yaml"
    spec.write_text("arch: torchvision:resnet18\narch_kwargs: {stem_kernel: 3, stem_stride: 1, maxpool: true}\n")
    loaded = load_model(path, spec_file=str(spec))
    assert loaded.arch_source == "spec" and not loaded.notes and loaded.spec.mean == (0.0,)  # no ImageNet mean
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    with torch.no_grad():
        own = F.cross_entropy(net(x).double(), y, reduction="none")
    torch.testing.assert_close(_losses(loaded, x, y), own, rtol=1e-4, atol=1e-5)
    guessed = _losses(load_model(path), x, y)  # the built-in has no max-pool: another function
    assert (guessed - own).abs().max() > 1e-3


def test_the_builtin_resnet18_is_torchvisions_with_a_3x3_stem_and_no_maxpool():
    torch.manual_seed(1)
    builtin = _randomise_batchnorm(resnet18(num_classes=10, in_channels=1))
    twin = stems.build("torchvision:resnet18", num_classes=10, in_channels=1,
                       kwargs={"stem_kernel": 3, "stem_stride": 1, "maxpool": False}).eval()
    twin.load_state_dict(builtin.state_dict(), strict=True)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), builtin(x))
    assert detect(builtin.state_dict())[2] == [("torchvision:resnet18", STEM)]  # the twin is no second candidate


def test_torchvision_keys_that_no_builtin_has_are_refused_naming_the_candidates(tmp_path):
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)  # 7x7 stem, 3 channels
    assert torchvision_resnets(plain.state_dict()) == [("torchvision:resnet18", {})]
    with pytest.raises(CheckpointError, match=r"fit torchvision:resnet18, which keys alone"):
        load_model(_save(plain, tmp_path / "plain.safetensors"))
    deep = torchvision.models.resnet34(num_classes=10)
    deep.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    with pytest.raises(CheckpointError, match=r"maxpool: true} and torchvision:resnet34 with .*maxpool: false}"):
        load_model(_save(deep, tmp_path / "deep.safetensors"))


def test_stem_kwargs_adapt_torchvision_resnets_only():
    with pytest.raises(SpecError, match="adapt a torchvision ResNet's stem"):
        stems.build("resnet18", num_classes=10, in_channels=1, kwargs={"maxpool": False})
    with pytest.raises(SpecError, match="stem_kernel must be a whole number from 1 to 15"):
        stems.build("torchvision:resnet18", num_classes=10, in_channels=1, kwargs={"stem_kernel": 0})


def test_stem_kwargs_default_to_torchvisions_stem():
    torch.manual_seed(0)
    own = torchvision.models.resnet18(num_classes=10)
    own.maxpool = torch.nn.Identity()
    net = stems.build("torchvision:resnet18", num_classes=10, in_channels=3, kwargs={"maxpool": False}).eval()
    net.load_state_dict(own.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), own.eval()(x))  # 7x7, stride 2, padding 3 kept

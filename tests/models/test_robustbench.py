"""RobustBench zoo architectures built by name (never downloading) give the logits of the module robustbench
itself builds; their checkpoint layout converts; entries returning probabilities are refused."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from flatcli import api
from flatcli.errors import SpecError
from flatcli.models.arch_forms import names_code
from flatcli.models.registry import build_network
from flatcli.models.robustbench_zoo import zoo
from tests.conftest import assert_one_error, invoke

#: A WideResNet (WRN-40-2, normalising inside with mu/sigma buffers) and a network with Swish (DeepMind's
#: PreAct ResNet-18), the smallest of their kinds in the zoo.
ENTRIES = ["cifar10/corruptions/Hendrycks2020AugMix_WRN", "cifar10/Linf/Rebuffi2021Fixing_R18_ddpm"]


def robustbench_module(ref: str) -> torch.nn.Module:
    """The module robustbench.utils.load_model builds for ``ref`` before it downloads the weights."""
    dicts = zoo()  # imports robustbench (with pyautoattack as autoattack)
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    dataset, threat, name = ref.split("/")
    return dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]["model"]().eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("robustbench")
    out = {}
    for ref in ENTRIES:
        torch.manual_seed(0)
        net = robustbench_module(ref)
        with torch.no_grad():  # BatchNorm statistics that are not the identity
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        path = root / (ref.split("/")[-1] + ".safetensors")
        safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
        out[ref] = (net, path)
    return out


@pytest.mark.parametrize("ref", ENTRIES)
def test_a_zoo_entry_built_by_name_gives_robustbenchs_logits(saved, ref):
    net, path = saved[ref]
    loaded = api.load(str(path), arch=f"robustbench:{ref}", device="cpu")
    assert loaded.spec.mean == (0.0,) * 3 and loaded.spec.std == (1.0,) * 3  # it normalises inside
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x), atol=1e-5, rtol=1e-5)


def test_sharpness_runs_on_a_zoo_entry(saved):
    ref = ENTRIES[0]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    res = invoke("sharpness", saved[ref][1], "--arch", f"robustbench:{ref}", "--data", "tensors:-", "--format", "json",
                 input=_tensors(x))
    assert res.exit_code == 0, res.stderr


def test_the_swish_entry_keeps_its_activation(saved):
    zoo()
    from robustbench.model_zoo.architectures.dm_wide_resnet import Swish

    ref = ENTRIES[1]
    loaded = api.load(str(saved[ref][1]), arch=f"robustbench:{ref}", device="cpu")
    assert any(isinstance(m, Swish) for m in loaded.model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in loaded.model.modules())


def test_robustbenchs_checkpoint_layout_converts(saved, tmp_path):
    ref = ENTRIES[0]
    net, _ = saved[ref]
    src = tmp_path / "Hendrycks2020AugMix_WRN.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 100}, src)
    res = invoke("convert", src, tmp_path / "wrn.safetensors", "--format", "json")
    assert res.exit_code == 0, res.stderr
    loaded = api.load(str(tmp_path / "wrn.safetensors"), arch=f"robustbench:{ref}", device="cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x))


def test_an_entry_returning_probabilities_is_refused():
    with pytest.raises(SpecError, match="returns probabilities"):
        build_network("robustbench:cifar10/Linf/Chen2020Adversarial", num_classes=10, in_channels=3)


@pytest.mark.parametrize("arch, fragment", [
    ("robustbench:cifar10/Linf/Carmon2019Unlabelled", "did you mean Carmon2019Unlabeled"),
    ("robustbench:cifar10/Linfinity/Carmon2019Unlabeled", "threat models: Linf"),
    ("robustbench:mnist/Linf/X", "data sets: cifar10"),
    ("robustbench:Carmon2019Unlabeled", "DATASET/THREAT/NAME"),
])
def test_bad_zoo_names_are_one_error(saved, arch, fragment):
    assert_one_error(invoke("sharpness", saved[ENTRIES[0]][1], "--arch", arch), fragment)


def test_a_zoo_entry_names_no_code(saved, tmp_path):
    assert not names_code("robustbench:cifar10/Linf/Carmon2019Unlabeled") and not names_code("timm:resnet18")
    net, _ = saved[ENTRIES[0]]
    path = tmp_path / "embedded.safetensors"
    safetensors.torch.save_file(net.state_dict(), path, metadata={"flatrob.spec": f"arch: robustbench:{ENTRIES[0]}\n"})
    assert api.load(str(path), device="cpu").arch_source == "spec"


def test_a_wrn_28_10_is_not_told_its_closest_match_is_small_cnn(tmp_path):
    zoo()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    path = tmp_path / "wrn.safetensors"
    safetensors.torch.save_file(WideResNet(depth=10, widen_factor=1).state_dict(), path)
    res = invoke("sharpness", path)
    assert_one_error(res, "WideResNet-10-1", "timm:NAME", "robustbench:")
    assert "small-cnn (" not in res.stderr and "closest" not in res.stderr


def _tensors(x: torch.Tensor) -> bytes:
    return safetensors.torch.save({"x": x, "y": torch.zeros(len(x), dtype=torch.int64)})

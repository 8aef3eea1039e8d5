"""The architecture forms' table (:mod:`flatcli.models.arch_forms`): which form claims a name, the help and
errors derived from it, and a form added as one row and one builder class."""

from __future__ import annotations

import importlib

import pytest
from torch import nn

from flatcli.cli import complete
from flatcli.errors import LayerError, SpecError
from flatcli.models.registry import Builder, build_network, data_defaults, default_head, known_head
from flatcli.models.arch_forms import FORMS, ArchForm, arch_help, form_of, listing, names_code


@pytest.mark.parametrize("arch, form, ref", [
    ("resnet18", "builtin", "resnet18"),
    ("no-such-net", "builtin", "no-such-net"),
    ("torchvision:resnet50", "torchvision", "resnet50"),
    ("timm:vit_tiny_patch16_224", "timm", "vit_tiny_patch16_224"),
    ("robustbench:cifar10/Linf/Standard", "robustbench", "cifar10/Linf/Standard"),
    ("torch.nn:Linear", "module", "torch.nn:Linear"),
    ("timmy:Net", "module", "timmy:Net"),
])
def test_each_name_has_one_form(arch, form, ref):
    assert form_of(arch).name == form and form_of(arch).reference(arch) == ref
    assert names_code(arch) == (form == "module")
    assert sum(s.claims(arch) for s in FORMS.values() if s.prefix) <= 1


def test_every_builder_is_a_builder():
    for form in FORMS.values():
        module, _, name = form.builder.partition(":")
        assert issubclass(getattr(importlib.import_module(module), name), Builder), form.name


def test_help_errors_and_completion_follow_the_table():
    usages = [form.usage for form in FORMS.values()]
    assert arch_help() == f"Architecture: {', '.join(usages[:-1])} or {usages[-1]} (default: spec, then detected)."
    assert "timm:NAME" in arch_help() and "robustbench:DATASET/THREAT/NAME" in arch_help()  # issue 25
    assert complete.arch("") == [(s.prefix, s.help) for s in FORMS.values() if s.prefix]
    assert [value for value, _ in complete.arch("")] == ["torchvision:", "timm:", "robustbench:"]
    with pytest.raises(SpecError, match=r"built-ins: resnet18, .*; or use torchvision:NAME, timm:NAME, "
                                        r"robustbench:DATASET/THREAT/NAME or module.path:ClassName$"):
        build_network("resnet81", num_classes=10, in_channels=3)
    assert "a built-in" not in listing(but="builtin")


class ToyNet(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.body = nn.Linear(4, width)
        self.out = nn.Linear(width, num_classes)
        self.aux = nn.Linear(width, 1)  # the last nn.Linear, which the builder's head overrides

    def forward(self, x):
        return self.out(self.body(x.flatten(1)))


class ToyBuilder(Builder):
    """``toy:WIDTH``: a two-layer network whose head the builder names."""

    def build(self, ref, num_classes, in_channels, kwargs):
        return ToyNet(int(ref), num_classes)

    def known_head(self, ref):
        return "out"

    def head(self, ref, net):
        return "out"

    def data_defaults(self, ref, net):
        return {"input_shape": [1, 2, 2]}


def test_a_form_added_as_one_row_is_built_and_offered(monkeypatch):
    toy = ArchForm("toy", "toy:WIDTH", "a toy network of WIDTH hidden units", f"{__name__}:ToyBuilder", prefix="toy:")
    monkeypatch.setitem(FORMS, "toy", toy)
    net = build_network("toy:6", num_classes=3, in_channels=1)
    assert isinstance(net, ToyNet) and net.out.weight.shape == (3, 6)
    assert default_head("toy:6", net) == "out" and known_head("toy:6") == "out"
    assert data_defaults("toy:6", net) == {"input_shape": [1, 2, 2]}
    assert not names_code("toy:6") and names_code("toys:Net")
    assert ("toy:", toy.help) in complete.arch("") and "toy:WIDTH" in arch_help()


def test_default_head_without_the_forms_word_is_the_last_linear():
    net = build_network("torch.nn:Sequential", num_classes=10, in_channels=1)
    with pytest.raises(LayerError, match="no nn.Linear"):
        default_head("torch.nn:Sequential", net)
    assert known_head("torch.nn:Sequential") is None and known_head("resnet18") == "fc"
    assert data_defaults("resnet18", nn.Linear(1, 1)) == {}

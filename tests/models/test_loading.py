"""Loading a checkpoint: the trust rule for embedded specs, and nothing allocated before the shapes are compared."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from flatcli.errors import CheckpointError, LayerError, SpecError
from flatcli.inputs.checkpoint import read
from flatcli.models import loading, stems
from flatcli.models.loading import effective_spec, load_model
from tests.conftest import EXAMPLE

MODULE = textwrap.dedent("""
    import torch
    from flatcli.models.builtins.small import SmallCNN
    IMPORTS = []
    IMPORTS.append("imported")

    class Net(SmallCNN):
        def __init__(self, num_classes=10, in_channels=1, width=16, scratch=0):
            super().__init__(num_classes, in_channels, width)
            self.register_buffer("scratch", torch.zeros(scratch), persistent=False)
""")


@pytest.fixture
def trusted_module(tmp_path, monkeypatch):
    (tmp_path / "flatrob_trust_net.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flatrob_trust_net", raising=False)
    yield "flatrob_trust_net"
    sys.modules.pop("flatrob_trust_net", None)


def _checkpoint(tmp_path, spec: str):
    path = tmp_path / "model.safetensors"
    save_file(read(EXAMPLE).state_dict, str(path), metadata={"flatrob.spec": spec})
    return path


SPEC = "arch: flatrob_trust_net:Net\nlayer: fc\ninput_shape: [1, 8, 8]\n"


def test_embedded_code_is_refused_before_the_module_is_imported(tmp_path, trusted_module):
    path = _checkpoint(tmp_path, SPEC)
    with pytest.raises(SpecError, match="names code to import .*--trust-embedded-code"):
        load_model(str(path))
    assert trusted_module not in sys.modules  # refused before importing, not after


def test_code_named_by_the_user_or_trusted_is_built(tmp_path, trusted_module):
    path = _checkpoint(tmp_path, SPEC)
    for how in ({"overrides": {"arch": "flatrob_trust_net:Net"}}, {"trust_embedded_code": True}):
        loaded = load_model(str(path), **how)
        assert type(loaded.model.net).__name__ == "Net" and loaded.layer == "fc"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("arch: flatrob_trust_net:Net\n")  # a --spec file the user passes names it too
    assert effective_spec(read(str(path)), str(spec_file), {})[0].arch == "flatrob_trust_net:Net"


def test_an_embedded_code_arch_replaced_by_the_user_is_never_imported(tmp_path, trusted_module):
    path = _checkpoint(tmp_path, SPEC)
    assert load_model(str(path), overrides={"arch": "small-cnn"}).spec.arch == "small-cnn"
    assert trusted_module not in sys.modules


def test_built_ins_and_torchvision_need_no_trust(tmp_path):
    for arch in ("small-cnn", "torchvision:resnet18"):
        spec, _ = effective_spec(read(str(_checkpoint(tmp_path, f"arch: '{arch}'\n"))), None, {})
        assert spec.arch == arch


def test_shapes_are_compared_on_the_meta_device_before_anything_is_allocated(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path, read(EXAMPLE).metadata["flatrob.spec"].replace("width: 16", "width: 6000"))
    built = []
    real = stems.build_network

    def spy(*args, **kwargs):
        net = real(*args, **kwargs)
        built.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(stems, "build_network", spy)
    with pytest.raises(CheckpointError, match="does not fit the model.*conv1.weight"):
        load_model(str(path))
    assert built == ["meta"]  # the 8 GB network was never built for real


def test_what_a_network_allocates_beyond_its_checkpoint_is_capped(tmp_path, trusted_module):
    spec = SPEC + "arch_kwargs: {scratch: 1000000000}\n"  # a 4 GB non-persistent buffer
    path = _checkpoint(tmp_path, spec)
    with pytest.raises(SpecError, match="would allocate 3815 MiB"):
        load_model(str(path), trust_embedded_code=True)
    ok = _checkpoint(tmp_path, SPEC + "arch_kwargs: {scratch: 1000}\n")
    assert load_model(str(ok), trust_embedded_code=True).model.net.scratch.numel() == 1000
    assert torch.get_default_device().type == "cpu"  # the meta build leaves no default device behind


def test_an_unknown_layer_names_the_networks_layers():
    with pytest.raises(LayerError, match=r"no layer 'zzz'; layers: conv1, bn1, .*fc"):
        load_model(EXAMPLE, overrides={"layer": "zzz"})

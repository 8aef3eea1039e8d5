"""Built-in architectures, building from a name, recognising and loading state dicts."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flatcli.errors import CheckpointError, LayerError, SpecError
from flatcli.models.builtins import BUILTINS
from flatcli.models.matching import detect_arch, load_state, strip_prefix
from flatcli.models.registry import build_network, default_head, infer_in_channels, infer_num_classes

# (arch, num_classes, in_channels, image side, kwargs, feature dimension m, kwargs detect_arch finds)
CASES = [
    ("resnet18", 10, 3, 32, {}, 512, {}),
    ("resnet18", 7, 1, 32, {}, 512, {}),
    ("wrn28-4", 100, 3, 32, {}, 256, {}),
    ("vgg11-bn", 10, 3, 32, {}, 512, {}),
    ("densenet121", 10, 3, 32, {}, 1024, {}),
    ("small-cnn", 10, 1, 8, {}, 64, {"width": 32}),
    ("small-cnn", 4, 3, 8, {"width": 16}, 32, {"width": 16}),
    ("mlp", 10, 1, 8, {"in_features": 64}, 128, {"hidden": [256, 128], "in_features": 64}),
    ("mlp", 3, 3, 8, {"in_features": 192, "hidden": [32, 16, 8]}, 8, {"hidden": [32, 16, 8], "in_features": 192}),
]


def _case_id(case) -> str:
    arch, k, c, _, kwargs, *_ = case
    return f"{arch}-k{k}-c{c}" + "".join(f"-{key}{value}" for key, value in kwargs.items())


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def built(request):
    arch, k, c, side, kwargs, *_ = request.param
    torch.manual_seed(0)
    net = build_network(arch, num_classes=k, in_channels=c, kwargs=kwargs).eval()
    return request.param, net, torch.rand(2, c, side, side)


def test_forward_gives_logits_and_the_head_sees_features_once(built):
    (arch, k, *_, m, _), net, x = built
    head_name = default_head(arch, net)
    assert head_name == BUILTINS[arch].head
    head = net.get_submodule(head_name)
    assert isinstance(head, nn.Linear) and head.in_features == m
    seen = []
    handle = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        with torch.no_grad():
            logits = net(x)
            assert logits.shape == (2, k)
            assert len(seen) == 1 and seen[0].shape == (2, m)
            assert torch.equal(head(seen[0]), logits)
    finally:
        handle.remove()


def test_state_dict_round_trips_and_is_detected(built, tmp_path):
    (arch, k, c, _, _, _, expected), net, _ = built
    path = tmp_path / "model.safetensors"
    save_file(net.state_dict(), str(path))
    state = load_file(str(path))

    detected, detected_kwargs = detect_arch(state)
    assert (detected, detected_kwargs) == (arch, expected)
    assert infer_num_classes(state, BUILTINS[arch].head) == k
    if arch != "mlp":
        assert infer_in_channels(state) == c

    fresh = build_network(detected, num_classes=k, in_channels=infer_in_channels(state), kwargs=detected_kwargs)
    load_state(fresh, state)
    loaded = fresh.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(loaded[key], value), key


@pytest.fixture(scope="module")
def small_state():
    return build_network("small-cnn", num_classes=10, in_channels=1).state_dict()


def test_wrong_shape_names_the_key_and_both_shapes(small_state):
    net = build_network("small-cnn", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError) as err:
        load_state(net, small_state)
    message = str(err.value)
    assert "conv1.weight: checkpoint (32, 1, 3, 3) vs model (32, 3, 3, 3)" in message
    assert "\n" not in message


def test_missing_and_unexpected_keys_are_named(small_state):
    state = dict(small_state)
    del state["bn2.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: bn2\.running_mean.*unexpected keys: extra\.weight"):
        load_state(build_network("small-cnn", num_classes=10, in_channels=1), state)


def test_many_missing_keys_are_truncated_to_three():
    net = build_network("small-cnn", num_classes=10, in_channels=1)
    with pytest.raises(CheckpointError, match=r"missing keys: conv1\.weight, bn1\.weight, bn1\.bias \(\+\d+ more\)"):
        load_state(net, {})


def test_detect_names_the_closest_candidate(small_state):
    state = {key.replace("fc.", "linear."): value for key, value in small_state.items()}
    with pytest.raises(CheckpointError) as err:
        detect_arch(state)
    message = str(err.value)
    assert "closest is small-cnn" in message and "fc.weight" in message and "linear.weight" in message
    assert "--arch" in message


def test_detect_hints_at_a_module_prefix_and_strip_prefix_removes_it(small_state):
    wrapped = {f"module.{key}": value for key, value in small_state.items()}
    with pytest.raises(CheckpointError, match="module."):
        detect_arch(wrapped)
    assert detect_arch(strip_prefix(wrapped)) == ("small-cnn", {"width": 32})
    partly = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert strip_prefix(partly) == partly


def test_infer_num_classes_without_the_head_key(small_state):
    with pytest.raises(CheckpointError, match="'head.weight'.*fc"):
        infer_num_classes(small_state, "head")


def test_infer_in_channels_picks_the_stem_whatever_the_key_order():
    conv = {"block1.0.conv1.weight": torch.zeros(16, 16, 3, 3), "conv1.weight": torch.zeros(16, 1, 3, 3)}
    assert infer_in_channels(conv) == 1
    vgg = {"features.10.weight": torch.zeros(8, 8, 3, 3), "features.4.weight": torch.zeros(8, 8, 3, 3),
           "features.0.weight": torch.zeros(8, 3, 3, 3)}
    assert infer_in_channels(vgg) == 3
    assert infer_in_channels({"fc.weight": torch.zeros(3, 5)}) == 1


def test_unknown_builtin_suggests_close_matches():
    with pytest.raises(SpecError, match=r"did you mean resnet18.*built-ins: resnet18, wrn28-4"):
        build_network("resnet-18", num_classes=10, in_channels=3)


def test_bad_kwargs_and_reserved_kwargs_are_spec_errors():
    with pytest.raises(SpecError, match="in_features"):
        build_network("mlp", num_classes=10, in_channels=1)
    with pytest.raises(SpecError, match="depth"):
        build_network("small-cnn", num_classes=10, in_channels=1, kwargs={"depth": 3})
    with pytest.raises(SpecError, match="num_classes"):
        build_network("small-cnn", num_classes=10, in_channels=1, kwargs={"num_classes": 3})


def test_torchvision_builds_with_num_classes():
    net = build_network("torchvision:resnet18", num_classes=10, in_channels=3).eval()
    assert default_head("torchvision:resnet18", net) == "fc"
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(SpecError, match="torchvision:resnet18"):
        build_network("torchvision:resnet-18", num_classes=10, in_channels=3)


def test_default_head_without_linear_layers():
    with pytest.raises(LayerError):
        default_head("pkg:Net", nn.Sequential(nn.Conv2d(1, 1, 1)))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``flatrob_user_archs`` whose callables record every call in ``CALLS``."""
    (tmp_path / "flatrob_user_archs.py").write_text(textwrap.dedent("""
        from torch import nn

        CALLS = []

        def make_net(**kwargs):
            CALLS.append("make_net")
            return nn.Linear(2, 2)

        class NotAModule:
            def __init__(self, **kwargs):
                CALLS.append("NotAModule")

        class Net(nn.Module):
            def __init__(self, num_classes, hidden=4):
                super().__init__()
                CALLS.append("Net")
                self.body = nn.Linear(3, hidden)
                self.out = nn.Linear(hidden, num_classes)

        class NoClasses(nn.Module):
            def __init__(self, width=2):
                super().__init__()
                self.out = nn.Linear(width, 5)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flatrob_user_archs", raising=False)
    yield "flatrob_user_archs"
    sys.modules.pop("flatrob_user_archs", None)


@pytest.mark.parametrize("thing", ["make_net", "NotAModule"])
def test_user_path_that_is_not_a_module_class_is_refused_uncalled(user_module, thing):
    with pytest.raises(SpecError, match="not an nn.Module subclass"):
        build_network(f"{user_module}:{thing}", num_classes=3, in_channels=1)
    assert sys.modules[user_module].CALLS == []


def test_user_class_gets_num_classes_only_if_it_accepts_it(user_module):
    net = build_network(f"{user_module}:Net", num_classes=3, in_channels=1, kwargs={"hidden": 6})
    assert net.out.out_features == 3 and net.body.out_features == 6
    assert default_head(f"{user_module}:Net", net) == "out"
    assert build_network(f"{user_module}:NoClasses", num_classes=3, in_channels=1).out.in_features == 2


def test_user_path_errors(user_module):
    with pytest.raises(SpecError, match="no attribute"):
        build_network(f"{user_module}:Missing", num_classes=3, in_channels=1)
    with pytest.raises(SpecError, match="cannot import"):
        build_network("flatrob_no_such_module:Net", num_classes=3, in_channels=1)
    with pytest.raises(SpecError, match="bogus"):
        build_network(f"{user_module}:Net", num_classes=3, in_channels=1, kwargs={"bogus": 1})
    assert sys.modules[user_module].CALLS == []

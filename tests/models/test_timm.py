"""timm models (random weights) from a hub folder, a fake hub cache and --arch timm:NAME: the head split
reproduces timm's own logits, the data config fills the spec, and sharpness/attack run."""

from __future__ import annotations

import json
import math
import os

import pytest
import safetensors.torch
import timm
import torch
from timm.models import save_for_hf

from flatcli import api
from flatcli.errors import SpecError
from flatcli.models.head import HeadSplit
from flatcli.models.registry import build_network, default_head
from tests.conftest import assert_one_error, invoke

#: Small enough to run in a second: 32x32 inputs (the ViT built for them, as timm allows with img_size=).
MODELS = {"resnet18": {}, "vit_tiny_patch16_224": {"img_size": 32}, "convnext_atto": {}}
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model, saved by timm as the hub ships it (config.json + model.safetensors), and a fake hub cache
    holding the same files laid out as huggingface_hub lays them: models--org--NAME/refs/main naming the
    commit, snapshots/<sha>/FILE a relative link to blobs/<id> (here a hard link to the saved file)."""
    root = tmp_path_factory.mktemp("timm")
    cache = root / "cache"
    out = {}
    for name, kwargs in MODELS.items():
        torch.manual_seed(0)
        net = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
        folder = root / name
        save_for_hf(net, folder, safe_serialization=True)
        repo = cache / f"models--org--{name}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(SHA)
        (repo / "snapshots" / SHA).mkdir(parents=True)
        (repo / "blobs").mkdir()
        for file in ("config.json", "model.safetensors"):
            os.link(folder / file, repo / "blobs" / f"{name}-{file}")
            os.symlink(f"../../blobs/{name}-{file}", repo / "snapshots" / SHA / file)
        out[name] = (net, folder)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    safetensors.torch.save_file({"x": x, "y": torch.arange(6) % 10}, root / "data.safetensors")
    return {"models": out, "cache": cache, "data": root / "data.safetensors"}


@pytest.fixture
def offline_cache(saved, monkeypatch):
    """huggingface_hub pointed at the fake cache, offline (nothing may be downloaded)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(saved["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return saved["cache"]


def _timm_logits(net, x, cfg):
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return net((x - mean) / std)


@pytest.mark.parametrize("name", MODELS)
def test_hub_folder_and_hub_cache_give_timms_logits(saved, offline_cache, name):
    net, folder = saved["models"][name]
    cfg = net.pretrained_cfg
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for ref in (str(folder), f"hf-hub:org/{name}"):
        loaded = api.load(ref, device="cpu")
        assert loaded.spec.arch == f"timm:{name}" and loaded.arch_source == "config"
        assert loaded.layer == cfg["classifier"] and loaded.num_classes == 10
        assert loaded.spec.mean == pytest.approx(cfg["mean"]) and loaded.spec.std == pytest.approx(cfg["std"])
        # the pretrained config's sizes describe its pretrained weights: for image files only, and said so
        pre = loaded.image_defaults
        assert loaded.spec.crop is None and loaded.sources["crop"] == loaded.sources["mean"] == "hub config"
        assert any("from the hub config" in note for note in loaded.notes)
        if name.startswith("vit"):  # a fixed-size model: its size as built (img_size=32), not its registry's 224
            assert loaded.spec.input_shape == (3, 32, 32) and (pre["crop"], pre["resize"]) == (32, 35)
        else:  # a ResNet or ConvNeXt runs on the data's own size
            assert loaded.spec.input_shape is None and pre["crop"] == cfg["input_size"][-1]
        assert pre["resize"] == math.floor(pre["crop"] / cfg["crop_pct"])
        assert pre["interpolation"] == cfg["interpolation"]
        with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
            split.verify(x)
            logits, phi = split(x)
        assert phi.shape == (4, loaded.head.in_features)
        torch.testing.assert_close(logits, _timm_logits(net, x, cfg), atol=1e-5, rtol=1e-5)
    y = torch.arange(4)
    sharp = api.sharpness(loaded, (x, y), device="cpu")
    assert math.isfinite(sharp.summary["relative_sharpness"]["mean"]) and len(sharp.samples) == 4
    attack = api.attack(loaded, (x[:2], y[:2]), steps=1, device="cpu")
    assert attack.summary["n"] == 2 and len(attack.summary["mean_loss_by_step"]) == 2


def test_sharpness_and_attack_on_a_hub_model_are_one_command_each(saved, offline_cache):
    data = f"tensors:{saved['data']}"
    res = invoke("sharpness", "hf-hub:org/resnet18", "--data", data, "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["config"]["arch"] == "timm:resnet18" and math.isfinite(doc["summary"]["relative_sharpness"]["mean"])
    res = invoke("attack", saved["models"]["convnext_atto"][1], "--data", data, "--steps", "1", "--limit", "2",
                 "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["summary"]["n"] == 2


def test_a_missing_hub_file_is_one_error(saved, offline_cache, tmp_path):
    (offline_cache / "models--org--resnet18" / "snapshots" / SHA / "model.safetensors").rename(tmp_path / "away")
    try:
        assert_one_error(invoke("sharpness", "hf-hub:org/resnet18"), "model.safetensors", "not in the hub cache",
                         "HF_HUB_OFFLINE")
    finally:
        (tmp_path / "away").rename(offline_cache / "models--org--resnet18" / "snapshots" / SHA / "model.safetensors")
    assert_one_error(invoke("sharpness", "hf-hub:org/nothing"), "config.json", "not in the hub cache")
    assert_one_error(invoke("sharpness", "hf-hub:org/resnet18@v2"), "config.json", "not in the hub cache")
    assert api.load(f"hf-hub:org/resnet18@{SHA}", device="cpu").spec.arch == "timm:resnet18"
    assert_one_error(invoke("sharpness", "hf-hub:org//x"), "hf-hub:ORG/NAME")


def test_an_output_may_not_replace_a_file_of_the_hub_cache(saved, offline_cache):
    weights = offline_cache / "models--org--convnext_atto" / "snapshots" / SHA / "model.safetensors"
    before = weights.read_bytes()
    res = invoke("sharpness", "hf-hub:org/convnext_atto", "--data", f"tensors:{saved['data']}", "-o", weights)
    assert_one_error(res, "the checkpoint")
    config = weights.parent / "config.json"
    assert_one_error(invoke("sharpness", "hf-hub:org/convnext_atto", "--data", f"tensors:{saved['data']}", "-o",
                            config), "config.json")
    assert weights.read_bytes() == before


def test_options_override_the_hub_config(saved):
    folder = str(saved["models"]["resnet18"][1])
    loaded = api.load(folder, mean=[0.5], std=[0.25], device="cpu")
    assert loaded.spec.mean == (0.5,) * 3 and loaded.spec.std == (0.25,) * 3


def test_arch_timm_name_builds_a_plain_state_dict_and_fills_the_data_config(saved, tmp_path):
    net = saved["models"]["resnet18"][0]
    path = tmp_path / "r18.safetensors"
    safetensors.torch.save_file(net.state_dict(), path)
    loaded = api.load(str(path), arch="timm:resnet18", device="cpu")
    # the architecture's data config describes timm's pretrained weights, not this checkpoint: it sizes files of
    # any size (folder:, hf:) but not a data set with its own size (the spec keys stay unset)
    assert loaded.layer == "fc" and loaded.image_defaults == {"resize": 235, "crop": 224, "interpolation": "bicubic"}
    assert (loaded.spec.resize, loaded.spec.crop) == (None, None)
    assert loaded.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    # an embedded spec may name timm: (a registry entry, no code to import)
    embedded = tmp_path / "embedded.safetensors"
    safetensors.torch.save_file(net.state_dict(), embedded, metadata={"flatrob.spec": "arch: timm:resnet18\n"})
    assert api.load(str(embedded), device="cpu").arch_source == "spec"


@pytest.mark.parametrize("spec, fragments", [
    ("arch: timm:resnet_18\n", ["timm has no model", "timm:resnet18"]),
    ("arch: timm:resnet18\narch_kwargs: {pretrained: true}\n", ["pretrained", "never downloads"]),
    ("arch: timm:resnet18\narch_kwargs: {checkpoint_path: /etc/passwd}\n", ["checkpoint_path"]),
])
def test_timm_refusals(saved, tmp_path, spec, fragments):
    (tmp_path / "spec.yaml").write_text(spec)
    assert_one_error(invoke("sharpness", saved["models"]["resnet18"][1] / "model.safetensors", "--spec",
                            tmp_path / "spec.yaml"), *fragments)


def test_a_model_with_two_heads_is_refused():
    net = build_network("timm:deit_tiny_distilled_patch16_224", num_classes=10, in_channels=3,
                        kwargs={"img_size": 32})
    with pytest.raises(SpecError, match="2 heads"):
        default_head("timm:deit_tiny_distilled_patch16_224", net)


def test_a_timm_class_is_buildable_from_yaml(tmp_path):
    import timm.models.resnet as tr

    torch.manual_seed(0)
    net = tr.ResNet(block=tr.BasicBlock, layers=[1, 1, 1, 1], num_classes=10, in_chans=1).eval()
    path = tmp_path / "res.safetensors"
    safetensors.torch.save_file(net.state_dict(), path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("arch: timm.models.resnet:ResNet\n"
                    "arch_kwargs: {block: 'timm.models.resnet:BasicBlock', layers: [1, 1, 1, 1]}\nlayer: fc\n")
    loaded = api.load(str(path), spec=str(spec), device="cpu")
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x))
    spec.write_text("arch: timm.models.resnet:ResNet\narch_kwargs: {block: 'os:getcwd', layers: [1, 1, 1, 1]}\n"
                    "layer: fc\n")
    assert_one_error(invoke("sharpness", path, "--spec", spec), "not a class")


def test_kwargs_naming_classes_must_come_from_the_user(tmp_path):
    import sys

    import timm.models.resnet as tr

    net = tr.ResNet(block=tr.BasicBlock, layers=[1, 1, 1, 1], num_classes=10, in_chans=1)
    path = tmp_path / "res.safetensors"
    embedded = "arch_kwargs: {block: 'flatrob_never_imported:Block', layers: [1, 1, 1, 1]}\nlayer: fc\n"
    safetensors.torch.save_file(net.state_dict(), path, metadata={"flatrob.spec": embedded})
    res = invoke("sharpness", path, "--arch", "timm.models.resnet:ResNet")
    assert_one_error(res, "arch_kwargs naming code", "block: flatrob_never_imported:Block", "--trust-embedded-code")
    assert "flatrob_never_imported" not in sys.modules

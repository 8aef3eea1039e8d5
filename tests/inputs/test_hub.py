"""Hub folders and their config.json: what fills the spec, what is refused; data configs as spec defaults."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from flatcli.errors import CheckpointError
from flatcli.inputs.hub import read_config
from flatcli.inputs.preprocessing import from_timm
from tests.conftest import assert_one_error, invoke


def test_timms_data_config_becomes_resize_crop_and_interpolation():
    cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3,
           "std": (0.25,) * 3}
    assert from_timm(cfg) == {"crop": 224, "resize": 256, "interpolation": "bicubic", "mean": (0.5,) * 3,
                              "std": (0.25,) * 3}
    assert from_timm(cfg, fixed_input_size=True)["input_shape"] == (3, 224, 224)
    assert from_timm({"input_size": (3, 224, 160), "interpolation": "random"}) == {}  # nothing flatrob can use


def _folder(tmp_path, config: dict, weights: bool = True):
    folder = tmp_path / "hub"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        safetensors.torch.save_file(net.state_dict(), folder / "model.safetensors")
    return folder


def test_a_config_fills_arch_classes_kwargs_and_normalisation(tmp_path):
    folder = _folder(tmp_path, {"architecture": "resnet18", "num_classes": 7, "model_args": {"num_classes": 7,
                                "in_chans": 3, "global_pool": "avg"},
                                "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1], "crop_pct": 1.0,
                                                   "input_size": [3, 64, 64]}})
    assert read_config(folder / "config.json") == {
        "arch": "timm:resnet18", "num_classes": 7, "arch_kwargs": {"global_pool": "avg"}, "crop": 64, "resize": 64,
        "mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)}


@pytest.mark.parametrize("config, fragment", [
    ({"architecture": "os:system"}, "timm model name"),
    ({"architecture": "flatcli.models.builtins:small"}, "timm model name"),
    ({"architecture": "resnet18", "num_classes": "10"}, "positive integer"),
    ({"architecture": "resnet18", "model_args": [1]}, "model_args"),
])
def test_a_config_never_names_code_and_bad_values_are_one_error(tmp_path, config, fragment):
    folder = _folder(tmp_path, config)
    with pytest.raises(CheckpointError, match=fragment):
        read_config(folder / "config.json")
    assert_one_error(invoke("sharpness", folder), fragment)


def test_a_hub_folder_without_safetensors_weights_names_the_pickle(tmp_path):
    folder = _folder(tmp_path, {"architecture": "resnet18"}, weights=False)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    assert_one_error(invoke("sharpness", folder), "no model.safetensors", "flatrob convert")
    (folder / "config.json").write_text("{not json")
    safetensors.torch.save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    assert_one_error(invoke("sharpness", folder), "config.json", "not valid JSON")


def test_a_torchvision_builder_takes_its_weights_transforms_as_defaults(tmp_path):
    import torchvision

    from flatcli import api

    path = tmp_path / "tv.safetensors"
    safetensors.torch.save_file(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), path)
    loaded = api.load(str(path), arch="torchvision:mobilenet_v3_small", device="cpu")
    assert loaded.image_defaults == {"resize": 256, "crop": 224, "interpolation": "bilinear"}
    assert loaded.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    # those sizes are for files of any size; a data set with its own size is not resized to 224
    from PIL import Image

    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        Image.new("RGB", (300, 240), (40 * c, 90, 200)).save(tmp_path / "imgs" / f"c{c}" / "a.png")
    folder = api.sharpness(loaded, f"folder:{tmp_path / 'imgs'}", device="cpu")
    assert folder.config["preprocess"]["crop"] == [224, 224] and folder.config["preprocess"]["resize"] == 256
    x = torch.rand(3, 3, 32, 32)
    safetensors.torch.save_file({"x": x, "y": torch.arange(3)}, tmp_path / "x.safetensors")
    tensors = api.sharpness(loaded, f"tensors:{tmp_path / 'x.safetensors'}", device="cpu")
    assert tensors.config["preprocess"] is None and tensors.summary["n"] == 3
    spec = tmp_path / "spec.yaml"
    spec.write_text("resize: 40\ncrop: 32\nmean: [0, 0, 0]\nstd: [1, 1, 1]\n")
    loaded = api.load(str(path), arch="torchvision:mobilenet_v3_small", spec=str(spec), device="cpu")
    assert (loaded.spec.resize, loaded.spec.crop, loaded.spec.mean) == (40, 32, (0.0, 0.0, 0.0))

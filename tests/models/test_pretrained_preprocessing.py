"""A pretrained data config describes pretrained weights: used only where the user set nothing, and said so;
``input_shape`` sets the crop; a crop alone is not upscaled past; options ``num_classes``/``input_shape`` apply."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from flatcli.errors import CheckpointError, OptionError
from flatcli.inputs.data.images import Preprocess, resolve_preprocessing
from flatcli.models.loading import load_model
from flatcli.options import ModelOptions
from tests.conftest import EXAMPLE

IMAGENET_MEAN = (0.485, 0.456, 0.406)


@pytest.fixture(scope="module")
def tv_resnet(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "tv.safetensors"
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(path))
    return str(path)


def test_the_architectures_config_is_used_with_a_note_and_its_source(tv_resnet):
    loaded = load_model(tv_resnet, overrides={"arch": "torchvision:resnet18"})
    assert loaded.spec.mean == pytest.approx(IMAGENET_MEAN)
    assert loaded.image_defaults == {"resize": 256, "crop": 224, "interpolation": "bilinear"}
    assert loaded.sources == {k: "torchvision:resnet18 data config" for k in ("mean", "std", "resize", "crop",
                                                                             "interpolation")}
    assert loaded.describe()["preprocessing_sources"] == loaded.sources
    assert len(loaded.notes) == 2 and all("describes pretrained weights" in note for note in loaded.notes)


def test_input_shape_sets_the_crop_and_mean_std_options_win(tv_resnet):
    overrides = {"arch": "torchvision:resnet18", "input_shape": (3.0, 32.0, 32.0), "mean": (0.5,), "std": (0.25,)}
    loaded = load_model(tv_resnet, overrides=overrides)
    assert loaded.spec.input_shape == (3, 32, 32) and loaded.spec.mean == (0.5, 0.5, 0.5)
    assert "resize" not in loaded.image_defaults and "crop" not in loaded.image_defaults
    assert loaded.sources["input_shape"] == loaded.sources["mean"] == "option"
    assert not any("normalisation" in note for note in loaded.notes)
    pre = resolve_preprocessing({}, loaded.spec, loaded.image_defaults)
    assert pre == Preprocess(crop=(32, 32), resize=None, interpolation="bilinear")


def test_a_crop_alone_takes_no_pretrained_resize(tv_resnet):
    loaded = load_model(tv_resnet, overrides={"arch": "torchvision:resnet18"})
    pretrained = loaded.image_defaults
    assert resolve_preprocessing({}, loaded.spec, pretrained) == Preprocess(crop=(224, 224), resize=256)
    assert resolve_preprocessing({"crop": 32}, loaded.spec, pretrained) == Preprocess(crop=(32, 32))
    assert resolve_preprocessing({"resize": 36}, loaded.spec, pretrained) == Preprocess(crop=(36, 36), resize=36)
    assert resolve_preprocessing({"crop": 32, "resize": 40, "interpolation": "nearest"}, loaded.spec, pretrained) == \
        Preprocess(crop=(32, 32), resize=40, interpolation="nearest")
    assert resolve_preprocessing({}, loaded.spec, {}) is None  # a fixed-size data set: its own size


def test_num_classes_and_input_shape_options(tmp_path):
    options = ModelOptions(num_classes=10, input_shape="1,8,8")
    loaded = load_model(EXAMPLE, overrides={"num_classes": options.num_classes, "input_shape": options.input_shape})
    assert loaded.num_classes == 10 and loaded.spec.input_shape == (1, 8, 8) and loaded.sources["input_shape"] == "option"
    with pytest.raises(CheckpointError, match="fc.weight: checkpoint"):
        load_model(EXAMPLE, overrides={"num_classes": 5})
    with pytest.raises(OptionError, match=r"input_shape= must be three whole numbers C,H,W, got 1.5,8.0,8.0"):
        load_model(EXAMPLE, overrides={"input_shape": (1.5, 8.0, 8.0)})
    with pytest.raises(OptionError, match="num_classes= must be at least 1"):
        ModelOptions(num_classes=0)

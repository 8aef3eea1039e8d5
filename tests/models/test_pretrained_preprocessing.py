"""A pretrained data config describes pretrained weights: used only where the user set nothing, and said so;
``input_shape`` sets the crop; a crop alone is not upscaled past; options ``num_classes``/``input_shape`` apply."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from flatcli import api
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
    assert len(loaded.notes) == 1 and "normalisation" in loaded.notes[0] and "pretrained weights" in loaded.notes[0]


def test_the_pretrained_sizes_are_noted_only_when_image_files_are_read_with_them(tv_resnet, tmp_path):
    """The note on the config's resize/crop comes with data read through them (folder:), not with data of exact
    pixels (tensors:) nor when the options set the sizes."""
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "imgs" / "test" / label).mkdir(parents=True)
        Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "imgs" / "test" / label / "0.png")
    save_file({"x": torch.rand(2, 3, 32, 32), "y": torch.tensor([0, 1])}, str(tmp_path / "t.safetensors"))

    def notes(data, **reading):
        loaded = load_model(tv_resnet, overrides={"arch": "torchvision:resnet18"})
        api._data(data, loaded, "test", None, reading=reading)
        return [n for n in loaded.notes if "image files are read with" in n]

    (sizes,) = notes(f"folder:{tmp_path / 'imgs'}")
    assert "resize 256, crop 224" in sizes and "torchvision:resnet18 data config" in sizes
    assert notes(f"tensors:{tmp_path / 't.safetensors'}") == []
    assert notes(f"folder:{tmp_path / 'imgs'}", resize=36, crop=32) == []


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

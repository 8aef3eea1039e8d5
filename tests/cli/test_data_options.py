"""--resize/--crop/--interpolation and --image-column/--label-column from the command line, and data files as inputs."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import EXAMPLE, assert_one_error


def _folder(root, sizes):
    from PIL import Image

    rng = np.random.RandomState(0)
    for i, (h, w) in enumerate(sizes):
        path = root / "test" / str(i % 3) / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_mixed_size_folder_runs_at_the_models_size(cli, tmp_path):
    _folder(tmp_path, [(30, 20), (16, 40), (9, 9), (64, 48)])  # RGB JPEGs of four sizes, an 8x8 greyscale model
    res = cli("sharpness", EXAMPLE, "--data", f"folder:{tmp_path}", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["n"] == 4
    assert doc["config"]["preprocess"] == {"resize": "cover", "crop": [8, 8], "interpolation": "bilinear"}
    res = cli("sharpness", EXAMPLE, "--data", f"folder:{tmp_path}", "--resize", "12", "--crop", "8",
              "--interpolation", "bicubic", "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["config"]["preprocess"] == {"resize": 12, "crop": [8, 8], "interpolation": "bicubic"}
    assert json.loads(cli("sharpness", EXAMPLE, "--limit", "2", "--format", "json").stdout)["config"]["preprocess"] is None


def test_data_option_refusals(cli, tmp_path):
    _folder(tmp_path, [(8, 8)])
    assert_one_error(cli("sharpness", EXAMPLE, "--data", f"folder:{tmp_path}", "--crop", "16"),
                     "(3, 16, 16) (C, H, W) but the model expects (1, 8, 8)", "crop to the model's 8x8")
    assert_one_error(cli("sharpness", EXAMPLE, "--data", f"folder:{tmp_path}", "--resize", "4"), "smaller than the crop")
    assert_one_error(cli("sharpness", EXAMPLE, "--image-column", "img"), "names a column of an hf: data set")
    assert_one_error(cli("bound", "--kappa", "1", "--lipschitz", "1", "--r", "1", "--classes", "2", "--features", "2",
                         "--epsilon", "0.1", "--resize", "8"), "--resize")
    image = tmp_path / "test" / "0" / "0.jpg"
    assert_one_error(cli("sharpness", EXAMPLE, "--data", f"folder:{tmp_path}", "-o", str(image)),
                     "inside the --data directory")
    assert image.stat().st_size > 0
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 8, 8), np.uint8), y=np.zeros(2, int))
    assert_one_error(cli("sharpness", EXAMPLE, "--data", f"npz:{tmp_path / 'd.npz'}", "-o", str(tmp_path / "d.npz")),
                     "is the --data file")
    res = cli("sharpness", EXAMPLE, "--data", f"npz:{tmp_path / 'd.npz'}", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["n"] == 2


def test_hf_columns_from_the_command_line(cli, tmp_path):
    import io

    import datasets
    from PIL import Image

    def png(seed):
        buffer = io.BytesIO()
        Image.fromarray(np.random.RandomState(seed).randint(0, 256, (8, 8), dtype=np.uint8)).save(buffer, "PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = datasets.Features({"a": datasets.Image(), "b": datasets.Image(), "digit": datasets.Value("int64")})
    datasets.Dataset.from_dict({"a": [png(0), png(1)], "b": [png(2), png(3)], "digit": [3, 4]},
                               features=features).save_to_disk(tmp_path / "ds")
    assert_one_error(cli("sharpness", EXAMPLE, "--data", f"hf:{tmp_path / 'ds'}"), "several image columns (a, b)",
                     "--image-column")
    res = cli("sharpness", EXAMPLE, "--data", f"hf:{tmp_path / 'ds'}", "--image-column", "b", "--label-column", "digit",
              "--format", "json", "--per-sample")
    assert res.exit_code == 0, res.stderr
    assert [row["label"] for row in json.loads(res.stdout)["samples"]] == [3, 4]


def test_api_keywords_mirror_the_options(tmp_path):
    import pytest
    import torch

    from flatcli import api
    from flatcli.errors import UsageError

    _folder(tmp_path, [(20, 12), (9, 30)])
    result = api.sharpness(EXAMPLE, f"folder:{tmp_path}", resize=10, crop=8, interpolation="nearest", device="cpu")
    assert result.config["preprocess"] == {"resize": 10, "crop": [8, 8], "interpolation": "nearest"}
    with pytest.raises(UsageError, match="crop= apply to a --data string"):
        api.sharpness(EXAMPLE, (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64)), crop=8, device="cpu")

"""Bad input to `sharpness`/`inspect`: exit 2, one `Error:` line, no traceback, no output file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from flatcli.inputs.checkpoint import read
from tests.conftest import EXAMPLE, assert_one_error


@pytest.fixture
def files(tmp_path):
    ck = read(EXAMPLE)
    state = ck.state_dict
    f = {}
    f["garbage"] = tmp_path / "garbage.safetensors"
    f["garbage"].write_bytes(b"this is not a safetensors file at all")
    f["pickle"] = tmp_path / "model.pt"
    torch.save(state, f["pickle"])
    f["nan"] = tmp_path / "nan.safetensors"
    save_file({**state, "fc.weight": torch.full_like(state["fc.weight"], float("nan"))}, str(f["nan"]))
    f["missing_key"] = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if k != "conv2.weight"}, str(f["missing_key"]),
              metadata={"flatrob.spec": ck.metadata["flatrob.spec"]})
    f["bad_shape"] = tmp_path / "shape.safetensors"
    save_file({**state, "fc.weight": torch.zeros(10, 31)}, str(f["bad_shape"]),
              metadata={"flatrob.spec": ck.metadata["flatrob.spec"]})
    f["unknown_arch"] = tmp_path / "unknown.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(f["unknown_arch"]))
    f["bad_yaml_meta"] = tmp_path / "badmeta.safetensors"
    save_file(state, str(f["bad_yaml_meta"]), metadata={"flatrob.spec": "arch: [unclosed"})
    f["spec_typo"] = tmp_path / "typo.yaml"
    f["spec_typo"].write_text("arch: small-cnn\nlayr: fc\n")
    f["spec_not_module"] = tmp_path / "notmodule.yaml"
    f["spec_not_module"].write_text("arch: os:system\n")
    f["no_samples"] = tmp_path / "empty.safetensors"
    save_file({"x": torch.zeros(0, 1, 8, 8), "y": torch.zeros(0, dtype=torch.int64)}, str(f["no_samples"]))
    f["wrong_image_shape"] = tmp_path / "shape3.safetensors"
    save_file({"x": torch.zeros(4, 3, 32, 32), "y": torch.zeros(4, dtype=torch.int64)}, str(f["wrong_image_shape"]))
    f["label_range"] = tmp_path / "labels.safetensors"
    save_file({"x": torch.zeros(4, 1, 8, 8), "y": torch.full((4,), 12, dtype=torch.int64)}, str(f["label_range"]))
    f["out_dir"] = tmp_path / "out"
    f["out_dir"].mkdir()
    return f


CASES = {
    # case: (args, fragment expected in the message)
    "missing file": (["sharpness", "nope.safetensors"], "does not exist"),
    "directory": (["sharpness", "{out_dir}"], "directory"),
    "not safetensors": (["sharpness", "{garbage}"], "not a safetensors"),
    "pickle refused": (["sharpness", "{pickle}"], "pickle"),
    "nan weights": (["sharpness", "{nan}"], "nan"),
    "missing keys": (["sharpness", "{missing_key}"], "conv2.weight"),
    "shape mismatch": (["sharpness", "{bad_shape}"], "fc.weight"),
    "unknown architecture": (["sharpness", "{unknown_arch}"], "--arch"),
    "metadata not yaml": (["sharpness", "{bad_yaml_meta}"], "yaml"),
    "spec typo": (["sharpness", EXAMPLE, "--spec", "{spec_typo}"], "layer"),
    "spec class not a module": (["sharpness", EXAMPLE, "--spec", "{spec_not_module}"], "nn.Module"),
    "unknown layer": (["sharpness", EXAMPLE, "--layer", "fcc"], "fc"),
    "layer not linear": (["sharpness", EXAMPLE, "--layer", "conv1"], "not nn.Linear"),
    "unknown arch option": (["sharpness", EXAMPLE, "--arch", "resnet19"], "resnet18"),
    "wrong format": (["sharpness", EXAMPLE, "--format", "xml"], "xml"),
    "negative limit": (["sharpness", EXAMPLE, "--limit", "-3"], "--limit"),
    "zero batch size": (["sharpness", EXAMPLE, "--batch-size", "0"], "--batch-size"),
    "empty data set": (["sharpness", EXAMPLE, "--data", "tensors:{no_samples}"], "no samples"),
    "limit zero is empty": (["sharpness", EXAMPLE, "--limit", "0"], "no samples"),
    "unknown data source": (["sharpness", EXAMPLE, "--data", "imagenet:/x"], "cifar10"),
    "missing cifar": (["sharpness", EXAMPLE, "--data", "cifar10:/nonexistent"], "cifar-10-batches-py"),
    "wrong image shape": (["sharpness", EXAMPLE, "--data", "tensors:{wrong_image_shape}"], "shape"),
    "label out of range": (["sharpness", EXAMPLE, "--data", "tensors:{label_range}"], "label"),
    "unknown option": (["sharpness", EXAMPLE, "--frobnicate"], "frobnicate"),
    "bad device": (["sharpness", EXAMPLE, "--device", "tpu"], "device"),
    "cuda absent": (["sharpness", EXAMPLE, "--device", "cuda"], "cuda"),
    "one hutchinson probe": (["sharpness", EXAMPLE, "--hutchinson", "1"], "--hutchinson"),
    "negative scale": (["sharpness", EXAMPLE, "--scale", "-1"], "--scale"),
    "hutchinson layer without weight": (["sharpness", EXAMPLE, "--layers", "relu"], "weight"),
    "unknown earlier layer": (["sharpness", EXAMPLE, "--layers", "conv9"], "conv"),
    "unknown layer method": (["sharpness", EXAMPLE, "--layers", "conv3", "--layer-method", "lanczos"], "lanczos"),
    "one fisher draw": (["sharpness", EXAMPLE, "--layers", "conv3", "--layer-method", "fisher-mc", "--fisher-samples",
                         "1"], "--fisher-samples"),
    "attack one fisher draw": (["attack", EXAMPLE, "--layers", "conv3", "--fisher-samples", "1"], "--fisher-samples"),
    "attack one hutchinson probe": (["attack", EXAMPLE, "--layers", "conv3", "--hutchinson", "1"], "--hutchinson"),
    "attack layer without weight": (["attack", EXAMPLE, "--layers", "relu"], "weight"),
    "unknown example": (["inspect", "example:nope"], "digits-cnn"),
    "output in missing directory": (["sharpness", EXAMPLE, "--format", "json", "--output", "{out_dir}/no/x.json"], "no"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(cli, files, case):
    if case == "cuda absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, fragment = CASES[case]
    fmt = {k: str(v) for k, v in files.items()}
    args = [a.format(**fmt) for a in args]
    out = files["out_dir"] / "result.json"
    res = cli(*args, "--output", str(out)) if "--output" not in args and case not in ("wrong format",) and args[0] == "sharpness" else cli(*args)
    assert_one_error(res, fragment)
    assert list(files["out_dir"].iterdir()) == []  # no output file, not even a temporary one

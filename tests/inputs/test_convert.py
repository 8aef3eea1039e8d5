"""`flatrob convert`: pickles become safetensors through torch.load(weights_only=True); nothing is executed."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
import torch

from flatcli.errors import CheckpointError
from flatcli.inputs.checkpoint import read
from flatcli.inputs.convert import convert_pickle
from tests.conftest import EXAMPLE, assert_one_error, invoke


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture
def state():
    return read(EXAMPLE).state_dict


def test_training_checkpoint_converts_and_loads_like_the_original(tmp_path, state):
    src, dst = tmp_path / "ck.pth", tmp_path / "ck.safetensors"
    torch.save({"epoch": 3, "state_dict": OrderedDict(state), "optimizer": {"lr": 0.1}}, src)
    spec = tmp_path / "spec.yaml"
    spec.write_text(read(EXAMPLE).metadata["flatrob.spec"])
    res = invoke("convert", src, dst, "--spec", spec, "--format", "json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)["summary"]
    assert summary["key"] == "state_dict" and summary["tensors"] == len(state) and summary["embedded_spec"]
    converted = read(str(dst))
    assert converted.state_dict.keys() == state.keys()
    assert all(torch.equal(converted.state_dict[k], state[k]) for k in state)
    a = invoke("sharpness", EXAMPLE, "--limit", "20", "--format", "jsonl").stdout
    b = invoke("sharpness", dst, "--limit", "20", "--format", "jsonl").stdout
    assert a == b and a


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(2), "x": Evil()}, tmp_path / "evil.pt")
    res = invoke("convert", tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert_one_error(res, "nothing in it was executed", "system")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # no PWNED, no output


@pytest.mark.parametrize(
    "content, args, fragments",
    [
        ({"epoch": 3, "optimizer": {"lr": 0.1}}, [], ["no state dict", "--key"]),
        ({"a": {"w": torch.zeros(1)}, "b": {"w": torch.zeros(1)}}, ["--key", "c"], ["no entry 'c'"]),
        ({"state_dict": {"w": torch.zeros(1)}, "epoch": 1}, ["--key", "epoch"], ["not a mapping"]),
        ([torch.zeros(1)], [], ["list", "state_dict()"]),
        ({"w": torch.full((2,), float("nan"))}, [], ["nan"]),
        ({"w": torch.zeros(2, dtype=torch.complex64)}, [], ["complex64"]),
    ],
)
def test_files_that_hold_no_usable_state_dict_are_one_error(tmp_path, content, args, fragments):
    torch.save(content, tmp_path / "in.pt")
    res = invoke("convert", tmp_path / "in.pt", tmp_path / "out.safetensors", *args)
    assert_one_error(res, *fragments)
    assert not (tmp_path / "out.safetensors").exists()


def test_refusals_about_the_files(tmp_path, state):
    torch.save(state, tmp_path / "in.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04garbage")
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    assert_one_error(invoke("convert", tmp_path / "missing.pt", tmp_path / "o.safetensors"), "does not exist")
    assert_one_error(invoke("convert", tmp_path / "garbage.pt", tmp_path / "o.safetensors"), "not a readable pytorch file")
    assert_one_error(invoke("convert", tmp_path / "in.pt", tmp_path / "o.pt"), ".safetensors")
    assert_one_error(invoke("convert", tmp_path / "in.pt", tmp_path / "exists.safetensors"), "--force")
    assert_one_error(invoke("convert", tmp_path / "in.pt", tmp_path / "no" / "o.safetensors"), "does not exist")
    (tmp_path / "bomb.yaml").write_text("a: &a [1]\nb: *a\n")
    assert_one_error(invoke("convert", tmp_path / "in.pt", tmp_path / "o.safetensors", "--spec", tmp_path / "bomb.yaml"),
                     "alias")
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep me"
    assert not (tmp_path / "o.safetensors").exists()
    res = invoke("convert", tmp_path / "in.pt", tmp_path / "exists.safetensors", "--force", "--format", "json")
    assert res.exit_code == 0 and read(str(tmp_path / "exists.safetensors")).state_dict.keys() == state.keys()


def test_the_pickle_refusal_names_a_command_that_exists(tmp_path, state):
    torch.save(state, tmp_path / "model.pt")
    res = invoke("sharpness", tmp_path / "model.pt")
    assert_one_error(res, "flatrob convert")
    assert invoke("convert", "--help").exit_code == 0


# Training checkpoints (issue 14): Lightning, torch.compile, AveragedModel, EMA, numpy scalars, Namespace.

def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def _convert(tmp_path, content, *args):
    src, dst = tmp_path / "train.ckpt", tmp_path / "out.safetensors"
    torch.save(content, src)
    res = invoke("convert", src, dst, "--format", "json", "--force", *args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)["summary"], read(str(dst)).state_dict, res.stderr


def test_a_lightning_checkpoint_keeps_the_model_and_its_harmless_extras_load(tmp_path):
    import argparse

    import numpy as np

    net = _net()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["criterion.weight"] = torch.ones(10)  # a LightningModule's loss, not the network
    content = {"epoch": np.int64(3), "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
               "hyper_parameters": {"args": argparse.Namespace(lr=0.1, arch="mlp")}, "best": np.float64(0.91),
               "optimizer_states": [{"state": {}, "param_groups": [{"lr": np.float32(0.1)}]}]}
    summary, converted, _ = _convert(tmp_path, content)
    assert summary["key"] == "state_dict" and summary["stripped"] == ["model."]
    assert summary["dropped"] == ["criterion.weight"]
    assert converted.keys() == net.state_dict().keys()


def test_torch_compile_and_dataparallel_prefixes_are_stripped(tmp_path):
    net = _net()
    compiled = torch.compile(net)  # its state dict keys start with _orig_mod.
    wrapped = {f"module.{k}": v for k, v in compiled.state_dict().items()}
    summary, converted, _ = _convert(tmp_path, {"model": wrapped})
    assert summary["stripped"] == ["module.", "_orig_mod."] and converted.keys() == net.state_dict().keys()


def test_an_averaged_model_drops_n_averaged(tmp_path):
    net = _net()
    swa = torch.optim.swa_utils.AveragedModel(net)
    assert "n_averaged" in swa.state_dict()
    summary, converted, _ = _convert(tmp_path, swa.state_dict())
    assert summary["dropped"] == ["n_averaged"] and summary["stripped"] == ["module."]
    assert all(torch.equal(converted[k], v) for k, v in net.state_dict().items())


def test_ema_weights_are_named_and_chosen_with_weights(tmp_path):
    net, ema = _net(), _net()
    with torch.no_grad():
        ema[1].weight.add_(1)
    content = {"state_dict": net.state_dict(), "state_dict_ema": ema.state_dict(), "args": None}
    summary, converted, stderr = _convert(tmp_path, content)
    assert summary["weights"] == "model" and summary["other_weights"] == ["state_dict_ema"]
    assert torch.equal(converted["1.weight"], net[1].weight) and "--weights ema" in stderr
    summary, converted, _ = _convert(tmp_path, content, "--weights", "ema")
    assert summary["key"] == "state_dict_ema" and summary["other_weights"] == ["state_dict"]
    assert torch.equal(converted["1.weight"], ema[1].weight)
    timm_ema = {"model_ema": {f"module.{k}": v for k, v in ema.state_dict().items()}, "model": net.state_dict()}
    summary, converted, _ = _convert(tmp_path, timm_ema, "--weights", "ema")
    assert summary["key"] == "model_ema" and torch.equal(converted["1.weight"], ema[1].weight)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    assert_one_error(invoke("convert", tmp_path / "plain.pt", tmp_path / "o.safetensors", "--weights", "ema"),
                     "no EMA weights")
    assert_one_error(invoke("convert", tmp_path / "plain.pt", tmp_path / "o.safetensors", "--weights", "ema",
                            "--key", "x"), "--key and --weights")


def test_robustbenchs_last_entry_and_a_chosen_prefix(tmp_path):
    net = _net()
    summary, converted, _ = _convert(tmp_path, {"last": {"state_dict": net.state_dict()}, "best": 0.5})
    assert summary["key"] == "last.state_dict" and converted.keys() == net.state_dict().keys()
    mixed = {**{f"net.{k}": v for k, v in net.state_dict().items()}, "metric.total": torch.zeros(1)}
    summary, converted, _ = _convert(tmp_path, {"state_dict": mixed}, "--strip-prefix", "net.")
    assert summary["dropped"] == ["metric.total"] and converted.keys() == net.state_dict().keys()


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    """Issue 24 case 9: torch.save stores records as they are; a deflated one could declare any size."""
    import zipfile

    torch.save({"w": torch.zeros(1000)}, tmp_path / "s.pt")
    with zipfile.ZipFile(tmp_path / "s.pt") as src, zipfile.ZipFile(tmp_path / "d.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match="compressed record"):
        convert_pickle(tmp_path / "d.pt", tmp_path / "d.safetensors")
    assert convert_pickle(tmp_path / "s.pt", tmp_path / "s.safetensors")["tensors"] == 1

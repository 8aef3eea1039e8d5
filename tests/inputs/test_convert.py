"""`flatrob convert`: pickles become safetensors through torch.load(weights_only=True); nothing is executed."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
import torch

from flatcli.inputs.checkpoint import read
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

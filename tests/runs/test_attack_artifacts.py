"""``flatcli.api.attack`` hands back the adversarial tensors without a file: ``artifacts["adversarials"]``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import flatcli.api as fr
from flatcli.runs import attack as attack_run


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    x = torch.rand(24, 1, 6, 6)
    y = torch.arange(24) % 3
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 3))
    return net, (x, y)


def test_adversarials_are_kept_with_samples_and_match_the_rows(net_and_data, tmp_path):
    net, (x, y) = net_and_data
    options = dict(norm="linf", eps=0.1, alpha=0.02, steps=6, device="cpu", batch_size=10)
    result = fr.attack(net, (x, y), **options)
    x_adv, y_adv, index = result.artifacts["adversarials"]
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32 and x_adv.device.type == "cpu"
    assert torch.equal(index, torch.arange(24)) and torch.equal(y_adv, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    with torch.no_grad():  # the model's own forward on them gives the rows' adversarial predictions
        pred = net(x_adv).argmax(1)
    assert pred.tolist() == [row["adv_pred"] for row in result.samples]
    assert any(row["adv_pred"] != row["clean_pred"] for row in result.samples)
    saved = fr.attack(net, (x, y), save_adv=str(tmp_path / "adv.safetensors"), samples=False, **options)
    assert torch.equal(saved.artifacts["adversarials"][0], x_adv)  # the same tensors save_adv writes
    assert torch.equal(load_file(tmp_path / "adv.safetensors")["x"], x_adv)


def test_without_samples_or_beyond_the_memory_limit_none_are_kept(net_and_data, monkeypatch):
    net, data = net_and_data
    options = dict(norm="linf", eps=0.1, alpha=0.02, steps=2, device="cpu")
    assert fr.attack(net, data, samples=False, **options).artifacts == {}
    monkeypatch.setattr(attack_run, "KEEP_ADV_BYTES", 24 * 36 * 4 - 1)
    result = fr.attack(net, data, **options)
    assert "adversarials" not in result.artifacts
    assert [n for n in result.notes if "not kept in memory" in n and "save_adv" in n]

"""NaN/Inf in the logits or gradients mid-attack: flagged per sample, counted, kept out of the means."""

from __future__ import annotations

import json
import math

import pytest
import torch

import flatcli.model
from flatcli.data import load_data
from tests.conftest import EXAMPLE, invoke

POISONED = (1, 4)  # positions in each batch of 10 whose features turn NaN from the third forward pass on


@pytest.fixture
def poisoned_model(monkeypatch):
    real = flatcli.model.load_model
    calls = {"n": 0}

    def load_model(*args, **kwargs):
        loaded = real(*args, **kwargs)
        net = loaded.model.net if hasattr(loaded.model, "net") else loaded.model

        def hook(module, inputs, output):
            if output.shape[0] != 10:
                return output  # structural checks on a couple of samples stay clean
            calls["n"] += 1
            if calls["n"] < 3:
                return output
            output = output.clone()
            output[list(POISONED)] = float("nan")
            return output

        net.get_submodule("bn3").register_forward_hook(hook)
        return loaded

    monkeypatch.setattr(flatcli.model, "load_model", load_model)
    return calls


def test_nan_mid_attack_is_flagged_counted_and_kept_out_of_the_means(poisoned_model, tmp_path):
    adv = tmp_path / "adv.safetensors"
    res = invoke("attack", EXAMPLE, "--limit", "30", "--batch-size", "10", "--steps", "4", "--format", "json",
                 "--per-sample", "--save-adv", adv)
    assert res.exit_code == 0, res.stderr
    assert poisoned_model["n"] > 3
    doc = json.loads(res.stdout)
    s, rows = doc["summary"], doc["samples"]
    flagged = [r for r in rows if r["nonfinite"]]
    assert [rows.index(r) % 10 for r in flagged] == list(POISONED) * 3  # exactly the poisoned samples, per batch
    assert s["n"] == 30 and s["nonfinite"] == 6
    for key in ("mean_loss_by_step", "mean_sharpness_by_step", "accuracy_by_step", "mean_confidence_by_step",
                "mean_dist_l2_by_step", "std_loss_by_step"):
        assert all(v is not None and math.isfinite(v) for v in s[key]), key
    good = [r for r in rows if not r["nonfinite"]]
    assert s["robust_accuracy"] == pytest.approx(sum(r["adv_pred"] == r["label"] for r in good) / len(good))
    assert s["loss_increase"]["mean"] == pytest.approx(sum(r["loss_increase"] for r in good) / len(good))
    assert s["mean_loss_by_step"][-1] == pytest.approx(sum(r["adv_loss"] for r in good) / len(good))
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "6 of 30 samples hit NaN/Inf" in lines[0]
    saved = load_data(f"tensors:{adv}")  # loadable: flagged samples keep their clean input, no NaN written
    clean = load_data("digits", "test", 30)
    for i in range(30):
        if i % 10 in POISONED:
            assert torch.equal(saved.x[i], clean.x[i])


def test_every_sample_nonfinite_gives_null_means_not_a_crash(monkeypatch):
    import flatcli.trajectory as trajectory

    real = trajectory._finite_samples
    monkeypatch.setattr(trajectory, "_finite_samples", lambda *a: torch.zeros_like(real(*a)))
    res = invoke("attack", EXAMPLE, "--limit", "10", "--steps", "2", "--format", "json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)["summary"]
    assert s["nonfinite"] == 10 and s["clean_accuracy"] is None and s["mean_loss_by_step"][0] is None
    assert "RuntimeWarning" not in res.stderr

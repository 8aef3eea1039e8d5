"""NaN/Inf in the logits or gradients mid-attack: flagged per sample, counted, kept out of the means."""

from __future__ import annotations

import json
import math

import pytest
import torch

import flatcli.api
import flatcli.models.loading
from flatcli.inputs.data import load_data
from tests.conftest import EXAMPLE, invoke

POISONED = (1, 4)  # positions in each batch of 10 whose features turn NaN from the third forward pass on


@pytest.fixture
def poisoned_model(monkeypatch):
    real = flatcli.models.loading.load_model
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

    monkeypatch.setattr(flatcli.api, "load_model", load_model)  # the loader every command goes through
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
    import flatcli.runs.attack as trajectory

    real = trajectory.finite_samples
    monkeypatch.setattr(trajectory, "finite_samples", lambda *a: torch.zeros_like(real(*a)))
    res = invoke("attack", EXAMPLE, "--limit", "10", "--steps", "2", "--format", "json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)["summary"]
    assert s["nonfinite"] == 10 and s["clean_accuracy"] is None and s["mean_loss_by_step"][0] is None
    assert "RuntimeWarning" not in res.stderr


def _sweep(*args):
    res = invoke("sweep-scale", EXAMPLE, "--limit", "30", "--batch-size", "10", "--scales", "1,10", "--steps", "4",
                 "--attack-steps", "2", "--format", "json", "--per-sample", *args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout), res.stderr


def _check_records(doc, flagged_at):
    """Each scale's record counts its flagged samples and its means, medians and rates are over the others."""
    s, rows = doc["summary"], doc["samples"]
    for rec in s["scales"]:
        mine = [r for r in rows if r["scale"] == rec["scale"]]
        assert [i for i, r in enumerate(mine) if r["nonfinite"]] == flagged_at[rec["scale"]], rec["scale"]
        good = [r for r in mine if not r["nonfinite"]]
        assert rec["nonfinite"] == len(mine) - len(good)
        for key in ("clean_accuracy", "sharpness_mean", "loss_increase_mean", "loss_increase_median",
                    "robust_accuracy", "transfer_accuracy"):
            assert rec[key] is not None and math.isfinite(rec[key]), (rec["scale"], key)
        assert rec["clean_accuracy"] == pytest.approx(sum(r["clean_pred"] == r["label"] for r in good) / len(good))
        assert rec["sharpness_mean"] == pytest.approx(sum(r["clean_sharpness"] for r in good) / len(good))
        assert rec["loss_increase_mean"] == pytest.approx(sum(r["loss_increase"] for r in good) / len(good))
        assert rec["robust_accuracy"] == pytest.approx(sum(r["robust_pred"] == r["label"] for r in good) / len(good))
        assert rec["censored"] == sum(r["censored"] for r in good)


def test_sweep_scale_flags_nan_on_the_fixed_trajectories(poisoned_model):
    doc, stderr = _sweep()
    assert poisoned_model["n"] > 3
    poisoned = [i for i in range(30) if i % 10 in POISONED]
    _check_records(doc, {1.0: poisoned, 10.0: poisoned})
    s = doc["summary"]
    assert s["n"] == 30 and s["nonfinite"] == 6 and [r["nonfinite"] for r in s["scales"]] == [6, 6]
    assert s["spearman_samples"] <= 24
    lines = [l for l in stderr.splitlines() if "NaN/Inf" in l]  # besides, maybe, the degenerate-attack note
    assert len(lines) == 1 and "6 of 30 samples hit NaN/Inf" in lines[0]


def test_sweep_scale_flags_nan_of_one_scales_attack_at_that_scale_only(monkeypatch):
    import dataclasses

    from flatcli.core.attacks import PGD

    real = PGD.run

    def run(self, model, x, *args, **kwargs):
        res = real(self, model, x, *args, **kwargs)
        if self.norm == "linf" and getattr(model, "scaling", None) is not None and model.scaling.scale == 10.0:
            x_adv = res.x_adv.clone()
            x_adv[list(POISONED)] = float("inf")  # the per-scale attack at s=10 blows up on these samples
            res = dataclasses.replace(res, x_adv=x_adv)
        return res

    monkeypatch.setattr(PGD, "run", run)
    doc, stderr = _sweep()
    poisoned = [i for i in range(30) if i % 10 in POISONED]
    _check_records(doc, {1.0: [], 10.0: poisoned})
    s = doc["summary"]
    assert s["nonfinite"] == 6 and [r["nonfinite"] for r in s["scales"]] == [0, 6]
    assert s["spearman_samples"] == 30 - s["scales"][0]["censored"]  # s=1 is clean: nobody left out
    assert "6 of 30 samples hit NaN/Inf" in stderr


def test_sweep_scale_without_nan_reports_zero_and_no_note():
    doc, stderr = _sweep("--quiet")
    assert doc["summary"]["nonfinite"] == 0 and all(r["nonfinite"] == 0 for r in doc["summary"]["scales"])
    assert not any(r["nonfinite"] for r in doc["samples"])
    assert "NaN" not in stderr


def test_sweep_scale_every_sample_nonfinite_gives_null_means_not_a_crash(monkeypatch):
    import flatcli.runs.sweep as sweep

    real = sweep.finite_samples
    monkeypatch.setattr(sweep, "finite_samples", lambda *a, **k: torch.zeros_like(real(*a, **k)))
    res = invoke("sweep-scale", EXAMPLE, "--limit", "10", "--scales", "1,10", "--steps", "2", "--attack-steps", "1",
                 "--format", "json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)["summary"]
    assert s["nonfinite"] == 10 and s["spearman_width_sharpness"] is None
    for rec in s["scales"]:
        assert rec["nonfinite"] == 10 and rec["clean_accuracy"] is None and rec["loss_increase_median"] is None
        assert rec["basin_width_median"] is None and rec["robust_accuracy"] is None
    assert "RuntimeWarning" not in res.stderr
    table = invoke("sweep-scale", EXAMPLE, "--limit", "10", "--scales", "1,10", "--steps", "2", "--attack-steps", "1")
    assert table.exit_code == 0, table.stderr

"""Earlier layers (``--layers``) in ``sharpness`` and ``attack``: exact per-sample columns, labels, methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatcli.api as fr
from flatcli.core.attacks import PGD
from flatcli.inputs.data import DataSource, load_data
from flatcli.models.loading import load_model
from flatcli.runs.attack import AttackSettings, attack
from flatcli.runs.sharpness import SharpnessSettings, sharpness
from tests.cli.test_sharpness import _exact_layer_trace
from tests.conftest import EXAMPLE, run_context

STATS = {"mean", "std", "median", "min", "max"}


@pytest.fixture(scope="module")
def loaded():
    return load_model(EXAMPLE)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "test", limit=40)


def test_exact_columns_equal_an_independent_per_class_vmap_oracle(loaded, digits):
    res = sharpness(run_context(loaded, digits, batch_size=16), SharpnessSettings(layers=("conv2", "conv3")),
                    keep_samples=True)
    rows, summary = res.samples, res.summary
    assert list(rows[0])[-4:] == ["trace_h@conv2", "relative_sharpness@conv2", "trace_h@conv3",
                                  "relative_sharpness@conv3"]
    for entry in summary["layers"]:
        name = entry["layer"]
        assert (entry["method"], entry["curvature"], entry["piecewise_linear"]) == ("exact", "hessian", True)
        assert entry["trace"] == pytest.approx(_exact_layer_trace(name, 40), rel=1e-5)
        assert set(summary[f"trace_h@{name}"]) == STATS
        assert summary[f"trace_h@{name}"]["mean"] == pytest.approx(np.mean([r[f"trace_h@{name}"] for r in rows]))
        w2 = float(loaded.model.net.get_submodule(name).weight.detach().double().pow(2).sum())
        assert rows[3][f"relative_sharpness@{name}"] == pytest.approx(w2 * rows[3][f"trace_h@{name}"], rel=1e-12)
    assert res.notes == []


def test_fisher_mc_is_near_exact_within_its_standard_error_and_seeded(loaded, digits):
    exact = sharpness(run_context(loaded, digits), SharpnessSettings(layers=("conv3",))).summary["layers"][0]
    settings = SharpnessSettings(layers=("conv3",), layer_method="fisher-mc", fisher_samples=4)
    a = sharpness(run_context(loaded, digits, batch_size=16, seed=1), settings, keep_samples=True)
    b = sharpness(run_context(loaded, digits, batch_size=16, seed=1), settings, keep_samples=True)
    mc = a.summary["layers"][0]
    assert mc["method"] == "fisher-mc" and mc["draws"] == 4 and mc["trace_stderr"] > 0
    assert abs(mc["trace"] - exact["trace"]) < 4 * mc["trace_stderr"]
    assert "trace_h_stderr@conv3" in a.samples[0] and a.samples == b.samples


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(F.gelu(self.hidden(x.flatten(1))))


def test_gelu_is_never_called_exact():
    torch.manual_seed(0)
    net = GeluNet()
    ds = load_data("digits", "test", limit=24)
    data = (ds.x, ds.y)
    auto = fr.sharpness(net, data, layers="hidden", device="cpu", hutchinson=8)
    entry = auto.summary["layers"][0]
    assert (entry["method"], entry["piecewise_linear"]) == ("hutchinson", False) and "gelu" in entry["reason"]
    assert not any("@" in k for k in auto.samples[0])
    assert any("Hutchinson" in n and "gelu" in n for n in auto.notes)
    gn = fr.sharpness(net, data, layers="hidden", layer_method="exact", device="cpu")
    entry = gn.summary["layers"][0]
    assert (entry["method"], entry["curvature"]) == ("exact", "gauss-newton")
    assert "trace_gn@hidden" in gn.samples[0] and "trace_h@hidden" not in gn.samples[0]
    assert "trace_gn@hidden" in gn.summary and any("Gauss-Newton" in n for n in gn.notes)


def test_reduced_precision_applies_to_the_network_pass_only(loaded, digits):
    full = sharpness(run_context(loaded, digits), SharpnessSettings(layers=("conv3",))).summary["layers"][0]
    half = sharpness(run_context(loaded, digits), SharpnessSettings(layers=("conv3",), precision="bf16"))
    assert half.summary["layers"][0]["trace"] == pytest.approx(full["trace"], rel=0.05)


def test_attack_records_the_layer_columns_sharpness_gives_on_every_iterate(loaded, tmp_path):
    ds = load_data("digits", "test", limit=16)
    seen: list[torch.Tensor] = []
    hook = loaded.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    pgd = PGD(norm="linf", eps=0.2, alpha=0.05, steps=3)
    path = tmp_path / "traj.jsonl"
    try:
        out = attack(run_context(loaded, ds), AttackSettings(attack=pgd, layers=("conv2",)), trajectory=path)
    finally:
        hook.remove()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    iterates = seen[1 : pgd.steps + 2]  # after HeadSplit.verify: the attack's own forward passes
    entry = out.summary["layers"][0]
    for t, xt in enumerate(iterates):
        source = DataSource(name="iterate", input_shape=(1, 8, 8), num_classes=10, x=xt, y=ds.y, index=ds.index)
        want = sharpness(run_context(loaded, source), SharpnessSettings(layers=("conv2",)), keep_samples=True).samples
        got = {r["index"]: r for r in rows if r["step"] == t}
        for w in want:
            assert got[w["index"]]["relative_sharpness@conv2"] == pytest.approx(w["relative_sharpness@conv2"], rel=1e-5)
        mean = np.mean([r["relative_sharpness@conv2"] for r in got.values()])
        assert entry["mean_sharpness_by_step"][t] == pytest.approx(mean, rel=1e-9)
    assert entry["method"] == "exact" and len(entry["std_trace_by_step"]) == pgd.steps + 1
    assert entry["sharpness_peak_step"] == int(np.argmax(entry["mean_sharpness_by_step"]))


def test_attack_with_hutchinson_layers_gives_per_step_estimates():
    torch.manual_seed(0)
    ds = load_data("digits", "test", limit=12)
    res = fr.attack(GeluNet(), (ds.x, ds.y), layers=["hidden"], hutchinson=4, eps=0.1, alpha=0.05, steps=2,
                    device="cpu")
    entry = res.summary["layers"][0]
    assert entry["method"] == "hutchinson" and entry["probes"] == 4 and entry["std_trace_by_step"] is None
    assert len(entry["mean_trace_by_step"]) == 3 and all(s > 0 for s in entry["trace_stderr_by_step"])
    assert res.config["layers"] == ["hidden"] and res.config["layer_method"] == "auto"


def test_attack_layers_resume_from_the_store_with_dotted_layer_names(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    ds = load_data("digits", "test", limit=12)
    kwargs = dict(layers="1", layer_method="fisher-mc", eps=0.1, alpha=0.05, steps=2, batch_size=4, device="cpu",
                  resume=str(tmp_path / "R"))
    first = fr.attack(net, (ds.x, ds.y), **kwargs)
    again = fr.attack(net, (ds.x, ds.y), **kwargs)
    assert any("resumed: 3 finished batch" in n for n in again.notes)
    assert _same(again.summary, first.summary) and first.summary["layers"][0]["trace_stderr_by_step"][0] > 0
    outer = nn.Sequential(nn.Identity(), net)  # layer "1.1": a name with a dot, as in layer4.1.conv2
    kwargs.update(layers="1.1", resume=str(tmp_path / "S"))
    a = fr.attack(outer, (ds.x, ds.y), **kwargs)
    b = fr.attack(outer, (ds.x, ds.y), **kwargs)
    assert _same(a.summary, b.summary) and a.summary["layers"][0]["layer"] == "1.1"


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN in JSON text

"""``flatrob attack``'s pass (flatcli.runs.attack): recording equals ``sharpness`` on the iterates, model
modes restored, and the uncanny valley on the bundled example (paper §6.2, Fig. 3)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flatcli.core.head_scaling import Scaling
from flatcli.core.attacks import PGD
from flatcli.inputs.data import DataSource, load_data
from flatcli.models.loading import load_model
from flatcli.runs.attack import AttackSettings, attack
from flatcli.runs.sharpness import SharpnessSettings, sharpness
from tests.conftest import EXAMPLE, run_context


@pytest.fixture(scope="module")
def loaded():
    return load_model(EXAMPLE)


def test_model_mode_restored_and_bn_untouched(loaded):
    ds = load_data("digits", "test", limit=20)
    model = loaded.model
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    model.train()
    try:
        attack(run_context(loaded, ds), AttackSettings(attack=PGD(eps=0.1, alpha=0.02, steps=3)))
        assert model.training and bn.training
        assert torch.equal(bn.running_mean, before)
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


# ------------------------------------------------------------------------------------------------
# Recording equals `flatrob sharpness` on the iterates
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", [Scaling(), Scaling(2.5, False)])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_recorded_measures_equal_sharpness_on_iterates(loaded, norm, scaling, tmp_path):
    ds = load_data("digits", "test", limit=40)
    seen: list[torch.Tensor] = []
    hook = loaded.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    pgd = PGD(norm=norm, eps=0.2 if norm == "linf" else 1.0, alpha=0.03 if norm == "linf" else 0.15, steps=6)
    path = tmp_path / "traj.jsonl"
    try:
        attack(run_context(loaded, ds, batch_size=64), AttackSettings(attack=pgd, scaling=scaling), trajectory=path)
    finally:
        hook.remove()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    iterates = seen[1:]  # the first call is HeadSplit.verify on the clean batch
    assert len(iterates) == pgd.steps + 1  # one forward per step plus one final forward
    assert len(rows) == len(ds) * (pgd.steps + 1)
    by_step = {t: {r["index"]: r for r in rows if r["step"] == t} for t in range(pgd.steps + 1)}
    for t, xt in enumerate(iterates):
        source = DataSource(name="iterate", input_shape=(1, 8, 8), num_classes=10, x=xt, y=ds.y, index=ds.index)
        measured = sharpness(run_context(loaded, source), SharpnessSettings(scaling=scaling), keep_samples=True).samples
        for want in measured:
            got = by_step[t][want["index"]]
            for key in ("relative_sharpness", "trace_h", "confidence", "p_true", "loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12), (t, key)
            assert got["pred"] == want["pred"] and got["correct"] == (want["pred"] == want["label"])


# ------------------------------------------------------------------------------------------------
# Acceptance: the uncanny valley on the bundled example (paper §6.2, Fig. 3)
# ------------------------------------------------------------------------------------------------


def test_uncanny_valley_on_example(loaded):
    ds = load_data("digits", "test")
    out = attack(run_context(loaded, ds), AttackSettings(attack=PGD(norm="linf", eps=0.3, alpha=0.03, steps=20)))
    s = out.summary
    sharp = s["mean_sharpness_by_step"]
    loss = s["mean_loss_by_step"]
    peak = s["sharpness_peak_step"]
    assert 0 < peak < 20
    assert sharp[-1] < 0.5 * sharp[peak]
    assert s["sharpness_final_over_peak"] == pytest.approx(sharp[-1] / sharp[peak])
    assert loss[-1] == max(loss) and s["loss_final_is_max"]
    assert s["valley_fraction"] > 0.5
    assert s["robust_accuracy"] <= s["clean_accuracy"]
    assert s["takeoff"]["measured"] + s["takeoff"]["censored"] == s["n"] == len(ds)
    assert math.isfinite(s["takeoff"]["width"]["median"])

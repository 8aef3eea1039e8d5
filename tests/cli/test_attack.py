"""`flatrob attack` end to end, in-process through the real error mapping (small --limit throughout)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import EXAMPLE, assert_one_error

SUMMARY_KEYS = {
    "n", "steps", "clean_accuracy", "robust_accuracy", "ever_fooled_accuracy", "success_rate",
    "mean_loss_by_step", "std_loss_by_step", "mean_sharpness_by_step", "std_sharpness_by_step", "accuracy_by_step",
    "loss_quantiles_by_step", "sharpness_quantiles_by_step",
    "mean_confidence_by_step", "mean_dist_l2_by_step", "sharpness_peak_step", "sharpness_final_over_peak",
    "valley_fraction", "loss_final_is_max", "loss_increase", "clean_sharpness", "adv_sharpness", "takeoff",
    "nonfinite", "zero_grad_fraction",
}
TAKEOFF_KEYS = {"tau", "measured", "censored", "width", "step", "censored_final_dist_l2"}
STEP_COLUMNS = [
    "index", "step", "loss", "relative_sharpness", "trace_h", "confidence", "p_true", "pred", "correct", "dist_l2",
    "dist_linf",
]
SAMPLE_COLUMNS = [
    "index", "label", "target", "restart", "clean_pred", "adv_pred", "clean_loss", "adv_loss", "loss_increase",
    "clean_sharpness", "adv_sharpness", "peak_sharpness", "peak_step", "valley", "takeoff_step", "basin_width",
    "censored", "final_dist_l2", "final_dist_linf", "nonfinite",
]
ATTACK_CONFIG = {
    "preset", "preset_values", "attack", "loss", "norm", "eps", "alpha", "steps", "random_start", "restarts", "targeted",
    "takeoff_tau", "weight_norm", "scale", "scale_bias", "trajectory", "save_adv", "plot", "conventions",
}


def test_json_contract(cli):
    res = cli("attack", EXAMPLE, "--format", "json", "--limit", "30", "--steps", "4", "--per-sample")
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    doc = json.loads(res.stdout)
    assert set(doc) == {"schema_version", "command", "config", "summary", "samples"}
    assert doc["command"] == "attack" and doc["schema_version"] == 1
    assert set(doc["summary"]) == SUMMARY_KEYS
    assert set(doc["summary"]["takeoff"]) == TAKEOFF_KEYS
    assert ATTACK_CONFIG <= set(doc["config"]) and {"seed", "device", "versions", "checkpoint_sha256"} <= set(doc["config"])
    c = doc["config"]
    # the default preset is the paper's §6.2 setting; --steps overrides it
    assert (c["preset"], c["norm"], c["eps"], c["alpha"], c["steps"]) == ("uncanny", "linf", 8 / 255, 2 / 255, 4)
    assert (c["attack"], c["loss"]) == ("pgd", "ce")
    s = doc["summary"]
    assert s["n"] == 30 and s["steps"] == 4
    for key in ("mean_loss_by_step", "mean_sharpness_by_step", "accuracy_by_step"):
        assert len(s[key]) == 5
    assert s["robust_accuracy"] <= s["clean_accuracy"]
    assert s["ever_fooled_accuracy"] <= s["robust_accuracy"]
    assert s["accuracy_by_step"][0] == s["clean_accuracy"] and s["accuracy_by_step"][-1] == s["robust_accuracy"]
    assert len(doc["samples"]) == 30 and list(doc["samples"][0]) == SAMPLE_COLUMNS
    mean_inc = sum(r["loss_increase"] for r in doc["samples"]) / 30
    assert s["loss_increase"]["mean"] == pytest.approx(mean_inc)
    measured = [r for r in doc["samples"] if not r["censored"]]
    assert all(r["basin_width"] is not None and 1 <= r["takeoff_step"] <= 4 for r in measured)
    assert all(r["basin_width"] is None and r["takeoff_step"] is None for r in doc["samples"] if r["censored"])


def test_table_is_the_default(cli):
    res = cli("attack", EXAMPLE, "--limit", "12", "--steps", "3", "--eps", "0.1", "--alpha", "0.01")
    assert res.exit_code == 0, res.stderr
    for text in ("clean_accuracy", "robust_accuracy", "valley_fraction", "sharpness_peak_step", "basin_width"):
        assert text in res.stdout


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_trajectory_file_rows(cli, tmp_path, suffix):
    path = tmp_path / f"traj.{suffix}"
    res = cli("attack", EXAMPLE, "--limit", "23", "--batch-size", "10", "--steps", "5", "--norm", "l2",
              "--eps", "0.5", "--alpha", "0.1", "--trajectory", path, "--format", "json")
    assert res.exit_code == 0, res.stderr
    text = path.read_text()
    rows = list(csv.DictReader(io.StringIO(text))) if suffix == "csv" else [json.loads(l) for l in text.splitlines()]
    assert len(rows) == 23 * 6
    assert list(rows[0]) == STEP_COLUMNS
    assert [int(r["step"]) for r in rows[:6]] == list(range(6))
    assert all(float(r["dist_l2"]) <= 0.5 + 1e-6 for r in rows)
    summary = json.loads(res.stdout)["summary"]
    last = [float(r["loss"]) for r in rows if int(r["step"]) == 5]
    assert summary["mean_loss_by_step"][-1] == pytest.approx(sum(last) / 23)
    assert sorted({p.name for p in tmp_path.iterdir()}) == [path.name]


def test_rows_on_stdout_are_per_sample(cli):
    res = cli("attack", EXAMPLE, "--limit", "9", "--steps", "2", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 9 and list(rows[0]) == SAMPLE_COLUMNS


def test_save_adv_deterministic_and_readable(cli, tmp_path):
    args = ("attack", EXAMPLE, "--limit", "20", "--steps", "3", "--random-start", "--restarts", "2", "--format", "json")
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    res = cli(*args, "--save-adv", a, "--seed", "5")
    assert res.exit_code == 0, res.stderr
    assert cli(*args, "--save-adv", b, "--seed", "5").exit_code == 0
    assert cli(*args, "--save-adv", c, "--seed", "6").exit_code == 0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)
    tensors = load_file(str(a))
    assert set(tensors) == {"x", "y", "index"} and tensors["x"].shape == (20, 1, 8, 8)
    # read back by `flatrob sharpness --data tensors:FILE`: its accuracy is the robust accuracy
    robust = json.loads(res.stdout)["summary"]["robust_accuracy"]
    back = cli("sharpness", EXAMPLE, "--data", f"tensors:{a}", "--format", "json")
    assert back.exit_code == 0, back.stderr
    assert json.loads(back.stdout)["summary"]["accuracy"] == pytest.approx(robust)


def test_recorded_sharpness_equals_sharpness_command_on_saved_iterate(cli, tmp_path):
    """`flatrob sharpness` run separately on x_T (written by --save-adv) gives the recorded step T."""
    traj, adv = tmp_path / "t.jsonl", tmp_path / "adv.safetensors"
    res = cli("attack", EXAMPLE, "--limit", "25", "--steps", "6", "--eps", "0.2", "--alpha", "0.03", "--scale", "3",
              "--trajectory", traj, "--save-adv", adv, "--format", "json")
    assert res.exit_code == 0, res.stderr
    last = {r["index"]: r for r in map(json.loads, traj.read_text().splitlines()) if r["step"] == 6}
    back = cli("sharpness", EXAMPLE, "--data", f"tensors:{adv}", "--scale", "3", "--format", "jsonl")
    assert back.exit_code == 0, back.stderr
    rows = [json.loads(l) for l in back.stdout.splitlines()]
    assert len(rows) == 25
    for r in rows:
        assert last[r["index"]]["relative_sharpness"] == pytest.approx(r["relative_sharpness"], rel=1e-6)
        assert last[r["index"]]["loss"] == pytest.approx(r["loss"], rel=1e-6)


def test_targeted_and_least_likely(cli):
    res = cli("attack", EXAMPLE, "--limit", "20", "--eps", "0.3", "--alpha", "0.03", "--steps", "15",
              "--targeted", "4", "--format", "json", "--per-sample")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["config"]["targeted"] == 4 and doc["summary"]["target_success_rate"] > 0.8
    assert all(r["target"] == 4 for r in doc["samples"])
    res = cli("attack", EXAMPLE, "--limit", "10", "--steps", "2", "--targeted", "least-likely", "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["config"]["targeted"] == "least-likely"


def test_preset_basin_and_override(cli, tmp_path):
    traj = tmp_path / "traj.jsonl"
    res = cli("attack", EXAMPLE, "--preset", "basin", "--steps", "2", "--limit", "5", "-f", "json", "--trajectory", traj)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    c = doc["config"]
    assert (c["preset"], c["norm"], c["eps"], c["alpha"], c["steps"]) == ("basin", "l2", 0.025, 0.001, 2)
    # the attack ran with those settings: 2 steps (3 iterates), l2 steps of 0.001 inside the 0.025 ball
    assert doc["summary"]["steps"] == 2 and len(doc["summary"]["mean_loss_by_step"]) == 3
    rows = [json.loads(line) for line in traj.read_text().splitlines()]
    assert len(rows) == 5 * 3
    for r in rows:  # at most one alpha per step (clamping to [0, 1] can shorten a step), never outside the ball
        assert r["dist_l2"] <= 0.001 * r["step"] + 1e-7 and r["dist_l2"] <= 0.025
    assert doc["summary"]["mean_dist_l2_by_step"][0] == 0.0
    assert 0.0015 < doc["summary"]["mean_dist_l2_by_step"][2] <= 0.002 + 1e-7


def test_plot_writes_an_image(cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fig3.png"
    res = cli("attack", EXAMPLE, "--limit", "10", "--steps", "3", "--plot", path, "--quiet", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_error(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = cli("attack", EXAMPLE, "--limit", "5", "--plot", tmp_path / "f.png")
    assert_one_error(res, "matplotlib", "flatrob[plot]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--eps", "-0.1"], "--eps"),
        (["--alpha", "-1"], "--alpha"),
        (["--steps", "-3"], "--steps"),
        (["--norm", "l1"], "l1"),
        (["--restarts", "0"], "--restarts"),
        (["--restarts", "3"], "--random-start"),
        (["--targeted", "10"], "classes 0..9"),
        (["--targeted", "-1"], "--targeted"),
        (["--targeted", "cat"], "--targeted"),
        (["--takeoff", "0"], "--takeoff"),
        (["--takeoff", "1.5"], "--takeoff"),
        (["--preset", "fast"], "fast"),
        (["--scale", "0"], "--scale"),
        (["--trajectory", "{tmp}/missing/t.csv"], "does not exist"),
        (["--trajectory", "{tmp}/t.txt"], ".csv or .jsonl"),
        (["--save-adv", "{tmp}/missing/a.safetensors"], "does not exist"),
        (["--plot", "{tmp}/f.gif"], ".png"),
        (["--trajectory", "{tmp}/same.csv", "--output", "{tmp}/same.csv"], "same file"),
        (["--loss", "hinge"], "hinge"),
        (["--attack", "fgsm"], "fgsm"),
        (["--attack", "apgd", "--alpha", "0.1"], "--alpha"),
        (["--attack", "apgd", "--queries", "10"], "--queries"),
        (["--queries", "10"], "--queries"),
        (["--attack", "square", "--steps", "10"], "--queries"),
        (["--attack", "square", "--random-start"], "--random-start"),
        (["--attack", "square", "--targeted", "3"], "--targeted"),
        (["--attack", "square", "--loss", "dlr"], "dlr"),
        (["--attack", "square", "--queries", "0"], "--queries"),
    ],
)
def test_bad_input_is_one_error_and_no_file(cli, tmp_path, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = cli("attack", EXAMPLE, "--limit", "5", *args)
    assert_one_error(res, fragment)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_leaves_no_file(cli, tmp_path, monkeypatch):
    import flatcli.runs.attack as trajectory

    real = trajectory.head_measures
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch: rows of the first are already written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trajectory, "head_measures", flaky)
    res = cli("attack", EXAMPLE, "--limit", "20", "--batch-size", "10", "--steps", "2",
              "--trajectory", tmp_path / "t.csv", "--save-adv", tmp_path / "a.safetensors",
              "--output", tmp_path / "out.jsonl", "--format", "jsonl")
    assert res.exit_code == 130
    assert list(tmp_path.iterdir()) == []  # no partial files, no temporary files left behind


def test_demo_has_an_attack_section(cli):
    res = cli("demo")
    assert res.exit_code == 0, res.stderr
    assert "flatrob attack" in res.stdout and "valley_fraction" in res.stdout


def test_layers_along_the_trajectory_rows_summary_and_plot(cli, tmp_path):
    pytest.importorskip("matplotlib")
    traj, fig = tmp_path / "traj.csv", tmp_path / "fig.png"
    res = cli("attack", EXAMPLE, "--limit", "8", "--steps", "2", "--eps", "0.2", "--alpha", "0.1", "--layers",
              "conv2,bn3", "--trajectory", traj, "--plot", fig, "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [e["layer"] for e in doc["summary"]["layers"]] == ["conv2", "bn3"]
    assert doc["config"]["layers"] == ["conv2", "bn3"] and doc["config"]["layer_method"] == "auto"
    header = traj.read_text().splitlines()[0].split(",")
    assert header[-4:] == ["trace_h@conv2", "relative_sharpness@conv2", "trace_h@bn3", "relative_sharpness@bn3"]
    from matplotlib.image import imread

    assert imread(str(fig)).shape[1] == 3 * 5 * 120  # four panels (loss, head, conv2, bn3), at most three a row


def test_apgd_and_margin_losses_record_the_cross_entropy(cli):
    base = ("attack", EXAMPLE, "--limit", "24", "--eps", "0.1", "--steps", "5", "--format", "json", "--quiet")
    ce = json.loads(cli(*base, "--alpha", "0.025").stdout)
    cw = json.loads(cli(*base, "--alpha", "0.025", "--loss", "cw").stdout)
    apgd = json.loads(cli(*base, "--attack", "apgd", "--loss", "dlr").stdout)
    for doc, attack, loss in ((ce, "pgd", "ce"), (cw, "pgd", "cw"), (apgd, "apgd", "dlr")):
        assert (doc["config"]["attack"], doc["config"]["loss"]) == (attack, loss)
        s = doc["summary"]
        assert len(s["mean_loss_by_step"]) == 6 and s["zero_grad_fraction"] == 0.0
        # whatever drives the attack, the recorded loss at the clean input is the cross-entropy
        assert s["mean_loss_by_step"][0] == pytest.approx(ce["summary"]["mean_loss_by_step"][0], rel=1e-9)
        assert s["robust_accuracy"] < s["clean_accuracy"]
    assert "alpha" not in apgd["config"] and apgd["config"]["momentum"] == 0.75


def test_scaled_head_masks_ce_but_not_cw(cli):
    base = ("attack", EXAMPLE, "--limit", "40", "--eps", "0.1", "--alpha", "0.025", "--scale", "100", "-f", "json", "-q")
    ce = json.loads(cli(*base).stdout)["summary"]
    cw = json.loads(cli(*base, "--loss", "cw").stdout)["summary"]
    assert ce["zero_grad_fraction"] > 0.9 and ce["robust_accuracy"] >= ce["clean_accuracy"] - 0.05
    assert cw["zero_grad_fraction"] == 0 and cw["robust_accuracy"] < ce["robust_accuracy"] - 0.3


def test_square_attack(cli, tmp_path):
    pytest.importorskip("torchattacks")
    res = cli("attack", EXAMPLE, "--limit", "40", "--eps", "0.1", "--attack", "square", "--queries", "60",
              "--save-adv", tmp_path / "adv.safetensors", "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    c, s = doc["config"], doc["summary"]
    assert (c["attack"], c["loss"], c["queries"]) == ("square", "cw", 60) and c["library"].startswith("torchattacks")
    assert len(s["mean_loss_by_step"]) == 2 and s["zero_grad_fraction"] is None  # clean input and adversarial
    assert s["robust_accuracy"] < s["clean_accuracy"]
    x = load_file(tmp_path / "adv.safetensors")["x"]
    assert x.shape == (40, 1, 8, 8)


def test_square_without_torchattacks_is_one_error(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import torchattacks -> ImportError
    res = cli("attack", EXAMPLE, "--limit", "5", "--attack", "square")
    assert_one_error(res, "torchattacks", "flatrob[square]")

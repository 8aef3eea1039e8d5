"""``flatrob sweep-scale``: agreement with attack/sharpness, the JSON contract, formats, refusals, the
paper's D.3 findings on the bundled example, and the figures."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from flatcli.runs.sweep import SAMPLE_KEYS, SCALE_KEYS

from tests.conftest import EXAMPLE, assert_one_error, invoke

TRAJ = ["--norm", "l2", "--eps", "0.5", "--alpha", "0.05", "--steps", "5"]
PER_SCALE = ["--attack-eps", "0.1", "--attack-alpha", "0.025", "--attack-steps", "3"]
COMMON = ["--limit", "32", "--batch-size", "12", "--seed", "3", "--format", "json", "--quiet"]


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def sweep_doc() -> dict:
    res = invoke("sweep-scale", EXAMPLE, "--scales", "1,10", *TRAJ, "--random-start", *PER_SCALE, *COMMON)
    return _json(res)


def test_scale_one_row_equals_attack_and_sharpness(sweep_doc):
    row = next(r for r in sweep_doc["summary"]["scales"] if r["scale"] == 1.0)
    traj = _json(invoke("attack", EXAMPLE, *TRAJ, "--random-start", *COMMON))["summary"]
    atk = _json(invoke("attack", EXAMPLE, "--norm", "linf", "--eps", "0.1", "--alpha", "0.025", "--steps", "3", *COMMON))["summary"]
    sharp = _json(invoke("sharpness", EXAMPLE, *COMMON))["summary"]

    assert row["clean_accuracy"] == pytest.approx(sharp["accuracy"], abs=0)
    assert row["sharpness_mean"] == pytest.approx(sharp["relative_sharpness"]["mean"], rel=1e-9)
    assert row["loss_increase_mean"] == pytest.approx(traj["loss_increase"]["mean"], rel=1e-9)
    assert row["loss_increase_median"] == pytest.approx(traj["loss_increase"]["median"], rel=1e-9)
    assert row["censored"] == traj["takeoff"]["censored"]
    assert row["censored"] < 16  # so the median is a measured one and comparable
    if row["censored"] == 0:
        assert row["basin_width_median"] == pytest.approx(traj["takeoff"]["width"]["median"], rel=1e-9)
    assert row["robust_accuracy"] == pytest.approx(atk["robust_accuracy"], abs=0)
    assert row["transfer_accuracy"] == row["robust_accuracy"]  # the s=1 adversarials, at s=1


def test_json_contract(sweep_doc):
    assert set(sweep_doc) == {"schema_version", "command", "config", "summary"}
    assert sweep_doc["command"] == "sweep-scale"
    config = sweep_doc["config"]
    for key in ("scales", "scale_bias", "weight_norm", "takeoff_tau", "trajectory", "attack", "attack_each_scale",
                "seed", "device", "versions", "conventions"):
        assert key in config, key
    assert config["scale_bias"] is True and config["scales"] == [1.0, 10.0]
    assert config["trajectory"]["norm"] == "l2" and config["trajectory"]["random_start"] is True
    assert config["attack"] == {"attack": "pgd", "norm": "linf", "eps": 0.1, "alpha": 0.025, "steps": 3,
                                "random_start": False, "restarts": 1, "loss": "ce"}
    assert config["attack_cw"] == {**config["attack"], "loss": "cw"}
    assert config["square"] is None and config["masking_threshold"] == 0.05
    summary = sweep_doc["summary"]
    assert {"n", "nonfinite", "scales", "spearman_width_sharpness"} <= set(summary)
    assert summary["n"] == 32 and summary["nonfinite"] == 0
    assert [tuple(r) for r in summary["scales"]] == [SCALE_KEYS] * 2
    assert [r["scale"] for r in summary["scales"]] == [1.0, 10.0]
    rho = summary["spearman_width_sharpness"]
    assert rho is None or -1 <= rho <= 1


def test_csv_has_one_row_per_scale_and_per_sample_rows_stream():
    res = invoke("sweep-scale", EXAMPLE, "--limit", "6", "--scales", "1,5", "--steps", "3", "--attack-steps", "1",
                 "--format", "csv", "--quiet")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [tuple(r) for r in rows] == [SCALE_KEYS] * 2 and [r["scale"] for r in rows] == ["1.0", "5.0"]

    res = invoke("sweep-scale", EXAMPLE, "--limit", "6", "--batch-size", "4", "--scales", "1,5", "--steps", "3",
                 "--no-attack-each-scale", "--per-sample", "--format", "jsonl", "--quiet")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 12 and all(tuple(r) == SAMPLE_KEYS for r in rows)
    assert [(r["index"], r["scale"]) for r in rows[:4]] == [(rows[0]["index"], 1.0), (rows[0]["index"], 5.0),
                                                           (rows[2]["index"], 1.0), (rows[2]["index"], 5.0)]
    assert all(r["robust_pred"] is None and r["transfer_pred"] is None for r in rows)

    res = invoke("sweep-scale", EXAMPLE, "--limit", "5", "--scales", "2", "--steps", "2", "--attack-steps", "1",
                 "--per-sample", "--no-scale-bias", "--format", "json", "--quiet")
    doc = _json(res)
    assert doc["config"]["scale_bias"] is False
    assert len(doc["samples"]) == 5 and all(s["scale"] == 2.0 and s["robust_pred"] is not None for s in doc["samples"])


def test_no_attack_each_scale_gives_nulls_and_table_renders():
    args = ("sweep-scale", EXAMPLE, "--limit", "8", "--scales", "1,100", "--steps", "3", "--no-attack-each-scale", "--quiet")
    doc = json.loads(invoke(*args, "--format", "json", "--per-sample").stdout)
    assert doc["config"]["attack_each_scale"] is False and doc["config"]["attack"] is None
    assert doc["summary"]["attack_steps"] is None
    for rec in doc["summary"]["scales"]:
        assert rec["robust_accuracy"] is None and rec["transfer_accuracy"] is None
        assert rec["clean_accuracy"] is not None and rec["loss_increase_mean"] is not None  # the Fig. 2 part ran
    assert len(doc["samples"]) == 8 * 2
    assert all(r["robust_pred"] is None and r["transfer_pred"] is None and r["robust_pred_cw"] is None
               and r["zero_grad"] is None for r in doc["samples"])
    assert all(rec["masking"] is None and rec["robust_accuracy_cw"] is None for rec in doc["summary"]["scales"])
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    rows = [line for line in res.stdout.splitlines() if line.strip().startswith("│") or line.strip().startswith("|")]
    table = [line for line in rows if line.split("│")[1].strip() in ("1", "100", "1.0", "100.0")]
    assert len(table) == 4, res.stdout  # one row per scale in each of the two tables
    for line in table[2:]:  # the attack table: robust, transfer, robust cw, zero grad, masking
        cells = [c.strip() for c in line.split("│")[1:-1]]
        assert cells[1:] == ["-"] * 5, cells  # not measured, shown as such


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--scales", "1,abc"], ["--scales", "abc"]),
        (["--scales", "0,1"], ["--scales", "> 0"]),
        (["--scales", "1,1"], ["twice"]),
        (["--no-attack-each-scale", "--attack-eps", "0.1"], ["--attack-eps", "--no-attack-each-scale"]),
        (["--takeoff", "0"], ["--takeoff"]),
        (["--restarts", "3"], ["--random-start"]),
        (["--attack-steps", "-1"], ["--attack-steps"]),
        (["--limit", "-1"], ["--limit"]),
        (["--queries", "10"], ["--queries", "--square"]),
        (["--no-attack-each-scale", "--square"], ["--square", "--no-attack-each-scale"]),
        (["--no-attack-each-scale", "--attack-loss", "cw"], ["--attack-loss", "--no-attack-each-scale"]),
        (["--masking-threshold", "1.5"], ["--masking-threshold"]),
        (["--attack-loss", "hinge"], ["hinge"]),
    ],
)
def test_bad_input_is_one_error_line(args, fragments):
    assert_one_error(invoke("sweep-scale", EXAMPLE, *args), *fragments)


def test_plot_dir_must_be_a_directory(tmp_path):
    f = tmp_path / "file.png"
    f.write_text("x")
    assert_one_error(invoke("sweep-scale", EXAMPLE, "--plot", str(f)), "--plot", "directory")
    assert_one_error(invoke("sweep-scale", EXAMPLE, "--plot", str(tmp_path / "no" / "such")), "does not exist")


def test_plot_without_matplotlib_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert_one_error(invoke("sweep-scale", EXAMPLE, "--plot", str(tmp_path)), "matplotlib")


def test_plot_writes_both_figures(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    res = invoke("sweep-scale", EXAMPLE, "--limit", "24", "--scales", "1,10,100", "--eps", "0.5", "--alpha", "0.05",
                 "--steps", "8", "--attack-eps", "0.1", "--attack-alpha", "0.025", "--attack-steps", "2",
                 "--plot", str(out), "--format", "json")
    assert res.exit_code == 0, res.stderr
    json.loads(res.stdout)  # the notes about written files went to stderr
    for name in ("fig2_loss_geometry.png", "fig13_unattackable.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
        assert name in res.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_gradient_masking_on_the_example():
    """Appendix D.3 on the bundled digits CNN (PGD-linf eps 0.1, alpha 0.025, 10 steps at each scale):
    flattening the head by s=100 lowers the mean clean sharpness and makes the first-order attack fail
    (robust accuracy back to clean accuracy: the float32 softmax saturates, the gradient vanishes),
    while the adversarials crafted at s=1 fool the s=100 model exactly as often as the s=1 model."""
    res = invoke("sweep-scale", EXAMPLE, "--limit", "180", "--scales", "1,100", "--steps", "1",
                 "--attack-norm", "linf", "--attack-eps", "0.1", "--attack-alpha", "0.025", "--attack-steps", "10",
                 "--format", "json", "--quiet")
    one, hundred = _json(res)["summary"]["scales"]
    assert (one["scale"], hundred["scale"]) == (1.0, 100.0)
    assert hundred["sharpness_mean"] < one["sharpness_mean"]
    assert hundred["clean_accuracy"] == one["clean_accuracy"]  # the bias is scaled: no prediction changes
    assert hundred["robust_accuracy"] >= hundred["clean_accuracy"] - 0.05
    assert hundred["robust_accuracy"] > one["robust_accuracy"] + 0.4
    assert one["robust_accuracy"] < 0.5
    assert hundred["transfer_accuracy"] == one["transfer_accuracy"] == one["robust_accuracy"]


def test_torchrun_sweep_equals_one_process(cli, tmp_path):
    from tests.test_scale_out import close, torchrun_json

    args = ["sweep-scale", EXAMPLE, "--format", "json", "--per-sample", "--limit", "21", "--batch-size", "8",
            "--scales", "1,10", "--steps", "3", "--random-start", "--attack-eps", "0.1", "--attack-steps", "2",
            "--device", "cpu"]
    dist = torchrun_json(tmp_path, *args)
    single = json.loads(cli(*args).stdout)
    assert [(r["index"], r["scale"]) for r in dist["samples"]] == [(r["index"], r["scale"]) for r in single["samples"]]
    close(single["samples"], dist["samples"])
    close(single["summary"], dist["summary"])


def test_square_and_the_verdict_in_the_table():
    pytest.importorskip("torchattacks")
    args = ("sweep-scale", EXAMPLE, "--limit", "30", "--scales", "1,100", "--steps", "1", "--attack-eps", "0.1",
            "--attack-alpha", "0.025", "--square", "--queries", "60", "--quiet")
    doc = _json(invoke(*args, "--format", "json", "--per-sample"))
    one, hundred = doc["summary"]["scales"]
    assert doc["config"]["square"]["queries"] == 60 and doc["config"]["square"]["loss"] == "cw"
    # Square compares margins only: the same adversarials, the same accuracy, at every scale
    assert one["robust_accuracy_square"] == hundred["robust_accuracy_square"] < one["clean_accuracy"]
    assert hundred["masking"] and "Square" in hundred["masking_reason"] and not one["masking"]
    assert all(r["robust_pred_square"] is not None and isinstance(r["zero_grad"], bool) for r in doc["samples"])
    table = invoke(*args).stdout
    assert "robust or masked" in table and "s = 100: masking:" in table and "robust square" in table.replace("\n", " ")

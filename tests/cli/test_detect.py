"""`flatrob detect` end to end, in-process through the real error mapping.

The fitting core (synthetic separable / identical scores, tie-breaks, save/load) is tested in
test_detect_core.py; here: the CLI contract, reproducibility, save-then-apply, the paper's D.4 result
on the bundled example (full digits test split, 360 inputs), refusals.
"""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import EXAMPLE, assert_one_error

SUMMARY_KEYS = {
    # pinned by the issue
    "fold_accuracies", "accuracy_mean", "accuracy_std", "auc", "tpr_at_5fpr", "threshold", "direction",
    "n_clean", "n_adversarial", "score",
    # more
    "method", "folds", "n_clean_scored", "n_adversarial_scored", "n_successful", "prediction_changed",
    "train_accuracy", "score_clean", "score_adversarial",
}
COMPONENTS_KEYS = SUMMARY_KEYS | {"components", "baseline"}
FIT_CONFIG = {
    "mode", "method", "score", "folds", "only_successful", "weight_norm", "adversarial", "adversarial_metadata",
    "preset", "preset_values", "attack", "save", "save_adv", "plot", "conventions",
    "seed", "device", "versions", "checkpoint_sha256", "layer", "data", "preprocess", "split", "limit", "batch_size",
}
FIT_COLUMNS = ["index", "adversarial", "used", "fold", "score", "oof_decision", "flagged"]
APPLY_COLUMNS = ["index", "score", "flagged"]
APPLY_KEYS = {"n", "n_flagged", "flagged_share", "method", "score", "threshold", "direction", "score_stats",
              "checkpoint_match"}

STRONG = ("--eps", "0.3", "--alpha", "0.03")
SMALL = ("--limit", "60", "--steps", "6", *STRONG)


def test_the_library_builds_rows_from_these_keys():
    from flatcli.runs.detect import APPLY_ROW_KEYS, FIT_ROW_KEYS

    assert list(FIT_ROW_KEYS) == FIT_COLUMNS and list(APPLY_ROW_KEYS) == APPLY_COLUMNS


def _json(res):
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------------------------------------
# Contract
# ------------------------------------------------------------------------------------------------


def test_json_contract_and_rows(cli):
    doc = _json(cli("detect", EXAMPLE, *SMALL, "--format", "json", "--per-sample"))
    assert set(doc) == {"schema_version", "command", "config", "summary", "samples"}
    assert doc["command"] == "detect" and doc["schema_version"] == 1
    s, c = doc["summary"], doc["config"]
    assert set(s) == SUMMARY_KEYS
    assert FIT_CONFIG <= set(c)
    assert (c["mode"], c["method"], c["score"], c["folds"], c["weight_norm"]) == ("fit", "stump", "relative_sharpness", 5, "squared")
    assert (c["attack"]["norm"], c["attack"]["eps"], c["attack"]["steps"]) == ("linf", 0.3, 6)
    assert c["preset"] == "uncanny"  # the default preset; explicit options override it
    assert len(s["fold_accuracies"]) == 5 and s["direction"] in ("above", "below")
    assert s["accuracy_mean"] == pytest.approx(sum(s["fold_accuracies"]) / 5)
    assert s["n_clean"] == s["n_adversarial"] == 60 == s["n_clean_scored"] == s["n_adversarial_scored"]
    assert 0.5 <= s["auc"] <= 1 and 0 <= s["tpr_at_5fpr"] <= 1
    rows = doc["samples"]
    assert len(rows) == 120 and list(rows[0]) == FIT_COLUMNS
    assert [r["adversarial"] for r in rows] == [False] * 60 + [True] * 60
    assert {r["fold"] for r in rows} == set(range(5)) and all(r["used"] for r in rows)
    # fitted predictions are the threshold rule on the score column
    t, above = s["threshold"], s["direction"] == "above"
    assert all(r["flagged"] == ((r["score"] > t) if above else (r["score"] < t)) for r in rows)
    train = sum(r["flagged"] == r["adversarial"] for r in rows) / 120
    assert s["train_accuracy"] == pytest.approx(train)
    # per-fold accuracies from the out-of-fold decisions in the rows
    for k in range(5):
        fold = [r for r in rows if r["fold"] == k]
        acc = sum((r["oof_decision"] > 0) == r["adversarial"] for r in fold) / len(fold)
        assert s["fold_accuracies"][k] == pytest.approx(acc)


def test_table_is_the_default_and_csv_rows(cli):
    res = cli("detect", EXAMPLE, "--limit", "20", "--steps", "3", *STRONG, "--folds", "3")
    assert res.exit_code == 0, res.stderr
    for text in ("accuracy_mean", "fold_accuracies", "auc", "tpr_at_5fpr", "threshold", "direction"):
        assert text in res.stdout
    res = cli("detect", EXAMPLE, "--limit", "20", "--steps", "3", *STRONG, "--folds", "3", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 40 and list(rows[0]) == FIT_COLUMNS


def test_help_names_the_options(cli):
    res = cli("detect", "--help")
    assert res.exit_code == 0
    for opt in ("--method", "--score", "--folds", "--only-successful", "--adversarial", "--save", "--plot",
                "--detector", "--force", "--eps", "--preset", "--fit-data", "--probe-steps", "--probe-size",
                "--adaptive", "--adaptive-weight", "mahalanobis", "ensemble"):
        assert opt in res.stdout


ALL_KEYS = SUMMARY_KEYS | {"baseline", "best", "methods"}
METHOD_ENTRY = {"fold_accuracies", "accuracy_mean", "accuracy_std", "auc", "tpr_at_5fpr", "evaded"}
ADAPTIVE_KEYS = {"fold_accuracies", "accuracy_mean", "accuracy_std", "auc", "tpr_at_5fpr", "n", "detected",
                 "prediction_changed", "evaded", "evaded_standard", "weight", "scale"}


def test_method_all_with_the_adaptive_check_json_and_table(cli):
    args = ("detect", EXAMPLE, "--limit", "40", "--steps", "3", "--eps", "0.3", "--alpha", "0.1", "--folds", "2",
            "--method", "all", "--adaptive", "--probe-steps", "2")
    doc = _json(cli(*args, "--format", "json"))
    s, c = doc["summary"], doc["config"]
    best = s["best"]
    assert ALL_KEYS <= set(s) and set(s["methods"]) == {"stump", "components", "mahalanobis", "profile", "ensemble"}
    assert all(set(m) == METHOD_ENTRY | {"adaptive"} for m in s["methods"].values())
    assert set(s["adaptive"]) == ADAPTIVE_KEYS and s["adaptive"] == s["methods"][best]["adaptive"]
    assert s["method"] == best and s["accuracy_mean"] == max(m["accuracy_mean"] for m in s["methods"].values())
    assert (c["method"], c["fit_data"], c["adaptive"], c["adaptive_weight"]) == ("all", "digits:train", True, 3.0)
    assert c["probe"] == {"norm": "linf", "steps": 2, "size": 0.03}
    table = cli(*args)
    assert table.exit_code == 0, table.stderr
    for text in ("Methods on the same folds", f"{best} *", "Adaptive attack on each method", "evaded (standard)"):
        assert text in table.stdout, text
    assert ("Baseline: stump" in table.stdout) == (best != "stump")


# ------------------------------------------------------------------------------------------------
# Reproducibility, save then apply
# ------------------------------------------------------------------------------------------------


def test_same_seed_same_folds_and_numbers(cli):
    args = ("detect", EXAMPLE, *SMALL, "--random-start", "--format", "json", "--per-sample")
    a = _json(cli(*args, "--seed", "3"))
    b = _json(cli(*args, "--seed", "3"))
    c = _json(cli(*args, "--seed", "4"))
    assert a == b
    assert [r["fold"] for r in a["samples"]] != [r["fold"] for r in c["samples"]]


@pytest.mark.parametrize("method", ["stump", "components", "mahalanobis", "profile", "ensemble"])
def test_save_then_apply_reproduces_fitted_predictions(cli, tmp_path, method):
    det, adv = tmp_path / "det.json", tmp_path / "adv.safetensors"
    fit = cli("detect", EXAMPLE, *SMALL, "--method", method, "--save", det, "--save-adv", adv, "--format", "jsonl")
    assert fit.exit_code == 0, fit.stderr
    rows = _jsonl(fit.stdout)
    fitted = {(r["adversarial"], r["index"]): (r["score"], r["flagged"]) for r in rows}
    for source, is_adv, batch in (("digits", False, "7"), (f"tensors:{adv}", True, "13")):
        res = cli("detect", EXAMPLE, "--detector", det, "--data", source, "--limit", "60", "--batch-size", batch,
                  "--format", "jsonl")
        assert res.exit_code == 0, res.stderr
        applied = _jsonl(res.stdout)
        assert len(applied) == 60 and list(applied[0]) == APPLY_COLUMNS
        for r in applied:
            assert (r["score"], r["flagged"]) == fitted[(is_adv, r["index"])]  # exactly, not approximately
        share = sum(r["flagged"] for r in applied) / 60
        assert f"({share:.1%})" in res.stderr  # the flagged share, for people, on stderr
    saved = json.loads(det.read_text())
    assert saved["kind"] == "flatrob-detector" and saved["method"] == method
    meta = saved["meta"]
    assert {"checkpoint_sha256", "layer", "weight_norm", "cv", "n_train", "score_clean", "score_adversarial",
            "attack", "versions"} <= set(meta)
    assert meta["layer"] == "fc" or meta["layer"]
    doc = _json(cli("detect", EXAMPLE, "--detector", det, "--limit", "60", "--format", "json"))
    assert set(doc["summary"]) == APPLY_KEYS and doc["summary"]["checkpoint_match"] is True
    assert doc["config"]["mode"] == "apply" and doc["config"]["method"] == method


def test_generated_adversarials_are_those_of_attack_and_reading_them_gives_the_same_detector(cli, tmp_path):
    opts = ("--limit", "40", "--steps", "4", "--eps", "0.2", "--alpha", "0.05", "--random-start", "--seed", "2")
    mine, theirs = tmp_path / "d.safetensors", tmp_path / "a.safetensors"
    gen = _json(cli("detect", EXAMPLE, *opts, "--save-adv", mine, "--format", "json"))
    assert cli("attack", EXAMPLE, *opts, "--save-adv", theirs, "--format", "json").exit_code == 0
    a, b = load_file(str(mine)), load_file(str(theirs))
    assert set(a) == {"x", "y", "index"} and all(torch.equal(a[k], b[k]) for k in a)
    read = _json(cli("detect", EXAMPLE, "--limit", "40", "--seed", "2", "--adversarial", theirs, "--format", "json"))
    assert read["summary"] == gen["summary"]
    assert read["config"]["adversarial_metadata"]["eps"] == 0.2 and read["config"]["attack"] is None


def test_only_successful_keeps_changed_predictions_and_balances(cli):
    doc = _json(cli("detect", EXAMPLE, "--limit", "60", "--steps", "3", "--eps", "0.08", "--alpha", "0.03",
                    "--only-successful", "--format", "json", "--per-sample"))
    s = doc["summary"]
    assert 0 < s["n_successful"] < 60
    assert s["n_adversarial"] == s["n_successful"] == s["n_clean"] < s["n_clean_scored"] == 60
    rows = doc["samples"]
    assert sum(r["used"] for r in rows if r["adversarial"]) == s["n_successful"]
    assert sum(r["used"] for r in rows if not r["adversarial"]) == s["n_clean"]
    assert all(r["fold"] is None and r["oof_decision"] is None for r in rows if not r["used"])


# ------------------------------------------------------------------------------------------------
# The paper's result (D.4) and the flat valley (§6.2) on the bundled example, full test split
# ------------------------------------------------------------------------------------------------


def test_stump_detects_pgd_linf_eps_01(cli):
    doc = _json(cli("detect", EXAMPLE, "--norm", "linf", "--eps", "0.1", "--alpha", "0.01", "--steps", "20",
                    "--folds", "5", "--format", "json"))
    s = doc["summary"]
    assert s["n_clean"] == s["n_adversarial"] == 360
    assert s["accuracy_mean"] >= 0.85, s
    assert s["direction"] == "above"  # moderate attacks climb to the sharp decision boundary


def test_components_beat_the_stump_on_strong_attacks(cli, tmp_path):
    adv = tmp_path / "adv.safetensors"
    comp = _json(cli("detect", EXAMPLE, "--norm", "linf", "--eps", "0.3", "--alpha", "0.03", "--steps", "20",
                     "--method", "components", "--save-adv", adv, "--format", "json"))
    stump = _json(cli("detect", EXAMPLE, "--adversarial", adv, "--format", "json"))
    c, s = comp["summary"], stump["summary"]
    assert c["n_adversarial"] == s["n_adversarial"] == 360
    assert c["accuracy_mean"] >= s["accuracy_mean"] + 0.1, (c["accuracy_mean"], s["accuracy_mean"])
    # the strong attack crossed into the flat valley: adversarials are flatter than clean inputs
    assert s["direction"] == "below"
    # the baseline reported with --method components is that same stump on the same folds
    assert c["baseline"]["accuracy_mean"] == pytest.approx(s["accuracy_mean"])


# ------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------


def test_plot_is_written(cli, tmp_path):
    path = tmp_path / "hist.png"
    res = cli("detect", EXAMPLE, "--limit", "30", "--steps", "3", *STRONG, "--folds", "3", "--plot", path, "--quiet")
    assert res.exit_code == 0, res.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist.png"]


def test_plot_without_matplotlib_is_one_error(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = cli("detect", EXAMPLE, "--limit", "10", "--plot", tmp_path / "x.png")
    assert_one_error(res, "matplotlib")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Refusals: one Error: line, exit 2, no file created
# ------------------------------------------------------------------------------------------------


def _detector_file(path, sha="0" * 64, layer="fc", threshold=1.0):
    doc = {"schema_version": 1, "kind": "flatrob-detector", "method": "stump", "score": "relative_sharpness",
           "threshold": threshold, "direction": "above",
           "meta": {"checkpoint_sha256": sha, "layer": layer, "weight_norm": "squared"}}
    path.write_text(json.dumps(doc))
    return path


def _example_sha() -> str:
    from flatcli.inputs.checkpoint import read

    return read(EXAMPLE).sha256


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--folds", "1"], ["--folds", ">= 2"]),
        (["--score", "sharpest"], ["--score"]),
        (["--method", "forest"], ["--method"]),
        (["--method", "components", "--score", "trace_h"], ["--score trace_h", "components"]),
        (["--force"], ["--force", "--detector"]),
        (["--adversarial", "ADV", "--eps", "0.1"], ["--adversarial", "--eps"]),
        (["--adversarial", "{tmp}/missing.safetensors"], ["missing.safetensors"]),
        (["--save", "{tmp}/same", "--output", "{tmp}/same"], ["same file"]),
        (["--save", "{tmp}/no/such/dir/d.json"], ["does not exist"]),
        (["--plot", "{tmp}/x.gif"], [".png"]),
        (["--limit", "3"], ["--folds 5", "3 clean"]),
        (["--limit", "20", "--steps", "1", "--eps", "0", "--only-successful"], ["--only-successful", "no adversarial"]),
        (["--detector", "{tmp}/garbage.json"], ["garbage.json", "not valid json"]),
        (["--detector", "{tmp}/missing.json"], ["missing.json", "does not exist"]),
        (["--detector", "{tmp}/other.json"], ["another model", "--force"]),
        (["--detector", "{tmp}/mine.json", "--eps", "0.1", "--save", "{tmp}/d.json"], ["--eps", "--save"]),
        (["--detector", "{tmp}/mine.json", "--weight-norm", "plain"], ["--weight-norm", "squared"]),
        (["--detector", "{tmp}/otherlayer.json"], ["classifier"]),
        (["--adversarial", "ADV", "--loss", "cw"], ["--adversarial", "--loss"]),
        (["--detector", "{tmp}/mine.json", "--attack", "apgd"], ["--attack"]),
        (["--attack", "apgd", "--alpha", "0.1"], ["--alpha"]),
        (["--loss", "hinge"], ["hinge"]),
        (["--adaptive", "--attack", "apgd"], ["--adaptive", "--attack apgd"]),
        (["--method", "components", "--fit-data", "digits"], ["--fit-data", "components"]),
        (["--method", "stump", "--probe-steps", "2"], ["--probe-steps", "stump"]),
        (["--method", "profile", "--probe-steps", "4"], ["--probe-steps", "1 to 3"]),
        (["--method", "profile", "--probe-size", "0"], ["--probe-size", "> 0"]),
        (["--method", "mahalanobis", "--score", "confidence"], ["--score confidence", "mahalanobis"]),
        (["--method", "mahalanobis", "--fit-data", "digits", "--split", "train"], ["--fit-data", "tested on"]),
        (["--method", "ensemble", "--data", "tensors:{tmp}/adv.safetensors"], ["--fit-data", "tested on"]),
        (["--adaptive-weight", "2"], ["--adaptive-weight", "--adaptive"]),
        (["--adaptive", "--adaptive-weight", "-1"], ["--adaptive-weight", "> 0"]),
        (["--adaptive", "--adversarial", "{tmp}/adv.safetensors"], ["--adaptive", "--adversarial"]),
        (["--detector", "{tmp}/mine.json", "--adaptive"], ["--adaptive", "fitting"]),
        (["--detector", "{tmp}/mine.json", "--fit-data", "digits"], ["--fit-data", "fitting"]),
        (["--detector", "{tmp}/maha.json"], ["another model", "--force"]),
    ],
)
def test_bad_input_is_one_error_and_no_file(cli, tmp_path, args, fragments):
    (tmp_path / "garbage.json").write_text("{not json")
    _detector_file(tmp_path / "other.json")
    sha = _example_sha()
    _detector_file(tmp_path / "mine.json", sha=sha)
    _detector_file(tmp_path / "otherlayer.json", sha=sha, layer="classifier")
    doc = json.loads(_detector_file(tmp_path / "maha.json").read_text())  # a Mahalanobis detector of another model
    doc.update(method="mahalanobis", score="mahalanobis",
               mahalanobis={"class_means": [[0.0] * 32] * 10, "precision": [[1.0] * 32] * 32, "counts": [1] * 10})
    (tmp_path / "maha.json").write_text(json.dumps(doc))
    save_file({"x": torch.zeros(6, 1, 8, 8), "y": torch.zeros(6, dtype=torch.int64)}, str(tmp_path / "adv.safetensors"))
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "out.json"
    extra = [] if "--output" in args else ["--output", str(out)]
    res = cli("detect", EXAMPLE, *args, *extra, "--format", "json")
    assert_one_error(res, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_force_applies_a_foreign_detector_with_a_note(cli, tmp_path):
    det = _detector_file(tmp_path / "other.json", threshold=1.0)
    res = cli("detect", EXAMPLE, "--detector", det, "--force", "--limit", "30", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    assert "--force" in res.stderr and "sha256" in res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 30 and list(rows[0]) == APPLY_COLUMNS
    assert all((r["flagged"] == "True") == (float(r["score"]) > 1.0) for r in rows)


def test_subprocess_apply_streams_rows_and_notes_the_share(tmp_path):
    import subprocess

    det = _detector_file(tmp_path / "det.json", sha=_example_sha(), threshold=5.0)
    proc = subprocess.run(
        [sys.executable, "-m", "flatcli", "detect", EXAMPLE, "--detector", str(det), "--limit", "25",
         "--format", "jsonl", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = _jsonl(proc.stdout)
    assert len(rows) == 25 and all(list(r) == APPLY_COLUMNS for r in rows)
    flagged = sum(r["score"] > 5.0 for r in rows)
    assert proc.stderr.strip() == f"flagged {flagged} of 25 inputs ({flagged / 25:.1%})"


@pytest.mark.parametrize("attack, loss, extra", [("pgd", "cw", ["--alpha", "0.03"]), ("apgd", "dlr", [])])
def test_crafting_attack_and_loss_are_options(cli, attack, loss, extra):
    res = cli("detect", EXAMPLE, "--limit", "40", "--folds", "2", "--eps", "0.1", "--steps", "3", "--attack", attack,
              "--loss", loss, *extra, "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["config"]["attack"]["attack"], doc["config"]["attack"]["loss"]) == (attack, loss)
    assert doc["summary"]["prediction_changed"] > 0

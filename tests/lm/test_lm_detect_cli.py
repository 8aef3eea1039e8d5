"""``flatrob detect MODEL --data prompts:FILE --attack gcg`` through the CLI: the library's numbers, the table with the
perplexity filter beside the curvature detector, rows as CSV, and one line for what does not apply."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.conftest import assert_one_error
from tests.lm.test_cli import invoke

GCG = ("--attack", "gcg", "--steps", 1, "--search-width", 8, "--topk", 4, "--suffix-length", 2,
       "--chat-template", "none", "--folds", 3)


@pytest.fixture(scope="module")
def saved(lm_folders, prompts_csv, tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "d.json"
    res = invoke("detect", lm_folders["single"], "--data", f"prompts:{prompts_csv}", *GCG, "-f", "json",
                 "--per-sample", "-q", "--save", path)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), path


@pytest.fixture(scope="module")
def doc(saved):
    return saved[0]


def test_a_saved_detector_flags_prompts_as_they_are(saved, lm_folders, prompts_csv, prompts_jsonl):
    doc, path = saved
    res = invoke("detect", lm_folders["single"], "--data", f"prompts:{prompts_csv}", "--detector", path, "-f", "json",
                 "--per-sample", "-q")
    assert res.exit_code == 0, res.output
    applied = json.loads(res.stdout)
    clean = [r for r in doc["samples"] if not r["adversarial"]]  # the same prompts, no suffix, the same template
    assert [r["score"] for r in applied["samples"]] == pytest.approx([r["score"] for r in clean], rel=1e-12)
    assert [r["flagged"] for r in applied["samples"]] == [r["flagged"] for r in clean]
    assert applied["summary"]["checkpoint_match"] is True and applied["config"]["chat_template"] == "none"
    res = invoke("detect", lm_folders["single"], "--data", f"prompts:{prompts_jsonl}", "--detector", path, "-q")
    assert res.exit_code == 0, res.output
    res = invoke("detect", lm_folders["tied"], "--data", f"prompts:{prompts_csv}", "--detector", path)
    assert_one_error(res, "its threshold means nothing for another model")
    res = invoke("detect", lm_folders["tied"], "--data", f"prompts:{prompts_csv}", "--detector", path, "--force", "-q")
    assert res.exit_code == 0, res.output
    res = invoke("detect", lm_folders["single"], "--data", f"prompts:{prompts_csv}", "--detector", path,
                 "--chat-template", "vicuna")
    assert_one_error(res, "--chat-template 'vicuna' lays the prompts out otherwise than the detector's 'none'")
    res = invoke("detect", "example:digits-cnn", "--limit", 4, "--detector", path)
    assert_one_error(res, "thresholds trace_h_prompt of a language model's prompts")


def test_json_is_the_library_run(doc, lm_folders, prompts_csv):
    import flatcli.api as fr

    direct = fr.detect(str(lm_folders["single"]), f"prompts:{prompts_csv}", attack="gcg", steps=1, search_width=8,
                       topk=4, suffix_length=2, chat_template="none", folds=3)
    assert doc["command"] == "detect" and doc["config"]["score"] == "trace_h_prompt"
    assert doc["summary"]["auroc"] == pytest.approx(direct.summary["auroc"], abs=1e-12)
    assert doc["summary"]["baseline"]["score"] == "log_perplexity"
    assert [(r["index"], r["adversarial"]) for r in doc["samples"]] == [(i, a) for i in range(3) for a in (0, 1)]
    assert direct.artifacts["detector"].score == "trace_h_prompt"


def test_table_shows_both_detectors_and_csv_has_a_row_per_prompt_and_kind(lm_folders, prompts_csv, tmp_path):
    res = invoke("detect", lm_folders["single"], "--data", f"prompts:{prompts_csv}", *GCG, "--score", "trace_h_last",
                 "-q")
    assert res.exit_code == 0, res.output
    assert "trace_h_last (stump)" in res.stdout and "log_perplexity (perplexity filter)" in res.stdout
    out = tmp_path / "rows.csv"
    res = invoke("detect", lm_folders["single"], "--data", f"prompts:{prompts_csv}", *GCG, "-f", "csv", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 6 and {"log_perplexity", "trace_h_prompt", "fold", "oof_decision", "flagged"} <= set(rows[0])


IMAGES = "example:digits-cnn"


@pytest.mark.parametrize("model, args, fragment", [
    ("single", ("--method", "profile"), "--method profile reads features of an image classifier"),
    ("single", ("--plot", "d.png"), "--plot do not apply to detecting GCG suffixes"),
    ("single", ("--adaptive",), "--adaptive runs PGD on images"),
    ("single", ("--eps", "0.1"), "--eps do not apply to detecting GCG suffixes"),
    ("single", ("--attack", "pgd"), "a language model is attacked by gcg"),
    ("single", ("--only-successful", "--search-width", 8, "--topk", 4, "--suffix-length", 2, "--folds", 3),
     "no suffix made greedy decoding reproduce its target"),
    (IMAGES, ("--chat-template", "none", "--limit", 4), "--chat-template do not apply to an image classifier"),
    (IMAGES, ("--attack", "gcg", "--limit", 4), "--attack gcg attacks a causal language model's prompts"),
])
def test_what_belongs_to_the_other_kind_of_model_is_refused_in_one_line(lm_folders, prompts_csv, model, args,
                                                                         fragment):
    data = () if model == IMAGES else ("--data", f"prompts:{prompts_csv}", "--steps", 1)
    assert_one_error(invoke("detect", lm_folders.get(model, model), *data, *args), fragment)

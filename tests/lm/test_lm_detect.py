"""Detecting GCG suffixes: the features recomputed from their ids, the log-perplexity equal to transformers' loss on
the goal and suffix tokens, the AUROCs equal to scikit-learn's, the perplexity filter on the same folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from flatcli.errors import OptionError
from flatcli.inputs.data.prompts import Prompt, layout
from flatcli.models.kinds import CausalLM
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions, PromptOptions
from flatcli.runs.detect import DetectSettings
from flatcli.runs.lm_detect import FEATURES, ROW_KEYS, lm_detect

from .conftest import GOALS, tiny_llama

PROMPTS = [Prompt(*g) for g in GOALS]
SUFFIX = 3


@pytest.fixture(scope="module")
def kind(tokenizer):
    return CausalLM(tiny_llama(len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def run(kind):
    return lm_detect(kind, PROMPTS, DetectSettings(folds=3, language=True), attack=AttackOptions(steps=2),
                     gcg=GCGOptions(search_width=16, topk=8, suffix_length=SUFFIX),
                     prompt=PromptOptions(chat_template="vicuna"), keep_samples=True)


def test_rows_pair_up_and_recompute_from_their_ids(kind, run):
    assert [(r["index"], r["adversarial"]) for r in run.samples] == [(i, a) for i in range(3) for a in (False, True)]
    assert all(tuple(r) == ROW_KEYS for r in run.samples)
    for clean, adv in zip(run.samples[::2], run.samples[1::2]):
        assert len(adv["input_ids"]) == len(clean["input_ids"]) + SUFFIX
        assert adv["span"] == [clean["span"][0], clean["span"][1] + SUFFIX]
    for row in run.samples:
        x = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            out = kind.model(input_ids=x, output_hidden_states=True)
        p = torch.softmax(out.logits[0].double(), -1)
        trace = (p * (1 - p)).sum(-1) * (out.hidden_states[-1][0].double() ** 2).sum(-1)
        start, end = row["span"]
        assert row["trace_h_prompt"] == pytest.approx(float(trace[start - 1:end - 1].mean()), rel=1e-5)
        assert row["trace_h_last"] == pytest.approx(float(trace[-1]), rel=1e-5)
        assert row["score"] == row["trace_h_prompt"]  # the default detector thresholds trace_h_prompt


def test_log_perplexity_is_the_transformers_loss_on_the_goal_and_suffix_tokens(kind, tokenizer, run):
    for row, p in zip(run.samples, [p for p in PROMPTS for _ in (0, 1)]):
        x = torch.tensor([row["input_ids"]])
        start, end = row["span"]
        labels = torch.full_like(x, -100)
        labels[0, start:end] = x[0, start:end]
        with torch.no_grad():
            loss = kind.model(input_ids=x, labels=labels).loss
        assert row["log_perplexity"] == pytest.approx(float(loss), rel=1e-5)
        # the span is the goal (and the suffix), never the template's tokens around it
        lay = layout(p, tokenizer, "vicuna", suffix="")
        assert start > 20 and end == len(lay.before) + SUFFIX * row["adversarial"]
        assert tokenizer.decode(row["input_ids"][start:len(lay.before)]).strip() == p.goal
        assert "USER" not in tokenizer.decode(row["input_ids"][start:end])


def test_aurocs_are_scikit_learns_and_the_baseline_shares_the_folds(run):
    rows, summary = run.samples, run.summary
    labels = [r["adversarial"] for r in rows]
    for feature in FEATURES:
        assert summary["auroc"][feature] == pytest.approx(roc_auc_score(labels, [r[feature] for r in rows]), abs=1e-12)
    assert summary["auc"] == pytest.approx(roc_auc_score(labels, [r["oof_decision"] for r in rows]), abs=1e-12)
    base = summary["baseline"]
    assert base["score"] == "log_perplexity" and base["method"] == "stump"
    assert base["auc"] == pytest.approx(roc_auc_score(labels, [r["baseline_oof_decision"] for r in rows]), abs=1e-12)
    # the fold detector of the baseline, refitted by hand on the other folds' log-perplexities, decides the same
    from flatcli.core.detectors import fit

    y = np.array(labels, dtype=np.int64)
    values = np.array([r["log_perplexity"] for r in rows])
    folds = np.array([r["fold"] for r in rows])
    for k in set(folds):
        det = fit(values[folds != k], y[folds != k], score="log_perplexity")
        assert det.decision(values[folds == k]) == pytest.approx([r["baseline_oof_decision"] for r in rows
                                                                   if r["fold"] == k], abs=1e-12)
    assert summary["n"] == 3 and summary["n_clean"] == summary["n_adversarial"] == 3
    assert run.config["conventions"]["baseline"].startswith("the perplexity filter")


@pytest.mark.parametrize("settings, fragment", [
    (dict(method="components"), "method= components reads features of an image classifier"),
    (dict(adaptive=True), "adaptive= runs PGD on images"),
    (dict(score="relative_sharpness"), "choose one of trace_h_prompt, trace_h_last, log_perplexity"),
])
def test_image_only_settings_are_refused_for_prompts(settings, fragment):
    with pytest.raises(OptionError, match=fragment):
        DetectSettings(language=True, **settings)


def test_prompt_scores_are_refused_for_images():
    with pytest.raises(OptionError, match="unknown score= 'trace_h_last'"):
        DetectSettings(score="trace_h_last")
    assert DetectSettings().score == "relative_sharpness"


def test_a_detector_of_images_is_refused_for_prompts(kind):
    from flatcli.core.detectors import Stump
    from flatcli.errors import DetectorError
    from flatcli.runs.lm_detect import check_prompt_detector

    with pytest.raises(DetectorError, match="thresholds relative_sharpness of an image classifier"):
        check_prompt_detector(Stump(score="relative_sharpness", threshold=0.0, direction="above"), kind, "none", None)

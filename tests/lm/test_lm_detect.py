"""Detection measures of clean and GCG-suffixed prompts: recomputed from their ids; AUROC as Mann-Whitney."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flatcli.inputs.data.prompts import Prompt
from flatcli.models.kinds import CausalLM
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions
from flatcli.runs.lm_detect import auroc, lm_detect

from .conftest import GOALS, tiny_llama


def test_auroc():
    assert auroc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert auroc([0, 1], [True, False]) == 0.0 and auroc([1, 1], [True, False]) == 0.5


def test_rows_recompute_and_pair_up(tokenizer):
    kind = CausalLM(tiny_llama(len(tokenizer)), tokenizer)
    result = lm_detect(kind, [Prompt(*g) for g in GOALS], attack=AttackOptions(steps=2), keep_samples=True,
                       gcg=GCGOptions(search_width=16, topk=8, suffix_length=3))
    assert [(r["index"], r["adversarial"]) for r in result.samples] == [(i, a) for i in range(3) for a in (False, True)]
    for clean, adv in zip(result.samples[::2], result.samples[1::2]):
        assert len(adv["input_ids"]) == len(clean["input_ids"]) + 3
    for row in result.samples:
        x = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            out = kind.model(input_ids=x, output_hidden_states=True)
        logits = out.logits[0].double()
        assert row["log_perplexity"] == pytest.approx(float(F.cross_entropy(logits[:-1], x[0, 1:])), rel=1e-5)
        p = torch.softmax(logits, -1)
        trace = (p * (1 - p)).sum(-1) * (out.hidden_states[-1][0].double() ** 2).sum(-1)
        assert row["trace_h_prompt"] == pytest.approx(float(trace[:-1].mean()), rel=1e-5)
        assert row["trace_h_last"] == pytest.approx(float(trace[-1]), rel=1e-5)
    assert set(result.summary["auroc"]) == {"log_perplexity", "trace_h_prompt", "trace_h_last"}
    assert all(0 <= v <= 1 for v in result.summary["auroc"].values())

"""GCG on a tiny Llama: deterministic per seed, every recorded number recomputed from the recorded ids, loss lowered."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flatcli.core.gcg import GCG, Search, sample_candidates
from flatcli.inputs.data.prompts import Prompt
from flatcli.models.kinds import CausalLM
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions, TokenHeadOptions
from flatcli.runs.lm_attack import ROW_KEYS, lm_attack, not_allowed_tokens

from .conftest import GOALS, tiny_llama

PROMPTS = [Prompt(*g) for g in GOALS[:2]]
SMALL = GCGOptions(search_width=48, topk=16, suffix_length=4, candidate_batch=20)


@pytest.fixture(scope="module")
def kind(tokenizer):
    return CausalLM(tiny_llama(len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def run(kind):
    return lm_attack(kind, PROMPTS, attack=AttackOptions(steps=5), gcg=SMALL, seed=3, keep_samples=True)


def test_same_seed_same_trajectory(kind, run):
    again = lm_attack(kind, PROMPTS, attack=AttackOptions(steps=5), gcg=SMALL, seed=3, keep_samples=True)
    assert again.samples == run.samples
    other = lm_attack(kind, PROMPTS[:1], attack=AttackOptions(steps=5), gcg=SMALL, seed=4, keep_samples=True)
    assert [r["suffix_ids"] for r in other.samples] != [r["suffix_ids"] for r in run.samples[:6]]


def test_rows_recompute_from_their_ids(kind, run):
    assert [tuple(r) for r in run.samples] == [ROW_KEYS] * 12
    assert [(r["sample"], r["step"]) for r in run.samples] == [(s, t) for s in range(2) for t in range(6)]
    for row in run.samples:
        x = torch.tensor([row["input_ids"]])
        ts = row["target_start"]
        with torch.no_grad():
            out = kind.model(input_ids=x, output_hidden_states=True)
        logits = out.logits[0].double()
        assert row["loss"] == pytest.approx(float(F.cross_entropy(logits[ts - 1:-1], x[0, ts:])), rel=1e-5)
        p = torch.softmax(logits, -1)
        per_token = (p * (1 - p)).sum(-1) * (out.hidden_states[-1][0].double() ** 2).sum(-1)
        assert row["trace_h"] == pytest.approx(float(per_token[ts - 1:-1].mean()), rel=1e-5)
        assert row["trace_h_all_positions"] == pytest.approx(float(per_token.mean()), rel=1e-5)
        assert row["exact_match"] == bool((logits[ts - 1:-1].argmax(-1) == x[0, ts:]).all())
        norm_sq = float((kind.head.weight.detach().double() ** 2).sum())
        assert row["relative_sharpness"] == pytest.approx(norm_sq * row["trace_h"], rel=1e-12)


def test_loss_decreases(run):
    for p in run.summary["prompts"]:
        assert p["final_loss"] < p["initial_loss"]
    assert len(run.summary["mean_sharpness_by_step"]) == 6 and 0 <= run.summary["valley_share"] <= 1
    assert run.config["attack"] == "gcg" and run.config["steps"] == 5 and run.config["search_width"] == 48


def test_early_stop_when_greedy_reproduces_target(kind, tokenizer):
    """A target the model already produces greedily: step 0 matches and the run stops there."""
    before = torch.tensor(tokenizer(PROMPTS[0].goal, add_special_tokens=False)["input_ids"])
    suffix = torch.tensor([5, 6, 7])
    greedy = kind.model.generate(torch.cat([before, suffix])[None], max_new_tokens=3, do_sample=False,
                                 attention_mask=torch.ones(1, len(before) + 3, dtype=torch.long))[0, -3:]
    gcg = GCG(kind.features, kind.head, kind.model.get_input_embeddings(), before, (), greedy, Search(8, 4))
    steps = list(gcg.run(suffix, 5, torch.Generator().manual_seed(0), early_stop=True))
    assert len(steps) == 1 and steps[0].measures["exact_match"]
    assert len(list(gcg.run(suffix, 2, torch.Generator().manual_seed(0)))) == 3


def test_candidates_replace_within_topk(tokenizer):
    g = torch.Generator().manual_seed(0)
    suffix = torch.tensor([5, 6, 7, 8])
    grad = torch.randn(4, len(tokenizer) + 8)
    banned = not_allowed_tokens(tokenizer, len(tokenizer) + 8)
    assert set(range(len(tokenizer), len(tokenizer) + 8)) <= set(banned.tolist())
    assert set(banned.tolist()) >= set(not_allowed_tokens(tokenizer, len(tokenizer), True).tolist())
    cands = sample_candidates(suffix, grad, Search(search_width=30, topk=5, n_replace=2), g, banned)
    masked = grad.clone()
    masked[:, banned] = torch.inf
    top = (-masked).topk(5, dim=1).indices
    for c in cands:
        changed = (c != suffix).nonzero().flatten().tolist()
        assert len(changed) <= 2
        assert all(int(c[i]) in top[i].tolist() for i in changed)
        assert not set(c.tolist()) & set(banned.tolist()) - set(suffix.tolist())


def test_prefix_cache_gives_the_same_trajectory(kind, run):
    without = GCGOptions(**{**SMALL.values(), "prefix_cache": False})
    full = lm_attack(kind, PROMPTS, attack=AttackOptions(steps=5), gcg=without, seed=3, keep_samples=True)
    assert not any("prefix" in note for note in run.notes)
    for a, b in zip(run.samples, full.samples):
        assert a["suffix_ids"] == b["suffix_ids"] and a["input_ids"] == b["input_ids"]
        for key in ("loss", "trace_h", "trace_h_all_positions", "target_confidence"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


def test_all_positions_and_progress(kind):
    seen = []
    r = lm_attack(kind, PROMPTS[:1], attack=AttackOptions(steps=2), gcg=SMALL, keep_samples=True,
                  head=TokenHeadOptions(positions="all", weight_norm="none"), progress=lambda *a: seen.append(a))
    assert seen == [(0, 2), (1, 2), (2, 2)]
    for row in r.samples:
        assert row["trace_h"] == row["relative_sharpness"] == row["trace_h_all_positions"]

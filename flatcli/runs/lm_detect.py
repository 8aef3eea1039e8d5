"""Label-free measures of clean and GCG-suffixed prompts, and how well each separates them (issue 23, item 5).

GCG (:func:`flatcli.runs.lm_attack.lm_attack`) crafts a suffix per prompt; then each prompt is measured twice,
clean (no suffix) and adversarial (its final suffix), on the prompt alone (up to the generation prompt, no
target: a detector sees no target), one forward pass each
(:func:`flatcli.core.token_curvature.prompt_means`): ``log_perplexity`` (the perplexity filter of Jain et al.
2023 and Alon & Kamfonas 2023, the field's baseline), ``trace_h_prompt`` (mean head curvature over the
prompt's positions) and ``trace_h_last`` (at the position that predicts the answer). The summary gives each
measure's AUROC for "adversarial" (a higher value scores as adversarial; 0.5 is chance, below 0.5 means the
measure falls on adversarial prompts). Fitting a thresholded detector on these columns is left to
:mod:`flatcli.core.detectors`.
"""

from __future__ import annotations

import torch

from flatcli.core.token_curvature import prompt_means
from flatcli.inputs.data.prompts import Prompt, layout
from flatcli.models.kinds.causal_lm import CausalLM
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions, PromptOptions, TokenHeadOptions
from flatcli.runs.lm_attack import lm_attack
from flatcli.runs.lm_sharpness import effective_template
from flatcli.runs.result import OnRows, Result, Rows

#: Label-free measures of a prompt, each a detection score.
FEATURES = ("log_perplexity", "trace_h_prompt", "trace_h_last")
#: Keys of the per-prompt rows (one clean and one adversarial row per prompt).
ROW_KEYS = ("index", "adversarial", "input_ids", *FEATURES)


def prompt_row(kind: CausalLM, ids: list[int]) -> dict:
    """:data:`FEATURES` of one prompt's token ids, from one forward pass."""
    x = torch.tensor([ids])
    with torch.no_grad():
        phi, _ = kind.features(x.to(kind.device))
    return {k: v[0].item() for k, v in prompt_means(phi, kind.head.weight, kind.head.bias, x).items()}


def auroc(scores: list[float], positive: list[bool]) -> float:
    """Probability that a positive scores above a negative, ties counting one half (Mann-Whitney)."""
    pos = torch.tensor([s for s, p in zip(scores, positive) if p], dtype=torch.float64)
    neg = torch.tensor([s for s, p in zip(scores, positive) if not p], dtype=torch.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def lm_detect(kind: CausalLM, prompts: list[Prompt], *, data: str = "prompts", attack: AttackOptions = AttackOptions(),
              gcg: GCGOptions = GCGOptions(), prompt: PromptOptions = PromptOptions(),
              head: TokenHeadOptions = TokenHeadOptions(), seed: int = 0, on_rows: OnRows | None = None,
              keep_samples: bool = False) -> Result:
    """GCG suffixes for ``prompts``, then a clean and an adversarial row per prompt and each feature's AUROC."""
    crafted = lm_attack(kind, prompts, data=data, attack=attack, gcg=gcg, prompt=prompt, head=head, seed=seed)
    template = effective_template(kind, prompt.chat_template)
    rows = Rows(on_rows, keep_samples)
    columns: dict[str, list] = {k: [] for k in (*FEATURES, "adversarial")}
    for index, (p, result) in enumerate(zip(prompts, crafted.summary["prompts"])):
        lay = layout(p, kind.tokenizer, template, prompt.system, suffix="")
        for adversarial, suffix in ((False, ()), (True, result["suffix_ids"])):
            ids = lay.prompt_ids(suffix)
            row = {"index": index, "adversarial": adversarial, "input_ids": ids, **prompt_row(kind, ids)}
            for k in columns:
                columns[k].append(row[k])
            if rows.wanted:
                rows([{k: row[k] for k in ROW_KEYS}])
    summary = {"n": len(prompts), "attack_success_rate": crafted.summary["success_rate"],
               "auroc": {k: auroc(columns[k], columns["adversarial"]) for k in FEATURES}}
    return Result("detect", crafted.config, summary, rows.kept, notes=crafted.notes)

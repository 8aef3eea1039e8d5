"""``flatrob sharpness MODEL --data prompts:FILE``: closed-form head curvature per token of a causal LM, per prompt.

One forward pass per prompt captures ``phi_t`` (the head's input) at every position t;
:func:`flatcli.core.token_curvature.token_measures` gives, in float64 and the vocabulary in chunks,
``trace_h_t = (sum_j p_tj (1 - p_tj)) ||phi_t||^2`` and the cross-entropy of the next token. A prompt's row
averages over the positions that predict the target (``positions="target"``: the Hessian of GCG's objective,
the mean target cross-entropy, w.r.t. the head) or over every position (``"all"``: the authors' code, with
``weight_norm="none"``); ``trace_h_tokens`` holds the trace at each target position, ``loss`` is the mean
target cross-entropy, ``target_confidence`` the mean probability of the target tokens, ``exact_match`` whether
every target position's arg max is its target token (greedy decoding reproduces the target);
``relative_sharpness = ||W||_F^2 trace_h`` (``plain``: ``||W||_F``; ``none``: 1).
A head tied to the input embeddings is measured as its own variable (features fixed); ``config.tied`` says so.
"""

from __future__ import annotations

import numpy as np
import torch

from flatcli.core.statistics import describe_columns
from flatcli.core.token_curvature import sequence_means, weight_norm_sq
from flatcli.errors import OptionError
from flatcli.inputs.data.prompts import Layout, Prompt, layout, prompts_path, read_prompts
from flatcli.models.kinds.causal_lm import CausalLM
from flatcli.options.lm import PromptOptions, TokenHeadOptions
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runtime.distributed import SINGLE, Dist
from flatcli.runtime.loop import Progress, versions
from flatcli.runtime.prompt_loop import each_prompt

#: Numeric columns of a row, summarised over prompts.
MEASURES = ("loss", "target_confidence", "trace_h", "trace_h_all_positions", "relative_sharpness", "feature_norm")
#: Keys of the per-prompt rows, in order.
ROW_KEYS = ("index", "goal", "target_start", "target_length", "input_ids", "exact_match", *MEASURES, "trace_h_tokens")


def weight_factor(kind: CausalLM, weight_norm: str) -> float:
    """``||W||_F^2``, ``||W||_F`` or 1 for ``weight_norm`` squared, plain, none."""
    if weight_norm == "none":
        return 1.0
    squared = float(weight_norm_sq(kind.head.weight))
    return squared if weight_norm == "squared" else squared**0.5


def effective_template(kind: CausalLM, chat_template: str) -> str:
    """``auto`` is the tokenizer's own template, or ``none`` when it has none."""
    if chat_template == "auto" and not getattr(kind.tokenizer, "chat_template", None):
        return "none"
    return chat_template


def sequence_measures(kind: CausalLM, ids: torch.Tensor, target_start: int, factor: float,
                      positions: str) -> list[dict]:
    """Per sequence of ``ids`` (B, L), all with the target at ``target_start``: the measures of a row, from one
    forward pass (:func:`flatcli.core.token_curvature.sequence_means`)."""
    with torch.no_grad():
        phi = kind.features(ids.to(kind.device))
    target, every = sequence_means(phi, *kind.closed_form_head(), ids, target_start)
    chosen = target if positions == "target" else every
    out = {**target, "trace_h": chosen["trace_h"], "trace_h_all_positions": every["trace_h"],
           "relative_sharpness": factor * chosen["trace_h"], "feature_norm": chosen["feature_norm"]}
    return [{k: out[k][i].tolist() for k in ("exact_match", *MEASURES, "trace_h_tokens")} for i in range(len(ids))]


def open_run(model, data: str, *, tokenizer=None, config=None, dtype: str = "fp32",
             device: torch.device = torch.device("cpu"), trust_embedded_code: bool = False,
             limit: int | None = None) -> tuple[CausalLM, list[Prompt]]:
    """The language model (a folder, ``hf-hub:`` reference, single ``.safetensors`` file with its ``config`` and
    ``tokenizer``, or in-memory model with ``tokenizer``) and the prompts of ``data`` (``prompts:FILE``) of a run."""
    path = prompts_path(data) if isinstance(data, str) else None
    if path is None:
        raise OptionError("data", f"a language model reads prompts: give {{}} prompts:FILE, got {data!r}")
    prompts = read_prompts(path, limit)
    kind = CausalLM.open(model, tokenizer, config=config, dtype=dtype, device=device,
                         trust_embedded_code=trust_embedded_code)
    return kind, prompts


def prompt_layouts(kind: CausalLM, prompts: list[Prompt], options: PromptOptions) -> list[Layout]:
    template = effective_template(kind, options.chat_template)
    return [layout(p, kind.tokenizer, template, options.system) for p in prompts]


def lm_config(kind: CausalLM, data: str, prompt: PromptOptions, head: TokenHeadOptions, device, seed: int) -> dict:
    """The ``config`` entries of every language-model run."""
    return {**kind.describe(), "data": data, "chat_template": effective_template(kind, prompt.chat_template),
            "system": prompt.system, "positions": head.positions, "weight_norm": head.norm,
            "device": str(device), "seed": seed, "versions": versions()}


def lm_sharpness(kind: CausalLM, prompts: list[Prompt], *, data: str = "prompts",
                 prompt: PromptOptions = PromptOptions(), head: TokenHeadOptions = TokenHeadOptions(), seed: int = 0,
                 dist: Dist = SINGLE, on_rows: OnRows | None = None, keep_samples: bool = False,
                 progress: Progress | None = None) -> Result:
    """One row per prompt (streamed to ``on_rows``, kept with ``keep_samples``) and their summary;
    ``progress(done, total)`` after each prompt. Under torchrun the prompts are shared out over the ranks and the
    rows gathered on rank 0 in order (:func:`flatcli.runtime.prompt_loop.each_prompt`)."""
    rows = Rows(on_rows, keep_samples)
    factor = weight_factor(kind, head.norm)
    layouts = prompt_layouts(kind, prompts, prompt)
    columns: dict[str, list] = {k: [] for k in (*MEASURES, "exact_match")}  # per prompt, for the summary

    def compute(index: int) -> dict:
        lay = layouts[index]
        return sequence_measures(kind, torch.tensor([lay.ids()]), lay.target_start, factor, head.positions)[0]

    for index, values in each_prompt(len(prompts), compute, dist=dist, device=kind.device):
        lay = layouts[index]
        for k in columns:
            columns[k].append(values[k])
        if progress is not None:
            progress(index + 1, len(prompts))
        if rows.wanted:
            row = {"index": index, "goal": prompts[index].goal, "target_start": lay.target_start,
                   "target_length": len(lay.target), "input_ids": lay.ids(), **values}
            rows([{k: row[k] for k in ROW_KEYS}])
    config = lm_config(kind, data, prompt, head, kind.device, seed)
    notes = template_notes(kind, prompt)
    if not dist.is_main:
        return Result("sharpness", config, {}, rows.kept, notes=notes)
    summary = {
        "n": len(prompts),
        "exact_match_rate": float(np.mean(columns.pop("exact_match"))),
        "vocabulary": kind.head.out_features,
        "hidden": kind.head.in_features,
        "weight_norm": weight_factor(kind, "plain"),
        "feature_norm_min": float(np.min(columns["feature_norm"])),
        **describe_columns({k: np.asarray(v) for k, v in columns.items()}),
    }
    return Result("sharpness", config, summary, rows.kept, notes=notes)


def template_notes(kind: CausalLM, prompt: PromptOptions) -> list[str]:
    """Lines for people: the chat template fell back to none."""
    if effective_template(kind, prompt.chat_template) != prompt.chat_template:
        return ["the tokenizer has no chat template: prompts are plain text (chat_template none); give vicuna, "
                "llama-2 or a .jinja file for a chat model"]
    return []

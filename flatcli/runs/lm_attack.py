"""``flatrob attack MODEL --attack gcg --data prompts:FILE``: GCG per prompt, recording loss and head curvature.

Each prompt is attacked on its own (:class:`flatcli.core.gcg.GCG`) from its initial suffix: the prompt's own
``suffix``, else ``suffix_init``, else ``suffix_length`` copies of the token of ``!`` (the authors' 20). A
trajectory row per prompt and step (step 0 = the initial suffix) holds the suffix (text and ids), the whole
sequence (``input_ids``, ``target_start``) so that every number can be recomputed, the mean target
cross-entropy ``loss``, ``trace_h`` and ``relative_sharpness`` (over the target positions or all of them, with
the weight factor, as in :mod:`flatcli.runs.lm_sharpness`), ``trace_h_all_positions``, ``target_confidence`` and
``exact_match`` (greedy decoding reproduces the target). Candidates use printable-ASCII tokens only unless
``allow_non_ascii``, never special tokens, and must survive decoding and encoding (nanoGCG's filter). Each
prompt draws its candidates from its own generator, seeded by ``(seed, prompt index)``. The tokens before
the suffix run once and their key/value cache is reused (``prefix_cache``; checked at step 0). The summary gives
per prompt the initial and final loss and success, and the uncanny-valley statistics of the image attack
(paper Fig. 15): peak step and final/peak of the mean sharpness curve, share of valley-shaped trajectories
(a trajectory stopped early keeps its last value).
"""

from __future__ import annotations

import numpy as np
import torch

from flatcli.core.gcg import GCG, Search
from flatcli.core.trajectories import valley_mask, valley_of_mean
from flatcli.inputs.data.prompts import Prompt, layout
from flatcli.models.kinds.causal_lm import CausalLM
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions, PromptOptions, TokenHeadOptions
from flatcli.runs.lm_sharpness import effective_template, lm_config, template_notes, weight_factor
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runtime.loop import Progress

#: The authors' number of GCG steps (``steps`` left unset).
DEFAULT_STEPS = 100
#: Keys of the trajectory rows, in order.
ROW_KEYS = ("sample", "step", "suffix", "suffix_ids", "input_ids", "target_start", "loss", "trace_h",
            "relative_sharpness", "trace_h_all_positions", "target_confidence", "exact_match", "candidates")


def not_allowed_tokens(tokenizer, rows: int, allow_non_ascii: bool = False) -> torch.Tensor:
    """Ids a candidate may not use: the special tokens, the embedding rows beyond the tokenizer's vocabulary
    (``rows`` of them in all: padding) and, unless ``allow_non_ascii``, tokens that do not decode to printable
    ASCII (nanoGCG's set)."""
    bad = set(tokenizer.all_special_ids) | set(range(len(tokenizer), rows))
    if not allow_non_ascii:
        bad |= {i for i in range(len(tokenizer)) if not _printable_ascii(tokenizer.decode([i]))}
    return torch.tensor(sorted(bad), dtype=torch.long)


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def survives_retokenizing(tokenizer):
    """``keep(candidates)``: which suffixes encode back to themselves after decoding."""

    def keep(candidates: torch.Tensor) -> torch.Tensor:
        texts = tokenizer.batch_decode(candidates)
        return torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"] == c.tolist()
                             for t, c in zip(texts, candidates)], dtype=torch.bool)

    return keep


def initial_suffix(tokenizer, prompt: Prompt, gcg: GCGOptions) -> torch.Tensor:
    """The prompt's suffix, else ``suffix_init``, else ``suffix_length`` copies of the token of ``!``."""
    text = prompt.suffix or gcg.suffix_init
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else \
        tokenizer("!", add_special_tokens=False)["input_ids"][-1:] * gcg.suffix_length
    return torch.tensor(ids, dtype=torch.long)


def prompt_generator(seed: int, index: int) -> torch.Generator:
    """The candidates' generator of prompt ``index``: the same whatever other prompts run."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def lm_attack(kind: CausalLM, prompts: list[Prompt], *, data: str = "prompts", attack: AttackOptions = AttackOptions(),
              gcg: GCGOptions = GCGOptions(), prompt: PromptOptions = PromptOptions(),
              head: TokenHeadOptions = TokenHeadOptions(), seed: int = 0, on_rows: OnRows | None = None,
              keep_samples: bool = False, progress: Progress | None = None) -> Result:
    """GCG on every prompt; trajectory rows streamed to ``on_rows`` (kept with ``keep_samples``); ``progress(done,
    total)`` after each step, counted in steps of all prompts."""
    steps = DEFAULT_STEPS if attack.steps is None else attack.steps
    tokenizer = kind.tokenizer
    template = effective_template(kind, prompt.chat_template)
    factor = weight_factor(kind, head.norm)
    search = Search(gcg.search_width, gcg.topk, gcg.n_replace, gcg.candidate_batch)
    embedding = kind.model.get_input_embeddings()
    not_allowed = not_allowed_tokens(tokenizer, embedding.weight.shape[0], gcg.allow_non_ascii)
    keep = survives_retokenizing(tokenizer)
    rows = Rows(on_rows, keep_samples)
    per_prompt, curves, dropped = [], [], 0
    for index, p in enumerate(prompts):
        suffix = initial_suffix(tokenizer, p, gcg)
        lay = layout(p, tokenizer, template, prompt.system, suffix="")
        attack_run = GCG(kind.features, kind.head, embedding, lay.before,
                         lay.after, lay.target, search, not_allowed=not_allowed, keep=keep,
                         prefix=kind.prefix if gcg.prefix_cache else None)
        trajectory = []
        for s in attack_run.run(suffix, steps, prompt_generator(seed, index), early_stop=gcg.early_stop):
            m = s.measures
            trace = m["trace_h"] if head.positions == "target" else m["trace_h_all_positions"]
            row = {"sample": index, "step": s.step, "suffix": tokenizer.decode(s.suffix), "suffix_ids": s.suffix,
                   "input_ids": lay.ids(s.suffix), "target_start": attack_run.target_start, **m, "trace_h": trace,
                   "relative_sharpness": factor * trace, "candidates": s.candidates}
            trajectory.append(row)
            if progress is not None:
                progress(index * steps + s.step, len(prompts) * steps)
            if rows.wanted:
                rows([{k: row[k] for k in ROW_KEYS}])
        per_prompt.append({"sample": index, "goal": p.goal, "steps": trajectory[-1]["step"],
                           "initial_loss": trajectory[0]["loss"], "final_loss": trajectory[-1]["loss"],
                           "best_loss": min(r["loss"] for r in trajectory), "success": trajectory[-1]["exact_match"],
                           "suffix": trajectory[-1]["suffix"], "suffix_ids": trajectory[-1]["suffix_ids"]})
        curves.append([r["relative_sharpness"] for r in trajectory])
        dropped += attack_run.prefix_dropped
    config = {**lm_config(kind, data, prompt, head, kind.device, seed), "attack": "gcg", "steps": steps,
              **gcg.values()}
    notes = template_notes(kind, prompt) + ([f"the prefix cache changed the loss on {dropped} prompt(s); they ran "
                                             "without it"] if dropped else [])
    return Result("attack", config, trajectory_summary(per_prompt, curves), rows.kept, notes=notes)


def trajectory_summary(per_prompt: list[dict], curves: list[list[float]]) -> dict:
    """Overall figures and the uncanny-valley statistics of the sharpness curves (early stops padded)."""
    length = max(len(c) for c in curves)
    sharp = torch.tensor([c + [c[-1]] * (length - len(c)) for c in curves], dtype=torch.float64).T  # (T+1, B)
    return {
        "n": len(per_prompt),
        "success_rate": float(np.mean([p["success"] for p in per_prompt])),
        "initial_loss_mean": float(np.mean([p["initial_loss"] for p in per_prompt])),
        "final_loss_mean": float(np.mean([p["final_loss"] for p in per_prompt])),
        "mean_sharpness_by_step": sharp.mean(1).tolist(),
        **valley_of_mean(sharp.mean(1).numpy()),
        "valley_share": float(valley_mask(sharp).double().mean()),
        "prompts": per_prompt,
    }

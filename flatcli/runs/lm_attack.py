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

The prompts run through :func:`flatcli.runtime.prompt_loop.each_prompt` (shared out over torchrun ranks). A
prompt's steps are kept as tensors (:func:`packed`) and its rows are made from them, so with ``resume`` a
prompt read back from the store (:func:`attack_store`) gives the very rows it gave when computed; a signal
stops the run after the current step, and the prompt it interrupted is computed again by the rerun.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from flatcli.core.gcg import GCG, Search, Step
from flatcli.core.trajectories import valley_mask, valley_of_mean
from flatcli.inputs.data.prompts import Layout, Prompt, layout
from flatcli.models.kinds.causal_lm import CausalLM
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions, PromptOptions, TokenHeadOptions
from flatcli.runs.lm_sharpness import effective_template, lm_config, template_notes, weight_factor
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runtime import interrupts
from flatcli.runtime.distributed import SINGLE, Dist
from flatcli.runtime.loop import Progress, resumed_note
from flatcli.runtime.prompt_loop import each_prompt
from flatcli.runtime.resume import ResumeStore

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
              head: TokenHeadOptions = TokenHeadOptions(), seed: int = 0, dist: Dist = SINGLE,
              resume: str | None = None, on_rows: OnRows | None = None, keep_samples: bool = False,
              progress: Progress | None = None) -> Result:
    """GCG on every prompt; trajectory rows streamed to ``on_rows`` (kept with ``keep_samples``); ``progress(done,
    total)`` after each step, counted in steps of all prompts. Under torchrun the prompts are shared out over the
    ranks (:func:`flatcli.runtime.prompt_loop.each_prompt`); ``resume`` keeps each finished prompt's trajectory in
    that directory (:func:`attack_store`), and an interrupted run continues from the next unfinished prompt."""
    steps = DEFAULT_STEPS if attack.steps is None else attack.steps
    tokenizer = kind.tokenizer
    template = effective_template(kind, prompt.chat_template)
    factor = weight_factor(kind, head.norm)
    search = Search(gcg.search_width, gcg.topk, gcg.n_replace, gcg.candidate_batch)
    embedding = kind.model.get_input_embeddings()
    not_allowed = not_allowed_tokens(tokenizer, embedding.weight.shape[0], gcg.allow_non_ascii)
    keep = survives_retokenizing(tokenizer)
    layouts = [layout(p, tokenizer, template, prompt.system, suffix="") for p in prompts]
    initial = [initial_suffix(tokenizer, p, gcg) for p in prompts]
    total = len(prompts) * steps

    def compute(index: int) -> dict:
        lay = layouts[index]
        attack_run = GCG(kind.features, kind.head, embedding, lay.before, lay.after, lay.target, search,
                         not_allowed=not_allowed, keep=keep, prefix=kind.prefix if gcg.prefix_cache else None)
        trajectory = []
        for s in attack_run.run(initial[index], steps, prompt_generator(seed, index), early_stop=gcg.early_stop):
            trajectory.append(s)
            if progress is not None:
                progress(index * steps + s.step, total)
            if dist.world == 1:
                interrupts.check()  # a prompt stopped half-way is not kept: the rerun computes it again
        return packed(index, trajectory, attack_run.prefix_dropped)

    store = attack_store(kind, resume, data, prompts, layouts, initial, template, prompt, gcg, steps, seed) \
        if resume is not None and dist.is_main else None
    rows = Rows(on_rows, keep_samples)
    per_prompt, curves, dropped = [], [], 0
    for index, pack in each_prompt(len(prompts), compute, dist=dist, device=kind.device, store=store, resume=resume,
                                   resumable=True):
        lay = layouts[index]
        trajectory = []
        for step, suffix in enumerate(pack["suffix_ids"].tolist()):
            m = {k: v[step].item() for k, v in pack.items() if k not in PACKED_KEYS}
            trace = m["trace_h"] if head.positions == "target" else m["trace_h_all_positions"]
            ids = lay.ids(suffix)
            trajectory.append({"sample": index, "step": step, "suffix": tokenizer.decode(suffix), "suffix_ids": suffix,
                               "input_ids": ids, "target_start": len(ids) - len(lay.target), **m, "trace_h": trace,
                               "relative_sharpness": factor * trace, "candidates": int(pack["candidates"][step])})
        if rows.wanted:
            rows([{k: row[k] for k in ROW_KEYS} for row in trajectory])
        per_prompt.append({"sample": index, "goal": prompts[index].goal, "steps": trajectory[-1]["step"],
                           "initial_loss": trajectory[0]["loss"], "final_loss": trajectory[-1]["loss"],
                           "best_loss": min(r["loss"] for r in trajectory), "success": trajectory[-1]["exact_match"],
                           "suffix": trajectory[-1]["suffix"], "suffix_ids": trajectory[-1]["suffix_ids"]})
        curves.append([r["relative_sharpness"] for r in trajectory])
        dropped += bool(pack["prefix_dropped"])
    config = {**lm_config(kind, data, prompt, head, kind.device, seed), "attack": "gcg", "steps": steps,
              **gcg.values()}
    notes = template_notes(kind, prompt) + ([f"the prefix cache changed the loss on {dropped} prompt(s); they ran "
                                             "without it"] if dropped else [])
    notes += resumed_note(store, resume)
    if not dist.is_main:
        return Result("attack", config, {}, rows.kept, notes=notes)
    return Result("attack", config, trajectory_summary(per_prompt, curves), rows.kept, notes=notes)


#: Entries of a prompt's stored trajectory that are not per-step measures.
PACKED_KEYS = ("index", "suffix_ids", "candidates", "prefix_dropped")


def packed(index: int, trajectory: list[Step], prefix_dropped: bool) -> dict:
    """A prompt's GCG steps as tensors (what the resume store keeps; the rows are made from it, stored or not):
    ``suffix_ids`` (T+1, S), ``candidates`` (T+1,), each measure (T+1,) (float64; ``exact_match`` bool)."""
    measures = {k: torch.tensor([s.measures[k] for s in trajectory],
                                dtype=torch.bool if isinstance(v, bool) else torch.float64)
                for k, v in trajectory[0].measures.items()}
    return {"index": torch.tensor([index]), "suffix_ids": torch.tensor([s.suffix for s in trajectory]),
            "candidates": torch.tensor([s.candidates for s in trajectory]),
            "prefix_dropped": torch.tensor(prefix_dropped), **measures}


def attack_store(kind: CausalLM, resume: str, data: str, prompts: list[Prompt], layouts: list[Layout],
                 initial: list[torch.Tensor], template: str, prompt: PromptOptions, gcg: GCGOptions, steps: int,
                 seed: int) -> ResumeStore:
    """The ``resume`` store of a GCG run: one file per finished prompt, refused when made with other settings: the
    model's and tokenizer's :meth:`~flatcli.models.kinds.causal_lm.CausalLM.fingerprint`, the prompts (their number
    and the sha256 of their token ids and initial suffixes: a changed prompts file is another run), the template,
    the GCG options, steps, seed, device type."""
    from flatcli import __version__

    sequences = [[lay.ids(), suffix.tolist()] for lay, suffix in zip(layouts, initial)]
    settings = {"flatrob": __version__, **kind.fingerprint(), "data": data, "prompts": len(prompts),
                "chat_template": template, "system": prompt.system, "steps": steps, **gcg.values(), "seed": seed,
                "device": kind.device.type,  # the prompts' tokens last: a template or system prompt is named first
                "prompts_sha256": hashlib.sha256(json.dumps(sequences).encode()).hexdigest()}
    return ResumeStore(resume, "attack", settings, {})


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

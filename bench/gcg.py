#!/usr/bin/env python3
"""A GCG step, flatrob (curvature recorded) vs nanoGCG 0.3.0, side by side: seconds per step and the ratio.

On a random Llama (``bench/lm.py``'s :func:`random_llama`: ``--vocab``, ``--hidden``, ``--layers``; eager
attention) and one random prompt (``--before`` tokens, a suffix of ``--suffix-length``, ``--after`` tokens, a
target of ``--target``), every row starts from the same suffix, runs ``--steps`` steps at the same
``--search-width``/``--topk`` (one candidate batch of the whole width unless ``--candidate-batch``), and the
fastest of ``--repeats`` interleaved rounds is kept:

* flatrob, prefix cache:   :class:`flatcli.core.gcg.GCG`: the token gradient, the candidates, one forward per
  candidate batch giving each candidate's loss *and* the float64 closed-form head curvature, the chosen
  candidate's curvature over every position;
* flatrob, full passes:    the same without the prefix cache;
* nanoGCG, prefix cache off: nanoGCG's step (``compute_token_gradient``, ``sample_ids_from_grad``,
  ``_compute_candidates_loss_original``, the candidate of lowest loss), the loss only; it calls ``gc.collect()``
  and ``torch.cuda.empty_cache()`` before the candidates (``find_executable_batch_size``) and after every batch;
  the seconds those collections take are timed and shown as a share of its step;
* nanoGCG, no gc.collect:  the same with its ``gc.collect`` a no-op;
* nanoGCG, prefix cache on: timed where it works; 0.3.0 fails on transformers 5 (it indexes the cache as a
  tuple: ``'DynamicCache' object is not subscriptable``), and the row says so.

Neither side filters candidates by retokenising (that needs a tokenizer of the model's vocabulary, and both
sides decode and encode each candidate alike) nor keeps a buffer of suffixes (nanoGCG's default, size 0, keeps
the best candidate, as flatrob does). Seeded alike (flatrob's generator, torch's global generator for
nanoGCG), both draw the same candidates on the CPU: the last line says whether they ended on the same suffix.

Usage: ``python bench/gcg.py [--threads 1]`` (CPU, about 1.5 minutes of CPU time). The 7B shape on a GPU:
``python bench/gcg.py --device cuda --dtype bf16 --hidden 4096 --layers 32 --search-width 512``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import logging
import sys
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLOCK, timed  # noqa: E402
from lm import DTYPES, random_llama  # noqa: E402

from flatcli.core.gcg import GCG, Search  # noqa: E402
from flatcli.models.kinds.causal_lm import CausalLM  # noqa: E402


def prompt(vocab: int, before: int, suffix: int, after: int, target: int) -> tuple[torch.Tensor, ...]:
    """Random token ids (seed 0) of the four parts: before, suffix, after, target."""
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randint(3, vocab, (n,), generator=g) for n in (before, suffix, after, target))


def flatrob_steps(kind: CausalLM, parts: tuple[torch.Tensor, ...], search: Search, prefix: bool):
    """``run(steps, seed, clock) -> (seconds per step, last suffix)``: flatrob's GCG, step 0 (the initial suffix)
    untimed."""
    before, suffix, after, target = parts
    gcg = GCG(kind.features, kind.head, kind.model.get_input_embeddings(), before, after, target, search,
              prefix=kind.prefix if prefix else None)

    def run(steps: int, seed: int, clock: str) -> tuple[float, list[int]]:
        it = gcg.run(suffix, steps, torch.Generator().manual_seed(seed))
        last = [next(it)]
        took = timed(lambda: last.extend(collections.deque(it, maxlen=1)), kind.device, clock)
        return took / steps, last[-1].suffix

    return run


def nanogcg_steps(kind: CausalLM, parts: tuple[torch.Tensor, ...], search: Search, prefix: bool):
    """``run(steps, seed, clock) -> (seconds per step, last suffix)``: the body of nanoGCG's step loop
    (``nanogcg.gcg.GCG.run``) less the retokenising filter and the buffer; raises what nanoGCG raises."""
    from nanogcg import gcg as ng
    from nanogcg.utils import find_executable_batch_size

    logging.getLogger("nanogcg").setLevel(logging.ERROR)
    model, device = kind.model, kind.device
    config = ng.GCGConfig(search_width=search.search_width, topk=search.topk, n_replace=search.n_replace,
                          batch_size=search.candidate_batch, use_prefix_cache=prefix, allow_non_ascii=True)
    ref = ng.GCG(model, types.SimpleNamespace(chat_template="{{ messages }}"), config)  # no tokenizer needed below
    embed = ref.embedding_layer
    before, suffix, after, target = (p.to(device)[None] for p in parts)
    with torch.no_grad():
        ref.before_embeds, ref.after_embeds, ref.target_embeds = (embed(p) for p in (before, after, target))
        ref.prefix_cache = model(inputs_embeds=ref.before_embeds, use_cache=True).past_key_values if prefix else None
    ref.target_ids = target
    width = search.search_width

    def step(ids: torch.Tensor) -> torch.Tensor:
        grad = ref.compute_token_gradient(ids)
        with torch.no_grad():
            cands = ng.sample_ids_from_grad(ids[0], grad[0], width, search.topk, search.n_replace, not_allowed_ids=None)
            rest = [embed(cands), ref.after_embeds.repeat(width, 1, 1), ref.target_embeds.repeat(width, 1, 1)]
            embeds = torch.cat(rest if ref.prefix_cache else [ref.before_embeds.repeat(width, 1, 1), *rest], dim=1)
            loss = find_executable_batch_size(ref._compute_candidates_loss_original, search.candidate_batch)(embeds)
            return cands[loss.argmin()][None]

    def run(steps: int, seed: int, clock: str) -> tuple[float, list[int]]:
        ids = [suffix]
        torch.manual_seed(seed)

        def go():
            for _ in range(steps):
                ids.append(step(ids[-1]))

        return timed(go, device, clock) / steps, ids[-1][0].tolist()

    return run


class Collect:
    """What nanoGCG's ``gc.collect()`` calls run while :func:`collecting` is on: the real collection, timed
    (``seconds`` adds up on ``clock``), or nothing (``run=False``)."""

    def __init__(self, clock: str, run: bool = True):
        self.now, self.run, self.seconds = CLOCK[clock], run, 0.0

    def __call__(self, *args) -> int:
        if not self.run:
            return 0
        t0 = self.now()
        found = gc.collect(*args)
        self.seconds += self.now() - t0
        return found


@contextlib.contextmanager
def collecting(collect: Collect | None):
    """nanoGCG's ``gc.collect()`` calls ``collect`` inside: its step's (``nanogcg.gcg``) and its batch-size
    finder's (``nanogcg.utils``); those modules' ``gc`` is swapped, not the interpreter's."""
    if collect is None:
        yield
        return
    from nanogcg import gcg, utils

    real = gc
    gcg.gc = utils.gc = types.SimpleNamespace(collect=collect)
    try:
        yield
    finally:
        gcg.gc = utils.gc = real


def gcg_rows(kind: CausalLM, parts: tuple[torch.Tensor, ...], search: Search, steps: int, repeats: int,
             clock: str) -> list[tuple[str, str]]:
    """``(row, figure)`` lines: seconds per step of each variant, its ratio to flatrob with the prefix cache, the
    seconds nanoGCG's ``gc.collect()`` took of it, and whether flatrob and nanoGCG ended on the same suffix."""
    timed_collect = Collect(clock)
    runs = {"flatrob, prefix cache": (flatrob_steps(kind, parts, search, True), None),
            "flatrob, full passes": (flatrob_steps(kind, parts, search, False), None)}
    failed = {}
    try:
        import nanogcg.gcg  # noqa: F401
    except ImportError as exc:
        failed["nanoGCG"] = f"not importable ({exc}); pip install --no-deps nanogcg==0.3.0"
    else:
        runs["nanoGCG, prefix cache off"] = (nanogcg_steps(kind, parts, search, False), timed_collect)
        runs["nanoGCG, off, no gc.collect"] = (runs["nanoGCG, prefix cache off"][0], Collect(clock, run=False))
        try:
            on = nanogcg_steps(kind, parts, search, True)
            on(1, 0, clock)
            runs["nanoGCG, prefix cache on"] = (on, timed_collect)
        except Exception as exc:  # the reference's own failure, reported as a row
            import transformers

            failed["nanoGCG, prefix cache on"] = f"fails on transformers {transformers.__version__}: " \
                                                 f"{type(exc).__name__}: {exc}"
    times, last = {name: [] for name in runs}, {}
    for name, (run, collect) in runs.items():  # warm-up
        with collecting(collect):
            run(1, 0, clock)
    for _ in range(repeats):
        for name, (run, collect) in runs.items():
            timed_collect.seconds = 0.0
            with collecting(collect):
                took, last[name] = run(steps, 0, clock)
            times[name].append((took, timed_collect.seconds / steps if collect is timed_collect else 0.0))
    base = min(times["flatrob, prefix cache"])[0]
    rows = []
    for name, t in times.items():
        took, collected = min(t)
        rows.append((name, f"{took:9.3f} s/step  x{took / base:5.2f} of flatrob" +
                     (f"  (gc.collect {collected:.3f} s/step, {100 * collected / took:.0f}%)" if collected else "")))
    rows += [(name, why) for name, why in failed.items()]
    if "nanoGCG, prefix cache off" in last:
        same = last["flatrob, full passes"] == last["nanoGCG, prefix cache off"]
        rows.append(("same suffix after the steps", "yes" if same else
                     "no (draws differ on a GPU; near-equal losses may order differently in low precision)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--before", type=int, default=24, help="tokens before the suffix (system prompt, goal)")
    parser.add_argument("--suffix-length", type=int, default=20)
    parser.add_argument("--after", type=int, default=4, help="tokens between the suffix and the target")
    parser.add_argument("--target", type=int, default=12)
    parser.add_argument("--search-width", type=int, default=128)
    parser.add_argument("--topk", type=int, default=256)
    parser.add_argument("--candidate-batch", type=int, default=0, help="candidates per forward (0: the whole width)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the fastest is kept")
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()  # nanoGCG names the cache past_key_values, deprecated in 5.x
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "wall" if device.type == "cuda" else "cpu"  # process CPU time: steadier on a shared machine
    kind = random_llama(args.vocab, args.hidden, args.layers, device, DTYPES[args.dtype])
    search = Search(args.search_width, args.topk, 1, args.candidate_batch or args.search_width)
    parts = prompt(args.vocab, args.before, args.suffix_length, args.after, args.target)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {clock} clock; random Llama "
          f"vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, {args.dtype}; prompt "
          f"{sum(map(len, parts))} "
          f"tokens (suffix {args.suffix_length}, target {args.target}); search width {args.search_width}, topk "
          f"{args.topk}, {search.candidate_batch} candidates a batch; {args.steps} steps, fastest of {args.repeats}")
    for name, figure in gcg_rows(kind, parts, search, args.steps, args.repeats, clock):
        print(f"{name:<32}{figure}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Language models: per-token head sharpness vs a plain forward pass, and a GCG step with and without the prefix cache.

On a random Llama (``--vocab``, ``--hidden``, ``--layers``; eager attention) and random token sequences
(``--prompts`` of ``--length`` tokens, the last ``--target`` of them the target) it times:

* forward:      ``model(input_ids)`` under ``no_grad``, one pass per prompt (the floor);
* sharpness:    :func:`flatcli.runs.lm_sharpness.sequence_measures`, the same pass plus the float64 closed form
  over the target positions and over every position, the head in vocabulary chunks;
* GCG step:     one step of :class:`flatcli.core.gcg.GCG` at ``--search-width`` (gradient, candidates, their
  losses and curvature from one forward per batch), with the prefix cache and without.

It also prints the float64 values one vocabulary chunk of the closed form holds (the memory bound,
:data:`flatcli.core.token_curvature.CHUNK_VALUES`) at the GCG batch's rows.

Usage: ``python bench/lm.py [--device cpu|cuda] [--repeats 3]``. Prints a table and ratios. A 7B-shaped Llama on a
GPU: ``--device cuda --vocab 32000 --hidden 4096 --layers 32 --dtype bf16 --search-width 512``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402

from flatcli.core.gcg import GCG, Search  # noqa: E402
from flatcli.core.token_curvature import chunk_size  # noqa: E402
from flatcli.models.kinds.causal_lm import CausalLM  # noqa: E402
from flatcli.runs.lm_sharpness import sequence_measures  # noqa: E402


def random_llama(vocab: int, hidden: int, layers: int, device, dtype: torch.dtype) -> CausalLM:
    """Llama-shaped (intermediate 2.6875 x hidden, heads of 128 above 1024 hidden), random weights, seed 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(2.6875 * hidden),
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // (128 if hidden > 1024 else 64)),
                         max_position_embeddings=1024, attn_implementation="eager")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return CausalLM(model.eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--target", type=int, default=12)
    parser.add_argument("--suffix", type=int, default=20)
    parser.add_argument("--search-width", type=int, default=128)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    clock = "wall" if device.type == "cuda" else "cpu"  # process CPU time: steadier on a shared machine
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    kind = random_llama(args.vocab, args.hidden, args.layers, device, dtype)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, args.vocab, (1, args.length), generator=g) for _ in range(args.prompts)]
    start = args.length - args.target
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; Llama vocab {args.vocab}, "
          f"hidden {args.hidden}, {args.layers} layers; {args.prompts} prompts of {args.length} tokens; {clock} clock")

    def forward():
        with torch.no_grad():
            for ids in prompts:
                kind.model(input_ids=ids.to(device))

    def sharp():
        for ids in prompts:
            sequence_measures(kind, ids, start, 1.0, "target")

    kind.features(prompts[0].to(device))  # the head check, once
    fwd = min(timed(forward, device, clock) for _ in range(args.repeats))
    shp = min(timed(sharp, device, clock) for _ in range(args.repeats))
    print(f"{'forward':<24}{fwd:9.3f} s\n{'sharpness (closed form)':<24}{shp:9.3f} s   x{shp / fwd:.2f} of forward")

    before, suffix = prompts[0][0, :start - args.suffix - 4], prompts[0][0, start - args.suffix - 4:start - 4]
    after, target = prompts[0][0, start - 4:start], prompts[0][0, start:]
    search = Search(search_width=args.search_width, topk=64, candidate_batch=args.search_width)
    times = {}
    for name, prefix in (("GCG step, prefix cache", kind.prefix), ("GCG step, full passes", None)):
        gcg = GCG(kind.features, kind.head, kind.model.get_input_embeddings(), before, after, target, search,
                  prefix=prefix)

        def step():
            for _ in gcg.run(suffix, 1, torch.Generator().manual_seed(0)):
                pass

        step()
        times[name] = min(timed(step, device, clock) for _ in range(args.repeats))
    for name, t in times.items():
        print(f"{name:<24}{t:9.3f} s")
    rows = args.search_width * args.target
    print(f"closed form chunk at vocabulary 128k: {chunk_size(rows, 128_000)} tokens x {rows} rows "
          f"= {8 * chunk_size(rows, 128_000) * rows / 2**20:.0f} MB float64 (a whole float64 head of 128k x 4096: "
          f"{8 * 128_000 * 4096 / 2**30:.1f} GB)")


if __name__ == "__main__":
    main()

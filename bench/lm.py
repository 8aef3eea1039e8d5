#!/usr/bin/env python3
"""Language models: per-token head sharpness vs a plain forward pass, in process and as whole processes.

On a random Llama (``--vocab``, ``--hidden``, ``--layers``; eager attention) and random token sequences
(``--prompts`` of ``--length`` tokens, the last ``--target`` of them the target) it times, fastest of
``--repeats``:

* forward:      ``model(input_ids)`` under ``no_grad``, one pass per prompt (the floor);
* sharpness:    :func:`flatcli.runs.lm_sharpness.sequence_measures`, the same pass plus the float64 closed form
  over the target positions and over every position, the head in vocabulary chunks; with its peak memory
  (CUDA: allocated by torch; CPU: the process's peak RSS) and the float64 values one vocabulary chunk holds,
  the bound of the closed form's memory (:data:`flatcli.core.token_curvature.CHUNK_VALUES`).

With ``--whole-process`` it also saves the model (and a small tokenizer, so that token ids stay below 120: the
head and the body cost the same) and ``--prompts`` prompts to a temporary folder, and times two whole processes
on them, imports and loading included: ``flatrob sharpness FOLDER --data prompts:FILE --chat-template none``
against a plain ``transformers`` script that loads the same folder and runs one forward per prompt.

A GCG step against nanoGCG: ``bench/gcg.py``.

Usage: ``python bench/lm.py [--device cpu|cuda] [--repeats 3] [--whole-process]``. A 7B-shaped Llama on a GPU:
``--device cuda --vocab 32000 --hidden 4096 --layers 32 --dtype bf16``.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import timed  # noqa: E402

from flatcli.core.token_curvature import CHUNK_VALUES, chunk_size  # noqa: E402
from flatcli.models.kinds.causal_lm import CausalLM  # noqa: E402
from flatcli.runs.lm_sharpness import sequence_measures  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The plain script of ``--whole-process``: load the folder, one forward per prompt, the same token layout as
#: ``--chat-template none`` (goal, a space, target).
PLAIN = """
import csv, sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True, use_safetensors=True,
                                                          attn_implementation="eager").eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
with torch.no_grad():
    for row in csv.DictReader(open(sys.argv[2])):
        model(**tokenizer(row["goal"] + " " + row["target"], return_tensors="pt"))
"""


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


def peak_memory(fn, device: torch.device) -> str:
    """What ``fn()`` peaks at: bytes torch allocated on CUDA, or the process's peak RSS on the CPU (model included)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        return f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (weights included)"
    fn()
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def chunk_bound(rows: int, vocabulary: int) -> str:
    """The float64 values one vocabulary chunk of the closed form holds for ``rows`` positions, as a line."""
    size = chunk_size(rows, vocabulary)
    return (f"{rows} rows x {size} tokens = {8 * rows * size / 2**20:.0f} MiB float64 "
            f"(at most {8 * CHUNK_VALUES / 2**20:.0f})")


def sharpness_rows(kind: CausalLM, prompts: list[torch.Tensor], target: int, repeats: int, clock: str
                   ) -> list[tuple[str, str]]:
    """``(row, figure)``: seconds of a forward pass and of the closed form over ``prompts``, the ratio, the peak
    memory and the chunk bound."""
    device = kind.device
    start = prompts[0].shape[1] - target

    def forward():
        with torch.no_grad():
            for ids in prompts:
                kind.model(input_ids=ids.to(device))

    def sharp():
        for ids in prompts:
            sequence_measures(kind, ids, start, 1.0, "target")

    kind.features(prompts[0].to(device))  # the head check, once
    fwd = min(timed(forward, device, clock) for _ in range(repeats))
    shp = min(timed(sharp, device, clock) for _ in range(repeats))
    rows, vocab = prompts[0].shape[1], kind.head.out_features
    return [(f"forward, {len(prompts)} prompts", f"{fwd:9.3f} s"),
            ("sharpness (closed form)", f"{shp:9.3f} s  x{shp / fwd:.2f} of forward  {peak_memory(sharp, device)}"),
            (f"closed form chunk, vocab {vocab}", chunk_bound(rows, vocab)),
            ("closed form chunk, vocab 128k", chunk_bound(rows, 128_000) +
             f"; a whole float64 head of 128k x 4096: {8 * 128_000 * 4096 / 2**30:.1f} GiB")]


def whole_process(kind: CausalLM, n: int, repeats: int) -> list[tuple[str, str]]:
    """Seconds (children's CPU time) of ``flatrob sharpness`` vs the plain script over the same folder and prompts,
    each process on as many threads as this one."""
    sys.path.insert(0, str(ROOT))
    from tests.lm.conftest import CORPUS, train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder, prompts = Path(tmp) / "llama", Path(tmp) / "prompts.csv"
        kind.model.save_pretrained(folder)
        train_tokenizer().save_pretrained(folder)
        with prompts.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["goal", "target"])
            writer.writerows([" ".join(CORPUS[i % 6:i % 6 + 3]), CORPUS[(i + 1) % 6]] for i in range(n))
        commands = {"flatrob sharpness": [sys.executable, "-m", "flatcli", "sharpness", str(folder), "--data",
                                          f"prompts:{prompts}", "--chat-template", "none", "--device", "cpu",
                                          "--format", "json", "--output", str(Path(tmp) / "out.json")],
                    "plain transformers": [sys.executable, "-c", PLAIN, str(folder), str(prompts)]}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
        times = {name: [] for name in commands}
        for _ in range(repeats):
            for name, cmd in commands.items():
                before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                times[name].append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                                    time.perf_counter() - t0))
    plain, ours = min(times["plain transformers"]), min(times["flatrob sharpness"])
    return [(f"{name}, whole process", f"{cpu:9.3f} s CPU ({wall:.1f} s wall)") for name, (cpu, wall) in
            (("plain transformers", plain), ("flatrob sharpness", ours))] + \
        [("whole process ratio", f"x{ours[0] / plain[0]:.2f} (CPU time; goal <= 1.2)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--target", type=int, default=12)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--whole-process", action="store_true",
                        help="also flatrob sharpness vs a plain transformers script, as processes (CPU, fp32)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "wall" if device.type == "cuda" else "cpu"  # process CPU time: steadier on a shared machine
    kind = random_llama(args.vocab, args.hidden, args.layers, device, DTYPES[args.dtype])
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, args.vocab, (1, args.length), generator=g) for _ in range(args.prompts)]
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; Llama vocab {args.vocab}, "
          f"hidden {args.hidden}, {args.layers} layers, {args.dtype}; {args.prompts} prompts of {args.length} tokens; "
          f"{clock} clock")
    rows = sharpness_rows(kind, prompts, args.target, args.repeats, clock)
    if args.whole_process:
        rows += whole_process(kind, args.prompts, args.repeats)
    for name, figure in rows:
        print(f"{name:<34}{figure}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Many checkpoints in one call vs a shell loop of one process per checkpoint, measured in one run.

Makes ``--n`` checkpoints of the bundled architecture (the example's weights plus seeded noise, in a
temporary directory), then times, on the wall clock, ``flatrob COMMAND c1 c2 ... --format jsonl`` (one
process) against ``for c in ...; do flatrob COMMAND "$c" --format jsonl; done`` (one process each, as a
bash loop runs it), and checks that every row of the one call equals the shell loop's row for that
checkpoint (with its ``checkpoint`` column). Alternates the two ``--repeats`` times; prints the fastest.

Usage: ``python bench/many.py [--n 20] [--repeats 2] [-- extra options, e.g. attack --steps 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import perturbed_copies  # noqa: E402

FLATROB = str(Path(sys.executable).with_name("flatrob"))


def wall(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd[:4])} ... failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="checkpoints (default 20)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("command", nargs="*", default=["sharpness"], help="command and options (default: sharpness)")
    args = ap.parse_args()
    command = args.command or ["sharpness"]
    opts = [*command[1:], "--device", "cpu", "--format", "jsonl", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = perturbed_copies(Path(tmp), args.n)
        one_call = [FLATROB, command[0], *paths, *opts]
        loop = ["bash", "-c", f'for c in "$@"; do {shlex.join([FLATROB, command[0]])} "$c" {shlex.join(opts)} || exit 1; done',
                "loop", *paths]
        best_one = best_loop = float("inf")
        for _ in range(args.repeats):
            t, many_out = wall(one_call)
            best_one = min(best_one, t)
            t, loop_out = wall(loop)
            best_loop = min(best_loop, t)
    many_rows = [json.loads(line) for line in many_out.splitlines()]
    loop_rows = [json.loads(line) for line in loop_out.splitlines()]
    per = len(loop_rows) // args.n
    expected = [{"checkpoint": paths[i // per], **row} for i, row in enumerate(loop_rows)]
    same = many_rows == expected
    print(f"flatrob {' '.join(command)} on {args.n} checkpoints of example:digits-cnn's architecture "
          f"({per} rows each), {os.cpu_count()} CPUs, wall clock, fastest of {args.repeats}")
    print(f"  one call          {best_one:7.2f} s")
    print(f"  shell loop        {best_loop:7.2f} s   ({best_loop / args.n:.2f} s per process)")
    print(f"  loop / one call   {best_loop / best_one:7.1f}x   (target >= 5x)")
    print(f"  rows identical    {'yes' if same else 'NO'} ({len(many_rows)} rows)")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

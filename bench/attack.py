#!/usr/bin/env python3
"""PGD with recording vs the same PGD without, vs torchattacks, measured side by side in one run.

For each case (the bundled digits CNN on the digits test split with the paper's two presets; with
``--resnet``, a CIFAR-shaped ResNet-18 with random weights on random inputs) it times, on the same
inputs and batches, interleaved over ``--repeats`` rounds so that load on the machine hits every
variant alike:

* plain:    ``flatcli.core.pgd.PGD.run(split, x, y)``: the attack alone, nothing recorded;
* plain + eval: the same plus one forward on the adversarials for robust accuracy (what any attack
            evaluation pays, and what recording needs for ``x_T``);
* record:   ``flatcli.runs.attack.attack`` without writers: the attack with ``record=True`` (features
            of every iterate from the attack's own forward passes, one final forward), the closed-form
            measures of all iterates, take-off, valley and summary statistics;
* record + rows: the same, also building the per-step trajectory rows (what ``--trajectory`` writes,
            minus the file I/O);
* torchattacks: ``torchattacks.PGD`` / ``PGDL2`` on the same model (when installed: ``pip install
            'flatrob[bench]'``); the adversarials must equal ``plain``'s (no random start).

Prints median and minimum seconds per variant, the median over rounds of the per-round ratios to
``plain`` and to ``plain + eval``, and the largest difference between adversarials. On the CPU the clock is the process's CPU
time by default (steadier than wall time when other jobs share the machine). Usage:
``python bench/attack.py [--repeats 9] [--threads N] [--resnet] [--device cpu|cuda] [--clock wall|cpu]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import configure, resnet_case, timed, timing_parser  # noqa: E402

from flatcli.core.pgd import PGD, PRESETS  # noqa: E402
from flatcli.inputs.data import DataSource, load_data  # noqa: E402
from flatcli.models.head import HeadSplit  # noqa: E402
from flatcli.models.loading import LoadedModel, load_model  # noqa: E402
from flatcli.runs.attack import AttackSettings, attack as run_attack  # noqa: E402
from flatcli.runtime.loop import RunContext  # noqa: E402


def bench(name: str, loaded: LoadedModel, ds: DataSource, attack: PGD, device, batch_size: int, repeats: int, clock: str) -> None:
    batches = [(x.to(device), y.to(device)) for x, y in zip(ds.x.split(batch_size), ds.y.split(batch_size))]
    settings = AttackSettings(attack=attack)
    ctx = RunContext(loaded=loaded, data=ds, device=device, batch_size=batch_size)
    out: dict[str, list] = {}

    def plain():
        with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
            out["plain"] = [attack.run(split, x, y).x_adv for x, y in batches]

    def plain_eval():
        with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
            for x, y in batches:
                adv = attack.run(split, x, y).x_adv
                with torch.no_grad():
                    split(adv)[0].argmax(1).eq(y).sum().item()

    def record():
        run_attack(ctx, settings)

    def record_rows():
        run_attack(ctx, settings, on_rows=lambda rows: None)

    variants = {"plain": plain, "plain + eval": plain_eval, "record": record, "record + rows": record_rows}
    try:
        import torchattacks

        if attack.norm == "linf":
            ta = torchattacks.PGD(loaded.model, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, random_start=False)
        else:
            ta = torchattacks.PGDL2(loaded.model, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, random_start=False)

        def torchattacks_run():
            out["torchattacks"] = [ta(x, y) for x, y in batches]

        variants[f"torchattacks {type(ta).__name__}"] = torchattacks_run
    except ImportError:
        ta = None

    for fn in variants.values():  # warm-up (allocator, oneDNN primitives)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            times[key].append(timed(fn, device, clock))

    print(f"\n{name}: PGD-{attack.norm} eps {attack.eps:.4g} alpha {attack.alpha:.4g} {attack.steps} steps, "
          f"{len(ds)} inputs, batch {batch_size}, {repeats} rounds")
    print(f"  {'variant':<26}{'median s':>10}{'min s':>10}{'/ plain':>10}{'/ plain+eval':>14}")
    for key, ts in times.items():
        r1 = statistics.median(t / p for t, p in zip(ts, times["plain"]))
        r2 = statistics.median(t / p for t, p in zip(ts, times["plain + eval"]))
        print(f"  {key:<26}{statistics.median(ts):>10.4f}{min(ts):>10.4f}{r1:>10.3f}{r2:>14.3f}")
    if ta is not None:
        diff = max((a - b).abs().max().item() for a, b in zip(out["plain"], out["torchattacks"]))
        print(f"  max |x_adv(flatrob) - x_adv(torchattacks)| = {diff:.3g}  (identical to 1e-6: {diff <= 1e-6})")
    else:
        print("  torchattacks not installed (pip install 'flatrob[bench]'): comparison skipped")


def main() -> None:
    args = timing_parser(__doc__, repeats=9).parse_args()
    device, clock = configure(args)

    loaded = load_model("example:digits-cnn", device=device)
    ds = load_data("digits", "test")
    for preset in ("uncanny", "basin"):
        bench(f"example:digits-cnn, preset {preset}", loaded, ds, PGD(**PRESETS[preset]), device, args.batch_size, args.repeats, clock)
    bench("example:digits-cnn, the uncanny-valley test", loaded, ds, PGD(eps=0.3, alpha=0.03, steps=20), device,
          args.batch_size, args.repeats, clock)
    if args.resnet:
        loaded, ds = resnet_case(device, args.resnet_n)
        bench("resnet18 (random weights), preset uncanny", loaded, ds, PGD(**PRESETS["uncanny"]), device,
              args.batch_size, max(1, args.repeats // 2), clock)


if __name__ == "__main__":
    main()

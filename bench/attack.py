#!/usr/bin/env python3
"""PGD with recording vs the same PGD without, vs torchattacks, measured side by side in one run.

For each case (the bundled digits CNN on the digits test split with the paper's two presets; with
``--resnet``, a CIFAR-shaped ResNet-18 with random weights on random inputs) it times, on the same
inputs and batches, interleaved over ``--repeats`` rounds so that load on the machine hits every
variant alike:

* plain:    ``flatcli.core.attacks.PGD.run(split, x, y)``: the attack alone, nothing recorded;
* plain + eval: the same plus one forward on the adversarials for robust accuracy (what any attack
            evaluation pays, and what recording needs for ``x_T``);
* record:   ``flatcli.runs.attack.attack`` without writers: the attack with ``record=True`` (features
            of every iterate from the attack's own forward passes, one final forward), the closed-form
            measures of all iterates, take-off, valley and summary statistics;
* record + rows: the same, also building the per-step trajectory rows (what ``--trajectory`` writes,
            minus the file I/O);
* torchattacks: ``torchattacks.PGD`` / ``PGDL2`` on the same model (when installed: ``pip install
            'flatrob[bench]'``); the adversarials must equal ``plain``'s (no random start).

A second table per model times the attacks of ``--loss`` and ``--attack apgd`` against torchattacks
per step, interleaved the same way: PGD on the cross-entropy, the margin loss ``cw`` and ``dlr`` against
``torchattacks.PGD``; APGD on ``ce`` and ``dlr`` against ``torchattacks.APGD`` with the same loss and
iterations (ours without random start, theirs with its own), with the robust accuracy each reaches. The
labels there are the model's clean predictions, so every input is attacked by both (torchattacks' APGD
skips misclassified inputs, which on random weights would be most of them).

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

from flatcli.core.attacks import APGD, PGD, PRESETS  # noqa: E402
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


def bench_losses(name: str, loaded: LoadedModel, ds: DataSource, device, batch_size: int, repeats: int, clock: str,
                 eps: float, alpha: float, steps: int) -> None:
    """Per-step time of PGD with each loss and of APGD, against torchattacks' PGD and APGD, in one run."""
    try:
        import torchattacks
    except ImportError:
        print(f"\n{name}: torchattacks not installed (pip install 'flatrob[bench]'): loss/APGD comparison skipped")
        return
    batches = []
    for x in ds.x.split(batch_size):
        x = x.to(device)
        with torch.no_grad():
            batches.append((x, loaded.model(x).argmax(1)))
    ours = {f"PGD {loss}": PGD(eps=eps, alpha=alpha, steps=steps, loss=loss) for loss in ("ce", "cw", "dlr")}
    ours.update({f"APGD {loss}": APGD(eps=eps, steps=steps, loss=loss) for loss in ("ce", "dlr")})
    theirs = {"PGD ce": torchattacks.PGD(loaded.model, eps=eps, alpha=alpha, steps=steps, random_start=False)}
    theirs.update({f"APGD {loss}": torchattacks.APGD(loaded.model, eps=eps, steps=steps, loss=loss) for loss in ("ce", "dlr")})
    accuracy: dict[str, float] = {}

    def evaluate(key: str, advs) -> None:
        with torch.no_grad():
            hits = sum(int((loaded.model(a).argmax(1) == y).sum()) for a, (_, y) in zip(advs, batches))
        accuracy[key] = hits / len(ds)

    variants = {}
    for key, atk in ours.items():
        def run(atk=atk, key=key):
            with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
                evaluate(f"flatrob {key}", [atk.run(split, x, y).x_adv for x, y in batches])
        variants[f"flatrob {key}"] = run
    for key, atk in theirs.items():
        def run(atk=atk, key=key):
            evaluate(f"torchattacks {key}", [atk(x, y) for x, y in batches])
        variants[f"torchattacks {key}"] = run
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            times[key].append(timed(fn, device, clock))
    print(f"\n{name}: losses and APGD, linf eps {eps:.4g}, {steps} steps (alpha {alpha:.4g} for PGD), {len(ds)} inputs, "
          f"{repeats} rounds; ms per step over the data; ratio to torchattacks (same loss; PGD: its cross-entropy)")
    print(f"  {'variant':<26}{'ms/step':>10}{'/ torchattacks':>16}{'robust acc':>12}")
    for key, ts in times.items():
        ref = "torchattacks " + (key.split(" ", 1)[1] if not key.startswith("flatrob PGD") else "PGD ce")
        ratio = statistics.median(t / r for t, r in zip(ts, times[ref]))
        print(f"  {key:<26}{1000 * statistics.median(ts) / steps:>10.2f}{ratio:>16.3f}{accuracy[key]:>12.4f}")


def main() -> None:
    args = timing_parser(__doc__, repeats=9).parse_args()
    device, clock = configure(args)

    loaded = load_model("example:digits-cnn", device=device)
    ds = load_data("digits", "test")
    for preset in ("uncanny", "basin"):
        bench(f"example:digits-cnn, preset {preset}", loaded, ds, PGD(**PRESETS[preset]), device, args.batch_size, args.repeats, clock)
    bench("example:digits-cnn, the uncanny-valley test", loaded, ds, PGD(eps=0.3, alpha=0.03, steps=20), device,
          args.batch_size, args.repeats, clock)
    bench_losses("example:digits-cnn", loaded, ds, device, args.batch_size, args.repeats, clock, eps=0.1, alpha=0.025,
                 steps=10)
    if args.resnet:
        loaded, ds = resnet_case(device, args.resnet_n)
        bench("resnet18 (random weights), preset uncanny", loaded, ds, PGD(**PRESETS["uncanny"]), device,
              args.batch_size, max(1, args.repeats // 2), clock)
        bench_losses("resnet18 (random weights)", loaded, ds, device, args.batch_size, max(1, args.repeats // 2), clock,
                     eps=8 / 255, alpha=2 / 255, steps=10)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The fixed-trajectory part of ``sweep-scale``: 7 scales vs 1 scale vs a naive loop, side by side in one run.

For each case (the bundled digits CNN on the digits test split with the paper's §6.1 trajectories,
PGD-l2 25 steps eps 0.025 alpha 0.001; with ``--resnet``, a CIFAR-shaped ResNet-18 with random weights
on random inputs) it times, on the same data, interleaved over ``--repeats`` rounds so that load on
the machine hits every variant alike:

* sweep, 1 scale:  ``flatcli.runs.sweep.sweep_scale`` with ``scales=(1,)`` and no per-scale attack;
* sweep, 7 scales: the same with the paper's scales 0.25 .. 50: the trajectories are generated once
                   and every scale is evaluated from the features cached by the attack's own forward
                   passes (the target: under 1.3x the 1-scale time);
* naive loop:      the same trajectories generated once (iterates kept), then for each scale the
                   scaled model is re-run on every stored iterate x_0 .. x_T, with the same closed
                   forms and take-off statistics on its output.

Prints median and minimum seconds per variant and the median over rounds of the per-round ratio to
``sweep, 1 scale``; then, for one more 7-scale sweep, the time spent evaluating the scales from cached
features (an attribution that load on the machine cannot blur), and checks that the naive loop gives
the same loss increases. On the CPU the clock
is the process's CPU time by default (steadier than wall time on a shared machine). Usage:
``python bench/sweep.py [--repeats 5] [--threads N] [--resnet] [--device cpu|cuda] [--clock wall|cpu]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLOCK, configure, resnet_case, timed, timing_parser  # noqa: E402

import flatcli.runs.sweep as sweepmod  # noqa: E402
from flatcli.core.classifier import eval_mode  # noqa: E402
from flatcli.core.head_scaling import evaluate_scale, evaluate_scales  # noqa: E402
from flatcli.core.attacks import PGD, PRESETS  # noqa: E402
from flatcli.inputs.data import DataSource, load_data  # noqa: E402
from flatcli.models.head import HeadSplit  # noqa: E402
from flatcli.models.loading import LoadedModel, load_model  # noqa: E402
from flatcli.runs.sweep import DEFAULT_SCALES, SweepSettings, sweep_scale  # noqa: E402
from flatcli.runtime.loop import RunContext  # noqa: E402


def naive(loaded: LoadedModel, ds: DataSource, settings: SweepSettings, device, batch_size: int) -> np.ndarray:
    """Trajectories once (iterates kept), then the scaled model re-run on every iterate, per scale.

    Returns the loss increases (S, N), to check against the cached-feature sweep.
    """
    traj = settings.trajectory
    head = loaded.head
    out = [[] for _ in settings.scales]
    with eval_mode(loaded.model), HeadSplit(loaded.model, head, loaded.layer) as split:
        for start in range(0, len(ds), batch_size):
            x = ds.x[start : start + batch_size].to(device)
            y = ds.y[start : start + batch_size].to(device)
            seen: list[torch.Tensor] = []

            def recording(z):
                seen.append(z.detach())
                return split(z)

            traj.run(recording, x, y, record=True)
            iterates = torch.stack(seen)  # (T+1, B, ...)
            dist = torch.linalg.vector_norm((iterates - x[None]).flatten(2), dim=2).double()
            for i, s in enumerate(settings.scales):
                scaled = split.with_scaling(settings.scaling(s))
                with torch.no_grad():
                    phi = torch.stack([scaled.features(xt) for xt in iterates])  # the model again, per scale
                sb = evaluate_scale(phi, None, y, dist, scaled.scaling.weight(head), scaled.scaling.bias(head),
                                    weight_norm=settings.weight_norm, tau=settings.takeoff)
                out[i].append(sb.loss_increase.cpu().numpy())
    return np.stack([np.concatenate(parts) for parts in out])


def bench(name: str, loaded: LoadedModel, ds: DataSource, trajectory: PGD, device, batch_size: int, repeats: int, clock: str) -> None:
    one = SweepSettings(scales=(1.0,), trajectory=trajectory, attack=None)
    seven = SweepSettings(scales=DEFAULT_SCALES, trajectory=trajectory, attack=None)
    ctx = RunContext(loaded=loaded, data=ds, device=device, batch_size=batch_size)
    results: dict[str, object] = {}

    def sweep1():
        results["1"] = sweep_scale(ctx, one).artifacts["outcome"]

    def sweep7():
        results["7"] = sweep_scale(ctx, seven).artifacts["outcome"]

    def sweep7_attributed() -> tuple[float, float]:
        """One 7-scale sweep with the time spent evaluating scales from cached features measured apart."""
        spent = [0.0]

        def evaluate(*args, **kwargs):
            t0 = CLOCK[clock]()
            out = evaluate_scales(*args, **kwargs)
            spent[0] += CLOCK[clock]() - t0
            return out

        sweepmod.evaluate_scales = evaluate
        try:
            total = timed(sweep7, device, clock)
        finally:
            sweepmod.evaluate_scales = evaluate_scales
        return spent[0], total

    def naive7():
        results["naive"] = naive(loaded, ds, seven, device, batch_size)

    variants = {"sweep, 1 scale": sweep1, "sweep, 7 scales": sweep7, "naive loop, 7 scales": naive7}
    for fn in variants.values():  # warm-up (allocator, oneDNN primitives)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            times[key].append(timed(fn, device, clock))

    print(f"\n{name}: fixed trajectories PGD-{trajectory.norm} eps {trajectory.eps:.4g} alpha {trajectory.alpha:.4g} "
          f"{trajectory.steps} steps, {len(ds)} inputs, batch {batch_size}, {repeats} rounds")
    print(f"  {'variant':<24}{'median s':>10}{'min s':>10}{'/ 1 scale':>11}")
    base = times["sweep, 1 scale"]
    for key, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"  {key:<24}{statistics.median(ts):>10.4f}{min(ts):>10.4f}{ratio:>11.3f}")
    spent, total = sweep7_attributed()
    print(f"  of one 7-scale sweep ({total:.3f} s), evaluating the 7 scales from cached features took {spent:.3f} s "
          f"({100 * spent / total:.1f}%); the rest is the trajectories themselves")
    cached = results["7"].samples["loss_increase"]
    direct = results["naive"]
    worst = float(np.max(np.abs(cached - direct) / np.maximum(np.abs(direct), 1e-6)))
    print(f"  loss increase, cached features vs naive loop: largest relative difference {worst:.3g}")
    s1 = results["1"].summary["scales"][0]
    s7 = next(r for r in results["7"].summary["scales"] if r["scale"] == 1.0)
    print(f"  s=1 row identical with 1 and 7 scales: {s1 == s7}")


def main() -> None:
    args = timing_parser(__doc__, repeats=5).parse_args()
    device, clock = configure(args)

    trajectory = PGD(**PRESETS["basin"])
    loaded = load_model("example:digits-cnn", device=device)
    ds = load_data("digits", "test")
    bench("example:digits-cnn", loaded, ds, trajectory, device, args.batch_size, args.repeats, clock)
    if args.resnet:
        loaded, ds = resnet_case(device, args.resnet_n)
        bench("resnet18 (random weights)", loaded, ds, trajectory, device, args.batch_size, max(1, args.repeats // 2), clock)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Exact layer traces vs Hutchinson (and fisher-mc), time and relative error, measured side by side in one run.

For each model (the bundled digits CNN on the digits test split, layers conv2,conv3; a CIFAR ResNet-18
with random weights on 256 random inputs, layers layer4.1.conv2,layer3.1.conv2) it runs
``flatcli.runs.sharpness.sharpness`` on the same inputs and batches with ``--layers`` measured by

* exact:       ``sum_c p_c ||grad_W ell(x, c)||^2`` per sample, k = 10 backward passes per batch;
* fisher-mc:   the same with S labels drawn from p per sample (S backward passes), with its standard error;
* hutchinson:  100 Rademacher probes, Hessian-vector products by double backprop (flatrob's shared-graph
  implementation: one forward per batch for all probes);

and, as the reference for the errors, the exact method on a float64 copy of the model. Each run includes
the closed-form pass of the head (the same work in all of them). Relative error = |estimate - reference|
/ reference of the data-set trace; for the estimators also the standard error they report, relative.

Usage: ``python bench/layers.py [--device cpu|cuda] [--threads 1] [--repeats 3] [--no-resnet] [--probes 100]``
(``--repeats`` interleaved rounds on the example, the fastest of each; the ResNet runs once). Prints a table
and ratios.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import configure, resnet_case, timed, timing_parser  # noqa: E402

from flatcli.inputs.data import DataSource, load_data  # noqa: E402
from flatcli.models.loading import LoadedModel, load_model  # noqa: E402
from flatcli.runs.sharpness import SharpnessSettings, sharpness  # noqa: E402
from flatcli.runtime.loop import RunContext  # noqa: E402


def run(loaded: LoadedModel, ds: DataSource, device, batch_size: int, layers, method: str, *, probes: int,
        draws: int) -> list[dict]:
    ctx = RunContext(loaded=loaded, data=ds, device=device, batch_size=batch_size)
    settings = SharpnessSettings(layers=tuple(layers), layer_method=method, hutchinson=probes, fisher_samples=draws)
    return sharpness(ctx, settings).summary["layers"]


def in_float64(loaded: LoadedModel) -> LoadedModel:
    twin = copy.copy(loaded)
    twin.model = copy.deepcopy(loaded.model).double()
    twin.head = twin.model.net.get_submodule(loaded.layer)
    return twin


def bench(name: str, loaded: LoadedModel, ds: DataSource, layers, device, clock: str, batch_size: int, probes: int,
          draws: int, repeats: int) -> None:
    ds64 = DataSource(ds.name, ds.input_shape, ds.num_classes, x=ds.x.double(), y=ds.y, index=ds.index)
    reference = run(in_float64(loaded), ds64, device, batch_size, layers, "exact", probes=probes, draws=draws)
    ref = {e["layer"]: e["trace"] for e in reference}
    results, times = {}, {}
    for _ in range(repeats):  # interleaved rounds; the fastest of each
        for method in ("exact", "fisher-mc", "hutchinson"):
            out: list = []
            t = timed(lambda m=method: out.extend(run(loaded, ds, device, batch_size, layers, m, probes=probes,
                                                       draws=draws)), device, clock)
            times[method] = min(t, times.get(method, t))
            results[method] = {e["layer"]: e for e in out}
    k = ds.num_classes
    print(f"\n{name}: {len(ds)} inputs, batch {batch_size}, k = {k}, layers {','.join(layers)}")
    print(f"  {'method':12s} {'passes/batch':>13s} {'time':>10s}   per layer: trace, rel. error vs float64 exact, "
          "reported rel. s.e.")
    passes = {"exact": f"1 + {k} bwd", "fisher-mc": f"1 + {draws} bwd", "hutchinson": f"1 + {probes} hvp"}
    for method, by_layer in results.items():
        cells = []
        for layer in layers:
            e = by_layer[layer]
            err = abs(e["trace"] - ref[layer]) / ref[layer]
            se = f"{e['trace_stderr'] / ref[layer]:.1%}" if e["trace_stderr"] is not None else "-"
            cells.append(f"{layer} {e['trace']:.5g} err {err:.2e} se {se}")
        print(f"  {method:12s} {passes[method]:>13s} {times[method]:9.2f}s   " + " | ".join(cells))
    print(f"  hutchinson / exact time  {times['hutchinson'] / times['exact']:.1f}x   (target >= 5x at k = 10)")
    print(f"  exact / fisher-mc time   {times['exact'] / times['fisher-mc']:.1f}x")


def main() -> None:
    parser = timing_parser(__doc__, repeats=3)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--fisher-samples", type=int, default=2)
    parser.add_argument("--no-resnet", action="store_true", help="only the bundled example")
    parser.set_defaults(resnet_n=256, batch_size=128)
    args = parser.parse_args()
    device, clock = configure(args)
    loaded = load_model("example:digits-cnn", device=device)
    bench("example:digits-cnn (digits test split)", loaded, load_data("digits", "test"), ["conv2", "conv3"], device,
          clock, 256, args.probes, args.fisher_samples, args.repeats)
    if not args.no_resnet:
        loaded, ds = resnet_case(device, args.resnet_n)
        bench("CIFAR ResNet-18, random weights", loaded, ds, ["layer4.1.conv2", "layer3.1.conv2"], device, clock,
              args.batch_size, args.probes, args.fisher_samples, 1)


if __name__ == "__main__":
    main()

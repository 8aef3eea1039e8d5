#!/usr/bin/env python3
"""Closed-form sharpness vs a plain forward pass vs Hutchinson, measured side by side in one run.

For each model (the bundled digits CNN on the digits test split; a CIFAR-shaped ResNet-18 with random
weights on 256 random inputs) it times, on the same inputs and batches:

* forward:      ``model(x)`` under ``no_grad`` over the data's batches (the floor: what any analysis
  must pay);
* closed form:  ``flatcli.runs.sharpness.sharpness`` (forward + O(k + m) per sample, float64);
* hutchinson:   ``flatcli.core.hutchinson.HutchinsonTraces`` on the head, 100 Rademacher probes, as
  flatrob runs it (one forward per batch, all probes share its graph);
* hutchinson, per-probe passes: the common implementation (e.g. PyHessian's data-loader HVP), one
  pass over the data with forward and double backprop per probe (timed on 5 probes, scaled to 100).

Usage: ``python bench/sharpness.py [--device cpu|cuda] [--repeats 3]``. Prints a table and ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import resnet_case, timed  # noqa: E402

from flatcli.core.hutchinson import HutchinsonTraces, batch_loss_sum  # noqa: E402
from flatcli.inputs import data as datamod  # noqa: E402
from flatcli.inputs.data import DataSource, load_data  # noqa: E402
from flatcli.models.head import HeadSplit  # noqa: E402
from flatcli.models.loading import LoadedModel, load_model  # noqa: E402
from flatcli.runs.sharpness import SharpnessSettings, sharpness  # noqa: E402
from flatcli.runtime.loop import RunContext  # noqa: E402

PROBES = 100
TIMED_PROBES = 5


def best_of(fn, repeats: int, device) -> float:
    return min(timed(fn, device) for _ in range(repeats))


def bench(name: str, loaded: LoadedModel, ds: DataSource, device, batch_size: int, repeats: int) -> dict:
    xs = [(x.to(device), y.to(device)) for x, y in zip(ds.x.split(batch_size), ds.y.split(batch_size))]

    def forward():  # a plain forward pass over the data: the same batches from the same source
        with torch.no_grad():
            for x, _, _ in datamod.batches(ds, batch_size, device=device):
                loaded.model(x)

    ctx = RunContext(loaded=loaded, data=ds, device=device, batch_size=batch_size)
    settings = SharpnessSettings()

    def closed():
        sharpness(ctx, settings)

    def hutch():
        traces = HutchinsonTraces([[loaded.head.weight]], PROBES)
        with HeadSplit(loaded.model, loaded.head, loaded.layer) as split:
            for x, y in xs:
                logits, _ = split(x)
                traces.add(batch_loss_sum(logits, y), len(y))
        traces.estimates()

    def hutch_per_probe():  # timed on TIMED_PROBES probes, scaled to PROBES (cost is linear in probes)
        w = loaded.head.weight
        for i in range(TIMED_PROBES):
            v = torch.randint(0, 2, w.shape, generator=torch.Generator().manual_seed(i)).to(device, w.dtype) * 2 - 1
            for x, y in xs:
                loss = F.cross_entropy(loaded.model(x), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, w, create_graph=True)
                (hv,) = torch.autograd.grad((g * v).sum(), w)
                (hv * v).sum().item()

    closed()  # warm-up
    t = {
        "forward": best_of(forward, repeats, device),
        "closed form": best_of(closed, repeats, device),
        "hutchinson (shared graph)": best_of(hutch, repeats, device),
        "hutchinson (per-probe passes)": best_of(hutch_per_probe, 1, device) * PROBES / TIMED_PROBES,
    }
    print(f"\n{name}: {len(ds)} inputs, batch {batch_size}, device {device}, {torch.get_num_threads()} threads")
    for k, v in t.items():
        print(f"  {k:32s} {v * 1000:10.1f} ms")
    print(f"  closed form / forward            {t['closed form'] / t['forward']:10.2f}x   (target <= 1.2x)")
    print(f"  hutchinson shared / closed form  {t['hutchinson (shared graph)'] / t['closed form']:10.1f}x")
    print(f"  hutchinson per-probe / closed    {t['hutchinson (per-probe passes)'] / t['closed form']:10.1f}x   (target > 50x)")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    loaded = load_model("example:digits-cnn", device=device)
    bench("example:digits-cnn (digits test split)", loaded, load_data("digits", "test"), device, 256, args.repeats)
    loaded, ds = resnet_case(device, 256)
    bench("CIFAR ResNet-18, random weights", loaded, ds, device, 128, args.repeats)


if __name__ == "__main__":
    main()

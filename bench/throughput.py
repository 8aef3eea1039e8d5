#!/usr/bin/env python3
"""Images per second of `sharpness` and of one PGD step on a CIFAR-shaped ResNet-18.

Random weights and random inputs (nothing to download), per device and precision, measured in one
run: ``flatcli.api.sharpness`` (closed form over the data) and ``flatcli.core.attacks.pgd``
(linf, recording on and off; images/s counts one image-step per image and step), plus
torchattacks' ``PGD`` on the same model and inputs when torchattacks is installed.

Usage: ``python bench/throughput.py [--devices cpu,cuda] [--precisions fp32,bf16,fp16] [--n 256]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import resnet_case, timed  # noqa: E402

from flatcli import api  # noqa: E402
from flatcli.core.attacks import PGD  # noqa: E402
from flatcli.models.head import HeadSplit  # noqa: E402
from flatcli.runtime.precision import autocast  # noqa: E402

STEPS = 5


def warm_timed(fn, device) -> float:
    """Seconds of a second call (the first warms up cuDNN autotuning and the allocator)."""
    fn()
    return timed(fn, device)


def run(device, precision: str, n: int, batch: int) -> dict:
    loaded, ds = resnet_case(device, n, channels_last=device.type == "cuda")
    xs = [(x.to(device), y.to(device)) for x, y in zip(ds.x.split(batch), ds.y.split(batch))]
    attack = PGD(norm="linf", eps=8 / 255, alpha=2 / 255, steps=STEPS)

    def pgd(record: bool):
        def go():
            with HeadSplit(loaded.model, loaded.head, loaded.layer) as split, autocast(device, precision):
                for x, y in xs:
                    attack.run(split, x, y, record=record)
        return go

    out = {
        "sharpness": n / warm_timed(lambda: api.sharpness(loaded, ds, batch_size=batch, device=device,
                                                          precision=precision, samples=False), device),
        "pgd step": n * STEPS / warm_timed(pgd(False), device),
        "pgd step, recording": n * STEPS / warm_timed(pgd(True), device),
    }
    try:
        import torchattacks
    except ImportError:
        return out
    ta = torchattacks.PGD(loaded.model, eps=8 / 255, alpha=2 / 255, steps=STEPS, random_start=False)

    def ta_run():
        with autocast(device, precision):
            for x, y in xs:
                ta(x, y)

    out["torchattacks pgd step"] = n * STEPS / warm_timed(ta_run, device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--n", type=int, default=0, help="inputs (default: 128 on CPU, 4096 on CUDA)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: 64 on CPU, 512 on CUDA)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}; CIFAR ResNet-18, random weights; PGD-linf {STEPS} steps; images/s")
    for name in args.devices.split(","):
        if name.startswith("cuda") and not torch.cuda.is_available():
            print(f"{name}: not available")
            continue
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        n = args.n or (4096 if device.type == "cuda" else 128)
        batch = args.batch or (512 if device.type == "cuda" else 64)
        for precision in args.precisions.split(","):
            try:
                res = run(device, precision, n, batch)
            except (RuntimeError, TypeError) as e:
                print(f"{label:28s} {precision:5s} unsupported: {str(e).splitlines()[0]}")
                continue
            cols = "  ".join(f"{k} {v:9.1f}" for k, v in res.items())
            print(f"{label:28s} {precision:5s} n={n} batch={batch}  {cols}", flush=True)


if __name__ == "__main__":
    main()

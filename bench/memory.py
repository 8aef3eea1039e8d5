#!/usr/bin/env python3
"""Peak memory of ``flatrob attack --trajectory`` does not grow with the number of samples.

Writes N random CIFAR-shaped images (32x32 RGB PNGs, an ImageFolder streamed batch by batch) for
N = 1,000 and 10,000, and a small random CNN checkpoint with its spec embedded; runs
``flatrob attack --trajectory traj.csv`` on each in a fresh process and prints the peak RSS of that
process (``ru_maxrss``) and the trajectory rows written. The trajectory (N x (steps+1) rows) is
streamed per batch, so the two peaks should agree within ~10%.

Usage: ``python bench/memory.py [--sizes 1000,10000] [--steps 5]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from flatcli.models.registry import build_network

CHILD = """
import resource, sys
from flatcli.cli import app
code = app(sys.argv[1:], standalone_mode=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / str(i % 10) / f"{i:05d}.png")


def write_model(path: Path) -> None:
    torch.manual_seed(0)
    net = build_network("small-cnn", num_classes=10, in_channels=3, kwargs={"width": 16})
    spec = {"arch": "small-cnn", "arch_kwargs": {"width": 16}, "layer": "fc", "input_shape": [3, 32, 32]}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"flatrob.spec": yaml.safe_dump(spec)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model.safetensors"
        write_model(model)
        peaks = {}
        for n in (int(s) for s in args.sizes.split(",")):
            images = tmp / f"images{n}"
            write_images(images, n)
            traj = tmp / f"traj{n}.csv"
            cmd = [sys.executable, "-c", CHILD, "attack", str(model), "--data", f"folder:{images}", "--norm", "linf",
                   "--eps", "0.03", "--alpha", "0.01", "--steps", str(args.steps), "--batch-size", "128",
                   "--device", "cpu", "--trajectory", str(traj), "--format", "json", "--output", str(tmp / "s.json")]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peaks[n] = int(out.stdout.split()[-1]) / 1024
            rows = sum(1 for _ in traj.open()) - 1
            print(f"N={n:6d}: peak RSS {peaks[n]:7.1f} MiB, trajectory rows {rows}", flush=True)
        lo, hi = min(peaks.values()), max(peaks.values())
        print(f"largest / smallest peak: {hi / lo:.3f} (target within 1.10)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Train the bundled example ``example:digits-cnn`` and write it with its spec embedded.

A small BatchNorm CNN (built-in ``small-cnn``, width 16, feature dimension 32) on scikit-learn's
8x8 digits, train split (1437 images). Deterministic (fixed seed, one thread), a few seconds on CPU.
Usage: ``python scripts/train_example.py [OUT]`` (default: flatcli/examples/digits-cnn.safetensors).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from flatcli.core.classifier import Classifier
from flatcli.inputs.data import load_data
from flatcli.models.registry import build_network

WIDTH = 16
EPOCHS = 40
SEED = 0


def main(out: Path) -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    train = load_data("digits", "train")
    test = load_data("digits", "test")
    x, y = train.x, train.y
    mean, std = round(x.mean().item(), 4), round(x.std().item(), 4)
    net = build_network("small-cnn", num_classes=10, in_channels=1, kwargs={"width": WIDTH})
    model = Classifier(net, [mean], [std])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    spec = {
        "arch": "small-cnn",
        "arch_kwargs": {"width": WIDTH},
        "layer": "fc",
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        "mean": [mean],
        "std": [std],
        "data": "digits",
    }
    meta = {"flatrob.spec": yaml.safe_dump(spec, sort_keys=False), "test_accuracy": f"{acc:.4f}"}
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size} bytes); digits test accuracy {acc:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "flatcli/examples/digits-cnn.safetensors")

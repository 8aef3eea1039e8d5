"""What the benchmarks share: timing on a chosen clock, the random CIFAR ResNet-18 case, copies of the bundled
example with perturbed weights, common options."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flatcli.inputs.data import DataSource
from flatcli.models.loading import LoadedModel, from_module
from flatcli.models.registry import build_network

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, device, clock: str = "wall") -> float:
    """Seconds ``fn()`` takes on ``clock`` (wall or process CPU time), CUDA work included."""
    now = CLOCK[clock]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = now()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return now() - t0


def resnet_case(device, n: int, channels_last: bool = False) -> tuple[LoadedModel, DataSource]:
    """A CIFAR ResNet-18 with random weights (seed 0) and ``n`` random CIFAR-shaped inputs."""
    torch.manual_seed(0)
    net = build_network("resnet18", num_classes=10, in_channels=3).eval()
    loaded = from_module(net, layer="fc", mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26], device=device)
    loaded.model.eval()  # the wrapper too: torchattacks restores a wrapper's train mode on every submodule
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return loaded, DataSource(f"random:{n}", (3, 32, 32), 10, x=x, y=torch.randint(0, 10, (n,), generator=g))


def perturbed_copies(directory: Path, n: int, noise: float = 0.05) -> list[str]:
    """``n`` checkpoints of the bundled example's architecture (``example:digits-cnn``, its spec embedded): copy
    ``i`` holds the example's weights plus seeded Gaussian noise of ``noise * i`` times each tensor's std
    (BatchNorm running statistics kept). The first two are
    ``epoch0/model.safetensors`` and ``epoch1/model.safetensors`` (one stem for two files), the rest ``m<i>.safetensors``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from flatcli.inputs.checkpoint import resolve

    with safe_open(str(resolve("example:digits-cnn")), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        copy = {k: v + noise * i * v.std() * torch.randn(v.shape, generator=g)
                if v.is_floating_point() and v.numel() > 1 and "running_" not in k else v for k, v in state.items()}
        path = directory / f"epoch{i}" / "model.safetensors" if i < 2 else directory / f"m{i}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file(copy, str(path), metadata=meta)
        paths.append(str(path))
    return paths


def timing_parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """Options of the interleaved-rounds benchmarks (attack, sweep)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resnet", action="store_true", help="also a random ResNet-18 on CIFAR-shaped inputs (slow on CPU)")
    parser.add_argument("--resnet-n", type=int, default=64)
    parser.add_argument(
        "--clock", choices=("auto", "wall", "cpu"), default="auto",
        help="wall: elapsed time; cpu: process CPU time, steadier on a shared machine (auto: cpu on the CPU, wall on CUDA)",
    )
    return parser


def configure(args: argparse.Namespace) -> tuple[torch.device, str]:
    """Apply ``--threads``; the device and the clock; print them."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = args.clock if args.clock != "auto" else ("wall" if device.type == "cuda" else "cpu")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {clock} clock")
    return device, clock

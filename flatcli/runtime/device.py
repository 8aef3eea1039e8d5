"""The device a run uses: ``--device auto|cpu|cuda|cuda:N``, under torchrun each rank's own GPU, and freeing memory.

This is the one module that names CUDA (``tests/test_cuda_literals.py`` checks that no other file calls
``.cuda()`` or writes a ``"cuda"`` device literal): the rest of flatrob takes the device it is given.
"""

from __future__ import annotations

import os

import torch

from flatcli.errors import OptionError, UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(("device", "device"), f"{{}} {name}: CUDA is not available on this machine; use {{}} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError("device", f"{{}} {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def release_memory() -> None:
    """Hand the CUDA allocator's cached blocks back (between the checkpoints of a many-checkpoint run, once the
    last model is gone, so GPU memory stays that of one model); nothing to do on the CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()

"""``--precision fp32|bf16|fp16``: the network's forward pass under ``torch.autocast``.

Only the forward pass of the network runs in reduced precision; closed-form measures are computed
from its features in float64 (:mod:`flatcli.core.curvature`), so they are accumulated in full precision
whatever precision ran.
"""

from __future__ import annotations

import contextlib

import torch

from flatcli.errors import OptionError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """A context for the forward pass: nothing for fp32, ``torch.autocast`` otherwise."""
    if precision not in PRECISIONS:
        raise OptionError("precision", f"{{}} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    try:
        return torch.autocast(device_type=device.type, dtype=dtype)
    except RuntimeError as e:
        raise OptionError("precision", f"{{}} {precision} is not supported on {device.type}: {e}") from None

"""Split a classifier into features and head: ``logits = W phi(x) + b``.

``phi(x)`` is the input of the head layer, captured by a forward hook during the model's own forward
pass, so computing it costs nothing beyond the forward pass itself, and gradients flow through it.
Scaling the head by ``s`` (``W -> sW``, ``b -> sb`` unless the bias is kept) is done on the captured
features: the rest of the network is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.core.head_scaling import Scaling
from flatcli.errors import DataError, LayerError

#: |head(phi) - logits| allowed when verifying the split, relative to max |logits|.
VERIFY_RTOL = 1e-4


class HeadSplit:
    """Calls ``model(x)`` and returns ``(logits of the scaled model, phi(x))`` from one forward pass.

    Use as a context manager (the hook is removed on exit). ``verify`` checks on a batch that the
    hooked layer is applied exactly once to a (B, m) input and that ``head(phi)`` reproduces the
    model's logits, i.e. that it really is the last linear map. The verifying forward pass is the
    first the model sees: if the network fails on the data there (``mat1 and mat2 shapes cannot be
    multiplied``, NHWC images, wrong channels), that is a data/model mismatch (:class:`DataError`
    naming the input shape and the model's error), not a crash.
    """

    def __init__(self, model: nn.Module, head: nn.Linear, name: str, scaling: Scaling = Scaling()):
        self.model = model
        self.head = head
        self.name = name
        self.scaling = scaling
        self._captured: list[torch.Tensor] = []
        self._handle = None

    def __enter__(self) -> "HeadSplit":
        self._handle = self.head.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, inputs, output) -> None:
        self._captured.append(inputs[0])

    def with_scaling(self, scaling: Scaling) -> "HeadSplit":
        """The same split (sharing the hook) for another scaling of the head."""
        other = HeadSplit(self.model, self.head, self.name, scaling)
        other._captured, other._handle = self._captured, None
        return other

    def features(self, x: torch.Tensor, verify: bool = False) -> torch.Tensor:
        """``phi(x)``: runs the model once and returns the head's input (``verify``: check the split too)."""
        self._captured.clear()
        out = self._first_forward(x) if verify else self.model(x)
        phi = self._take()
        if verify:
            self._check(x, out, phi)
        return phi

    def _first_forward(self, x: torch.Tensor):
        try:
            return self.model(x)
        except torch.OutOfMemoryError:
            raise  # the device is too small, not the data wrong: an unexpected failure as before
        except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
            self._captured.clear()
            words = " ".join(str(exc).split()) or type(exc).__name__
            words = words if len(words) <= 160 else words[:157] + "..."
            raise DataError(
                f"the data does not fit the model: its forward pass fails on inputs of shape "
                f"{tuple(x.shape[1:])} (C, H, W) with: {words}; give data of the shape the network takes "
                "(NCHW, the channels and size it was trained on) or set input_shape in the spec"
            ) from None

    def logits(self, phi: torch.Tensor) -> torch.Tensor:
        """Logits of the (scaled) model from features: ``s W phi + (s) b``."""
        return F.linear(phi, self.scaling.weight(self.head), self.scaling.bias(self.head))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.features(x)
        return self.logits(phi), phi

    def _take(self) -> torch.Tensor:
        if len(self._captured) != 1:
            n = len(self._captured)
            self._captured.clear()
            raise LayerError(
                f"layer {self.name!r} ran {n} times in one forward pass; the head must be applied exactly once"
            )
        phi = self._captured.pop()
        if phi.dim() != 2:
            raise LayerError(
                f"layer {self.name!r} receives input of shape {tuple(phi.shape)}; the head must map "
                "flat features (batch, m) to logits"
            )
        return phi

    def verify(self, x: torch.Tensor) -> None:
        """Fail clearly unless ``head(phi(x))`` equals the model's output on ``x``."""
        with torch.no_grad():
            self.features(x, verify=True)

    def _check(self, x: torch.Tensor, out, phi: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], self.head.out_features):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LayerError(
                f"the model's output {shape} is not the output of layer {self.name!r} "
                f"({x.shape[0]}, {self.head.out_features}); pick the last linear layer"
            )
        with torch.no_grad():
            again = self.head(phi)
            self._captured.clear()
            err = (again - out).abs().max().item()
            ref = out.abs().max().item()
        if not err <= VERIFY_RTOL * max(ref, 1.0):
            raise LayerError(
                f"layer {self.name!r} is not the last linear map: head(phi(x)) differs from the model's "
                f"logits by {err:.3g}; name the final nn.Linear with --layer"
            )

"""Image classifiers as a model kind: one row per image, pixels in [0, 1] perturbed, over :class:`HeadSplit`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flatcli.core.head_scaling import Scaling
from flatcli.models.head import HeadSplit
from flatcli.models.kinds.base import HeadBatch, ModelKind
from flatcli.models.loading import LoadedModel


class ImageClassifier(ModelKind):
    """A :class:`LoadedModel`: ``logits = s W phi(x) + (s) b`` per image, from one forward pass."""

    name = "image-classifier"
    perturbs = "pixels"

    def __init__(self, loaded: LoadedModel, scaling: Scaling = Scaling()):
        self.loaded = loaded
        self.scaling = scaling

    @property
    def head(self) -> nn.Linear:
        return self.loaded.head

    def head_batch(self, x: Tensor, y: Tensor | None = None) -> HeadBatch:
        """``x`` (B, C, H, W) in [0, 1], ``y`` (B,) class labels."""
        loaded = self.loaded
        with HeadSplit(loaded.model, loaded.head, loaded.layer, self.scaling) as split:
            logits, phi = split(x)
        return HeadBatch(logits, phi, y, torch.arange(len(x), device=x.device))

    def describe_inputs(self) -> dict:
        spec = self.loaded.spec
        return {"kind": self.name, "perturbs": self.perturbs, "input_shape": spec.input_shape,
                "mean": spec.mean, "std": spec.std, "classes": self.loaded.num_classes}

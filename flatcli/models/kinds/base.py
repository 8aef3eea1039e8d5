"""The model-kind interface: a batch in, the head's logits, features and labels out, one row per sample or token.

Every measure of flatrob is a function of the head ``z = W phi + b``: for an image classifier a row is an
image, for a causal language model a row is a token position (``phi_t`` the input of the output projection,
the label the next token). A kind says how its batches become those rows (:meth:`ModelKind.head_batch`),
what an attack perturbs (:attr:`ModelKind.perturbs`) and how its inputs are described
(:meth:`ModelKind.describe_inputs`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclass
class HeadBatch:
    """The head's view of one batch, flattened to rows: ``logits`` (N, k) as the model computes them,
    ``features`` (N, m) the head's input, ``labels`` (N,) (``-100``: none, e.g. the last token), and
    ``owner`` (N,) the batch index of the sample each row belongs to."""

    logits: Tensor
    features: Tensor
    labels: Tensor | None
    owner: Tensor


class ModelKind(ABC):
    """A kind of model seen through its head."""

    #: The kind's name (``image-classifier``, ``causal-lm``).
    name: ClassVar[str]
    #: What an attack perturbs: ``pixels`` (a box [0, 1]) or ``tokens`` (ids of a vocabulary).
    perturbs: ClassVar[str]

    @property
    @abstractmethod
    def head(self) -> nn.Linear:
        """The head layer ``z = W phi + b``."""

    @abstractmethod
    def head_batch(self, *inputs: Any) -> HeadBatch:
        """One forward pass of the model on a batch, as rows of the head."""

    @abstractmethod
    def describe_inputs(self) -> dict:
        """What the model takes, for the ``config`` of an output."""

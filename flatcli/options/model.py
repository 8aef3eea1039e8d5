"""The model-reference options: which network, which head, how inputs are normalised, whom to trust."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.inputs.spec import MAX_SIDE
from flatcli.models.arch_forms import arch_help
from flatcli.options.base import Group, integer, numbers, switch, text


@dataclass(frozen=True)
class ModelOptions(Group):
    """How a checkpoint becomes a model (the spec's values, overridden by every option given)."""

    title = "Model"
    key = "model"

    spec: str | None = text(None, "Layer spec (YAML); overrides the embedded spec.", metavar="FILE")
    arch: str | None = text(None, arch_help, completion="arch")
    layer: str | None = text(None, "Head layer (an nn.Linear), e.g. fc (default: spec, then the built-in's head).",
                             completion="layer")
    mean: tuple[float, ...] | None = numbers(None, "Per-channel mean the model normalises its inputs with, e.g. "
                                             "0.4914,0.4822,0.4465 (default: spec, else none).", metavar="M[,M...]")
    std: tuple[float, ...] | None = numbers(None, "Per-channel std of that normalisation (default: spec, else none).",
                                            metavar="S[,S...]", above=0)
    num_classes: int | None = integer(None, "Classes the head predicts (default: spec, else rows of the head's "
                                      "weight).", metavar="K", minimum=1)
    input_shape: tuple[float, ...] | None = numbers(None, "C,H,W of one input, e.g. 1,28,28; H,W is the crop of image "
                                                    "files (default: spec, else read off the weights and data).",
                                                    metavar="C,H,W", minimum=1, maximum=MAX_SIDE)
    trust_embedded_code: bool = switch(False, "Let the checkpoint's embedded spec name a module.path:Class to import "
                                       "(it runs that module's code); without it only --arch or a --spec file may "
                                       "name code.")

"""The data options: which samples, in which batches, read how."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.inputs.data.forms import data_help
from flatcli.options.base import Group, choice, integer, switch, text

#: Resizing filters of ``interpolation`` (torchvision's InterpolationMode by name).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class DataOptions(Group):
    """The samples a command measures and how a ``--data`` string's images are read."""

    title = "Data"
    key = "data"

    data: str | None = text(None, data_help, completion="data")
    split: str = text("test", "Data split: train, test or all (digits).", completion="split")
    limit: int | None = integer(None, "Use only N samples of the split: the first N, or from a source sorted by class "
                                "(a folder of class directories) N taken class by class in turn.", minimum=0)
    first: bool = switch(False, "With --limit: the first N samples in the source's order, even from a source "
                         "sorted by class.")
    batch_size: int = integer(256, "Samples per batch; memory is bounded by it.", minimum=1)
    resize: int | None = integer(None, "Resize each image's shorter side to N pixels before the centre crop (default: "
                                 "spec, else just covering the crop).", metavar="N", minimum=1)
    crop: int | None = integer(None, "Centre-crop images to N x N (default: spec, else the model's input size).",
                               metavar="N", minimum=1)
    interpolation: str | None = choice(None, "Resizing filter: bilinear, bicubic or nearest (default: spec, else "
                                       "bilinear).", INTERPOLATIONS)
    image_column: str | None = text(None, "hf: data: the image column (default: the one datasets.Image column).")
    label_column: str | None = text(None, "hf: data: the label column (default: the one datasets.ClassLabel column, "
                                    "else the only integer column).")

    def reading(self) -> dict:
        """How a ``--data`` string's images are read (``None``: the spec's, then the defaults)."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "image_column": self.image_column, "label_column": self.label_column}

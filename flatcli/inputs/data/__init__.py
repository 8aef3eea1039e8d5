"""Data sources behind ``--data``: every command reads images and labels through this package.

The forms a ``--data`` string may take (``digits``, ``cifar10:ROOT`` ... ``stl10:ROOT``, ``folder:DIR``,
``npz:FILE``, ``hf:PATH``, ``tensors:FILE``) are the table :data:`~flatcli.inputs.data.forms.FORMS`,
one row each naming its loader module; :func:`load_data` opens a string through it.

``limit`` keeps the first ``limit`` samples after the split. ``preprocess`` (:mod:`.images`) resizes and
centre-crops the images of image sources (folder, hf and torchvision's data sets; ``npz`` and ``tensors``
are exact pixels, never resized). Labels and source indices of every source are held in memory
(``DataSource.y`` / ``DataSource.index``); images of in-memory sources (digits, tensors, float npz) are in
``DataSource.x`` (float32, [0, 1]); streamed sources have ``x = None``: use :func:`batches` or
``data[i]``. The Python API also takes tensors, torch ``Dataset`` and ``DataLoader`` objects (:mod:`.pytorch`).

The names backed by torch (:class:`DataSource`, :func:`batches`, ...) are imported on first use, so that
the table, and through it the CLI's help and shell completion, is read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flatcli.errors import DataError, OptionError
from flatcli.inputs.data.forms import ACCEPTED_FORMS, FILE_FORMS, IMAGE_FILE_FORMS, DataRequest, parse

if TYPE_CHECKING:
    from flatcli.inputs.data.images import Preprocess, preprocessing
    from flatcli.inputs.data.source import DataSource, batches, check_compatible

__all__ = ["ACCEPTED_FORMS", "DataSource", "Preprocess", "batches", "check_compatible", "load_data", "preprocessing",
           "FILE_FORMS", "IMAGE_FILE_FORMS"]

# name -> the module of this package that defines it (imported on first use: it imports torch)
_TORCH_BACKED = {"DataSource": "source", "batches": "source", "check_compatible": "source", "Preprocess": "images",
                 "preprocessing": "images"}


def __getattr__(name: str):
    if name in _TORCH_BACKED:
        return getattr(importlib.import_module(f"{__name__}.{_TORCH_BACKED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_data(source: str, split: str = "test", limit: int | None = None, num_classes: int | None = None, *,
              preprocess: Preprocess | None = None, image_column: str | None = None,
              label_column: str | None = None, first: bool = False) -> DataSource:
    """Open the data source named by a ``--data`` string (see the module docstring); ``num_classes`` (the
    model's) bounds the class directories a ``folder:`` may have; ``image_column``/``label_column`` pick
    the columns of an ``hf:`` source; ``limit`` samples of a class-sorted source are drawn class by class
    unless ``first`` (:meth:`DataSource.limited`)."""
    if limit is not None and limit < 0:
        raise OptionError("limit", f"{{}} must be 0 or more, got {limit}")
    form, argument = parse(source)
    given = [name for name, value in (("image_column", image_column), ("label_column", label_column)) if value is not None]
    if given and not form.columns:
        raise OptionError((given[0], "data"), "{} names a column of an hf: data set; {} " + form.name
                          + " has no columns: drop it")
    data = form.load(argument, DataRequest(split or "test", num_classes, preprocess, image_column, label_column))
    if limit is not None:
        data = data.limited(limit, first=first)
    if len(data) == 0:
        why = f" (after --limit {limit})" if limit == 0 else ""
        raise DataError(f"data source {data.name} holds no samples{why}")
    return data

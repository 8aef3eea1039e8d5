"""Data sources behind ``--data``: every command reads images and labels through this package.

Accepted forms (``load_data(source, split, limit)``):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (:mod:`.digits`).
``cifar10:ROOT``, ``cifar100:ROOT``, ``mnist:ROOT``, ``fashionmnist:ROOT``, ``kmnist:ROOT``, ``svhn:ROOT``, ``stl10:ROOT``
    torchvision's own data set classes over the files under ``ROOT``, never downloaded (:mod:`.torchvision_sets`).
``folder:DIR``
    an ``ImageFolder`` tree, streamed from disk (:mod:`.folder`).
``npz:FILE``
    a numpy archive with ``x`` (uint8 or float in [0, 1], NCHW or NHWC) and ``y`` (:mod:`.npz`).
``hf:PATH``
    a Hugging Face ``datasets`` save_to_disk folder, or parquet files (:mod:`.hf`).
``tensors:FILE`` / ``tensors:-``
    a safetensors file with ``x``, ``y`` and optionally ``index`` (:mod:`.tensors`; ``-`` reads stdin).

``limit`` keeps the first ``limit`` samples after the split. ``preprocess`` (:mod:`.images`) resizes and
centre-crops the images of image sources (folder, hf and torchvision's data sets; ``npz`` and ``tensors``
are exact pixels, never resized). Labels and source indices of every source are held in memory
(``DataSource.y`` / ``DataSource.index``); images of in-memory sources (digits, tensors, float npz) are in
``DataSource.x`` (float32, [0, 1]); streamed sources have ``x = None``: use :func:`batches` or
``data[i]``. The Python API also takes tensors, torch ``Dataset`` and ``DataLoader`` objects (:mod:`.pytorch`).
"""

from __future__ import annotations

from flatcli.errors import DataError, UsageError
from flatcli.inputs.data.formats import ACCEPTED_FORMS
from flatcli.inputs.data.images import Preprocess, preprocessing
from flatcli.inputs.data.source import DataSource, batches, check_compatible

__all__ = ["ACCEPTED_FORMS", "DataSource", "Preprocess", "batches", "check_compatible", "load_data", "preprocessing",
           "FILE_FORMS"]

#: The forms whose argument is a file or directory the run reads (inputs of its output plan).
#: Sources of image files of any size: the architecture's own data config may size them (``LoadedModel.image_defaults``).
IMAGE_FILE_FORMS = ("folder", "hf")
FILE_FORMS = ("cifar10", "cifar100", "mnist", "fashionmnist", "kmnist", "svhn", "stl10", "folder", "npz", "hf",
              "tensors")
_ARGUMENT = {"folder": "a directory: --data folder:DIR", "npz": "a file: --data npz:FILE",
             "hf": "a save_to_disk folder or parquet files: --data hf:PATH",
             "tensors": "a file: --data tensors:FILE (or tensors:- for stdin)"}


def load_data(source: str, split: str = "test", limit: int | None = None, num_classes: int | None = None, *,
              preprocess: Preprocess | None = None, image_column: str | None = None,
              label_column: str | None = None) -> DataSource:
    """Open the data source named by a ``--data`` string (see the module docstring); ``num_classes`` (the
    model's) bounds the class directories a ``folder:`` may have; ``image_column``/``label_column`` pick
    the columns of an ``hf:`` source."""
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    if split is None:
        split = "test"
    source = str(source).strip()
    kind, sep, arg = source.partition(":")
    if (image_column is not None or label_column is not None) and kind != "hf":
        given = "--image-column" if image_column is not None else "--label-column"
        raise UsageError(f"{given} names a column of an hf: data set; --data {kind} has no columns: drop it")
    if kind == "digits":
        if sep:
            raise UsageError(f"'digits' takes no argument (got {source!r}); choose the split with --split")
        from flatcli.inputs.data.digits import load_digits

        data = load_digits(split)
    elif kind not in FILE_FORMS:
        raise UsageError(f"unknown data source {source!r}; use one of: {ACCEPTED_FORMS}")
    elif not arg:
        need = _ARGUMENT.get(kind, f"the directory holding the data set: --data {kind}:ROOT")
        raise UsageError(f"{kind} needs {need}")
    elif kind == "folder":
        from flatcli.inputs.data.folder import load_folder

        data = load_folder(arg, split, num_classes, preprocess)
    elif kind == "npz":
        from flatcli.inputs.data.npz import load_npz

        data = load_npz(arg, split)
    elif kind == "hf":
        from flatcli.inputs.data.hf import load_hf

        data = load_hf(arg, split, preprocess, image_column, label_column)
    elif kind == "tensors":
        from flatcli.inputs.data.tensors import load_tensors

        data = load_tensors(arg)
    else:
        from flatcli.inputs.data.torchvision_sets import load_torchvision

        data = load_torchvision(kind, arg, split, preprocess)
    if limit is not None:
        data = data.subset(0, limit)
    if len(data) == 0:
        why = f" (after --limit {limit})" if limit == 0 else ""
        raise DataError(f"data source {data.name} holds no samples{why}")
    return data

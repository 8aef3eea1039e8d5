"""Data sources behind ``--data``: every command reads images and labels through this package.

Accepted forms (``load_data(source, split, limit)``):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (:mod:`.digits`).
``cifar10:ROOT`` / ``cifar100:ROOT``
    torchvision's CIFAR-10/100 python files under ``ROOT``, never downloaded (:mod:`.cifar`).
``folder:DIR``
    an ``ImageFolder`` tree, streamed from disk (:mod:`.folder`).
``tensors:FILE`` / ``tensors:-``
    a safetensors file with ``x``, ``y`` and optionally ``index`` (:mod:`.tensors`; ``-`` reads stdin).

``limit`` keeps the first ``limit`` samples after the split. Labels and source indices of every
source are held in memory (``DataSource.y`` / ``DataSource.index``); images of in-memory sources
(digits, tensors) are in ``DataSource.x`` (float32, [0, 1]); streamed sources (folder, cifar)
have ``x = None``: use :func:`batches` or ``data[i]``. The Python API also takes tensors, torch
``Dataset`` and ``DataLoader`` objects (:mod:`.in_memory`).
"""

from __future__ import annotations

from flatcli.errors import DataError, UsageError
from flatcli.inputs.data.source import DataSource, batches, check_compatible

__all__ = ["ACCEPTED_FORMS", "DataSource", "batches", "check_compatible", "load_data"]

ACCEPTED_FORMS = "digits, cifar10:ROOT, cifar100:ROOT, folder:DIR, tensors:FILE (tensors:- reads stdin)"


def load_data(source: str, split: str = "test", limit: int | None = None, num_classes: int | None = None) -> DataSource:
    """Open the data source named by a ``--data`` string (see the module docstring); ``num_classes`` (the
    model's) bounds the class directories a ``folder:`` may have."""
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    if split is None:
        split = "test"
    source = str(source).strip()
    kind, sep, arg = source.partition(":")
    if kind == "digits":
        if sep:
            raise UsageError(f"'digits' takes no argument (got {source!r}); choose the split with --split")
        from flatcli.inputs.data.digits import load_digits

        data = load_digits(split)
    elif kind in ("cifar10", "cifar100"):
        if not arg:
            raise UsageError(f"{kind} needs the directory holding the data set: --data {kind}:ROOT")
        from flatcli.inputs.data.cifar import load_cifar

        data = load_cifar(kind, arg, split)
    elif kind == "folder":
        if not arg:
            raise UsageError("folder needs a directory: --data folder:DIR")
        from flatcli.inputs.data.folder import load_folder

        data = load_folder(arg, split, num_classes)
    elif kind == "tensors":
        if not arg:
            raise UsageError("tensors needs a file: --data tensors:FILE (or tensors:- for stdin)")
        from flatcli.inputs.data.tensors import load_tensors

        data = load_tensors(arg)
    else:
        raise UsageError(f"unknown data source {source!r}; use one of: {ACCEPTED_FORMS}")
    if limit is not None:
        data = data.subset(0, limit)
    if len(data) == 0:
        why = f" (after --limit {limit})" if limit == 0 else ""
        raise DataError(f"data source {data.name} holds no samples{why}")
    return data

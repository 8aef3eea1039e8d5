"""Data handed over in Python (the API's ``data=``): a torch ``Dataset`` or ``DataLoader`` yielding ``(x, y)``.

A map-style ``Dataset`` is streamed: its images are read one at a time when batches are formed, in
the dataset's order (the source index is the position). Its labels are read up front, from a
``targets`` attribute (as torchvision's data sets have) or by one pass over the items. Every image
must be a float tensor in [0, 1] of the first image's shape (C, H, W), as ``ToTensor`` makes them.

A ``DataLoader`` over a map-style dataset is read through that dataset, so its sampler and batching do
not change the order or the numbers (``batch_size`` of the run applies). A loader over an iterable
dataset is read once, batch by batch, into memory.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from flatcli.errors import DataError
from flatcli.inputs.data.source import DataSource, fmt_shape
from flatcli.inputs.data.tensors import from_tensors


class _DatasetImages:
    """Reads image ``position`` of a map-style dataset, checked against the first image's shape."""

    def __init__(self, dataset: Dataset, name: str, shape: tuple[int, ...] | None = None):
        self.dataset = dataset
        self.name = name
        self.shape = shape

    def __call__(self, position: int) -> Tensor:
        image = _image(self.dataset[position], self.name, position)
        if self.shape is not None and tuple(image.shape) != self.shape:
            raise DataError(f"{self.name}: item {position} has shape {fmt_shape(tuple(image.shape))}, the first has "
                            f"{fmt_shape(self.shape)}; every image must have the same (C, H, W)")
        return image


def _image(item, name: str, position: int) -> Tensor:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{name}: item {position} is a {type(item).__name__}, expected a pair (x, y)")
    x = item[0]
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 3:
        what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"{name}: item {position} has x {what}; expected a float tensor (C, H, W) in [0, 1] "
                        "(e.g. torchvision's ToTensor())")
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise DataError(f"{name}: item {position} has values outside [0, 1] (or NaN); pass un-normalised pixels "
                        "in [0, 1] and give mean/std to the model")
    return x


def _label(item, name: str, position: int) -> int:
    y = item[1]
    if isinstance(y, Tensor):
        if y.numel() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"{name}: item {position} has label {y!r}; expected one integer class")
        return int(y)
    if isinstance(y, bool) or not isinstance(y, numbers.Integral):
        raise DataError(f"{name}: item {position} has label {y!r}; expected one integer class")
    return int(y)


def from_dataset(dataset: Dataset, name: str | None = None) -> DataSource:
    """A streamed source over a map-style ``dataset`` of ``(x, y)`` items (see the module docstring)."""
    name = name or f"dataset:{type(dataset).__name__}"
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{name} has no length; pass a map-style Dataset, a DataLoader or (x, y) tensors") from None
    if n == 0:
        raise DataError(f"data source {name} holds no samples")
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == n:
        y = torch.as_tensor(targets if not isinstance(targets, Tensor) else targets.clone())
        if y.is_floating_point() or y.dim() != 1:
            raise DataError(f"{name}: targets must be integer class labels, one per item")
        y = y.to(torch.int64)
    else:
        y = torch.tensor([_label(dataset[i], name, i) for i in range(n)], dtype=torch.int64)
    if int(y.min()) < 0:
        raise DataError(f"{name}: labels must be class numbers 0..K-1, got {int(y.min())}")
    first = _image(dataset[0], name, 0)
    shape = tuple(int(s) for s in first.shape)
    return DataSource(name=name, input_shape=shape, num_classes=None, y=y, split=None,
                      _reader=_DatasetImages(dataset, name, shape))


def from_loader(loader: DataLoader) -> DataSource:
    """A source from a ``DataLoader``: through its dataset when map-style, else read once into memory."""
    name = f"dataloader:{type(loader.dataset).__name__}"
    if not isinstance(loader.dataset, IterableDataset):
        return from_dataset(loader.dataset, name)
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"{name} yields {type(batch).__name__}, expected batches (x, y)")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise DataError(f"data source {name} holds no samples")
    return from_tensors(torch.cat(xs), torch.cat(ys), name=name)

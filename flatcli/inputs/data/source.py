"""The data source every command reads: a fixed-order data set of images in [0, 1], labels and indices.

A :class:`DataSource` holds labels and source indices in memory and images either in memory (``x``,
float32 NCHW) or behind a reader that loads one image (or a batch) at a time. :func:`batches` yields
fresh batches in data order (one rank's share under torchrun); :func:`check_compatible` refuses data
that cannot feed the model. The sources behind ``--data`` are in the sibling modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from flatcli.errors import DataError, OptionError, UsageError


@dataclass(eq=False)
class DataSource(Dataset):
    """A fixed-order data set: ``data[i] -> (x CHW float32 in [0, 1], label, source index)``.

    ``x`` is set for in-memory sources (float32, (N, C, H, W)); streamed sources leave it ``None``
    and read images through a private reader. ``y`` (int64 labels) and ``index`` (int64 source
    indices) are always in memory. The reader is asked for rows by position in what it holds: ``rows``,
    which is ``index`` unless set (a file's own ``index`` column is metadata carried to the rows, never a
    key to look images up by).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int | None
    x: Tensor | None = None
    y: Tensor | None = None
    index: Tensor | None = None
    split: str | None = None
    classes: list[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    preprocess: Any = None  # the images.Preprocess its images are read through (None: at their own size)
    _reader: Any = field(default=None, repr=False)
    _rows: Tensor | None = field(default=None, repr=False)  # positions in the reader (None: ``index``)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)  # type: ignore[assignment]
        if self.y is None:
            raise ValueError("DataSource needs y (int64 labels)")
        if self.x is None and self._reader is None:
            raise ValueError("DataSource needs x or a reader")
        if self.index is None:
            self.index = torch.arange(len(self.y), dtype=torch.int64)

    @property
    def in_memory(self) -> bool:
        """True when ``x`` holds every image (batches are plain tensor slices)."""
        return self.x is not None

    @property
    def rows(self) -> Tensor:
        """The reader's position of every sample (``index`` unless the source set its own)."""
        return self.index if self._rows is None else self._rows

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        if self.x is not None:
            image = self.x[i].clone()
        else:
            image = self._reader(int(self.rows[i]))
        return image, int(self.y[i]), int(self.index[i])

    def subset(self, start: int, stop: int | None = None) -> "DataSource":
        """Rows ``start:stop`` (in order) as a new source, e.g. for one rank's shard."""
        return self.take(slice(start, stop))

    def take(self, rows: slice | Tensor) -> "DataSource":
        """The samples at ``rows`` (a slice, or positions in this source) as a new source."""
        return DataSource(
            name=self.name,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            x=None if self.x is None else self.x[rows],
            y=self.y[rows],
            index=self.index[rows],
            split=self.split,
            classes=self.classes,
            metadata=dict(self.metadata),
            preprocess=self.preprocess,
            _reader=self._reader,
            _rows=None if self._rows is None else self._rows[rows],
        )

    def limited(self, limit: int, *, first: bool = False) -> "DataSource":
        """``limit`` samples: the first ones, unless the source is sorted by class (a ``folder:`` of class
        directories, say), whose first ``limit`` samples would hold its first classes only. Then, unless
        ``first``, the samples are taken class by class in turn, each class's in its own order (round-robin:
        every class gets ``limit // k`` or one more, as far as it has them), kept in the source's order, and
        ``metadata["limit_order"]`` says ``balanced``. Deterministic: the same samples on every run."""
        y = self.y
        sorted_by_class = len(y) > limit and bool((y[1:] >= y[:-1]).all()) and int(y[0]) != int(y[-1])
        if first or not sorted_by_class:
            return self.subset(0, limit)
        starts = torch.searchsorted(y, y, right=False)  # first position of each sample's class
        rank = torch.arange(len(y)) - starts  # position within its class
        order = torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)  # rank 0 of every class, then rank 1, ...
        picked = torch.sort(order[:limit]).values
        out = self.take(picked)
        out.metadata["limit_order"] = "balanced"
        return out


def check_compatible(data: DataSource, input_shape: tuple | None, num_classes: int | None) -> None:
    """Raise :class:`DataError` when ``data`` cannot feed a model with this input shape / class count.

    A ``folder:`` source whose channel count differs from a 1- or 3-channel model is switched to
    the model's colour mode (L or RGB) instead of failing.
    """
    if input_shape is not None:
        want = tuple(int(s) for s in input_shape)
        have = tuple(data.input_shape)
        convert = getattr(data._reader, "convert_channels", None)  # image files: L or RGB on reading
        if convert is not None and len(want) == 3 and have[1:] == want[1:] and have[0] != want[0] and convert(want[0]):
            data.input_shape = want  # type: ignore[assignment]
            have = want
        if have != want:
            fix = "pick matching data or fix input_shape in the spec"
            if data.preprocess is not None and len(want) == 3 and have[1:] != want[1:]:
                fix = (f"they are centre-cropped to {have[1]}x{have[2]} (--crop or the spec's crop:): crop to the "
                       f"model's {want[1]}x{want[2]}")
            raise DataError(
                f"data {data.name} has images of shape {fmt_shape(have)} (C, H, W) but the model expects "
                f"{fmt_shape(want)}; {fix}"
            )
    if num_classes is not None and len(data) > 0:
        top = int(data.y.max())
        if top >= num_classes:
            count = int((data.y >= num_classes).sum())
            raise DataError(
                f"data {data.name} has labels up to {top} ({count} sample{'s' if count != 1 else ''} with "
                f"label >= {num_classes}) but the model has {num_classes} classes; use data with the model's classes"
            )
        if data.num_classes is not None and data.num_classes > num_classes:
            raise DataError(
                f"data {data.name} has {data.num_classes} classes but the model has {num_classes}; "
                f"use data with the model's classes"
            )


def batches(
    data: DataSource,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x (B, C, H, W) float32 on device, y int64, index int64)`` in the data set's order.

    Batches are fresh tensors (never views of the source), so callers may modify them in place.
    ``y`` and ``index`` are on ``device`` too. ``shard=(rank, world)`` yields only batches number
    ``rank, rank + world, ...``: batch composition is the same as in one process, and gathering
    round by round in rank order restores the original order.
    """
    rank, world = shard
    if batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, got {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be 0 or more, got {workers}")
    device = torch.device(device)
    n = len(data)
    starts = list(range(0, n, batch_size))[rank::world]
    if data.x is not None or hasattr(data._reader, "batch"):
        for start in starts:
            stop = min(start + batch_size, n)
            if data.x is not None:
                x = data.x[start:stop].to(device, dtype=torch.float32, copy=True)
            else:
                x = data._reader.batch(data.rows[start:stop], device)
            y = data.y[start:stop].to(device, copy=True)
            index = data.index[start:stop].to(device, copy=True)
            yield x, y, index
        return
    loader = DataLoader(
        data,
        batch_sampler=[list(range(start, min(start + batch_size, n))) for start in starts],
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    iterator = iter(loader)
    while True:
        try:
            x, y, index = next(iterator)
        except StopIteration:
            return
        except DataError as exc:
            if workers == 0:
                raise
            # DataLoader re-raises a worker's error with the worker traceback in its message.
            raise DataError(worker_message(str(exc))) from exc
        non_blocking = device.type == "cuda"
        yield (
            x.to(device, non_blocking=non_blocking),
            y.to(device, torch.int64, non_blocking=non_blocking),
            index.to(device, torch.int64, non_blocking=non_blocking),
        )


#: Python's default repr of an object (``<_io.BytesIO object at 0x7f...>``): never part of a message.
_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def one_line(exc: BaseException) -> str:
    """A library's error as one line, without Python reprs (PIL names in-memory images by their object)."""
    text = _REPR.sub("", " ".join(str(exc).split()))
    return text or type(exc).__name__


def refuse_resizing(form, **given) -> None:
    """Refuse image-reading options (``resize``, ``crop``, ``interpolation``) given for a data ``form`` whose pixels
    are exact (``tensors:``, ``npz:``), instead of ignoring them silently."""
    named = [option for option, value in given.items() if value is not None]
    if form.exact and named:
        raise OptionError(named[0], f"{{}} resizes images read from files; {form.name}: holds exact pixels, used as "
                                    "they are: drop it, or resize them before saving")


def worker_message(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    prefix = "flatcli.errors.DataError:"
    return last[len(prefix) :].strip() if last.startswith(prefix) else last


def fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")

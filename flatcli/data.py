"""Data sources behind ``--data``: every command reads images and labels through this module.

Accepted forms (``load_data(source, split, limit)``):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``, nothing is
    downloaded). ``x = images / 16`` as float32 of shape (N, 1, 8, 8) in [0, 1], 10 classes.
    The split is fixed and documented so that it never changes across library versions::

        perm = numpy.random.RandomState(0).permutation(1797)
        train = perm[:1437]      # 1437 samples, in permutation order
        test  = perm[1437:]      #  360 samples, in permutation order
        all   = range(1797)      # original order

    The source index of a sample is its position in ``load_digits()`` (0..1796).
``cifar10:ROOT`` / ``cifar100:ROOT``
    torchvision's CIFAR-10/100 python files under ``ROOT`` (``~`` allowed), never downloaded.
    Splits ``train`` and ``test``; the source index is the position within the split. Images are
    kept as uint8 in memory and divided by 255 per batch (the same numbers as ``ToTensor``).
``folder:DIR``
    torchvision ``ImageFolder`` layout ``DIR/<class>/<image>``; ``DIR/<split>`` is used when it
    exists, else ``DIR`` itself. Images are streamed from disk, never all held in memory, and
    converted to float [0, 1] CHW as ``ToTensor`` does. Colour mode: ``L`` (1 channel) when the
    first image is greyscale, else ``RGB``; :func:`check_compatible` switches a folder source to
    the model's channel count (1 -> ``L``, 3 -> ``RGB``). Class labels follow ``ImageFolder``
    (sorted class names), except that when every class directory name is a non-negative
    integer the label *is* that integer (so ``2`` < ``10`` as one expects). Every image must
    have the size of the first one. The source index is the position in ``ImageFolder`` order.
``tensors:FILE`` / ``tensors:-``
    a safetensors file (``-``: its bytes on stdin) holding ``x`` (floating, NCHW, in [0, 1]; half,
    bfloat16 and double are converted to float32) and ``y`` (integer class labels, shape (N,)),
    optionally ``index`` (int64 source indices, as ``attack --save-adv`` writes with
    :func:`save_tensors`; default ``arange(N)``). The split is ignored: all rows are used.

``limit`` keeps the first ``limit`` samples after the split. Labels and source indices of every
source are held in memory (``DataSource.y`` / ``DataSource.index``); images of in-memory sources
(digits, tensors) are in ``DataSource.x`` (float32, [0, 1]); streamed sources (folder, cifar)
have ``x = None``: use :func:`batches` or ``data[i]``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from flatcli.errors import DataError, UsageError
from flatcli.output import atomic_path

__all__ = ["DataSource", "load_data", "check_compatible", "batches", "save_tensors", "ACCEPTED_FORMS"]

ACCEPTED_FORMS = "digits, cifar10:ROOT, cifar100:ROOT, folder:DIR, tensors:FILE (tensors:- reads stdin)"

DIGITS_TRAIN_SIZE = 1437
DIGITS_TOTAL = 1797

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


# --------------------------------------------------------------------------------------------
# The data source
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class DataSource(Dataset):
    """A fixed-order data set: ``data[i] -> (x CHW float32 in [0, 1], label, source index)``.

    ``x`` is set for in-memory sources (float32, (N, C, H, W)); streamed sources leave it ``None``
    and read images through a private reader. ``y`` (int64 labels) and ``index`` (int64 source
    indices) are always in memory.
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
    _reader: Any = field(default=None, repr=False)

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

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        if self.x is not None:
            image = self.x[i].clone()
        else:
            image = self._reader(int(self.index[i]))
        return image, int(self.y[i]), int(self.index[i])

    def subset(self, start: int, stop: int | None = None) -> "DataSource":
        """Rows ``start:stop`` (in order) as a new source, e.g. for ``--limit`` or one rank's shard."""
        rows = slice(start, stop)
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
            _reader=self._reader,
        )


class _Uint8Images:
    """All images of a split as one uint8 (N, C, H, W) tensor; divided by 255 when read."""

    def __init__(self, images: Tensor):
        self.images = images

    def __call__(self, position: int) -> Tensor:
        return self.images[position].to(torch.float32).div_(255)

    def batch(self, positions: Tensor, device: torch.device) -> Tensor:
        raw = self.images[positions]  # advanced indexing: a fresh copy
        return raw.to(device).to(torch.float32).div_(255)


class _FolderImages:
    """Reads one image file per call (picklable, so DataLoader workers can use it)."""

    def __init__(self, files: list[str], mode: str, shape: tuple[int, int, int] | None = None):
        self.files = files
        self.mode = mode
        self.shape = shape

    def __call__(self, position: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import to_tensor

        path = self.files[position]
        try:
            with _no_bombs(), Image.open(path) as image:
                tensor = to_tensor(image.convert(self.mode))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise DataError(f"cannot read image {path}: {_one_line(exc)}") from exc
        if self.shape is not None and tuple(tensor.shape) != self.shape:
            raise DataError(
                f"image {path} has shape {_fmt_shape(tuple(tensor.shape))} but the folder's images have "
                f"shape {_fmt_shape(self.shape)} (C, H, W); resize every image to the same size"
            )
        return tensor


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_data(source: str, split: str = "test", limit: int | None = None) -> DataSource:
    """Open the data source named by a ``--data`` string (see the module docstring)."""
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    if split is None:
        split = "test"
    source = str(source).strip()
    kind, sep, arg = source.partition(":")
    if kind == "digits":
        if sep:
            raise UsageError(f"'digits' takes no argument (got {source!r}); choose the split with --split")
        data = _load_digits(split)
    elif kind in ("cifar10", "cifar100"):
        if not arg:
            raise UsageError(f"{kind} needs the directory holding the data set: --data {kind}:ROOT")
        data = _load_cifar(kind, arg, split)
    elif kind == "folder":
        if not arg:
            raise UsageError("folder needs a directory: --data folder:DIR")
        data = _load_folder(arg, split)
    elif kind == "tensors":
        if not arg:
            raise UsageError("tensors needs a file: --data tensors:FILE (or tensors:- for stdin)")
        data = _load_tensors(arg)
    else:
        raise UsageError(f"unknown data source {source!r}; use one of: {ACCEPTED_FORMS}")
    if limit is not None:
        data = data.subset(0, limit)
    if len(data) == 0:
        why = f" (after --limit {limit})" if limit == 0 else ""
        raise DataError(f"data source {data.name} holds no samples{why}")
    return data


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    target = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def digits_split_indices(split: str) -> np.ndarray:
    """Positions in ``load_digits()`` of the documented fixed ``train``/``test``/``all`` split."""
    if split == "all":
        return np.arange(DIGITS_TOTAL, dtype=np.int64)
    perm = np.random.RandomState(0).permutation(DIGITS_TOTAL).astype(np.int64)
    if split == "train":
        return perm[:DIGITS_TRAIN_SIZE]
    if split == "test":
        return perm[DIGITS_TRAIN_SIZE:]
    raise UsageError(f"digits has no split {split!r}; use train, test or all")


def _load_digits(split: str) -> DataSource:
    rows = digits_split_indices(split)
    images, target = _digits_arrays()
    if images.shape != (DIGITS_TOTAL, 8, 8):
        raise DataError(f"scikit-learn's digits have shape {images.shape}, expected ({DIGITS_TOTAL}, 8, 8)")
    x = torch.from_numpy((images[rows] / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8).contiguous()
    y = torch.from_numpy(target[rows].copy())
    return DataSource(
        name=f"digits:{split}",
        input_shape=(1, 8, 8),
        num_classes=10,
        x=x,
        y=y,
        index=torch.from_numpy(rows.copy()),
        split=split,
        classes=[str(d) for d in range(10)],
    )


def _load_cifar(kind: str, root_arg: str, split: str) -> DataSource:
    from torchvision.datasets import CIFAR10, CIFAR100

    if split not in ("train", "test"):
        raise UsageError(f"{kind} has no split {split!r}; use train or test")
    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    root = Path(os.path.expanduser(root_arg))
    if root.name == cls.base_folder and not (root / cls.base_folder).exists():
        root = root.parent  # the user pointed at the extracted folder itself
    folder = root / cls.base_folder
    expected = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [name for name in expected if not (folder / name).is_file()]
    listing = (
        "{data_batch_1..5,test_batch,batches.meta}" if kind == "cifar10" else "{train,test,meta}"
    )
    advice = (
        f"download {cls.filename} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
        f"into {root} yourself; flatrob never downloads"
    )
    if missing:
        what = "none of them is there" if len(missing) == len(expected) else f"missing {', '.join(missing)}"
        raise DataError(f"expected {root_arg}/{cls.base_folder}/{listing}: {what} ({folder}); {advice}")
    try:
        dataset = cls(str(root), train=(split == "train"), download=False)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(
            f"the {kind} files in {folder} are corrupted or incomplete (torchvision: {_one_line(exc)}); {advice}"
        ) from exc
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(np.asarray(dataset.targets, dtype=np.int64))
    return DataSource(
        name=f"{kind}:{root_arg}:{split}",
        input_shape=tuple(images.shape[1:]),
        num_classes=10 if kind == "cifar10" else 100,
        y=y,
        index=torch.arange(len(y), dtype=torch.int64),
        split=split,
        classes=list(dataset.classes),
        _reader=_Uint8Images(images),
    )


def _load_folder(dir_arg: str, split: str) -> DataSource:
    from torchvision.datasets import ImageFolder

    root = Path(os.path.expanduser(dir_arg))
    if not root.is_dir():
        raise DataError(f"folder {dir_arg} does not exist or is not a directory")
    name = f"folder:{dir_arg}"
    if split and (root / split).is_dir():
        root = root / split
        name = f"folder:{dir_arg}:{split}"
    try:
        folder = ImageFolder(str(root), allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"folder {root} is not an ImageFolder ({_one_line(exc)}); expected {root}/<class>/<image>.png"
        ) from exc
    classes = list(folder.classes)
    files = [path for path, _ in folder.samples]
    targets = [label for _, label in folder.samples]
    if classes and all(name.isdigit() for name in classes):
        numbers = [int(name) for name in classes]
        targets = [numbers[label] for label in targets]
        num_classes = max(numbers) + 1
        classes = [str(i) for i in range(num_classes)]
    else:
        num_classes = len(classes)
    if not files:
        raise DataError(f"data source {name} holds no samples (no image files under {root}/<class>/)")
    from PIL import Image, UnidentifiedImageError

    try:
        with _no_bombs(), Image.open(files[0]) as image:
            mode = "L" if image.mode in _GREY_MODES else "RGB"
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"cannot read image {files[0]}: {_one_line(exc)}") from exc
    shape = tuple(_FolderImages(files, mode)(0).shape)
    reader = _FolderImages(files, mode, shape)
    return DataSource(
        name=name,
        input_shape=shape,
        num_classes=num_classes,
        y=torch.tensor(targets, dtype=torch.int64),
        index=torch.arange(len(files), dtype=torch.int64),
        split=split,
        classes=classes,
        _reader=reader,
    )


def _load_tensors(file_arg: str) -> DataSource:
    from safetensors.torch import load as safetensors_from_bytes, load_file

    name = f"tensors:{file_arg}"
    try:
        if file_arg == "-":
            stream = getattr(sys.stdin, "buffer", sys.stdin)
            blob = stream.read()
            if isinstance(blob, str):
                blob = blob.encode("latin-1")
            if not blob:
                raise DataError("tensors:- read nothing from stdin; pipe a safetensors file into it")
            tensors = safetensors_from_bytes(blob)
            metadata = _header_metadata(blob)
        else:
            path = Path(os.path.expanduser(file_arg))
            if not path.is_file():
                raise DataError(f"tensors file {file_arg} does not exist or is not a file")
            tensors = load_file(str(path))
            with open(path, "rb") as handle:
                head = handle.read(8)
                size = int.from_bytes(head, "little") if len(head) == 8 else 0
                metadata = _header_metadata(head + handle.read(min(size, 100_000_000)))
    except DataError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError, but also other types on bad input
        where = "stdin" if file_arg == "-" else file_arg
        raise DataError(f"cannot read {where} as a safetensors file: {_one_line(exc)}") from exc

    keys = ", ".join(sorted(tensors)) or "nothing"
    for key in ("x", "y"):
        if key not in tensors:
            raise DataError(f"{name} has no tensor {key!r} (it holds {keys}); expected x (float NCHW in [0, 1]) and y")
    x, y = tensors["x"], tensors["y"]
    if not x.is_floating_point():
        raise DataError(
            f"{name}: x has dtype {_dtype(x)}, expected floating images in [0, 1] "
            f"(e.g. divide uint8 pixels by 255 and save as float32)"
        )
    if x.ndim != 4:
        raise DataError(f"{name}: x has shape {_fmt_shape(tuple(x.shape))}, expected 4 dimensions (N, C, H, W)")
    x = x.to(torch.float32).contiguous()
    n = x.shape[0]
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(f"{name}: x holds {bad} NaN or infinite value{'s' if bad != 1 else ''}; images must be finite in [0, 1]")
    outside = (x < 0) | (x > 1)
    if bool(outside.any()):
        bad = int(outside.sum())
        raise DataError(
            f"{name}: x holds {bad} value{'s' if bad != 1 else ''} outside [0, 1] "
            f"(min {float(x.min()):.4g}, max {float(x.max()):.4g}); store un-normalised pixels in [0, 1] "
            f"(flatrob applies the spec's mean/std itself)"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"{name}: y has dtype {_dtype(y)}, expected integer class labels (int64)")
    if tuple(y.shape) != (n,):
        raise DataError(f"{name}: y has shape {_fmt_shape(tuple(y.shape))}, expected ({n},): one label per row of x")
    y = y.to(torch.int64).contiguous()
    if n and int(y.min()) < 0:
        raise DataError(f"{name}: y holds negative labels (min {int(y.min())}); labels are class numbers 0..K-1")
    index = tensors.get("index")
    if index is not None:
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise DataError(f"{name}: index has dtype {_dtype(index)}, expected int64 source indices")
        if tuple(index.shape) != (n,):
            raise DataError(f"{name}: index has shape {_fmt_shape(tuple(index.shape))}, expected ({n},)")
        index = index.to(torch.int64).contiguous()
    return DataSource(
        name=name,
        input_shape=tuple(x.shape[1:]),
        num_classes=None,
        x=x,
        y=y,
        index=index,
        split=None,
        metadata=metadata,
    )


def _header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (``{}`` when absent or unreadable)."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size])
        meta = header.get("__metadata__") or {}
        return {str(k): str(v) for k, v in meta.items()}
    except (ValueError, AttributeError, TypeError):
        return {}


# --------------------------------------------------------------------------------------------
# Checks, batching, writing
# --------------------------------------------------------------------------------------------


def check_compatible(data: DataSource, input_shape: tuple | None, num_classes: int | None) -> None:
    """Raise :class:`DataError` when ``data`` cannot feed a model with this input shape / class count.

    A ``folder:`` source whose channel count differs from a 1- or 3-channel model is switched to
    the model's colour mode (L or RGB) instead of failing.
    """
    if input_shape is not None:
        want = tuple(int(s) for s in input_shape)
        have = tuple(data.input_shape)
        reader = data._reader
        if (
            isinstance(reader, _FolderImages)
            and len(want) == 3
            and want[0] in (1, 3)
            and have[1:] == want[1:]
            and have[0] != want[0]
        ):
            reader.mode = "L" if want[0] == 1 else "RGB"
            reader.shape = want
            data.input_shape = want  # type: ignore[assignment]
            have = want
        if have != want:
            raise DataError(
                f"data {data.name} has images of shape {_fmt_shape(have)} (C, H, W) but the model expects "
                f"{_fmt_shape(want)}; pick matching data or fix input_shape in the spec"
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
                x = data._reader.batch(data.index[start:stop], device)
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
            raise DataError(_worker_message(str(exc))) from exc
        non_blocking = device.type == "cuda"
        yield (
            x.to(device, non_blocking=non_blocking),
            y.to(device, torch.int64, non_blocking=non_blocking),
            index.to(device, torch.int64, non_blocking=non_blocking),
        )


def save_tensors(
    path: str | os.PathLike,
    x: Tensor,
    y: Tensor,
    index: Tensor,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``x`` (float32), ``y`` and ``index`` (int64) as a ``tensors:`` file, atomically."""
    import safetensors.torch

    if x.ndim != 4:
        raise DataError(f"save_tensors: x must be (N, C, H, W), got shape {_fmt_shape(tuple(x.shape))}")
    n = x.shape[0]
    if tuple(y.shape) != (n,) or tuple(index.shape) != (n,):
        raise DataError(
            f"save_tensors: y and index must have shape ({n},), got {_fmt_shape(tuple(y.shape))} and "
            f"{_fmt_shape(tuple(index.shape))}"
        )
    if metadata is not None:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise DataError(f"save_tensors: metadata keys and values must be strings (bad: {bad})")
    tensors = {
        "x": _own(x.detach().to("cpu", torch.float32)),
        "y": _own(y.detach().to("cpu", torch.int64)),
        "index": _own(index.detach().to("cpu", torch.int64)),
    }
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _own(t: Tensor) -> Tensor:
    """A contiguous tensor that owns its whole storage (safetensors refuses views of shared storage)."""
    t = t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset() != 0:
        t = t.clone()
    return t


@contextlib.contextmanager
def _no_bombs():
    """PIL's decompression-bomb warning (an image of over ~89M pixels) becomes an error: refused, not read."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _worker_message(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    prefix = "flatcli.errors.DataError:"
    return last[len(prefix) :].strip() if last.startswith(prefix) else last


def _fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")

"""``folder:DIR``: an ImageFolder tree ``DIR/<class>/<image>`` (``DIR/<split>`` when it exists), streamed.

Images are read from disk one at a time, never all held in memory, and converted to float [0, 1] CHW
as ``ToTensor`` does. Colour mode: ``L`` (1 channel) when the first image is greyscale, else ``RGB``;
:func:`flatcli.inputs.data.check_compatible` switches the reader to the model's channel count
(1 -> ``L``, 3 -> ``RGB``). Class labels follow ``ImageFolder`` (sorted class names), except that when
every class directory name is a non-negative integer the label *is* that integer (so ``2`` < ``10``).
Every image must have the size of the first one. The source index is the position in ``ImageFolder``
order. Decompression bombs are refused, not read.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import Tensor

from flatcli.errors import DataError
from flatcli.inputs.data.source import DataSource, fmt_shape, one_line

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


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
            with no_bombs(), Image.open(path) as image:
                tensor = to_tensor(image.convert(self.mode))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise DataError(f"cannot read image {path}: {one_line(exc)}") from exc
        if self.shape is not None and tuple(tensor.shape) != self.shape:
            raise DataError(
                f"image {path} has shape {fmt_shape(tuple(tensor.shape))} but the folder's images have "
                f"shape {fmt_shape(self.shape)} (C, H, W); resize every image to the same size"
            )
        return tensor

    def convert_channels(self, channels: int) -> bool:
        """Read the images as ``L`` (1 channel) or ``RGB`` (3) from now on; False for other counts."""
        if channels not in (1, 3) or self.shape is None:
            return False
        self.mode = "L" if channels == 1 else "RGB"
        self.shape = (channels, *self.shape[1:])
        return True


def load_folder(dir_arg: str, split: str) -> DataSource:
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
            f"folder {root} is not an ImageFolder ({one_line(exc)}); expected {root}/<class>/<image>.png"
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
        with no_bombs(), Image.open(files[0]) as image:
            mode = "L" if image.mode in _GREY_MODES else "RGB"
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"cannot read image {files[0]}: {one_line(exc)}") from exc
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


@contextlib.contextmanager
def no_bombs():
    """PIL's decompression-bomb warning (an image of over ~89M pixels) becomes an error: refused, not read."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield

"""How stored images become float CHW tensors in [0, 1]: resize and centre-crop, decoded files, uint8 arrays.

:class:`Preprocess` is the resize-then-centre-crop of torchvision's ``weights.transforms()`` (without
its ``Normalize``: flatrob normalises inside the model), built from ``torchvision.transforms.v2``::

    Resize(resize, interpolation, antialias=True)   # shorter side -> resize pixels
    CenterCrop(crop)                                 # then the central crop (H, W)

``resize`` and ``crop`` come from ``--resize``/``--crop`` (else the spec's ``resize:``/``crop:``, else a
pretrained data config's, for image files only: :func:`resolve_preprocessing`); the crop defaults to the
model's input (H, W), and without ``resize`` each image is scaled by
``max(H / h, W / w)`` so that it just covers the crop (for a square crop: shorter side -> H, exactly
``Resize(H)``). An image already of size (H, W) is then left untouched. Decoded files (PIL images) are
resized by PIL, as ``weights.transforms()`` does on a PIL image; uint8 arrays (torchvision's data sets)
by torch, per batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from flatcli.errors import DataError, OptionError, UsageError, literal
from flatcli.inputs.data.source import fmt_shape, one_line
from flatcli.inputs.spec import INTERPOLATIONS, MAX_SIDE

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side to ``resize``, or just covering the crop when ``None``), then centre-crop to ``crop``."""

    crop: tuple[int, int]
    resize: int | None = None
    interpolation: str = "bilinear"

    def size_for(self, height: int, width: int) -> list[int]:
        """The ``size`` argument of ``Resize`` for an image of ``height`` x ``width``."""
        if self.resize is not None:
            return [self.resize]
        crop_h, crop_w = self.crop
        if crop_h == crop_w:
            return [crop_h]
        if crop_h * width >= crop_w * height:  # the height decides: H / h >= W / w
            return [crop_h, max(crop_w, int(crop_h * width / height))]
        return [max(crop_h, int(crop_w * height / width)), crop_w]

    def __call__(self, image):
        """A PIL image or a uint8/float tensor (..., C, h, w), resized and cropped (same type back)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import CenterCrop, Resize

        if isinstance(image, Tensor):
            height, width = image.shape[-2:]
        else:
            width, height = image.size
        if (int(height), int(width)) == self.crop and self.resize is None:
            return image
        mode = getattr(InterpolationMode, self.interpolation.upper())  # the spec's names are its members'
        resized = Resize(self.size_for(int(height), int(width)), interpolation=mode, antialias=True)(image)
        return CenterCrop(list(self.crop))(resized)

    def describe(self) -> dict:
        """The ``preprocess`` entry of a run's config."""
        return {"resize": self.resize if self.resize is not None else "cover", "crop": list(self.crop),
                "interpolation": self.interpolation}


def preprocessing(input_shape: tuple | None, resize: int | None = None, crop: int | None = None,
                  interpolation: str | None = None) -> Preprocess | None:
    """The :class:`Preprocess` of a run: ``crop`` (else the model's input H, W), ``resize``, ``interpolation``
    (default bilinear); ``None`` when neither a crop nor the model's input size is known (images are then
    read at their own size, which must be the same for all)."""
    for name, side in (("resize", resize), ("crop", crop)):
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_SIDE):
            raise OptionError(name, f"{{}} must be a side in pixels from 1 to {MAX_SIDE}, got {side!r}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise OptionError("interpolation", f"{{}} must be one of {', '.join(INTERPOLATIONS)}, got "
                          + literal(repr(interpolation)))
    if crop is not None:
        target = (crop, crop)
    elif input_shape is not None and len(input_shape) == 3:
        target = (int(input_shape[1]), int(input_shape[2]))
    elif resize is not None:
        target = (resize, resize)
    else:
        return None
    if resize is not None and resize < max(target):
        raise UsageError(f"resize {resize} is smaller than the crop {target[0]}x{target[1]}: the crop would be padded "
                         "with black; give a resize of at least the crop (e.g. --resize 256 --crop 224)")
    return Preprocess(crop=target, resize=resize, interpolation=interpolation or "bilinear")


def resolve_preprocessing(reading: dict, spec, pretrained: dict) -> Preprocess | None:
    """:func:`preprocessing` from the options (``reading``: resize, crop, interpolation), then the spec, then a
    pretrained data config's values (``LoadedModel.image_defaults``; pass them for image files of any size only).

    The pretrained resize and crop go together or not at all: once the options or the spec give either (or
    ``input_shape``, which the loader already weighed), neither is used, so a crop alone implies no
    upscaling beyond it (each image just covers the crop)."""
    def given(key):
        return next((v for v in (reading.get(key), getattr(spec, key)) if v is not None), None)

    own = given("resize") is not None or given("crop") is not None
    resize, crop = ((given("resize"), given("crop")) if own else (pretrained.get("resize"), pretrained.get("crop")))
    interpolation = given("interpolation") or pretrained.get("interpolation")
    return preprocessing(spec.input_shape, resize, crop, interpolation)


class Uint8Images:
    """All images of a split as one uint8 (N, C, H, W) tensor; preprocessed and divided by 255 when read."""

    def __init__(self, images: Tensor, preprocess: Preprocess | None = None):
        self.images = images
        self.preprocess = preprocess

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images as read."""
        channels = int(self.images.shape[1])
        if self.preprocess is None:
            return (channels, *(int(s) for s in self.images.shape[2:]))
        return (channels, *self.preprocess.crop)

    def _ready(self, raw: Tensor) -> Tensor:
        return raw if self.preprocess is None else self.preprocess(raw)

    def __call__(self, position: int) -> Tensor:
        return self._ready(self.images[position]).to(torch.float32).div_(255)

    def batch(self, positions: Tensor, device: torch.device) -> Tensor:
        raw = self._ready(self.images[positions])  # advanced indexing: a fresh copy
        return raw.to(device).to(torch.float32).div_(255)


class DecodedImages:
    """Decodes one stored image per call (picklable, so DataLoader workers can use it): ``store.open(position)``
    gives a PIL image (``store.where(position)`` names it in errors), converted to the colour mode,
    preprocessed and turned into float CHW like ``ToTensor``. Without preprocessing every image must have
    the first one's size."""

    def __init__(self, store, mode: str, preprocess: Preprocess | None = None,
                 shape: tuple[int, int, int] | None = None):
        self.store = store
        self.mode = mode
        self.preprocess = preprocess
        self.shape = shape

    def __call__(self, position: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import to_tensor

        what = self.store.where(position)
        try:
            with no_bombs(), self.store.open(position) as image:
                converted = image.convert(self.mode)
                if self.preprocess is not None:
                    converted = self.preprocess(converted)
                tensor = to_tensor(converted)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise DataError(f"cannot read image {what}: {one_line(exc)}") from exc
        if self.shape is not None and tuple(tensor.shape) != self.shape:
            raise DataError(
                f"image {what} has shape {fmt_shape(tuple(tensor.shape))} but the first image has shape "
                f"{fmt_shape(self.shape)} (C, H, W); give --crop N (and --resize N) to bring every image to one size"
            )
        return tensor

    def first(self) -> "DecodedImages":
        """This reader with the colour mode and shape of image 0 (greyscale: ``L``, else ``RGB``)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with no_bombs(), self.store.open(0) as image:
                mode = "L" if image.mode in _GREY_MODES else "RGB"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise DataError(f"cannot read image {self.store.where(0)}: {one_line(exc)}") from exc
        probe = DecodedImages(self.store, mode, self.preprocess)
        return DecodedImages(self.store, mode, self.preprocess, tuple(probe(0).shape))

    def convert_channels(self, channels: int) -> bool:
        """Read the images as ``L`` (1 channel) or ``RGB`` (3) from now on; False for other counts."""
        if channels not in (1, 3) or self.shape is None:
            return False
        self.mode = "L" if channels == 1 else "RGB"
        self.shape = (channels, *self.shape[1:])
        return True


@contextlib.contextmanager
def no_bombs():
    """PIL's decompression-bomb warning (an image of over ~89M pixels) becomes an error: refused, not read."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield

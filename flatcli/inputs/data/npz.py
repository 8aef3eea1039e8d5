"""``npz:FILE``: a numpy ``.npz`` archive with images ``x`` and labels ``y`` (and optionally ``index``), or
Keras's layout, one pair per split (``x_train``/``y_train``, ``x_test``/``y_test``), which ``--split`` picks.

``x`` is (N, C, H, W) or (N, H, W, C) (NHWC when the last axis has 1 or 3 entries and the second does
not), or (N, H, W) for greyscale; either ``uint8`` pixels 0..255 (kept as uint8, divided by 255 per
batch, as ``ToTensor`` does) or floating point in [0, 1] (converted to float32). ``y`` holds integer
labels 0..K-1, one per image. The arrays are used as they are (never resized: like ``tensors:``, an
npz holds exact pixels). Read with ``allow_pickle=False``; each array's header is checked before it is
read, and more than :data:`MAX_ARRAY_BYTES` in one array is refused (a small compressed archive may
declare a huge array), as are shapes that do not fit together and a zip entry whose recorded size is
not the one its header declares: all before any array is inflated. ``index`` (source indices) is
metadata carried to the rows and their outputs, never a key images are looked up by. An archive of
plain ``x``/``y`` holds one split: its data set's ``split`` is ``None`` whatever ``--split`` says.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from flatcli.errors import DataError
from flatcli.inputs.data.formats import looks_like
from flatcli.inputs.data.images import Uint8Images
from flatcli.inputs.data.source import DataSource, one_line
from flatcli.inputs.data.tensors import from_tensors

MAX_ARRAY_BYTES = 16 * 2**30
#: The arrays of one split, by role.
KEYS = ("x", "y", "index")


def _header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape and dtype a member ``.npy`` declares, and the bytes of its header, read from the header alone."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        return tuple(int(s) for s in shape), dtype, handle.tell()


def _layout(members: dict[str, str], split: str, name: str) -> tuple[dict[str, str], str | None]:
    """The members holding x, y (and index) for ``split``: ``x``/``y`` (one split: ``split`` is not chosen,
    ``None``), or Keras's ``x_<split>``/``y_<split>`` (``index_<split>``), which ``split`` picks."""
    held = ", ".join(sorted(members)) or "nothing"
    if "x" in members or "y" in members:
        return {k: members[k] for k in KEYS if k in members}, None
    splits = sorted(m[2:] for m in members if m.startswith("x_") and f"y_{m[2:]}" in members)
    if not splits:
        raise DataError(f"{name} has no array 'x' (it holds {held}); save it with numpy.savez(FILE, x=images, "
                        "y=labels), or per split as x_train, y_train, x_test, y_test")
    if split not in splits:
        raise DataError(f"{name} has no split {split!r} (it holds x_/y_ arrays for {', '.join(splits)}); "
                        f"choose one with --split")
    return {k: members[f"{k}_{split}"] for k in KEYS if f"{k}_{split}" in members}, split


def _stored_size(header_bytes: int, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes a member holding a C- or Fortran-order array of ``shape`` and ``dtype`` has after its header."""
    return int(np.prod(shape, dtype=np.float64)) * dtype.itemsize + header_bytes


def _check_shapes(shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """Refuse, from the headers alone, arrays that cannot be one image per label (before inflating any)."""
    x, y = shapes.get("x"), shapes.get("y")
    if x is None or y is None:
        missing = "x" if x is None else "y"
        raise DataError(f"{name} has no array {missing!r}; save it with numpy.savez(FILE, x=images, y=labels)")
    if len(x) not in (3, 4):
        raise DataError(f"{name}: x has shape {list(x)}, expected (N, C, H, W), (N, H, W, C) or (N, H, W)")
    for key in ("y", "index"):
        if key in shapes and shapes[key] != (x[0],):
            raise DataError(f"{name}: {key} has shape {list(shapes[key])}, expected ({x[0]},): one per row of x"
                            + (" (one label per row)" if key == "y" else ""))


def load_npz(file_arg: str, split: str = "test") -> DataSource:
    """The archive's ``x``/``y`` (``index``), or with Keras's layout its ``x_<split>``/``y_<split>``. Every
    member's header is checked (objects, declared size, shapes that fit together, the size the zip directory
    records) before any array is inflated."""
    name = f"npz:{file_arg}"
    path = Path(os.path.expanduser(file_arg))
    if not path.is_file():
        raise DataError(f"npz file {file_arg} does not exist or is not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m[:-4]: m for m in archive.namelist() if m.endswith(".npy")}
            chosen, served = _layout(members, split, name)
            shapes = {}
            for key, member in chosen.items():
                shape, dtype, header_bytes = _header(archive, member)
                if dtype.hasobject:
                    raise DataError(f"{name}: array {member[:-4]!r} holds Python objects, which are never unpickled; "
                                    "save numbers (uint8 or float images, integer labels)")
                size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if size > MAX_ARRAY_BYTES:
                    raise DataError(f"{name}: array {member[:-4]!r} declares {size / 2**30:.1f} GiB (shape "
                                    f"{list(shape)}); at most {MAX_ARRAY_BYTES // 2**30} GiB per array are read")
                if archive.getinfo(member).file_size != _stored_size(header_bytes, shape, dtype):
                    raise DataError(f"{name}: array {member[:-4]!r} declares shape {list(shape)} but its zip entry "
                                    f"holds {archive.getinfo(member).file_size} bytes; the archive is damaged")
                shapes[key] = shape
            _check_shapes(shapes, name)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[member[:-4]] for key, member in chosen.items()}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"cannot read {file_arg} as an .npz archive of x and y ({one_line(exc)}){looks_like(path)}") from exc
    data = from_arrays(arrays["x"], arrays["y"], arrays.get("index"), name=name)
    data.split = served
    return data


def from_arrays(x: np.ndarray, y: np.ndarray, index: np.ndarray | None, *, name: str) -> DataSource:
    """A source from numpy images (NCHW, NHWC or NHW; uint8 or float in [0, 1]) and labels."""
    for key, array in (("y", y), ("index", index)):
        if array is not None and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)):
            raise DataError(f"{name}: {key} has dtype {array.dtype}, expected integers")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{name}: x has shape {list(x.shape)}, expected (N, C, H, W), (N, H, W, C) or (N, H, W)")
    if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{name}: x has dtype {x.dtype}; expected uint8 pixels 0..255 or floats in [0, 1]")
        return from_tensors(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y),
                            None if index is None else torch.from_numpy(index), name=name)
    # uint8: checked as tensors: are (through a one-pixel stand-in), but kept as uint8
    checked = from_tensors(torch.zeros((x.shape[0], 1, 1, 1)), torch.from_numpy(y),
                           None if index is None else torch.from_numpy(index), name=name)
    images = torch.from_numpy(np.ascontiguousarray(x))
    return DataSource(name=name, input_shape=tuple(images.shape[1:]), num_classes=None, y=checked.y,
                      index=checked.index, split=None, _reader=Uint8Images(images),
                      _rows=torch.arange(images.shape[0], dtype=torch.int64))

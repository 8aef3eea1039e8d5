"""``npz:FILE``: a numpy ``.npz`` archive with images ``x`` and labels ``y`` (and optionally ``index``).

``x`` is (N, C, H, W) or (N, H, W, C) (NHWC when the last axis has 1 or 3 entries and the second does
not), or (N, H, W) for greyscale; either ``uint8`` pixels 0..255 (kept as uint8, divided by 255 per
batch, as ``ToTensor`` does) or floating point in [0, 1] (converted to float32). ``y`` holds integer
labels 0..K-1, one per image. The arrays are used as they are (never resized: like ``tensors:``, an
npz holds exact pixels). Read with ``allow_pickle=False``; each array's header is checked before it is
read, and more than :data:`MAX_ARRAY_BYTES` in one array is refused (a small compressed archive may
declare a huge array).
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


def _header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype a member ``.npy`` declares, read from its header alone."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return tuple(int(s) for s in shape), dtype


def load_npz(file_arg: str) -> DataSource:
    name = f"npz:{file_arg}"
    path = Path(os.path.expanduser(file_arg))
    if not path.is_file():
        raise DataError(f"npz file {file_arg} does not exist or is not a file")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m[:-4]: m for m in archive.namelist() if m.endswith(".npy")}
            held = ", ".join(sorted(members)) or "nothing"
            for key in ("x", "y", "index"):
                if key not in members:
                    if key == "index":
                        continue
                    raise DataError(f"{name} has no array {key!r} (it holds {held}); save it with "
                                    "numpy.savez(FILE, x=images, y=labels)")
                shape, dtype = _header(archive, members[key])
                if dtype.hasobject:
                    raise DataError(f"{name}: array {key!r} holds Python objects, which are never unpickled; "
                                    "save numbers (uint8 or float images, integer labels)")
                size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if size > MAX_ARRAY_BYTES:
                    raise DataError(f"{name}: array {key!r} declares {size / 2**30:.1f} GiB (shape {list(shape)}); at "
                                    f"most {MAX_ARRAY_BYTES // 2**30} GiB per array are read")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("x", "y", "index") if key in members}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"cannot read {file_arg} as an .npz archive of x and y ({one_line(exc)}){looks_like(path)}") from exc
    return from_arrays(arrays["x"], arrays["y"], arrays.get("index"), name=name)


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
                      index=checked.index, split=None, _reader=Uint8Images(images))

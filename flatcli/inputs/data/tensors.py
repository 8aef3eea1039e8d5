"""``tensors:FILE``: safetensors with ``x`` (float NCHW in [0, 1]), ``y`` (int64) and optionally ``index``.

The format ``attack --save-adv`` writes (:func:`save_tensors`). ``-`` reads the file's bytes from stdin, no
further than its header says the tensors end (:func:`read_stdin`).
Half, bfloat16 and double images are converted to float32; the split is ignored (every row is used).
:func:`from_tensors` checks tensors handed over in memory (the Python API) the same way.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from flatcli.errors import DataError
from flatcli.inputs.data.formats import ACCEPTED_FORMS, looks_like
from flatcli.inputs.data.source import DataSource, dtype_name, fmt_shape, one_line
from flatcli.outputs.plan import output_path

#: The largest safetensors header read from stdin (as for a checkpoint).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: The most tensor bytes ``tensors:-`` reads from stdin (a file has a size; a pipe only what it declares).
MAX_STDIN_BYTES = 16 * 2**30


def load_tensors(file_arg: str) -> DataSource:
    from safetensors.torch import load as safetensors_from_bytes, load_file

    name = f"tensors:{file_arg}"
    try:
        if file_arg == "-":
            blob = read_stdin()
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
        hint = f"; accepted --data forms: {ACCEPTED_FORMS}" if file_arg == "-" else looks_like(path)
        raise DataError(f"cannot read {where} as a safetensors file: {one_line(exc)}{hint}") from exc

    keys = ", ".join(sorted(tensors)) or "nothing"
    for key in ("x", "y"):
        if key not in tensors:
            raise DataError(f"{name} has no tensor {key!r} (it holds {keys}); expected x (float NCHW in [0, 1]) and y")
    return from_tensors(tensors["x"], tensors["y"], tensors.get("index"), name=name, metadata=metadata)


def _read_exactly(stream, size: int) -> bytes:
    """``size`` bytes of ``stream`` (fewer only at its end), read in blocks."""
    parts, left = [], size
    while left > 0:
        part = stream.read(min(left, 1 << 24))
        if isinstance(part, str):
            part = part.encode("latin-1")
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_stdin() -> bytes:
    """The safetensors file piped into stdin, read no further than its header says it ends: the header's
    length first (at most :data:`MAX_HEADER_BYTES`), then the header, then the tensors' bytes (at most
    :data:`MAX_STDIN_BYTES`), so an endless or lying stream (``</dev/zero``) is refused after a few bytes."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    head = _read_exactly(stream, 8)
    if not head:
        raise DataError("tensors:- read nothing from stdin; pipe a safetensors file into it")
    size = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= size <= MAX_HEADER_BYTES:
        raise DataError(f"stdin is not a safetensors file (its header claims {size} bytes); pipe a safetensors file "
                        "into tensors:-")
    header = _read_exactly(stream, size)
    try:
        entries = json.loads(header)
        end = max((int(e["data_offsets"][1]) for k, e in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise DataError("stdin is not a safetensors file (its header is not a JSON table of tensors); pipe a "
                        "safetensors file into tensors:-") from None
    if end > MAX_STDIN_BYTES:
        raise DataError(f"stdin declares {end / 2**30:.1f} GiB of tensors; at most {MAX_STDIN_BYTES // 2**30} GiB "
                        "are read from a pipe: save it to a file and pass --data tensors:FILE")
    return head + header + _read_exactly(stream, end)


def from_tensors(x, y, index=None, *, name: str = "tensors", metadata: dict[str, str] | None = None) -> DataSource:
    """An in-memory source from images ``x`` (float NCHW in [0, 1]), labels ``y`` and optional source
    indices, checked as a ``tensors:`` file is; numpy arrays are taken too. ``name`` names it in errors."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if not x.is_floating_point():
        raise DataError(
            f"{name}: x has dtype {dtype_name(x)}, expected floating images in [0, 1] "
            f"(e.g. divide uint8 pixels by 255 and save as float32)"
        )
    if x.ndim != 4:
        raise DataError(f"{name}: x has shape {fmt_shape(tuple(x.shape))}, expected 4 dimensions (N, C, H, W)")
    x = x.detach().to("cpu", torch.float32).contiguous()
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
        raise DataError(f"{name}: y has dtype {dtype_name(y)}, expected integer class labels (int64)")
    if tuple(y.shape) != (n,):
        raise DataError(f"{name}: y has shape {fmt_shape(tuple(y.shape))}, expected ({n},): one label per row of x")
    y = y.detach().to("cpu", torch.int64).contiguous()
    if n and int(y.min()) < 0:
        raise DataError(f"{name}: y holds negative labels (min {int(y.min())}); labels are class numbers 0..K-1")
    if index is not None:
        index = torch.as_tensor(index)
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise DataError(f"{name}: index has dtype {dtype_name(index)}, expected int64 source indices")
        if tuple(index.shape) != (n,):
            raise DataError(f"{name}: index has shape {fmt_shape(tuple(index.shape))}, expected ({n},)")
        index = index.detach().to("cpu", torch.int64).contiguous()
    return DataSource(
        name=name,
        input_shape=tuple(x.shape[1:]),
        num_classes=None,
        x=x,
        y=y,
        index=index,
        split=None,
        metadata=dict(metadata or {}),
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


def save_tensors(
    path: str | os.PathLike,
    x: Tensor,
    y: Tensor,
    index: Tensor,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``x`` (float32), ``y`` and ``index`` (int64) as a ``tensors:`` file (committed with the run's
    other outputs; serialised in memory first, so that writing it is one plain file write)."""
    import safetensors.torch

    if x.ndim != 4:
        raise DataError(f"save_tensors: x must be (N, C, H, W), got shape {fmt_shape(tuple(x.shape))}")
    n = x.shape[0]
    if tuple(y.shape) != (n,) or tuple(index.shape) != (n,):
        raise DataError(
            f"save_tensors: y and index must have shape ({n},), got {fmt_shape(tuple(y.shape))} and "
            f"{fmt_shape(tuple(index.shape))}"
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
    blob = safetensors.torch.save(tensors, metadata=dict(metadata) if metadata else None)
    with output_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(blob)


def _own(t: Tensor) -> Tensor:
    """A contiguous tensor that owns its whole storage (safetensors refuses views of shared storage)."""
    t = t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset() != 0:
        t = t.clone()
    return t

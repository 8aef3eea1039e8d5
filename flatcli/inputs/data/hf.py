"""``hf:PATH``: a Hugging Face ``datasets`` folder (``save_to_disk``) or parquet files, read offline.

PATH is one of

* a folder written by ``Dataset.save_to_disk`` (``state.json``, ``dataset_info.json``, ``data-*.arrow``)
  or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one folder per split: ``--split`` picks it),
  opened with ``datasets.load_from_disk`` (memory-mapped, nothing copied);
* a ``.parquet`` file, or a folder of them (as the hub keeps data sets: ``data/test-00000-of-00001.parquet``,
  ``test/0000.parquet``): the files whose name starts with ``<split>-``/``<split>_``/``<split>.`` or that
  lie in a ``<split>`` folder, or every file when none is named after a split. Their features are
  ``datasets.Features.from_arrow_schema`` (the ``huggingface`` schema metadata ``to_parquet`` writes).

The image column is the one of feature type ``datasets.Image`` (in parquet without that metadata, a
struct with a ``bytes`` field) and the label column the ``datasets.ClassLabel`` one (else the only
integer column); ``--image-column``/``--label-column`` name them when there are several or none.
Images are decoded from the bytes stored in the data set by PIL (decompression bombs refused), one at
a time, then resized and centre-cropped like a ``folder:`` (never by ``datasets``' own decoding, which
opens whatever path or URL an entry names: an entry without bytes is refused). Labels must be 0..K-1
(``-1``, "no label", is refused). At most :data:`MAX_PARQUET_FILES` files and :data:`MAX_BYTES` of
uncompressed parquet are read, and each file is decoded in batches and refused once it holds more than
:func:`decoded_bound` bytes (a small file of repeated values must not expand to gigabytes). The source index is the row number.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from flatcli.errors import DataError, MissingExtraError, UsageError
from flatcli.inputs.data.images import DecodedImages, Preprocess
from flatcli.inputs.data.offline import no_network
from flatcli.inputs.data.source import DataSource, one_line

MAX_PARQUET_FILES = 10_000
MAX_BYTES = 64 * 2**30
#: A parquet file decodes to at most this many times its size (or :data:`MIN_DECODED_BYTES`)...
DECODED_PER_BYTE = 64
#: ... which small files may always reach.
MIN_DECODED_BYTES = 256 * 2**20
#: Rows decoded at a time, so the bound is checked before a file's expansion is held in memory.
BATCH_ROWS = 256
_MARKERS = ("dataset_dict.json", "state.json")


class _Column:
    """The encoded images of one column (a pyarrow struct array with ``bytes``), opened by position."""

    def __init__(self, images, name: str, column: str):
        self.images = images
        self.name = name
        self.column = column

    def open(self, position: int):
        from PIL import Image

        blob = self.images[position]["bytes"].as_py()
        if not blob:
            raise DataError(f"{self.where(position)} holds no image bytes (only a path or nothing); flatrob reads "
                            "images stored in the data set, never the paths or URLs it names: embed the images "
                            "(e.g. ds.cast_column(..., Image()) then save_to_disk after reading them)")
        return Image.open(io.BytesIO(blob))

    def where(self, position: int) -> str:
        return f"{self.name} row {position} ({self.column})"


def load_hf(path_arg: str, split: str, preprocess: Preprocess | None = None, image_column: str | None = None,
            label_column: str | None = None) -> DataSource:
    """``hf:PATH`` (see the module docstring)."""
    try:
        import datasets  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingExtraError("hf: data needs the datasets package: pip install 'flatrob[hf]'") from None
    path = Path(os.path.expanduser(path_arg))
    name = f"hf:{path_arg}"
    with no_network(name):
        if path.is_dir() and any((path / m).is_file() for m in _MARKERS):
            table, features, name = _saved(path, path_arg, split)
        elif path.is_file() or path.is_dir():
            table, features, name = _parquet(path, path_arg, split)
        else:
            raise DataError(f"hf data {path_arg} does not exist; give a save_to_disk folder, a .parquet file or a "
                            "folder of them")
    image = _column(features, image_column, "image", _is_image, "--image-column", name)
    label = _column(features, label_column, "label", _is_label, "--label-column", name)
    import pyarrow as pa

    images = table.column(image)
    if not pa.types.is_struct(images.type) or images.type.get_field_index("bytes") < 0:
        raise DataError(f"{name}: column {image!r} holds {images.type}, not encoded images (a datasets.Image column "
                        "of bytes); name the image column with --image-column")
    labels = table.column(label)
    if not pa.types.is_integer(labels.type):
        raise DataError(f"{name}: column {label!r} holds {labels.type}, not integer class labels; name the label "
                        "column with --label-column")
    if labels.null_count:
        raise DataError(f"{name}: column {label!r} has {labels.null_count} missing labels; every row needs a class")
    y = torch.from_numpy(np.asarray(labels.to_numpy(), dtype=np.int64).copy())
    if len(y) == 0:
        raise DataError(f"data source {name} holds no samples")
    if int(y.min()) < 0:
        raise DataError(f"{name}: column {label!r} holds label {int(y.min())} (-1 means unlabelled); labels must be "
                        "class numbers 0..K-1: use a labelled split")
    feature = features[label]
    classes = list(feature.names) if hasattr(feature, "names") and feature.names else None
    reader = DecodedImages(_Column(images, name, image), "RGB", preprocess).first()
    return DataSource(name=name, input_shape=reader.shape, num_classes=len(classes) if classes else None, y=y,
                      index=torch.arange(len(y), dtype=torch.int64), split=split, classes=classes,
                      preprocess=preprocess, _reader=reader)


def _saved(path: Path, path_arg: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except DataError:
        raise
    except Exception as exc:  # datasets raises FileNotFoundError, JSON and Arrow errors on damaged folders
        raise DataError(f"cannot read {path_arg} as a datasets save_to_disk folder: {one_line(exc)}") from exc
    name = f"hf:{path_arg}"
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{name} has no split {split!r}; it has {', '.join(loaded)}: choose one with --split")
        loaded = loaded[split]
        name = f"hf:{path_arg}:{split}"
    if loaded._indices is not None:
        raise DataError(f"{name} holds an index mapping over its rows; save it again after ds.flatten_indices()")
    return loaded.data.table, loaded.features, name


def _parquet(path: Path, path_arg: str, split: str):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flatcli.inputs.data.formats import looks_like

    name = f"hf:{path_arg}"
    if path.is_file():
        files = [path]
    else:
        found = sorted(p for p in path.rglob("*.parquet") if p.is_file())[: MAX_PARQUET_FILES + 1]
        if not found:
            raise DataError(f"{path_arg} holds no .parquet files and no dataset_dict.json/state.json: give a "
                            "save_to_disk folder, a .parquet file or a folder of them")
        if len(found) > MAX_PARQUET_FILES:
            raise DataError(f"{path_arg} holds more than {MAX_PARQUET_FILES} parquet files; point at one split's folder")
        named = [p for p in found if _in_split(p.relative_to(path), split)]
        if named:
            files, name = named, f"hf:{path_arg}:{split}"
        elif any(_in_split(p.relative_to(path), s) for p in found for s in ("train", "test", "validation", "val")):
            raise DataError(f"{path_arg} has parquet files of other splits but none of {split!r}; choose one with --split")
        else:
            files = found
    tables, total = [], 0
    for file in files:
        try:
            handle = pq.ParquetFile(str(file), memory_map=True)
            meta = handle.metadata
            total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            if total > MAX_BYTES:
                raise DataError(f"{name}: the parquet files hold more than {MAX_BYTES // 2**30} GiB uncompressed")
            tables.append(_read_bounded(handle, file, name))
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            hint = looks_like(file)
            raise DataError(f"cannot read {file} as a parquet file ({one_line(exc)}){hint}") from exc
    try:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        features = datasets.Features.from_arrow_schema(table.schema)
    except Exception as exc:
        raise DataError(f"{name}: the parquet files do not hold one table of datasets features ({one_line(exc)})") from exc
    return table, features, name


def decoded_bound(size: int) -> int:
    """The most bytes a parquet file of ``size`` bytes may decode to: :data:`DECODED_PER_BYTE` times its size, at
    least :data:`MIN_DECODED_BYTES`, at most :data:`MAX_BYTES` (images are stored encoded, so real files decode
    to about their size; dictionary or run-length pages of one repeated value can claim any size)."""
    return min(MAX_BYTES, max(MIN_DECODED_BYTES, DECODED_PER_BYTE * size))


def _read_bounded(handle, file: Path, name: str):
    """The table of one parquet file, decoded in batches of :data:`BATCH_ROWS` rows and refused as soon as it
    holds more than :func:`decoded_bound` bytes (the footer's sizes are the writer's word, not a bound)."""
    import pyarrow as pa

    bound, total, batches = decoded_bound(file.stat().st_size), 0, []
    for batch in handle.iter_batches(batch_size=BATCH_ROWS):
        batch = pa.RecordBatch.from_arrays(  # dictionary columns decoded: their size as they are used
            [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns],
            names=batch.schema.names)
        total += batch.nbytes
        if total > bound:
            raise DataError(f"{name}: {file.name} decodes to more than {bound // 2**20} MiB from "
                            f"{file.stat().st_size} bytes (repeated values that expand); refusing to read it")
        batches.append(batch)
    if not batches:
        return handle.read()  # no rows: the schema alone
    return pa.Table.from_batches(batches).replace_schema_metadata(handle.schema_arrow.metadata)


def _in_split(relative: Path, split: str) -> bool:
    """A hub file of ``split``: in a ``<split>`` folder, or named ``<split>-...``, ``<split>_...``, ``<split>.parquet``."""
    if split in relative.parts[:-1]:
        return True
    return any(relative.name.startswith(split + mark) for mark in ("-", "_", "."))


def _is_image(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Image) or (isinstance(feature, dict) and "bytes" in feature)


def _is_label(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.ClassLabel)


def _column(features, given: str | None, what: str, test, option: str, name: str) -> str:
    """The column ``given``, else the only one of its feature type (labels: else the only integer column)."""
    columns = list(features)
    if given is not None:
        if given not in features:
            raise UsageError(f"{option} {given}: {name} has no such column; it has {', '.join(columns)}")
        return given
    found = [c for c in columns if test(features[c])]
    if not found and what == "label":
        found = [c for c in columns if getattr(features[c], "dtype", "").startswith(("int", "uint"))]
    if len(found) == 1:
        return found[0]
    kinds = {c: _kind(features[c]) for c in columns}
    listing = ", ".join(f"{c} ({k})" for c, k in kinds.items())
    many = f"several {what} columns ({', '.join(found)})" if found else f"no {what} column"
    raise DataError(f"{name} has {many}; its columns: {listing}; name the {what} column with {option}")


def _kind(feature) -> str:
    return type(feature).__name__ if not hasattr(feature, "dtype") else f"{type(feature).__name__} {feature.dtype}"

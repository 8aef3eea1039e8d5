"""What a data file looks like from its first bytes, so that an unreadable file's error names the ``--data`` form it needs."""

from __future__ import annotations

import os

from flatcli.inputs.data.forms import ACCEPTED_FORMS

# (magic bytes at offset 0, what the file is, the --data form that reads it)
_MAGIC = (
    (b"PK\x03\x04", "a zip archive (numpy .npz)", "npz:FILE"),
    (b"\x93NUMPY", "a numpy .npy array", "npz:FILE (save it with numpy.savez(FILE, x=..., y=...))"),
    (b"MATLAB", "a MATLAB .mat file", "svhn:ROOT for SVHN's {train,test,extra}_32x32.mat"),
    (b"PAR1", "a parquet file", "hf:FILE"),
    (b"ARROW1", "an Arrow file", "hf:DIR (the save_to_disk folder around it)"),
    (b"\xff\xff\xff\xff", "an Arrow stream", "hf:DIR (the save_to_disk folder around it)"),
    (b"\x00\x00\x08\x03", "an MNIST idx image file", "mnist:ROOT (ROOT/MNIST/raw/...)"),
    (b"\x00\x00\x08\x01", "an MNIST idx label file", "mnist:ROOT (ROOT/MNIST/raw/...)"),
    (b"\x1f\x8b", "a gzip file", "the form of what it holds, once gunzipped"),
    (b"\x89PNG", "a PNG image", "folder:DIR (DIR/<class>/<image>)"),
    (b"\xff\xd8\xff", "a JPEG image", "folder:DIR (DIR/<class>/<image>)"),
    (b"\x80", "a Python pickle", "cifar10:ROOT / cifar100:ROOT for CIFAR's batches; other pickles are never read (numpy.savez the arrays)"),
)


def looks_like(path: str | os.PathLike) -> str:
    """``"; it looks like X: use --data Y"`` for a file whose first bytes say what it is, else the accepted forms."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return f"; accepted --data forms: {ACCEPTED_FORMS}"
    for magic, what, form in _MAGIC:
        if head.startswith(magic):
            return f"; it looks like {what}: use --data {form}"
    return f"; accepted --data forms: {ACCEPTED_FORMS}"

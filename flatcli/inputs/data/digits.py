"""``digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed documented split.

``sklearn.datasets.load_digits`` (nothing is downloaded); ``x = images / 16`` as float32 of shape
(N, 1, 8, 8) in [0, 1], 10 classes. The split is fixed so that it never changes across library
versions::

    perm = numpy.random.RandomState(0).permutation(1797)
    train = perm[:1437]      # 1437 samples, in permutation order
    test  = perm[1437:]      #  360 samples, in permutation order
    all   = range(1797)      # original order

The source index of a sample is its position in ``load_digits()`` (0..1796).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from flatcli.errors import DataError, UsageError
from flatcli.inputs.data.source import DataSource

DIGITS_TRAIN_SIZE = 1437
DIGITS_TOTAL = 1797


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


def load_digits(split: str) -> DataSource:
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

"""``cifar10:ROOT`` / ``cifar100:ROOT``: torchvision's CIFAR python files under ROOT, never downloaded.

Splits ``train`` and ``test``; the source index is the position within the split. Images are kept as
uint8 in memory and divided by 255 per batch (the same numbers as ``ToTensor``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flatcli.errors import DataError, UsageError
from flatcli.inputs.data.source import DataSource, one_line


class _Uint8Images:
    """All images of a split as one uint8 (N, C, H, W) tensor; divided by 255 when read."""

    def __init__(self, images: Tensor):
        self.images = images

    def __call__(self, position: int) -> Tensor:
        return self.images[position].to(torch.float32).div_(255)

    def batch(self, positions: Tensor, device: torch.device) -> Tensor:
        raw = self.images[positions]  # advanced indexing: a fresh copy
        return raw.to(device).to(torch.float32).div_(255)


def load_cifar(kind: str, root_arg: str, split: str) -> DataSource:
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
            f"the {kind} files in {folder} are corrupted or incomplete (torchvision: {one_line(exc)}); {advice}"
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

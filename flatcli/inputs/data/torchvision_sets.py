"""``cifar10:ROOT``, ``cifar100:ROOT``, ``mnist:ROOT``, ``fashionmnist:ROOT``, ``kmnist:ROOT``, ``svhn:ROOT``, ``stl10:ROOT``.

Each is read by torchvision's own class (``CIFAR10``, ``CIFAR100``, ``MNIST``, ``FashionMNIST``, ``KMNIST``,
``SVHN``, ``STL10``) with ``download=False``, from the files torchvision itself downloads and extracts:

==============  ==========================================================================================
cifar10         ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
cifar100        ``ROOT/cifar-100-python/{train,test,meta}``
mnist           ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the idx files, un-gzipped)
fashionmnist    ``ROOT/FashionMNIST/raw/`` (the same four idx files)
kmnist          ``ROOT/KMNIST/raw/`` (the same four idx files)
svhn            ``ROOT/{train,test,extra}_32x32.mat`` (splits train, test, extra; label 10 is digit 0)
stl10           ``ROOT/stl10_binary/{train,test}_{X,y}.bin``, ``unlabeled_X.bin`` (splits train, test)
==============  ==========================================================================================

ROOT may also be the data set's own folder (``ROOT/MNIST``, ``ROOT/MNIST/raw``, ``ROOT/cifar-10-batches-py``).
Only the files of the split asked for are needed (CIFAR: ``test_batch`` or ``data_batch_1..5``, with the class
names' file; torchvision itself would demand both splits). Before torchvision is called, missing files are named,
and each needed file that torchvision has an md5 sum for (CIFAR, SVHN, STL-10: the class's ``train_list``,
``test_list``, ``meta``, ``split_list``) is checked against it: the first that differs is named. Files torchvision
refuses otherwise are reported as corrupted. Images are kept as uint8 in memory and divided by 255 per
batch (the numbers of ``ToTensor``), after resizing and centre-cropping to the model's input when their
size differs (:class:`~flatcli.inputs.data.images.Preprocess`). The source index is the position within
the split. The whole construction runs under :func:`~flatcli.inputs.data.offline.no_network`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from flatcli.errors import DataError, UsageError
from flatcli.inputs.data.images import Preprocess, Uint8Images
from flatcli.inputs.data.offline import no_network
from flatcli.inputs.data.source import DataSource, one_line
from flatcli.inputs.data.torchvision_files import SETS, TorchvisionSet


def checksums(cls) -> dict[str, str]:
    """torchvision's md5 sum of each file a ``torchvision.datasets`` class checks, by file name."""
    table = {name: md5 for name, md5 in [*getattr(cls, "train_list", ()), *getattr(cls, "test_list", ())]}
    meta = getattr(cls, "meta", None)
    if isinstance(meta, dict) and "md5" in meta:
        table[meta["filename"]] = meta["md5"]
    for _, name, md5 in getattr(cls, "split_list", {}).values():
        table[name] = md5
    return table


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _root(entry: TorchvisionSet, root: Path) -> Path:
    """ROOT as torchvision wants it, when the user pointed at the data set's folder itself."""
    parts = Path(entry.folder).parts
    for depth in range(len(parts), 0, -1):
        if parts[:depth] == root.parts[len(root.parts) - depth:] and not (root / entry.folder).exists():
            return root.parents[depth - 1]
    return root


def load_torchvision(kind: str, root_arg: str, split: str, preprocess: Preprocess | None = None) -> DataSource:
    """One of :data:`SETS` under ``root_arg`` (see the module docstring)."""
    import torchvision.datasets as tv

    entry = SETS[kind]
    if split not in entry.splits:
        raise UsageError(f"{kind} has no split {split!r}; use {', '.join(entry.splits[:-1])} or {entry.splits[-1]}")
    root = _root(entry, Path(os.path.expanduser(root_arg)))
    folder = root / entry.folder
    needed, listing = entry.needed(split)
    missing = [name for name in needed if not (folder / name).is_file()]
    shown = os.path.normpath(os.path.join(root_arg, entry.folder))
    into = folder if entry.cls.endswith("MNIST") else root
    advice = f"{entry.where.replace('SPLIT', split)} into {into} yourself; flatrob never downloads"
    if missing:
        what = "none of them is there" if len(missing) == len(needed) else f"missing {', '.join(missing)}"
        if len(needed) == 1:
            what = "it is not there"
        raise DataError(f"expected {shown}/{listing}: {what} ({folder}); {advice}")
    cls = getattr(tv, entry.cls)
    expected = checksums(cls)
    for name in needed:
        if name in expected and (found := _md5(folder / name)) != expected[name]:
            raise DataError(f"{os.path.join(shown, name)} is not torchvision's {kind} file (md5 {found}, expected "
                            f"{expected[name]}): damaged, truncated or another version; {advice}")
    if entry.split_files is not None:  # torchvision checks every split's files; those of this split were checked
        cls = type(cls.__name__, (cls,), {"_check_integrity": lambda self: True})
    kwargs = {"train": split == "train"} if entry.cls not in ("SVHN", "STL10") else {"split": split}
    try:
        with no_network(f"{kind}:{root_arg}"):
            dataset = cls(str(root), download=False, **kwargs)
    except DataError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError, AssertionError, IndexError) as exc:
        said = re.sub(r"\s*You can use download=True to download it\.?", "", one_line(exc))
        raise DataError(f"the {kind} files in {folder} are corrupted or incomplete (torchvision: {said}); "
                        f"{advice}") from exc
    images, labels, classes = _arrays(entry, dataset)
    if len(images) != len(labels):
        raise DataError(f"the {kind} files in {folder} hold {len(images)} images but {len(labels)} labels; {advice}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= entry.classes):
        raise DataError(f"the {kind} files in {folder} hold labels outside 0..{entry.classes - 1}; {advice}")
    reader = Uint8Images(images, preprocess)
    return DataSource(
        name=f"{kind}:{root_arg}:{split}",
        input_shape=reader.shape,
        num_classes=entry.classes,
        y=labels,
        index=torch.arange(len(labels), dtype=torch.int64),
        split=split,
        classes=classes,
        preprocess=preprocess,
        _reader=reader,
    )


def _arrays(entry: TorchvisionSet, dataset) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images (N, C, H, W), int64 labels and class names of a constructed torchvision data set."""
    data = dataset.data
    if entry.cls.startswith("CIFAR"):  # (N, H, W, C) numpy
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)
        labels = np.asarray(dataset.targets, dtype=np.int64)
    elif entry.cls in ("SVHN", "STL10"):  # (N, C, H, W) numpy
        images = torch.from_numpy(np.ascontiguousarray(data))
        labels = np.asarray(dataset.labels, dtype=np.int64)
    else:  # the MNIST family: (N, H, W) uint8 tensor
        images = torch.as_tensor(data).unsqueeze(1)
        labels = np.asarray(torch.as_tensor(dataset.targets), dtype=np.int64)
    classes = [str(c) for c in getattr(dataset, "classes", None) or range(entry.classes)]
    return images.to(torch.uint8).contiguous(), torch.from_numpy(labels.reshape(-1).copy()), classes

"""Where torchvision's data sets keep their files: the table behind ``cifar10:ROOT`` ... ``stl10:ROOT``.

One row per data set: the ``torchvision.datasets`` class, the files it reads under ``ROOT`` (all of them, or
those of the split asked for), its splits and classes, where to get the files, and the one-line help of its
``--data`` form. Nothing here imports
torch, so the data forms' table (:mod:`.forms`), and through it the CLI's help and shell completion,
read it cheaply; :mod:`.torchvision_sets` opens the data sets.
"""

from __future__ import annotations

from dataclasses import dataclass

_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_LISTING = "{train,t10k}-{images-idx3,labels-idx1}-ubyte"
_TORONTO = "from https://www.cs.toronto.edu/~kriz/cifar.html and extract it"


@dataclass(frozen=True)
class TorchvisionSet:
    help: str  # the one-line help of its --data form
    cls: str  # the torchvision.datasets class
    folder: str  # where its files are, relative to ROOT
    files: tuple[str, ...]  # every file the class needs
    listing: str  # how the message shows them
    splits: tuple[str, ...]
    classes: int
    where: str  # where to get the files
    split_files: dict[str, tuple[tuple[str, ...], str]] | None = None  # per split: its files and their listing

    def needed(self, split: str) -> tuple[tuple[str, ...], str]:
        """The files ``split`` needs and how a message shows them (``SPLIT`` in :attr:`listing` replaced)."""
        if self.split_files is not None:
            return self.split_files[split]
        if self.listing == "{SPLIT}_32x32.mat":  # SVHN: one file per split
            return (f"{split}_32x32.mat",), f"{split}_32x32.mat"
        return self.files, self.listing


SETS = {
    "cifar10": TorchvisionSet(
        "CIFAR-10 under ROOT (torchvision files, never downloaded)", "CIFAR10", "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "{data_batch_1..5,test_batch,batches.meta}", ("train", "test"), 10,
        f"download cifar-10-python.tar.gz {_TORONTO}",
        {"train": ((*(f"data_batch_{i}" for i in range(1, 6)), "batches.meta"), "{data_batch_1..5,batches.meta}"),
         "test": (("test_batch", "batches.meta"), "{test_batch,batches.meta}")}),
    "cifar100": TorchvisionSet(
        "CIFAR-100 under ROOT (torchvision files, never downloaded)", "CIFAR100", "cifar-100-python",
        ("train", "test", "meta"), "{train,test,meta}", ("train", "test"), 100,
        f"download cifar-100-python.tar.gz {_TORONTO}",
        {"train": (("train", "meta"), "{train,meta}"), "test": (("test", "meta"), "{test,meta}")}),
    "mnist": TorchvisionSet(
        "MNIST idx files under ROOT/MNIST/raw (torchvision, never downloaded)", "MNIST", "MNIST/raw", _IDX,
        _IDX_LISTING, ("train", "test"), 10,
        "download the four .gz files of MNIST (e.g. torchvision.datasets.MNIST.mirrors) and gunzip them"),
    "fashionmnist": TorchvisionSet(
        "Fashion-MNIST idx files under ROOT/FashionMNIST/raw (torchvision)", "FashionMNIST", "FashionMNIST/raw", _IDX,
        _IDX_LISTING, ("train", "test"), 10,
        "download the four .gz files of https://github.com/zalandoresearch/fashion-mnist and gunzip them"),
    "kmnist": TorchvisionSet(
        "KMNIST idx files under ROOT/KMNIST/raw (torchvision)", "KMNIST", "KMNIST/raw", _IDX, _IDX_LISTING,
        ("train", "test"), 10, "download the four .gz files of https://github.com/rois-codh/kmnist and gunzip them"),
    "svhn": TorchvisionSet(
        "SVHN's {train,test,extra}_32x32.mat under ROOT (torchvision)", "SVHN", ".",
        ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"), "{SPLIT}_32x32.mat", ("train", "test", "extra"), 10,
        "download SPLIT_32x32.mat from http://ufldl.stanford.edu/housenumbers/"),
    "stl10": TorchvisionSet(
        "STL-10 binaries under ROOT/stl10_binary (torchvision)", "STL10", "stl10_binary",
        ("train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"),
        "{train_X,train_y,unlabeled_X,test_X,test_y}.bin", ("train", "test"), 10,
        "download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and extract it"),
}

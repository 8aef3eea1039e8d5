"""``cifar10:ROOT`` / ``cifar100:ROOT`` read only the split's files and name the file whose md5 differs.

The real files are 160 MB; these tests write tiny pickled batches in the same layout. Their md5 sums are not
torchvision's, which is exactly what the failure tests need; the success path tells torchvision's tables
(``train_list``, ``test_list``, ``meta`` of the class, which flatrob reads) the fake files' sums instead of
switching the check off, so the check that runs is the real one.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flatcli.errors import DataError
from flatcli.inputs.data import load_data
from flatcli.inputs.data.torchvision_sets import checksums
from tests.conftest import EXAMPLE, assert_one_error


def trust_fake_files(monkeypatch, folder: Path, cls_name: str = "CIFAR10") -> None:
    """Make torchvision's md5 table of ``cls_name`` hold the sums of the files in ``folder``."""
    import torchvision.datasets as tv

    cls = getattr(tv, cls_name)
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    for table in ("train_list", "test_list"):
        monkeypatch.setattr(cls, table, [[name, md5.get(name, old)] for name, old in getattr(cls, table)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5.get(cls.meta["filename"], cls.meta["md5"])})


def _batch(path: Path, n: int, seed: int, labels: str = "labels") -> np.ndarray:
    flat = np.random.RandomState(seed).randint(0, 256, (n, 3072), dtype=np.uint8)
    path.write_bytes(pickle.dumps({"data": flat, labels: [i % 10 for i in range(n)]}))
    return flat


def _test_split_only(root: Path) -> tuple[Path, np.ndarray]:
    """cifar-10-batches-py with test_batch and batches.meta, and no training batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = _batch(folder / "test_batch", 5, 0)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return folder, flat


def test_the_test_split_needs_no_training_batch(tmp_path, monkeypatch):
    folder, flat = _test_split_only(tmp_path)
    trust_fake_files(monkeypatch, folder)
    data = load_data(f"cifar10:{tmp_path}", "test")
    expected = torch.from_numpy(flat.reshape(5, 3, 32, 32)).float() / 255
    assert len(data) == 5 and data.classes[:2] == ["c0", "c1"] and torch.equal(data[3][0], expected[3])
    with pytest.raises(DataError) as info:  # the training split names its own files, all missing
        load_data(f"cifar10:{tmp_path}", "train")
    message = str(info.value)
    assert "{data_batch_1..5,batches.meta}" in message and "missing data_batch_1, data_batch_2" in message
    assert "test_batch" not in message


def test_a_checksum_that_differs_names_the_file(tmp_path, monkeypatch):
    folder, _ = _test_split_only(tmp_path)
    with pytest.raises(DataError) as info:  # the fake file is not torchvision's
        load_data(f"cifar10:{tmp_path}", "test")
    message = str(info.value)
    assert "\n" not in message and "download=True" not in message and "never downloads" in message
    assert "cifar-10-batches-py/test_batch is not torchvision's cifar10 file" in message
    assert checksums(__import__("torchvision").datasets.CIFAR10)["test_batch"] in message  # the expected sum
    trust_fake_files(monkeypatch, folder)
    (folder / "batches.meta").write_bytes(b"truncated")  # the class names' file is checked too
    with pytest.raises(DataError, match="batches.meta is not torchvision's"):
        load_data(f"cifar10:{tmp_path}", "test")


def test_the_cli_says_it_in_one_line(tmp_path, cli):
    _test_split_only(tmp_path)
    res = cli("sharpness", EXAMPLE, "--data", f"cifar10:{tmp_path}", "--split", "test")
    assert_one_error(res, "test_batch is not torchvision's cifar10 file", "md5")


def test_cifar100_shares_it(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _batch(folder / "test", 4, 1, labels="fine_labels")
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    with pytest.raises(DataError, match="cifar-100-python/test is not torchvision's cifar100 file"):
        load_data(f"cifar100:{tmp_path}", "test")
    trust_fake_files(monkeypatch, folder, "CIFAR100")
    data = load_data(f"cifar100:{tmp_path}", "test")
    assert len(data) == 4 and data.num_classes == 100 and data.y.tolist() == [0, 1, 2, 3]

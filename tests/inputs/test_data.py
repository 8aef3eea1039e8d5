"""Tests for flatcli.data: every --data form, its refusals, and batching."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flatcli.inputs import data as fdata
from flatcli.inputs.data import DataSource, batches, check_compatible, load_data
from flatcli.inputs.data.tensors import save_tensors
from flatcli.errors import DataError, OptionError, UsageError

# ---------------------------------------------------------------------------------- digits


def test_digits_split_sizes_disjoint_and_documented():
    train = load_data("digits", "train")
    test = load_data("digits", "test")
    full = load_data("digits", "all")
    assert (len(train), len(test), len(full)) == (1437, 360, 1797)
    assert set(train.index.tolist()).isdisjoint(test.index.tolist())
    assert sorted(train.index.tolist() + test.index.tolist()) == list(range(1797))
    perm = np.random.RandomState(0).permutation(1797)
    assert train.index.tolist() == perm[:1437].tolist()
    assert test.index.tolist() == perm[1437:].tolist()
    assert full.index.tolist() == list(range(1797))
    assert train.name == "digits:train" and test.name == "digits:test"


def test_digits_values_shapes_and_determinism():
    a = load_data("digits", "test")
    b = load_data("digits")  # default split is test
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)
    assert a.x.dtype == torch.float32 and a.x.shape == (360, 1, 8, 8)
    assert a.y.dtype == torch.int64 and a.index.dtype == torch.int64
    assert float(a.x.min()) >= 0.0 and float(a.x.max()) <= 1.0 and float(a.x.max()) == 1.0
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    full = load_data("digits", "all")
    x, label, idx = a[3]
    assert torch.equal(x, full.x[idx]) and label == int(full.y[idx])
    assert x.shape == (1, 8, 8) and isinstance(label, int) and isinstance(idx, int)


def test_digits_bad_split_and_argument():
    with pytest.raises(UsageError, match="train, test or all"):
        load_data("digits", "val")
    with pytest.raises(OptionError, match="choose the split with split=") as caught:
        load_data("digits:test")
    assert caught.value.options == ("split",)


def test_limit_keeps_first_items():
    full = load_data("digits", "test")
    part = load_data("digits", "test", limit=7)
    assert len(part) == 7
    assert torch.equal(part.x, full.x[:7]) and torch.equal(part.index, full.index[:7])
    assert len(load_data("digits", "test", limit=10_000)) == 360


def test_negative_limit_names_the_option():
    with pytest.raises(OptionError, match="^limit= must be 0 or more, got -1$") as caught:
        load_data("digits", limit=-1)
    assert caught.value.worded(lambda name: f"--{name}") == "--limit must be 0 or more, got -1"


def test_empty_result_is_data_error():
    with pytest.raises(DataError, match="holds no samples"):
        load_data("digits", limit=0)


def test_unknown_prefix_lists_accepted_forms():
    with pytest.raises(UsageError) as info:
        load_data("imagenet:/data")
    message = str(info.value)
    for form in ("digits", "cifar10:ROOT", "cifar100:ROOT", "mnist:ROOT", "svhn:ROOT", "stl10:ROOT", "folder:DIR",
                 "npz:FILE", "hf:PATH", "tensors:FILE"):
        assert form in message
    with pytest.raises(UsageError, match="cifar10:ROOT"):
        load_data("cifar10")


# ---------------------------------------------------------------------------------- tensors


def _write(path: Path, tensors: dict, metadata=None) -> str:
    save_file(tensors, str(path), metadata=metadata)
    return f"tensors:{path}"


def test_tensors_round_trip_with_index_and_metadata(tmp_path):
    x = torch.rand(5, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    index = torch.tensor([10, 11, 12, 40, 41])
    path = tmp_path / "adv.safetensors"
    save_tensors(path, x, y, index, metadata={"command": "attack"})
    assert [p.name for p in tmp_path.iterdir()] == ["adv.safetensors"]  # no temporary left behind
    data = load_data(f"tensors:{path}", split="train")  # split is ignored
    assert torch.equal(data.x, x) and torch.equal(data.y, y) and torch.equal(data.index, index)
    assert data.input_shape == (3, 4, 4) and data.num_classes is None
    assert data.metadata == {"command": "attack"}
    assert data[3][1:] == (1, 40)
    limited = load_data(f"tensors:{path}", limit=2)
    assert limited.index.tolist() == [10, 11]


def test_save_tensors_normalises_dtypes_and_views(tmp_path):
    base = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    x = base[1:4]  # a view into a larger storage
    y = torch.tensor([1, 2, 3], dtype=torch.int32)
    save_tensors(tmp_path / "t.safetensors", x, y, torch.arange(3))
    data = load_data(f"tensors:{tmp_path / 't.safetensors'}")
    assert data.x.dtype == torch.float32 and torch.allclose(data.x, x.float())
    assert data.y.dtype == torch.int64 and data.y.tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="shape"):
        save_tensors(tmp_path / "bad.safetensors", x, y[:2], torch.arange(3))


def test_tensors_without_index_gets_arange(tmp_path):
    src = _write(tmp_path / "a.safetensors", {"x": torch.rand(3, 1, 2, 2), "y": torch.tensor([0, 1, 0])})
    assert load_data(src).index.tolist() == [0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_tensors_float_inputs_are_converted(tmp_path, dtype):
    x = torch.rand(4, 1, 3, 3).to(dtype)
    src = _write(tmp_path / "h.safetensors", {"x": x, "y": torch.zeros(4, dtype=torch.int64)})
    data = load_data(src)
    assert data.x.dtype == torch.float32 and torch.equal(data.x, x.float())


@pytest.mark.parametrize(
    ("tensors", "pattern"),
    [
        ({"x": torch.randint(0, 255, (2, 1, 2, 2), dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int64)}, "uint8.*divide"),
        ({"x": torch.tensor([[[[0.5, float("nan")]]], [[[float("inf"), 0.1]]]]), "y": torch.zeros(2, dtype=torch.int64)}, "2 NaN or infinite"),
        ({"x": torch.tensor([[[[0.5, 1.5]]], [[[-0.2, 0.1]]]]), "y": torch.zeros(2, dtype=torch.int64)}, r"2 values outside \[0, 1\]"),
        ({"x": torch.rand(2, 1, 2, 2), "y": torch.zeros(2)}, "y has dtype float32.*integer"),
        ({"x": torch.rand(2, 1, 2, 2), "y": torch.zeros(3, dtype=torch.int64)}, r"expected \(2,\)"),
        ({"x": torch.rand(2, 1, 2, 2), "y": torch.zeros(2, 1, dtype=torch.int64)}, r"y has shape \(2, 1\)"),
        ({"x": torch.rand(2, 1, 2, 2), "y": torch.tensor([0, -1])}, "negative"),
        ({"x": torch.rand(2, 4), "y": torch.zeros(2, dtype=torch.int64)}, r"\(N, C, H, W\)"),
        ({"x": torch.rand(2, 1, 2, 2)}, "no tensor 'y'"),
        ({"y": torch.zeros(2, dtype=torch.int64)}, "no tensor 'x'"),
        ({"x": torch.rand(2, 1, 2, 2), "y": torch.zeros(2, dtype=torch.int64), "index": torch.zeros(3, dtype=torch.int64)}, "index has shape"),
        ({"x": torch.rand(2, 1, 2, 2), "y": torch.zeros(2, dtype=torch.int64), "index": torch.zeros(2)}, "index has dtype"),
    ],
)
def test_tensors_refusals(tmp_path, tensors, pattern):
    src = _write(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(DataError, match=pattern):
        load_data(src)


def test_tensors_empty_file_holds_no_samples(tmp_path):
    src = _write(tmp_path / "e.safetensors", {"x": torch.zeros(0, 1, 2, 2), "y": torch.zeros(0, dtype=torch.int64)})
    with pytest.raises(DataError, match="holds no samples"):
        load_data(src)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{"])
def test_tensors_not_safetensors_is_data_error(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(DataError, match="safetensors"):
        load_data(f"tensors:{path}")


def test_tensors_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"tensors:{tmp_path / 'nope.safetensors'}")
    with pytest.raises(DataError, match="not a file"):
        load_data(f"tensors:{tmp_path}")


class _FakeStdin:
    def __init__(self, blob: bytes):
        self.buffer = io.BytesIO(blob)


def test_tensors_from_stdin(tmp_path, monkeypatch):
    x = torch.rand(3, 1, 2, 2)
    path = tmp_path / "s.safetensors"
    save_tensors(path, x, torch.tensor([2, 0, 1]), torch.tensor([7, 8, 9]), metadata={"k": "v"})
    monkeypatch.setattr(sys, "stdin", _FakeStdin(path.read_bytes()))
    data = load_data("tensors:-")
    assert data.name == "tensors:-" and torch.equal(data.x, x) and data.index.tolist() == [7, 8, 9]
    assert data.metadata == {"k": "v"}


@pytest.mark.parametrize("blob", [b"", b"garbage bytes"])
def test_tensors_from_bad_stdin(monkeypatch, blob):
    monkeypatch.setattr(sys, "stdin", _FakeStdin(blob))
    with pytest.raises(DataError, match="stdin"):
        load_data("tensors:-")


# ---------------------------------------------------------------------------------- folder


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(seed: int, h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def test_folder_streams_pngs_in_imagefolder_order(tmp_path):
    arrays = {("cat", "a.png"): _rgb(0), ("cat", "b.png"): _rgb(1), ("dog", "a.png"): _rgb(2)}
    for (cls, name), arr in arrays.items():
        _png(tmp_path / "test" / cls / name, arr)
    data = load_data(f"folder:{tmp_path}", "test")
    assert data.x is None and not data.in_memory  # streamed
    assert len(data) == 3 and data.input_shape == (3, 4, 5)
    assert data.num_classes == 2 and data.classes == ["cat", "dog"]
    assert data.y.tolist() == [0, 0, 1] and data.index.tolist() == [0, 1, 2]
    x, label, idx = data[2]
    expected = torch.from_numpy(arrays[("dog", "a.png")]).permute(2, 0, 1).float() / 255
    assert torch.equal(x, expected) and (label, idx) == (1, 2)
    xs, ys, ids = zip(*batches(data, 2))
    assert [t.shape[0] for t in xs] == [2, 1]
    assert torch.cat(ys).tolist() == [0, 0, 1] and torch.cat(ids).tolist() == [0, 1, 2]
    assert xs[0].dtype == torch.float32 and torch.equal(xs[1][0], expected)


def test_folder_without_split_dir_uses_dir_itself(tmp_path):
    _png(tmp_path / "a" / "x.png", _rgb(0))
    data = load_data(f"folder:{tmp_path}", "test")
    assert len(data) == 1 and data.name == f"folder:{tmp_path}"


def test_folder_greyscale_and_channel_adaptation(tmp_path):
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    _png(tmp_path / "0" / "a.png", grey)
    _png(tmp_path / "1" / "b.png", grey)
    data = load_data(f"folder:{tmp_path}")
    assert data.input_shape == (1, 4, 4)
    assert torch.equal(data[0][0][0], torch.from_numpy(grey).float() / 255)
    check_compatible(data, (3, 4, 4), 2)  # a folder adapts to the model's channel count
    assert data.input_shape == (3, 4, 4) and data[0][0].shape == (3, 4, 4)
    with pytest.raises(DataError, match=r"\(3, 4, 4\).*\(3, 8, 8\)"):
        check_compatible(data, (3, 8, 8), 2)


def test_folder_numeric_class_names_are_labels(tmp_path):
    for cls in ("2", "10"):
        _png(tmp_path / cls / "a.png", _rgb(int(cls)))
    data = load_data(f"folder:{tmp_path}")
    assert sorted(data.y.tolist()) == [2, 10] and data.num_classes == 11


def test_folder_refusals(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="<class>"):
        load_data(f"folder:{tmp_path / 'flat'}")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no samples"):
        load_data(f"folder:{tmp_path / 'empty'}")


def test_folder_scan_gives_imagefolders_order(tmp_path):
    """The safe walk lists exactly what torchvision's ImageFolder lists, in its order (indices stay the same)."""
    from torchvision.datasets import ImageFolder

    for i, rel in enumerate(["b/z.png", "b/a.PNG", "b/sub/c.jpg", "b/sub/deeper/d.png", "a/y.png", "a/sub2/x.bmp",
                             "c/e.png"]):
        _png(tmp_path / rel, _rgb(i))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = load_data(f"folder:{tmp_path}")
    reference = ImageFolder(str(tmp_path))
    assert [path for path, _ in reference.samples] == data._reader.store.files
    assert data.y.tolist() == [label for _, label in reference.samples] and data.classes == reference.classes


def test_folder_follows_links_once_and_refuses_cycles(tmp_path):
    _png(tmp_path / "elsewhere" / "x.png", _rgb(0))
    root = tmp_path / "root"
    _png(root / "0" / "a.png", _rgb(1))
    (root / "1").symlink_to(tmp_path / "elsewhere")  # a class kept elsewhere, linked in: fine
    data = load_data(f"folder:{root}")
    assert data.y.tolist() == [0, 1]
    (root / "0" / "up").symlink_to("..")  # back to the root: os.walk(followlinks=True) would never end
    with pytest.raises(DataError, match=r"0/up is .*root again \(a directory link cycle"):
        load_data(f"folder:{root}")
    (root / "0" / "up").unlink()
    (root / "2").symlink_to("0")  # two classes, one directory: every image would count twice
    with pytest.raises(DataError, match="link cycle, or two links to one directory"):
        load_data(f"folder:{root}")


def test_folder_skips_special_files_and_refuses_pseudo_file_systems(tmp_path):
    import os

    _png(tmp_path / "0" / "a.png", _rgb(0))
    os.mkfifo(tmp_path / "0" / "pipe.png")  # reading it would block for ever
    assert load_data(f"folder:{tmp_path}")._reader.store.files == [str(tmp_path / "0" / "a.png")]
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    with pytest.raises(DataError, match="lies on proc"):
        load_data("folder:/proc")
    (tmp_path / "1").symlink_to("/proc/self")  # a link into /proc from an ordinary tree
    with pytest.raises(DataError, match="lies on proc"):
        load_data(f"folder:{tmp_path}")


def test_folder_class_numbers_are_bounded_by_the_model(tmp_path):
    from flatcli.inputs.data.folder import MAX_CLASSES

    _png(tmp_path / "0" / "a.png", _rgb(0))
    (tmp_path / "12").mkdir()
    assert load_data(f"folder:{tmp_path}").num_classes == 13
    with pytest.raises(DataError, match="named 12, but the model has 10 classes"):
        load_data(f"folder:{tmp_path}", num_classes=10)
    (tmp_path / ("9" * 200)).mkdir()  # a class number of 200 digits: refused without converting it
    with pytest.raises(DataError, match=f"at most {MAX_CLASSES} classes"):
        load_data(f"folder:{tmp_path}")


def test_folder_mismatched_and_corrupt_images(tmp_path):
    _png(tmp_path / "mixed" / "a" / "1.png", _rgb(0, 4, 5))
    _png(tmp_path / "mixed" / "a" / "2.png", _rgb(1, 6, 6))
    data = load_data(f"folder:{tmp_path / 'mixed'}")
    with pytest.raises(DataError, match=r"2.png has shape \(3, 6, 6\)"):
        list(batches(data, 4))
    _png(tmp_path / "broken" / "a" / "1.png", _rgb(0))
    (tmp_path / "broken" / "a" / "2.png").write_bytes(b"not a png")
    data = load_data(f"folder:{tmp_path / 'broken'}")
    with pytest.raises(DataError, match="cannot read image .*2.png"):
        list(batches(data, 4))


def test_folder_worker_error_is_one_line(tmp_path):
    _png(tmp_path / "a" / "1.png", _rgb(0))
    (tmp_path / "a" / "2.png").write_bytes(b"not a png")
    data = load_data(f"folder:{tmp_path}")
    with pytest.raises(DataError) as info:
        list(batches(data, 1, workers=1))
    assert "\n" not in str(info.value) and "cannot read image" in str(info.value)


# ---------------------------------------------------------------------------------- cifar


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(f"cifar10:{tmp_path}")
    message = str(info.value)
    assert "cifar-10-batches-py/{test_batch,batches.meta}" in message  # the test split's files only
    assert "never downloads" in message and "data_batch_1" not in message
    with pytest.raises(DataError, match="cifar-100-python"):
        load_data(f"cifar100:{tmp_path}", "train")
    with pytest.raises(UsageError, match="train or test"):
        load_data(f"cifar10:{tmp_path}", "all")


def _fake_cifar10(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        flat = rng.randint(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": flat, "labels": list(range(n))}, handle)
        written[name] = flat
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return written


def test_cifar_loads_fake_layout(tmp_path, monkeypatch):
    from tests.inputs.test_torchvision_files import trust_fake_files

    written = _fake_cifar10(tmp_path)
    with pytest.raises(DataError, match="test_batch is not torchvision's"):  # md5 mismatch names the file
        load_data(f"cifar10:{tmp_path}")
    trust_fake_files(monkeypatch, tmp_path / "cifar-10-batches-py")
    data = load_data(f"cifar10:{tmp_path}", "test")
    assert len(data) == 4 and data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.x is None and data.classes[0] == "c0"
    expected = torch.from_numpy(written["test_batch"].reshape(4, 3, 32, 32)).float() / 255
    x, label, idx = data[2]
    assert torch.equal(x, expected[2]) and (label, idx) == (2, 2)
    xb, yb, ib = next(batches(data, 3))
    assert torch.equal(xb, expected[:3]) and yb.tolist() == [0, 1, 2] and ib.tolist() == [0, 1, 2]
    train = load_data(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", "train", limit=6)  # folder itself ok
    assert len(train) == 6 and train.index.tolist() == list(range(6))


# ---------------------------------------------------------------------------------- checks and batches


def test_check_compatible():
    data = load_data("digits", limit=50)
    check_compatible(data, (1, 8, 8), 10)
    check_compatible(data, None, None)
    with pytest.raises(DataError, match=r"\(1, 8, 8\).*\(3, 32, 32\)"):
        check_compatible(data, (3, 32, 32), 10)
    with pytest.raises(DataError, match="labels up to 9.*5 classes"):
        check_compatible(data, [1, 8, 8], 5)
    few = DataSource("few", (1, 8, 8), 10, x=data.x[:2], y=torch.tensor([0, 1]))
    with pytest.raises(DataError, match="10 classes but the model has 3"):
        check_compatible(few, (1, 8, 8), 3)


def test_batches_order_shapes_and_copies():
    data = load_data("digits", "test")
    out = list(batches(data, 128))
    assert [xb.shape for xb, _, _ in out] == [(128, 1, 8, 8), (128, 1, 8, 8), (104, 1, 8, 8)]
    xs, ys, ids = (torch.cat(parts) for parts in zip(*out))
    assert torch.equal(xs, data.x) and torch.equal(ys, data.y) and torch.equal(ids, data.index)
    assert ys.dtype == torch.int64 and ids.dtype == torch.int64 and xs.dtype == torch.float32
    before = data.x.clone()
    for xb, _, _ in batches(data, 64):
        xb.add_(1.0)  # callers may modify batches in place
    assert torch.equal(data.x, before)
    with pytest.raises(UsageError):
        next(batches(data, 0))


def test_subset_is_a_contiguous_shard():
    data = load_data("digits", "test")
    shards = [data.subset(r * len(data) // 3, (r + 1) * len(data) // 3) for r in range(3)]
    assert torch.equal(torch.cat([s.index for s in shards]), data.index)


def test_library_imports_no_cli_dependencies():
    source = Path(fdata.__file__).read_text()
    assert "import typer" not in source and "import rich" not in source
